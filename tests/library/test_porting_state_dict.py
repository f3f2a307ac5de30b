"""Trained models of rnnbuilder 0.1.1 load: ``rnnbuilder.porting.convert_state_dict`` against the original.

Each network description below is one source text, run by the original (in a subprocess, see
``tests/original.py``) and by this package, so both build the same description. The original
builds a seeded model, sets its neurons' initial membranes to random values (not the zeros they
start at) and scales its weights where that makes the neurons spike; its ``state_dict`` and outputs
come back. The converted state dict must load into our model strictly and give the original's
outputs.
"""

from __future__ import annotations

import pytest
import torch

from rnnbuilder.porting import PortingError, convert_state_dict, original_keys
from tests.original import run_original
from tests.original_networks import DESCRIPTIONS, ours

# name: (in_shape, time, batch, input scale, weight gain). The original's weights are multiplied by
# the gain and its inputs are uniform in [0, scale): the convolutions' neurons spike then, but not all.
CASES = {
    "temp_conv_example": ((1, 44, 36), 7, 2, 2.0, 4.0),
    "conv2d_example": ((1, 44, 36), 7, 2, 2.0, 4.0),
    "lstm_stack": ((3, 2), 6, 3, 1.0, 1.0),
    "two_cycles": ((3,), 9, 2, 3.0, 1.0),
    "cycles_declared_backwards": ((4,), 9, 2, 3.0, 1.0),
    "lstm_from_primitives": ((10,), 8, 3, 1.0, 1.0),
    "nested_networks": ((3,), 8, 2, 3.0, 2.0),
}

ORIGINAL = """
for seed, (name, (in_shape, time, batch, scale, gain)) in enumerate(inputs["cases"].items()):
    torch.manual_seed(seed)
    factory = globals()[name]()
    model = factory.make_model(in_shape)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("initial_mem"):  # some above 1: those neurons start with a spike
                tensor.uniform_(-0.5, 1.5)
            elif key.endswith("weight"):
                tensor.mul_(gain)
    x = inputs["x"][name]
    outputs[name] = {"state_dict": model.state_dict(), "out": model(x)[0].detach()}
    if name == "temp_conv_example":  # the convolution stack on its own, from the first full frame window
        stack = model.inner.mlist[0]
        outputs[name]["conv_stack"] = stack(x, stack.get_initial_state(batch))[0].detach()
"""


@pytest.fixture(scope="module")
def original():
    """Every case run by the original: its perturbed state dict, outputs and inputs, by case name."""
    generator = torch.Generator().manual_seed(1234)
    xs = {
        name: torch.rand((time, batch, *shape), generator=generator) * scale
        for name, (shape, time, batch, scale, _) in CASES.items()
    }
    result = run_original(DESCRIPTIONS + ORIGINAL, {"cases": CASES, "x": xs})
    for name, x in xs.items():
        result[name]["x"] = x
    return result


def converted_model(name: str, original_run: dict):
    """Our model of case ``name`` with the original's converted state dict loaded strictly."""
    factory, in_shape = ours(name), CASES[name][0]
    model = factory.make_model(in_shape)
    model.load_state_dict(convert_state_dict(original_run["state_dict"], factory, in_shape), strict=True)
    return model


def assert_outputs_match(name: str, original: dict):
    model = converted_model(name, original[name])
    with torch.no_grad():
        out, _ = model(original[name]["x"])
    torch.testing.assert_close(out, original[name]["out"], rtol=1e-5, atol=1e-5)


def test_temp_conv_example_loads_the_originals_tensors(original):
    """Every tensor of the spiking-convolution example (TempConvPlus2d, a LIF cycle) loads unchanged."""
    run = original["temp_conv_example"]
    factory, in_shape = ours("temp_conv_example"), CASES["temp_conv_example"][0]
    model = converted_model("temp_conv_example", run)
    state = model.state_dict()
    mapping = original_keys(factory, in_shape)
    assert set(mapping.values()) == set(run["state_dict"]) - {"_device_zero"}
    for key, theirs in mapping.items():
        assert torch.equal(state[key].reshape(-1), run["state_dict"][theirs].reshape(-1)), key


