"""Networks as data: to_spec / from_spec round trips, the registry, and the errors' paths."""

import json
import math

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import custom, initial, nn, rnn, snn, spec
from rnnbuilder.errors import SpecError

EXAMPLES = [
    nn.Linear(3, bias=False),
    nn.Bilinear(4, bias=False),
    nn.Conv1d(4, 3, stride=2),
    nn.Conv2d(4, (3, 3), padding=(1, 0)),
    nn.Conv3d(2, 3),
    nn.ConvTranspose1d(4, 3, dilation=2),
    nn.ConvTranspose2d(4, (2, 3), groups=2),
    nn.MaxPool1d(2, stride=1),
    nn.MaxPool2d((2, 2), ceil_mode=True),
    nn.AvgPool1d(3, padding=1),
    nn.AvgPool2d(2, stride=(1, 2)),
    nn.AdaptiveAvgPool1d(5),
    nn.AdaptiveAvgPool2d((4, 4)),
    nn.AdaptiveMaxPool2d(3),
    nn.BatchNorm1d(eps=1e-3),
    nn.BatchNorm2d(momentum=0.2, affine=False),
    nn.LayerNorm(elementwise_affine=False),
    nn.GroupNorm(2, eps=1e-4),
    nn.Dropout(0.25),
    nn.Dropout2d(0.1),
    nn.Flatten(),
    nn.Unflatten(0, (4, 4)),
    nn.Upsample(scale_factor=2.0, mode="bilinear"),
    nn.ReLU(),
    nn.LeakyReLU(0.2),
    nn.ELU(0.5),
    nn.GELU("tanh"),
    nn.SiLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Hardtanh(-2.0, 2.0),
    nn.Softplus(beta=2.0),
    nn.Softmax(1),
    nn.LogSoftmax(-1),
    nn.Identity(),
    nn.Conv2d(2, 1, bias=torch.tensor([0.5, -0.5]), weight=torch.ones(2, 3, 1, 1)),
    nn.Affine(torch.ones(2, 3), torch.tensor([0.5, -0.5])),
    nn.Scale(torch.tensor([2.0, 3.0])),
    nn.SumPool2d(2, stride=1),
    nn.Delay(torch.tensor([1, 2])),
    nn.Delay(3),
    rnn.LSTM(8, num_layers=2, dropout=0.1),
    rnn.GRU(4, bias=False),
    rnn.TempConvPlus2d(4, 3, 2, padding=(1, 1)),
    snn.LIF(tau=3.0, spike_function=snn.ATan(alpha=3.0)),
    snn.NoReset(spike_function=snn.FastSigmoid(10.0)),
    snn.Adaptive(tau_thr=20.0, gamma=0.5, spike_function=snn.Triangular(0.5)),
    snn.Cooldown(spike_function=snn.Sigmoid(2.0)),
    snn.Discontinuous(snn.StraightThrough(), threshold=0.5),
    snn.LIF(spike_function=snn.SpikeLinear(0.5)),
    snn.Integrator(r=torch.tensor([0.5, 2.0]), dt=0.1),
    snn.IntegrateAndFire(v_threshold=torch.ones(2, 1, 1), v_reset=-0.5),
    snn.LeakyIntegrator(tau=torch.tensor([2.0, 4.0], dtype=torch.float64), r=2.0, v_leak=0.1),
    snn.LeakyIntegrateAndFire(tau=5e-3, r=50.0, dt=1e-4, spike_function=snn.ATan()),
    snn.CubaLeakyIntegrator(tau_syn=2.0, tau_mem=torch.tensor([3.0, 4.0]), w_in=0.5),
    snn.CubaLeakyIntegrateAndFire(tau_syn=torch.tensor([2.0]), tau_mem=4.0, v_threshold=0.8),
    snn.Threshold(v_threshold=torch.tensor([0.1, 0.2])),
]


