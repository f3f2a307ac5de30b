"""Spec of ``Model`` (what ``make_model`` gives): input modes, explicit state, errors, devices and
dtypes, state_dict, chunking, and the README example.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, rnn, snn
from rnnbuilder._tree import tree_leaves, tree_map


@pytest.fixture(autouse=True)
def _seed():
    """Random initialisation is reproducible in every test."""
    torch.manual_seed(0)


def assert_trees_equal(a, b, exact=True):
    """Two states have the same structure and equal leaves."""
    assert type(a) is type(b) or (isinstance(a, tuple) and isinstance(b, tuple))
    leaves_a, leaves_b = tree_leaves(a), tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y)


def recurrent_network() -> rb.Network:
    """A network with a placeholder cycle, an LSTM and a Cooldown fed back through a placeholder."""
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(12), snn.LIF(tau=4))
    n.cool_prev = rb.Placeholder()
    n.cool = rb.Layer(n.hidden, [nn.Linear(6), snn.Cooldown()], placeholder=n.cool_prev)
    n.memory = n.cool.stack(n.cool_prev).apply(rnn.LSTM(5))
    n.output = n.memory.stack(n.hidden).apply(nn.Linear(3))
    return n


def mixed_model():
    """A feed-forward model with BatchNorm, LIF, Cooldown and LSTM (parameters and buffers)."""
    return rb.Sequential(
        nn.Linear(16), nn.BatchNorm1d(), snn.LIF(), nn.Linear(8), snn.Cooldown(), rnn.LSTM(6), nn.Linear(4)
    ).make_model((10,))


def drive(shape, seed=0):
    return 2 * torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Input modes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_factory", [recurrent_network, lambda: rb.Sequential(nn.Linear(8), snn.LIF(), rnn.GRU(4))]
)
def test_batch_mode_stepping_equals_one_sequence_call(make_factory):
    """Stepping a (B, ...) input T times in 'batch' mode equals one 'sequence' call on (T, B, ...)."""
    model = make_factory().make_model((7,))
    x = drive((15, 3, 7))
    whole, final = model(x)
    assert whole.abs().sum() > 0
    assert tree_leaves(final)[0].abs().sum() > 0  # the LIF membrane moved
    model.configure(input_mode="batch")
    state, outs = None, []
    for x_t in x:
        y, state = model(x_t, state)
        assert y.shape == (3, *model.out_shape)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs), whole)
    assert_trees_equal(state, final, exact=False)


def test_single_mode_equals_batch_of_one():
    """'single' mode takes (*in_shape) and equals 'sequence' mode with time 1 and batch 1."""
    factory = recurrent_network()
    model = factory.make_model((7,))
    x = drive((10, 1, 7))
    whole, final = model(x)
    model.configure(input_mode="single")
    state, outs = None, []
    for x_t in x[:, 0]:
        y, state = model(x_t, state)
        assert y.shape == model.out_shape
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs), whole[:, 0])
    assert_trees_equal(state, final, exact=False)


def test_input_mode_at_make_model():
    """make_model(input_mode=...) sets the mode the model starts in."""
    for mode in rb.INPUT_MODES:
        assert snn.LIF().make_model((3,), input_mode=mode).input_mode == mode
    out, _ = snn.LIF().make_model((3,), input_mode="batch")(torch.ones(4, 3))
    assert out.shape == (4, 3)
    out, _ = snn.LIF().make_model((3,), input_mode="single")(torch.ones(3))
    assert out.shape == (3,)


def test_configure_accepts_every_valid_mode():
    """configure() accepts 'sequence', 'batch' and 'single' and returns the model."""
    assert set(rb.INPUT_MODES) == {"sequence", "batch", "single"}
    model = snn.LIF().make_model((3,))
    for mode in rb.INPUT_MODES:
        assert model.configure(input_mode=mode) is model
        assert model.input_mode == mode
    model.configure(full_state=True)
    assert model.input_mode == "single" and model.full_state is True  # None keeps the mode


@pytest.mark.parametrize("bad", ["sequences", "time", "Sequence", ""])
def test_configure_rejects_an_invalid_mode(bad):
    """An invalid input mode raises ValueError listing the valid ones; the model is unchanged."""
    model = snn.LIF().make_model((3,), input_mode="batch")
    with pytest.raises(ValueError) as info:
        model.configure(input_mode=bad)
    for mode in rb.INPUT_MODES:
        assert repr(mode) in str(info.value)
    assert model.input_mode == "batch"


def test_make_model_rejects_an_invalid_mode():
    """make_model(input_mode=...) validates the mode like configure()."""
    with pytest.raises(ValueError, match="'sequence', 'batch', 'single'"):
        snn.LIF().make_model((3,), input_mode="stream")


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


def test_full_state_has_a_leading_time_dim_ending_in_the_final_state():
    """full_state=True stacks the state after every step; last_state gives the final state."""
    factory = recurrent_network()
    model = factory.make_model((7,))
    x = drive((9, 2, 7))
    out, final = model(x)
    model.configure(full_state=True)
    full_out, states = model(x)
    torch.testing.assert_close(full_out, out)
    leaves, final_leaves = tree_leaves(states), tree_leaves(final)
    assert len(leaves) == len(final_leaves)
    for leaf, last in zip(leaves, final_leaves):
        assert leaf.shape == (9, *last.shape)
    assert_trees_equal(rb.last_state(states), final, exact=False)


def test_full_state_entries_are_the_intermediate_states():
    """Entry t of a full state is the state after t + 1 steps."""
    model = recurrent_network().make_model((7,), full_state=True)
    x = drive((6, 2, 7))
    _, states = model(x)
    model.configure(full_state=False)
    for t in (0, 3):
        _, after = model(x[: t + 1])
        assert_trees_equal(tree_map(lambda s, t=t: s[t], states), after, exact=False)


def test_full_state_can_be_continued_with_last_state():
    """Passing last_state(states) back continues the run as if in one call."""
    model = snn.Adaptive().make_model((5,), full_state=True)
    x = drive((20, 2, 5))
    whole, _ = model(x)
    first, states = model(x[:8])
    second, _ = model(x[8:], rb.last_state(states))
    assert torch.equal(whole, torch.cat([first, second]))


def test_get_initial_state_matches_the_default_start():
    """get_initial_state(B) has batch B, and passing it equals passing no state."""
    model = recurrent_network().make_model((7,))
    init = model.get_initial_state(4)
    assert init["layers"]["hidden"][1].v.shape == (4, 12)  # Linear's () then LIF's state
    assert torch.equal(init["placeholders"]["cool_prev"][:, 3:], torch.ones(4, 3))  # Cooldown's -1 half
    x = drive((5, 4, 7))
    a, sa = model(x)
    b, sb = model(x, init)
    assert torch.equal(a, b)
    assert_trees_equal(sa, sb)


def test_get_initial_state_for_an_lstm():
    """An LSTM's initial state is zeros (num_layers, batch, hidden) for h and c."""
    h, c = rnn.LSTM(6, num_layers=2).make_model((3,)).get_initial_state(5)
    assert torch.equal(h, torch.zeros(2, 5, 6)) and torch.equal(c, torch.zeros(2, 5, 6))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "bad_shape", "expected"),
    [
        ("sequence", (10, 32, 63), "(time, batch, 64)"),
        ("sequence", (32, 64), "(time, batch, 64)"),
        ("batch", (10, 32, 64), "(batch, 64)"),
        ("batch", (32, 65), "(batch, 64)"),
        ("single", (32, 64), "64"),
    ],
)
def test_wrong_input_shape_names_the_expected_shape(mode, bad_shape, expected):
    """A wrong input shape raises ShapeError naming the expected and the given shape."""
    model = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((64,), input_mode=mode)
    with pytest.raises(rb.ShapeError) as info:
        model(torch.zeros(bad_shape))
    message = str(info.value)
    assert expected in message
    assert str(bad_shape) in message
    assert mode in message


