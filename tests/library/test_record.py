"""Model.record: inner layers' outputs and membranes, alongside the normal output."""

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn


def recurrent_model():
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(8), snn.LIF())
    n.output = n.hidden.apply(nn.Linear(3), snn.Adaptive())
    torch.manual_seed(0)
    return n.make_model((4,))


def test_record_names_list_layers_and_state_fields():
    """Layers are named by path; neuron layers add their state fields."""
    assert recurrent_model().record_names() == [
        "hidden", "hidden.0", "hidden.1", "hidden.1.v", "output", "output.0", "output.1", "output.1.v", "output.1.a"
    ]  # fmt: skip


def test_record_leaves_output_and_state_unchanged():
    """Recording gives the same output and final state as a plain call."""
    model = recurrent_model()
    x = torch.rand(20, 2, 4) * 3
    out, state = model(x)
    rec_out, rec_state, _ = model.record(x, ["hidden"])
    assert torch.equal(out, rec_out)
    assert torch.equal(state["layers"]["hidden"][1].v, rec_state["layers"]["hidden"][1].v)


def test_record_layer_inside_a_cycle():
    """A layer in a placeholder cycle is recorded step by step as (time, batch, n)."""
    model = recurrent_model()
    x = torch.rand(20, 2, 4) * 3
    _, _, rec = model.record(x, ["hidden", "hidden.1.v"])
    states = model.configure(full_state=True)(x)[1]
    assert torch.equal(rec["hidden"], states["placeholders"]["hidden"])
    assert torch.equal(rec["hidden.1.v"], states["layers"]["hidden"][1].v)
    assert rec["hidden"].sum() > 0


def test_record_layer_outside_a_cycle():
    """The output layer's spikes and adaptation are recorded over the whole sequence."""
    model = recurrent_model()
    x = torch.rand(15, 2, 4) * 3
    out, _, rec = model.record(x, ["output", "output.1.a", "output.0"])
    assert torch.equal(rec["output"], out)
    assert rec["output.1.a"].shape == (15, 2, 3)
    assert rec["output.0"].shape == (15, 2, 3)


def test_record_in_a_sequential_by_index():
    """In a Sequential, inner layers are named by index."""
    torch.manual_seed(1)
    model = rb.Sequential(nn.Linear(5), snn.LIF(), nn.Linear(2)).make_model((3,))
    x = torch.rand(6, 1, 3) * 4
    _, _, rec = model.record(x, ["1"])
    drive = model.net.runners[0].module(x)
    spikes, _ = model.net.runners[1].sequence(drive, model.net.runners[1].initial_state(1, x.device, x.dtype))
    assert torch.equal(rec["1"], spikes)


def test_record_follows_the_input_mode():
    """In 'batch' mode a recording has no time dim."""
    model = recurrent_model().configure(input_mode="batch")
    _, _, rec = model.record(torch.rand(2, 4), ["hidden.1.v"])
    assert rec["hidden.1.v"].shape == (2, 8)


def test_record_unknown_name_lists_valid_names():
    """An unknown name is rejected with the names the model has."""
    with pytest.raises(ValueError, match="cannot record 'hiden'.*hidden.1.v"):
        recurrent_model().record(torch.rand(3, 1, 4), ["hiden"])