def test_temp_conv_stack_matches_the_original_once_its_frame_window_is_full(original):
    """The convolution stack gives the original's spikes from timestep time_kernel_size - 1 on."""
    run = original["temp_conv_example"]
    model = converted_model("temp_conv_example", run)
    with torch.no_grad():
        _, _, recorded = model.record(run["x"], ["0"])
    frame_stack = 3
    conv = recorded["0"][frame_stack - 1 :]
    assert 0 < conv.mean() < 1  # some spikes, not all: the comparison isn't trivial
    torch.testing.assert_close(conv, run["conv_stack"], rtol=0, atol=0)


def test_conv2d_example_gives_the_originals_outputs(original):
    """The spiking-convolution example with a Conv2d first gives the original's outputs."""
    model = converted_model("conv2d_example", original["conv2d_example"])
    with torch.no_grad():
        out, _, recorded = model.record(original["conv2d_example"]["x"], ["0", "1"])
    assert 0 < recorded["0"].mean() < 1 and 0 < recorded["1"].mean() < 1  # spikes, not all: not trivial
    torch.testing.assert_close(out, original["conv2d_example"]["out"], rtol=1e-5, atol=1e-5)


def test_lstm_factory_gives_the_originals_outputs(original):
    """A Sequential with a two-layer rnn.LSTM gives the original's outputs."""
    assert_outputs_match("lstm_stack", original)


def test_network_with_cycles_and_outer_layers_gives_the_originals_outputs(original):
    """Two placeholder cycles (c0, c1), layers outside them and a named Stack give the original's outputs."""
    assert_outputs_match("two_cycles", original)


def test_cycles_are_numbered_as_the_original_numbers_them(original):
    """Cycles are numbered by their first defined layer, not by the order placeholders were declared."""
    mapping = original_keys(ours("cycles_declared_backwards"), CASES["cycles_declared_backwards"][0])
    assert mapping["net.layers.early.runners.1.initial_v"] == "inner.layers.c0.layers.early.mlist.1.inner.initial_mem"
    assert mapping["net.layers.late.runners.1.initial_v"] == "inner.layers.c1.layers.late.mlist.1.inner.initial_mem"
    assert_outputs_match("cycles_declared_backwards", original)


def test_the_originals_keys_settle_cycle_numbers_the_description_leaves_open(original, monkeypatch):
    """Where the definition order is unknown (attribute order: placeholders first), the keys number the cycles."""
    import rnnbuilder.porting

    monkeypatch.setattr(
        rnnbuilder.porting, "_definition_order", lambda net, layers: list(net.layers).index
    )  # "late" first: the prediction swaps c0 and c1
    mapping = original_keys(ours("cycles_declared_backwards"), CASES["cycles_declared_backwards"][0])
    assert mapping["net.layers.late.runners.1.initial_v"].startswith("inner.layers.c0.")
    assert_outputs_match("cycles_declared_backwards", original)


def test_lstm_from_primitives_gives_the_originals_outputs(original):
    """examples/lstm.py, with a custom Hadamard module registered on both sides, gives the original's outputs."""
    assert_outputs_match("lstm_from_primitives", original)


def test_nested_networks_give_the_originals_outputs(original):
    """A network inside another, outside a cycle (layers.c0) and inside one (no cycle level), gives its outputs."""
    mapping = original_keys(ours("nested_networks"), CASES["nested_networks"][0])
    assert mapping["net.layers.front.layers.h.runners.1.initial_v"] == (
        "inner.layers.front.layers.c0.layers.h.mlist.1.inner.initial_mem"
    )
    assert mapping["net.layers.loop.runners.1.layers.output.module.bias"] == (
        "inner.layers.c0.layers.loop.mlist.1.layers.output.mlist.0.inner.bias"
    )
    assert_outputs_match("nested_networks", original)


