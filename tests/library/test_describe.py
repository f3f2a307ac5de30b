"""rnnbuilder.describe: every registered type described from its own signature and docstrings."""

from collections.abc import Callable
from dataclasses import MISSING, fields

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import custom, nn, snn, spec
from rnnbuilder.describe import ArgumentKind, describe, describe_type

INTEGER, REAL, BOOLEAN, STRING = ArgumentKind.INTEGER, ArgumentKind.REAL, ArgumentKind.BOOLEAN, ArgumentKind.STRING
FACTORY, TENSOR, LIST, NULL = ArgumentKind.FACTORY, ArgumentKind.TENSOR, ArgumentKind.LIST, ArgumentKind.NULL
BUILTINS = describe(spec.builtin_registry())
ALL_BUILTINS = BUILTINS.factories + BUILTINS.surrogates + BUILTINS.encoders


class Gain(torch.nn.Module):
    """Multiplies its input by a gain.

    More on it, not in the description.
    """

    gain: float
    """The factor, unitless."""

    def __init__(self, gain: float | torch.Tensor = 2.0, scale=1, act: Callable = torch.relu, *, clamp: bool = False):
        super().__init__()
        self.gain, self.act = gain, act

    def forward(self, x):
        return self.act(x * self.gain)


class Bare(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()

    def forward(self, x):
        return x


GainFactory = custom.register_non_recurrent(Gain, flatten_input=False, shape_change=False)
BareFactory = custom.register_non_recurrent(Bare, flatten_input=False, shape_change=False)


def arguments(name: str, registry: spec.Registry | None = None) -> dict:
    """The described arguments of the type registered as ``name``, by argument name."""
    described = describe(registry or spec.builtin_registry())
    found = next(d for d in described.factories + described.surrogates + described.encoders if d.name == name)
    return {a.name: a for a in found.arguments}


def test_every_builtin_type_is_described_from_its_docstrings():
    """Every built-in type has a description, and every argument a description of its own: none falls back."""
    undocumented = [d.name for d in ALL_BUILTINS if not d.description or "(undocumented)" in d.description]
    undocumented += [
        f"{d.name}.{a.name}" for d in ALL_BUILTINS for a in d.arguments if "(undocumented)" in a.description
    ]
    assert undocumented == []


def test_every_builtin_argument_description_is_one_line():
    """Every argument description is one non-empty line."""
    bad = [f"{d.name}.{a.name}" for d in ALL_BUILTINS for a in d.arguments if not a.description.strip()]
    assert bad == [] and all("\n" not in a.description for d in ALL_BUILTINS for a in d.arguments)


def test_every_registered_type_is_listed_once():
    """The descriptions name exactly the registry's factories, surrogates and encoders, each group sorted."""
    registry = spec.builtin_registry()
    assert [d.name for d in BUILTINS.factories] == registry.factory_names()
    assert [d.name for d in BUILTINS.surrogates] == registry.surrogate_names()
    assert [d.name for d in BUILTINS.encoders] == registry.encoder_names()


def test_linear_is_described_as_its_source_says():
    """nn.Linear: out_features is a required integer, bias a boolean defaulting to True, texts from the docstrings."""
    linear = next(d for d in BUILTINS.factories if d.name == "nn.Linear")
    assert linear.description == nn.Linear.__doc__.splitlines()[0]
    out_features, bias = linear.arguments
    assert (out_features.name, out_features.kinds, out_features.required, out_features.default) == (
        "out_features",
        (INTEGER,),
        True,
        MISSING,
    )
    assert out_features.description == "Number of output features."
    assert (bias.name, bias.kinds, bias.required, bias.default) == ("bias", (BOOLEAN,), False, True)
    assert bias.description == "Whether to add a learnable bias."


def test_arguments_come_in_declaration_order():
    """A type's arguments are in the order of its dataclass fields, inherited ones first."""
    conv = next(d for d in BUILTINS.factories if d.name == "nn.Conv2d")
    assert [a.name for a in conv.arguments] == [f.name for f in fields(nn.Conv2d)]


def test_inherited_fields_keep_their_docstrings():
    """Conv2d's arguments, declared on a private base class, are documented from there."""
    assert arguments("nn.Conv2d")["groups"].description.startswith("Number of blocked connections")


def test_int_or_tuple_is_integer_or_list_of_integers():
    """A kernel size (int | tuple[int, ...]) takes an integer or a list of integers."""
    kernel = arguments("nn.Conv2d")["kernel_size"]
    assert (kernel.kinds, kernel.item_kinds) == ((INTEGER, LIST), (INTEGER,))


def test_optional_hint_adds_null():
    """``X | None`` takes null too, and a None default is written as None."""
    stride = arguments("nn.MaxPool2d")["stride"]
    assert (stride.kinds, stride.item_kinds, stride.default) == ((INTEGER, LIST, NULL), (INTEGER,), None)


def test_list_items_may_be_null():
    """AdaptiveAvgPool2d's output_size items are integers or null (keep that dim)."""
    assert arguments("nn.AdaptiveAvgPool2d")["output_size"].item_kinds == (INTEGER, NULL)


def test_surrogate_argument_is_a_factory_with_its_default_written_as_data():
    """LIF's spike_function is a FACTORY whose default is the surrogate's description."""
    spike_function = arguments("snn.LIF")["spike_function"]
    assert spike_function.kinds == (FACTORY,)
    assert spike_function.default == {"type": "snn.SpikeLinear", "args": {"gradient_factor": 0.3}}


def test_tuple_defaults_are_written_as_lists():
    """Defaults are written as a description gives values: a tuple as a list."""

    class Sum(torch.nn.Module):
        def __init__(self, dims: tuple[int, ...] = (0, 1)):
            super().__init__()

    described = describe_type("test.Sum", custom.register_non_recurrent(Sum, flatten_input=False, shape_change=True))
    assert described.arguments[0].default == [0, 1]


def test_sequential_and_network_take_no_arguments():
    """Sequential and Network are described without arguments: their structure is the message's."""
    structural = {d.name: d for d in BUILTINS.factories if d.name in ("Sequential", "Network")}
    assert {name: d.arguments for name, d in structural.items()} == {"Sequential": (), "Network": ()}
    assert structural["Sequential"].description == rb.Sequential.__doc__.splitlines()[0]


def test_custom_factory_is_described_from_its_module():
    """A custom factory's description and argument texts come from its module's docstrings."""
    registry = spec.builtin_registry()
    registry.register("test.Gain", GainFactory)
    gain = next(d for d in describe(registry).factories if d.name == "test.Gain")
    assert gain.description == "Multiplies its input by a gain."
    assert gain.arguments[0].description == "The factor, unitless."


def test_custom_tensor_hint_is_real_or_tensor():
    """``float | torch.Tensor`` takes a real or a tensor."""
    gain = describe_type("test.Gain", GainFactory).arguments[0]
    assert (gain.kinds, gain.required, gain.default) == ((REAL, TENSOR), False, 2.0)


def test_unannotated_custom_argument_takes_any_value():
    """An argument without a hint takes any value a description can hold."""
    scale = {a.name: a for a in describe_type("test.Gain", GainFactory).arguments}["scale"]
    assert set(scale.kinds) == {BOOLEAN, INTEGER, REAL, STRING, LIST, FACTORY, TENSOR, NULL}


def test_arguments_no_description_can_give_are_left_out():
    """A Callable argument can't travel, so it isn't listed; keyword-only ones are."""
    assert [a.name for a in describe_type("test.Gain", GainFactory).arguments] == ["gain", "scale", "clamp"]


def test_undocumented_custom_factory_falls_back():
    """Without docstrings, the type and argument descriptions say so, with their names."""
    bare = describe_type("test.Bare", BareFactory)
    assert bare.description == "Bare (undocumented)"
    assert (bare.arguments[0].description, bare.arguments[0].required) == ("width (undocumented)", True)


def test_default_that_is_no_data_is_missing():
    """An optional argument whose default can't be written as data has no default to show."""

    class Act(torch.nn.Module):
        def __init__(self, fn=torch.tanh):
            super().__init__()

    described = describe_type("test.Act", custom.register_non_recurrent(Act, flatten_input=False, shape_change=False))
    assert (described.arguments[0].required, described.arguments[0].default) == (False, MISSING)


@pytest.mark.parametrize("surrogate", [snn.ATan, snn.SpikeLinear])
def test_surrogates_are_described(surrogate):
    """A surrogate's single argument is a real with its dataclass default."""
    (argument,) = describe_type("x", surrogate).arguments
    assert (argument.kinds, argument.default) == ((REAL,), fields(surrogate)[0].default)