def test_state_from_another_batch_size_raises_shape_error():
    """A state for batch 4 given with a batch-3 input raises ShapeError (not a torch error)."""
    model = rb.Sequential(nn.Linear(4), snn.LIF(), rnn.LSTM(3)).make_model((6,))
    _, state = model(torch.zeros(5, 4, 6))
    with pytest.raises(rb.ShapeError, match="batch size 3"):
        model(torch.zeros(5, 3, 6), state)


def test_full_state_passed_back_raises_shape_error_with_hint():
    """Passing a full (time-stacked) state back in raises ShapeError pointing to last_state."""
    model = snn.LIF().make_model((6,), full_state=True)
    _, states = model(torch.zeros(5, 3, 6))
    with pytest.raises(rb.ShapeError, match="last_state"):
        model(torch.zeros(5, 3, 6), states)


def test_state_of_another_model_raises_shape_error():
    """A state of a different structure raises ShapeError."""
    model = snn.Adaptive().make_model((6,))
    _, foreign = snn.LIF().make_model((6,))(torch.zeros(2, 3, 6))
    with pytest.raises(rb.ShapeError):
        model(torch.zeros(2, 3, 6), foreign)


def test_non_tensor_input_is_a_type_error():
    """Inputs must be tensors."""
    with pytest.raises(TypeError, match="torch.Tensor"):
        snn.LIF().make_model((3,))([[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("bad", [(0,), (3, -1), "abc", "64", (2.5,), None])
def test_bad_in_shape_raises_shape_error(bad):
    """make_model needs a tuple of positive ints (or one int); anything else is a ShapeError."""
    with pytest.raises(rb.ShapeError):
        nn.Linear(3).make_model(bad)


# --------------------------------------------------------------------------------------------
# .to(...), state_dict, save/load
# --------------------------------------------------------------------------------------------


def test_to_moves_every_parameter_and_buffer():
    """.to(float64) (standing in for .to(device)) converts all parameters and float buffers; it runs."""
    model = mixed_model()
    buffers = dict(model.named_buffers())
    assert any("running_mean" in k for k in buffers) and any(k.endswith("sign") for k in buffers)
    assert model.to(torch.float64) is model
    for name, p in model.named_parameters():
        assert p.dtype == torch.float64, name
    for name, b in model.named_buffers():
        expected = torch.int64 if name.endswith("num_batches_tracked") else torch.float64  # a counter stays int
        assert b.dtype == expected, name
    model.eval()
    out, state = model(drive((6, 3, 10)).double())
    assert out.dtype == torch.float64
    assert all(leaf.dtype == torch.float64 for leaf in tree_leaves(state))
    assert all(leaf.dtype == torch.float64 for leaf in tree_leaves(model.get_initial_state(2)))


def test_to_float64_runs_a_network_with_cooldown_placeholder():
    """A network whose placeholder starts from Cooldown's initial output runs after .to(float64)."""
    model = recurrent_network().make_model((7,)).to(torch.float64)
    out, state = model(drive((4, 2, 7)).double())
    assert out.dtype == torch.float64
    assert state["placeholders"]["cool_prev"].dtype == torch.float64


def persistent_names(model: torch.nn.Module) -> set[str]:
    names = {name for name, _ in model.named_parameters()}
    for prefix, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


@pytest.mark.parametrize("make_model", [mixed_model, lambda: recurrent_network().make_model((7,))])
def test_state_dict_covers_parameters_and_persistent_buffers(make_model):
    """state_dict holds exactly every parameter and persistent buffer (initial_v included)."""
    model = make_model()
    keys = set(model.state_dict())
    assert keys == persistent_names(model)
    assert any(k.endswith("initial_v") for k in keys)


@pytest.mark.parametrize("make_model", [mixed_model, lambda: recurrent_network().make_model((7,))])
def test_save_load_round_trip_gives_identical_outputs(make_model):
    """torch.save/torch.load of the state_dict into a fresh model gives identical outputs."""
    model = make_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("initial_v"):
                p.uniform_(-0.5, 0.9)
    model(drive((5, 3, *model.in_shape), seed=1))  # updates BatchNorm running statistics
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_model()
    x = drive((12, 3, *model.in_shape), seed=2)
    assert not torch.equal(fresh.eval()(x)[0], model(x)[0])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    out, state = model(x)
    fresh_out, fresh_state = fresh(x)
    assert torch.equal(out, fresh_out)
    assert_trees_equal(state, fresh_state)


# --------------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------------


def test_feed_forward_100_steps_equal_40_then_60():
    """Sequential(Linear, LIF, Linear, Adaptive): 100 steps at once equal 40 then 60 with state carried."""
    torch.manual_seed(0)
    model = rb.Sequential(nn.Linear(16), snn.LIF(), nn.Linear(8), snn.Adaptive()).make_model((5,))
    x = drive((100, 4, 5))
    whole, final = model(x)
    first, state = model(x[:40])
    second, state = model(x[40:], state)
    assert 0 < whole.sum() < whole.numel()
    torch.testing.assert_close(whole, torch.cat([first, second]))
    assert_trees_equal(final, state, exact=False)


def test_recurrent_network_100_steps_equal_40_then_60():
    """A network with placeholder cycles: 100 steps at once equal 40 then 60 with state carried."""
    torch.manual_seed(0)
    model = recurrent_network().make_model((7,))
    x = drive((100, 2, 7))
    whole, final = model(x)
    first, state = model(x[:40])
    second, state = model(x[40:], state)
    torch.testing.assert_close(whole, torch.cat([first, second]))
    assert_trees_equal(final, state, exact=False)


# --------------------------------------------------------------------------------------------
# The README example
# --------------------------------------------------------------------------------------------


def readme_model():
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(128), snn.LIF(tau=5))
    return rb.Sequential(n, nn.Linear(10)).make_model((64,))


def test_readme_example_shapes():
    """The README example maps (100, 32, 64) to (100, 32, 10) and continues with the returned state."""
    torch.manual_seed(0)
    model = readme_model()
    out, state = model(torch.rand(100, 32, 64))
    assert out.shape == (100, 32, 10)
    more, state = model(torch.rand(50, 32, 64), state)
    assert more.shape == (50, 32, 10)


def test_readme_example_100_equals_40_plus_60():
    """In the README example, 100 steps at once equal 40 then 60 with the state carried."""
    torch.manual_seed(0)
    model = readme_model()
    x = torch.rand(100, 32, 64)
    whole, final = model(x)
    first, state = model(x[:40])
    second, state = model(x[40:], state)
    torch.testing.assert_close(whole, torch.cat([first, second]))
    assert_trees_equal(final, state, exact=False)


def test_readme_example_feeds_back_the_previous_spikes():
    """The README network's placeholder holds the LIF layer's previous output (zeros at t=0)."""
    torch.manual_seed(0)
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(128), snn.LIF(tau=5))
    model = n.make_model((64,))
    weight, bias = (p for name, p in model.named_parameters() if not name.endswith("initial_v"))
    assert weight.shape == (128, 64 + 128)
    x = torch.rand(20, 2, 64)
    out, _ = model(x)
    assert 0 < out.sum() < out.numel()
    # reference: the hand-written recurrence
    beta, v, prev, ref = math.exp(-1 / 5), torch.zeros(2, 128), torch.zeros(2, 128), []
    with torch.no_grad():
        for x_t in x:
            v = beta * v + torch.nn.functional.linear(torch.cat([x_t, prev], 1), weight, bias)
            s = (v - 1 > 0).float()
            v = v - s
            prev = s
            ref.append(s)
    torch.testing.assert_close(out, torch.stack(ref))