def test_an_unknown_key_is_refused_by_name(original):
    """A key the description has no place for raises PortingError naming it."""
    state_dict = {**original["lstm_stack"]["state_dict"], "inner.mlist.9.inner.weight": torch.zeros(2, 2)}
    with pytest.raises(PortingError, match=r"unexpected 'inner\.mlist\.9\.inner\.weight'") as caught:
        convert_state_dict(state_dict, ours("lstm_stack"), CASES["lstm_stack"][0])
    assert caught.value.unexpected == ["inner.mlist.9.inner.weight"]


def test_a_missing_key_is_named_with_the_shape_it_needs(original):
    """A key our model needs but the original state dict lacks raises PortingError naming it."""
    state_dict = dict(original["lstm_stack"]["state_dict"])
    del state_dict["inner.mlist.1.inner.lstm.weight_hh_l1"]
    with pytest.raises(PortingError, match=r"missing 'inner\.mlist\.1\.inner\.lstm\.weight_hh_l1' of shape \(40, 10\)"):
        convert_state_dict(state_dict, ours("lstm_stack"), CASES["lstm_stack"][0])


def test_a_shape_mismatch_is_refused(original):
    """A description of other widths than the original's raises PortingError naming the key and both shapes."""
    from rnnbuilder import Sequential, nn, rnn

    narrower = Sequential(nn.Linear(12), rnn.LSTM(9, num_layers=2), nn.ReLU(), nn.Linear(4))
    with pytest.raises(PortingError, match=r"'inner\.mlist\.3\.inner\.weight' has shape \(4, 10\)") as caught:
        convert_state_dict(original["lstm_stack"]["state_dict"], narrower, CASES["lstm_stack"][0])
    assert not caught.value.unexpected and not caught.value.missing


def test_a_cooldown_sign_other_than_the_fixed_one_is_refused():
    """Cooldown's sgn buffer must be the fixed +1/-1 split: ours holds no other, so another is refused."""
    from rnnbuilder import Sequential, nn, snn

    state_dict = {
        "_device_zero": torch.zeros(1),
        "inner.mlist.0.inner.weight": torch.zeros(4, 3),
        "inner.mlist.0.inner.bias": torch.zeros(4),
        "inner.mlist.1.inner.initial_mem": torch.zeros(4),
        "inner.mlist.1.inner.sgn": torch.ones(4),
    }
    with pytest.raises(PortingError, match=r"'inner\.mlist\.1\.inner\.sgn' differs from the fixed sign of Cooldown"):
        convert_state_dict(state_dict, Sequential(nn.Linear(4), snn.Cooldown()), (3,))


def test_a_gru_is_refused_as_having_no_original():
    """rnn.GRU, which rnnbuilder 0.1.1 lacks, is refused by name rather than left unloaded."""
    from rnnbuilder import rnn

    with pytest.raises(PortingError, match=r"our net\.module\.weight_ih_l0 has no counterpart in rnnbuilder 0\.1\.1"):
        convert_state_dict({"_device_zero": torch.zeros(1)}, rnn.GRU(4), (3,))


def test_a_layer_under_two_names_is_refused():
    """A layer assigned to two attributes (the original builds a copy under each) is refused."""
    import rnnbuilder as rb
    from rnnbuilder import nn

    n = rb.Network()
    n.hidden = n.input.apply(nn.Linear(4))
    n.output = n.hidden
    state_dict = {
        f"inner.layers.{name}.inner.{p}": torch.zeros(shape)
        for name in ("hidden", "output")
        for p, shape in (("weight", (4, 3)), ("bias", (4,)))
    }
    with pytest.raises(PortingError, match=r"assigned to the attributes 'hidden', 'output'"):
        convert_state_dict(state_dict, n, (3,))
