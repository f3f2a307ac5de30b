"""Type descriptions on the wire: FactoryDescription messages and back."""

from dataclasses import MISSING

import torch

from rnnbuilder import custom, spec
from rnnbuilder.describe import ArgumentDescription, ArgumentKind, TypeDescription, describe
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import descriptions


class Gain(torch.nn.Module):
    """Multiplies its input by a gain."""

    def __init__(self, gain: float | torch.Tensor = 2.0, axes: tuple[int, ...] = (0, 1), act=None):
        super().__init__()


def test_builtin_descriptions_round_trip():
    """Every built-in description comes back from its message unchanged."""
    described = describe(spec.builtin_registry())
    assert descriptions.from_server_info(descriptions.to_server_info(described)) == described


def test_custom_descriptions_round_trip():
    """A custom factory's tensor, list and null defaults come back as written."""
    registry = spec.builtin_registry()
    registry.register("test.Gain", custom.register_non_recurrent(Gain, flatten_input=False, shape_change=False))
    described = describe(registry)
    gain = next(d for d in described.factories if d.name == "test.Gain")
    assert [a.default for a in gain.arguments] == [2.0, [0, 1], None]
    assert descriptions.from_server_info(descriptions.to_server_info(described)) == described


def test_required_argument_has_no_default_value():
    """A required argument's message leaves default_value unset; a null default is set, as null."""
    kinds = (ArgumentKind.INTEGER, ArgumentKind.NULL)
    message = descriptions.to_message(
        TypeDescription(
            "test.T",
            "A type.",
            (
                ArgumentDescription("a", kinds, (), True, MISSING, "Required."),
                ArgumentDescription("b", kinds, (), False, None, "Null by default."),
            ),
        )
    )
    required, null = message.arguments
    assert not required.HasField("default_value")
    assert null.default_value == pb.Value(null_value=True)
    assert list(required.types) == [pb.ARGUMENT_TYPE_INTEGER, pb.ARGUMENT_TYPE_NULL]


def test_unknown_argument_types_are_left_out():
    """Argument types a newer server may send that this version doesn't know are skipped, not fatal."""
    message = pb.FactoryDescription(
        type="test.T", arguments=[pb.ArgumentDescription(name="a", types=[pb.ARGUMENT_TYPE_REAL, 99])]
    )
    assert descriptions.from_message(message).arguments[0].kinds == (ArgumentKind.REAL,)