class Scale(torch.nn.Module):
    def __init__(self, factor: float = 2.0, axes: tuple[int, ...] = ()):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class Shift(torch.nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


ScaleFactory = custom.register_non_recurrent(Scale, flatten_input=False, shape_change=False)
ShiftFactory = custom.register_non_recurrent(Shift, flatten_input=False, shape_change=False)


def wire(description: dict) -> dict:
    """The description as a client would send it: through strict JSON."""
    return json.loads(json.dumps(description, allow_nan=False))


def rebuild(factory, registry=None):
    return spec.from_spec(wire(spec.to_spec(factory, registry)), registry)


def seeded_model(factory, in_shape):
    torch.manual_seed(0)
    return factory.make_model(in_shape)


def document(root: dict) -> dict:
    return {"format": spec.FORMAT, "root": root}


def linear(**args) -> dict:
    return {"type": "nn.Linear", "args": args}


def feed_forward():
    return rb.Sequential(
        nn.Conv2d(4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(10), snn.LIF(), nn.Linear(3)
    )


def recurrent_network():
    n = rb.Network()
    n.output = rb.Placeholder()
    n.feedback = rb.Placeholder(initial.Constant(0.5))
    n.hidden = rb.Layer(n.input.stack(n.feedback, n.output), [nn.Linear(8), snn.LIF(tau=3.0)], placeholder=n.feedback)
    n.skip = n.input.apply(nn.Linear(8))
    n.mixed = n.hidden.sum(n.skip)
    n.alias = n.mixed
    n.output = n.mixed.append(n.skip).apply(nn.Bilinear(6))
    return n


def network_spec() -> dict:
    """input -> layers[1] -> layers[2] = output; layers[2] has factories [Linear, LIF]."""
    n = rb.Network()
    n.output = n.input.apply(nn.Linear(4)).apply(nn.Linear(8), snn.LIF())
    return spec.to_spec(n)


def raises_at(path: str, description: dict, match: str = "", registry=None) -> SpecError:
    with pytest.raises(SpecError, match=match) as info:
        spec.from_spec(description, registry)
    assert info.value.path == path
    return info.value


@pytest.mark.parametrize("factory", EXAMPLES, ids=repr)
def test_every_builtin_factory_round_trips(factory):
    """Each built-in factory comes back equal after a trip through JSON."""
    assert rebuild(factory) == factory


def test_examples_cover_every_builtin_type():
    """The round-trip examples name every registered built-in factory and surrogate."""
    named = set()

    def collect(obj):
        if isinstance(obj, dict) and "type" in obj:  # not a tensor argument
            named.add(obj["type"])
            for value in obj.get("args", {}).values():
                collect(value)

    for factory in EXAMPLES:
        collect(spec.to_spec(factory)["root"])
    registry = spec.builtin_registry()
    assert named == set(registry.factory_names()) - {"Sequential", "Network"} | set(registry.surrogate_names())


def test_tuples_are_lists_on_the_wire():
    """Tuple arguments become JSON lists and tuples again when read."""
    description = spec.to_spec(nn.MaxPool2d((2, 3)))
    assert description["root"]["args"]["kernel_size"] == [2, 3]
    assert spec.from_spec(description).kernel_size == (2, 3)


def test_sequential_rebuilds_same_parameters():
    """A rebuilt Sequential made with the same seed has the same parameters."""
    original, rebuilt = seeded_model(feed_forward(), (1, 8, 8)), seeded_model(rebuild(feed_forward()), (1, 8, 8))
    assert original.state_dict().keys() == rebuilt.state_dict().keys()
    for key, value in original.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)


def test_sequential_rebuilds_same_outputs():
    """A rebuilt Sequential made with the same seed gives the same outputs."""
    x = torch.rand(4, 2, 1, 8, 8)
    expected, _ = seeded_model(feed_forward(), (1, 8, 8))(x)
    got, _ = seeded_model(rebuild(feed_forward()), (1, 8, 8))(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_network_rebuilds_same_parameters():
    """A rebuilt recurrent Network made with the same seed has the same parameters under the same names."""
    original, rebuilt = seeded_model(recurrent_network(), (4,)), seeded_model(rebuild(recurrent_network()), (4,))
    assert list(original.state_dict()) == list(rebuilt.state_dict())
    for key, value in original.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)


def test_network_rebuilds_same_outputs_and_state():
    """A rebuilt recurrent Network gives the same outputs and the same state structure."""
    x = torch.rand(6, 3, 4)
    expected, expected_state = seeded_model(recurrent_network(), (4,))(x)
    got, state = seeded_model(rebuild(recurrent_network()), (4,))(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert state["placeholders"].keys() == expected_state["placeholders"].keys() == {"output", "feedback"}


def test_network_rebuild_keeps_names_and_placeholders():
    """Names keep their order and aliases; the named placeholder keeps its hint and Constant initial value."""
    original, rebuilt = recurrent_network(), rebuild(recurrent_network())
    assert list(rebuilt.layers) == list(original.layers) == ["output", "feedback", "hidden", "skip", "mixed", "alias"]
    assert rebuilt.alias is rebuilt.mixed
    assert rebuilt.feedback.hint == "feedback"
    assert rebuilt.feedback.initial_value == initial.Constant(0.5)
    assert rebuilt.feedback.layer is rebuilt.hidden


def test_network_description_is_stable():
    """Describing a rebuilt network gives the same description."""
    description = spec.to_spec(recurrent_network())
    assert spec.to_spec(spec.from_spec(wire(description))) == description


def test_torch_zeros_initial_value_is_described_as_zeros():
    """torch.zeros as a placeholder's initial value is written as "zeros" and read as initial.zeros."""
    n = rb.Network()
    n.output = rb.Placeholder(torch.zeros)
    n.output = n.input.stack(n.output).apply(nn.Linear(2))
    description = spec.to_spec(n)
    assert description["root"]["layers"][1]["initial_value"] == "zeros"
    assert spec.from_spec(description).layers["output"].input.nodes[1].initial_value is initial.zeros


def test_custom_factory_round_trips():
    """A registered custom factory is described by its name and arguments, typed by its module's hints."""
    registry = spec.builtin_registry()
    registry.register("test.Scale", ScaleFactory)
    description = spec.to_spec(ScaleFactory(factor=3, axes=(0, 1)), registry)
    assert description["root"] == {"type": "test.Scale", "args": {"factor": 3, "axes": [0, 1]}}
    assert spec.from_spec(wire(description), registry) == ScaleFactory(factor=3.0, axes=(0, 1))


def test_unannotated_custom_arguments_take_json_values():
    """Arguments without a hint take any JSON value (lists stay lists)."""
    registry = spec.builtin_registry()
    registry.register("test.Shift", ShiftFactory)
    assert rebuild(ShiftFactory([1, 2.5]), registry) == ShiftFactory([1, 2.5])


def test_unregistered_custom_factory_is_refused():
    """to_spec refuses a custom factory that isn't registered, saying to register it."""
    with pytest.raises(SpecError, match="register") as info:
        spec.to_spec(rb.Sequential(nn.ReLU(), ScaleFactory()))
    assert info.value.path == "root.factories[1]"


def test_registry_lists_builtins():
    """builtin_registry names factories and surrogates by module."""
    registry = spec.builtin_registry()
    assert {"nn.Linear", "rnn.LSTM", "snn.LIF", "Sequential", "Network"} <= set(registry.factory_names())
    assert "snn.SpikeLinear" in registry.surrogate_names()
    assert "snn.SpikeLinear" not in registry.factory_names()


def test_registry_copy_is_independent():
    """Registering in a copy leaves the original unchanged."""
    registry = spec.builtin_registry()
    registry.copy().register("test.Scale", ScaleFactory)
    assert "test.Scale" not in registry.factory_names()


def test_registry_refuses_a_taken_name():
    """A name can't be registered for a second class."""
    with pytest.raises(ValueError, match="already registered"):
        spec.builtin_registry().register("nn.Linear", ScaleFactory)


def test_registry_refuses_classes_it_cannot_describe():
    """Only dataclass, custom, Sequential and Network factories and surrogates can be registered."""
    with pytest.raises(TypeError, match="dataclass"):
        spec.builtin_registry().register("test.Stateless", nn.StatelessFactory)


def test_module_register_adds_to_default_registry(monkeypatch):
    """spec.register adds to default_registry, which from_spec uses by default."""
    monkeypatch.setattr(spec, "default_registry", spec.default_registry.copy())
    spec.register("test.Scale", ScaleFactory)
    assert spec.from_spec(document({"type": "test.Scale", "args": {"factor": 4}})) == ScaleFactory(factor=4.0)


def test_not_a_dict():
    """A description that isn't an object fails at 'spec'."""
    with pytest.raises(SpecError, match="expected a JSON object") as info:
        spec.from_spec([])
    assert info.value.path == "spec"


def test_wrong_format_marker():
    """Another format marker fails at 'format'."""
    raises_at("format", {"format": "rnnbuilder.spec/0", "root": linear(out_features=2)}, match="rnnbuilder.spec/1")


def test_root_not_an_object():
    """A root that isn't an object fails at 'root'."""
    raises_at("root", document("nn.Linear"), match="object")


def test_unknown_type_suggests_close_names():
    """A misspelt type fails at its 'type' and suggests the closest names."""
    raises_at("root.type", document({"type": "nn.Linaer"}), match="did you mean nn.Linear")


def test_unknown_type_lists_valid_names():
    """A type with no close name lists the valid ones."""
    raises_at("root.type", document({"type": "xyz"}), match="valid types: .*nn.ReLU")


def test_surrogate_is_not_a_factory():
    """A surrogate name where a factory belongs is an unknown factory type."""
    raises_at("root.type", document({"type": "snn.SpikeLinear"}), match="unknown factory type")


def test_factory_is_not_a_surrogate():
    """A factory name where a surrogate belongs is an unknown surrogate type."""
    description = document({"type": "snn.LIF", "args": {"spike_function": {"type": "nn.ReLU"}}})
    raises_at("root.args.spike_function.type", description, match="unknown surrogate type")


def test_missing_required_argument():
    """A missing required argument fails at its name."""
    raises_at("root.args.out_features", document(linear()), match="missing required argument")


def test_unknown_argument():
    """An unknown argument fails at its name and lists the valid ones."""
    raises_at("root.args.size", document(linear(size=3)), match="unknown argument.*out_features, bias")


def test_string_for_int():
    """A string where an int belongs fails at the argument."""
    raises_at("root.args.out_features", document(linear(out_features="3")), match="expected integer")


def test_bool_is_not_int():
    """true is not an integer."""
    raises_at("root.args.out_features", document(linear(out_features=True)), match="expected integer")


def test_int_for_float_is_converted():
    """An integer where a float belongs is accepted as a float."""
    lif = spec.from_spec(document({"type": "snn.LIF", "args": {"tau": 3}}))
    assert lif.tau == 3.0 and isinstance(lif.tau, float)


def test_bad_tuple_item():
    """A wrong item in a tuple argument fails at that item."""
    description = document({"type": "nn.MaxPool2d", "args": {"kernel_size": [2, "a"]}})
    raises_at("root.args.kernel_size[1]", description, match="expected integer")


def test_wrong_tuple_length():
    """A list of the wrong length for a fixed tuple names both accepted forms."""
    description = document({"type": "nn.MaxPool2d", "args": {"kernel_size": [2, 2, 2]}})
    raises_at("root.args.kernel_size", description, match=r"expected integer or \[integer, integer\]")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_refused(value):
    """NaN and infinities fail at the argument."""
    raises_at("root.args.tau", document({"type": "snn.LIF", "args": {"tau": value}}), match="finite")


def test_non_finite_float_is_not_written():
    """to_spec refuses a non-finite argument, which JSON can't carry."""
    with pytest.raises(SpecError, match="finite") as info:
        spec.to_spec(snn.LIF(tau=math.inf))
    assert info.value.path == "root.args.tau"


def test_constructor_rejection():
    """A value the factory's constructor rejects fails at the factory with its message."""
    raises_at("root", document(linear(out_features=0)), match="positive int")


def test_error_inside_a_network_names_the_exact_place():
    """An error deep inside a network names layer, factory and argument."""
    description = network_spec()
    description["root"]["layers"][2]["factories"][1]["args"]["tau"] = "slow"
    raises_at("root.layers[2].factories[1].args.tau", description, match="expected number")


def test_dangling_placeholder():
    """A placeholder referring to a missing layer fails at its 'layer'."""
    description = spec.to_spec(recurrent_network())
    description["root"]["layers"][1]["layer"] = 99
    raises_at("root.layers[1].layer", description, match="doesn't exist")


def test_placeholder_of_a_placeholder():
    """A placeholder assigned another placeholder fails at its 'layer'."""
    description = spec.to_spec(recurrent_network())
    description["root"]["layers"][1]["layer"] = 2
    assert description["root"]["layers"][2]["kind"] == "placeholder"
    raises_at("root.layers[1].layer", description, match="not another placeholder")


def test_input_refers_to_missing_node():
    """A layer input referring to a node that doesn't exist fails at 'input'."""
    description = network_spec()
    description["root"]["layers"][1]["input"] = 7
    raises_at("root.layers[1].input", description, match="doesn't exist")


def test_input_refers_to_later_node():
    """A layer input referring to a later node fails at 'input'."""
    description = network_spec()
    description["root"]["layers"][1]["input"] = 2
    raises_at("root.layers[1].input", description, match="comes later")


def test_combination_input_refers_to_missing_node():
    """A stack input referring to a missing node fails at that input."""
    description = spec.to_spec(recurrent_network())
    stack = next(i for i, node in enumerate(description["root"]["layers"]) if node["kind"] == "stack")
    description["root"]["layers"][stack]["inputs"][1] = 50
    raises_at(f"root.layers[{stack}].inputs[1]", description, match="doesn't exist")


def test_missing_output():
    """A network without a layer named 'output' fails at its names."""
    description = network_spec()
    description["root"]["names"] = [{"name": "result", "node": 2}]
    raises_at("root.names", description, match="'output'")


def test_name_given_twice():
    """A name given twice fails at the second."""
    description = network_spec()
    description["root"]["names"].append({"name": "output", "node": 1})
    raises_at("root.names[1].name", description, match="named twice")


def test_reserved_name():
    """The name 'input' is refused by the network and fails at that name."""
    description = network_spec()
    description["root"]["names"].append({"name": "input", "node": 1})
    raises_at("root.names[1].name", description, match="input")


def test_unknown_node_kind():
    """An unknown node kind fails at its 'kind'."""
    description = network_spec()
    description["root"]["layers"][1]["kind"] = "conv"
    raises_at("root.layers[1].kind", description, match="unknown node kind")


def test_unknown_node_key():
    """An unexpected key in a node fails at that key."""
    description = network_spec()
    description["root"]["layers"][1]["factory"] = linear(out_features=2)
    raises_at("root.layers[1].factory", description, match="unknown key")


def test_bad_initial_value():
    """An initial value outside the fixed set fails at 'initial_value'."""
    description = spec.to_spec(recurrent_network())
    description["root"]["layers"][1]["initial_value"] = "twos"
    raises_at("root.layers[1].initial_value", description, match='"zeros", "ones" or a number')


def test_empty_sequential():
    """A Sequential without factories fails at the Sequential."""
    raises_at("root", document({"type": "Sequential", "factories": []}), match="at least one factory")


def test_deep_nesting():
    """Absurdly deep nesting fails as a SpecError, not a crash."""
    root = {"type": "nn.ReLU"}
    for _ in range(5000):
        root = {"type": "Sequential", "factories": [root]}
    raises_at("root", document(root), match="nested too deeply")


def test_uncallable_initial_value_is_not_written():
    """to_spec refuses an initial value outside the fixed set, naming the placeholder."""
    n = rb.Network()
    n.output = rb.Placeholder(lambda shape: torch.full(shape, 2.0))
    n.output = n.input.stack(n.output).apply(nn.Linear(2))
    with pytest.raises(SpecError, match="can't be described") as info:
        spec.to_spec(n)
    assert info.value.path == "root.layers[1].initial_value"


def test_unassigned_placeholder_is_not_written():
    """to_spec refuses a placeholder that was never assigned a layer."""
    n = rb.Network()
    n.memory = rb.Placeholder()
    n.output = n.input.stack(n.memory).apply(nn.Linear(2))
    with pytest.raises(SpecError, match="never assigned") as info:
        spec.to_spec(n)
    assert info.value.path == "root.layers[1]"


def test_not_a_factory_is_not_written():
    """to_spec takes factories only."""
    with pytest.raises(SpecError, match="expected a factory") as info:
        spec.to_spec(torch.nn.Linear(2, 3))
    assert info.value.path == "root"


def test_integral_real_for_int_builds_as_int():
    """8.0 for an integer argument builds exactly as 8: same factory, same parameter shapes."""
    rebuilt = spec.from_spec(document(linear(out_features=8.0)))
    assert rebuilt == nn.Linear(8) and type(rebuilt.out_features) is int
    expected, got = seeded_model(nn.Linear(8), (4,)), seeded_model(rebuilt, (4,))
    assert {k: v.shape for k, v in got.state_dict().items()} == {k: v.shape for k, v in expected.state_dict().items()}
    assert spec.to_spec(rebuilt) == spec.to_spec(nn.Linear(8))


def test_integral_reals_in_a_tuple_argument_build_as_ints():
    """Integral reals inside a tuple of integers become those integers."""
    pool = spec.from_spec(document({"type": "nn.MaxPool2d", "args": {"kernel_size": [2.0, 3.0]}}))
    assert pool.kernel_size == (2, 3) and all(type(k) is int for k in pool.kernel_size)


def test_fractional_real_for_int_is_refused():
    """8.5 for an integer argument fails at that argument, saying a whole number is needed."""
    raises_at("root.args.out_features", document(linear(out_features=8.5)), match="expected integer.*whole number")


def test_real_stays_real_where_a_real_may_go():
    """An integral real for an argument that takes any number stays a real."""
    registry = spec.builtin_registry()
    registry.register("test.Shift", ShiftFactory)
    shift = spec.from_spec(document({"type": "test.Shift", "args": {"offset": 2.0}}), registry)
    assert type(shift.arguments["offset"]) is float


def test_sequential_with_args_is_refused():
    """A Sequential with args fails at its args, saying a Sequential takes none."""
    description = spec.to_spec(rb.Sequential(nn.Linear(4), nn.ReLU()))
    description["root"]["args"] = {"out_features": 3}
    raises_at("root.args", description, match="Sequential takes no arguments")


def test_sequential_with_empty_args_is_refused():
    """Even an empty args object on a Sequential is refused."""
    description = spec.to_spec(rb.Sequential(nn.Linear(4)))
    description["root"]["args"] = {}
    raises_at("root.args", description, match="Sequential takes no arguments")


def test_network_with_args_is_refused():
    """A Network with args fails at its args, saying a Network takes none."""
    description = network_spec()
    description["root"]["args"] = {"out_features": 3}
    raises_at("root.args", description, match="Network takes no arguments")


def test_nested_sequential_with_args_is_refused():
    """A Sequential with args inside a network layer fails at that place."""
    description = network_spec()
    description["root"]["layers"][1]["factories"][0] = {"type": "Sequential", "factories": [linear(out_features=2)]}
    description["root"]["layers"][1]["factories"][0]["args"] = {"bias": False}
    raises_at("root.layers[1].factories[0].args", description, match="Sequential takes no arguments")


def test_factory_with_factories_is_refused():
    """factories on a factory other than Sequential fail there, saying it takes none."""
    description = document({**linear(out_features=2), "factories": [{"type": "nn.ReLU"}]})
    raises_at("root.factories", description, match="nn.Linear takes no factories")


def test_surrogate_with_factories_is_refused():
    """factories on a surrogate argument fail at the surrogate's key."""
    description = document(
        {"type": "snn.LIF", "args": {"spike_function": {"type": "snn.SpikeLinear", "factories": []}}}
    )
    raises_at("root.args.spike_function.factories", description, match="snn.SpikeLinear takes no factories")


def test_sequential_with_layers_is_refused():
    """layers and names on a Sequential fail there, saying it takes none."""
    description = spec.to_spec(rb.Sequential(nn.Linear(4)))
    description["root"]["layers"] = network_spec()["root"]["layers"]
    raises_at("root.layers", description, match="Sequential takes no layers")


def test_network_with_factories_is_refused():
    """factories on a Network fail there, saying it takes none."""
    description = network_spec()
    description["root"]["factories"] = [linear(out_features=2)]
    raises_at("root.factories", description, match="Network takes no factories")


def test_unknown_top_level_factory_key_is_refused():
    """A key no factory takes fails as unknown at that key."""
    raises_at("root.kwargs", document({**linear(out_features=2), "kwargs": {}}), match="unknown key")


def test_huge_integral_real_for_int_is_refused():
    """A real beyond 2**53, which stands for no one integer, is refused for an integer argument."""
    raises_at("root.args.out_features", document(linear(out_features=1e300)), match="expected integer.*not a real")
