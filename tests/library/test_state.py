"""State helpers: resetting some episodes, and naming state leaves for transport."""

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, rnn, snn


def mixed_model():
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(6), snn.Adaptive())
    n.output = n.hidden.apply(rnn.LSTM(3))
    torch.manual_seed(0)
    return n.make_model((2,))


def test_reset_state_restarts_only_the_given_batch_entries():
    """Resetting entry 1 makes it continue like a fresh start; entry 0 is untouched."""
    model = mixed_model()
    x = torch.rand(10, 3, 2) * 3
    _, state = model(x)
    state = model.reset_state(state, [1])
    out, _ = model(x, state)
    fresh, _ = model(x)
    assert torch.equal(out[:, 1], fresh[:, 1])
    assert not torch.equal(out[:, 0], fresh[:, 0])


def test_reset_state_handles_states_with_batch_in_dim_one():
    """LSTM state (layers, batch, hidden) is reset along its batch dim."""
    model = rnn.LSTM(4).make_model((2,))
    _, (h, c) = model(torch.rand(5, 3, 2))
    h2, c2 = model.reset_state((h, c), [0, 2])
    assert torch.equal(h2[:, 1], h[:, 1])
    assert h2[:, 0].abs().sum() == 0 and c2[:, 2].abs().sum() == 0


def test_reset_state_does_not_change_its_input():
    """reset_state is pure: the given state keeps its values."""
    model = snn.LIF().make_model((2,))
    _, state = model(torch.ones(3, 2, 2))
    before = state.v.clone()
    model.reset_state(state, [0, 1])
    assert torch.equal(state.v, before)


def test_reset_state_rejects_out_of_range_indices():
    """A batch index outside [0, batch) names the range."""
    model = snn.LIF().make_model((2,))
    with pytest.raises(rb.ShapeError, match=r"\[0, 2\)"):
        model.reset_state(model.get_initial_state(2), [2])


def test_named_leaves_round_trip():
    """named_leaves gives dotted paths; replace_leaves puts tensors back by those names."""
    model = mixed_model()
    _, state = model(torch.rand(4, 2, 2))
    named = rb.named_leaves(state)
    assert "layers.hidden.1.v" in named and "placeholders.hidden" in named
    rebuilt = rb.replace_leaves(model.get_initial_state(2), {k: v.clone() for k, v in named.items()})
    assert all(torch.equal(a, b) for a, b in zip(rb.named_leaves(rebuilt).values(), named.values()))


def test_replace_leaves_rejects_missing_or_misshapen_names():
    """A missing name or a wrong shape is a ShapeError that names it."""
    model = mixed_model()
    named = rb.named_leaves(model.get_initial_state(2))
    with pytest.raises(rb.ShapeError, match="missing.*layers.hidden.1.v"):
        rb.replace_leaves(model.get_initial_state(2), {k: v for k, v in named.items() if k != "layers.hidden.1.v"})
    named["placeholders.hidden"] = torch.zeros(3, 6)
    with pytest.raises(rb.ShapeError, match=r"'placeholders.hidden' must have shape \(2, 6\)"):
        rb.replace_leaves(model.get_initial_state(2), named)
