"""``Model.stepper()``: one timestep with its lookups done once, the same numbers as the model."""

from __future__ import annotations

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, rnn, snn
from tests.helpers import interlocking_cycles, recurrent_net, recurrent_readout_net, spiking_convolution

NETWORKS = {
    "linear_lif": (lambda: rb.Sequential(nn.Linear(16), snn.LIF()), (5,)),
    "every_neuron": (
        lambda: rb.Sequential(nn.Linear(8), snn.Adaptive(), nn.Linear(8), snn.Cooldown(), nn.Linear(8), snn.NoReset()),
        (5,),
    ),
    "cycle": (recurrent_net, (4,)),
    "readout_cycle": (lambda: recurrent_readout_net(6, snn.Adaptive()), (4,)),
    "interlocking_cycles": (interlocking_cycles, (3,)),
    "lstm": (lambda: rb.Sequential(rnn.LSTM(6), nn.Linear(3)), (4,)),
    "nested_network": (lambda: rb.Sequential(recurrent_net(5), nn.Linear(2), snn.LIF()), (3,)),
    "convolution": (lambda: rb.Sequential(nn.Conv2d(4, 3), snn.LIF(), nn.Flatten(), nn.Linear(5)), (2, 6, 6)),
}


def _inputs(shape, timesteps: int = 12, batch: int = 3) -> torch.Tensor:
    return torch.rand((timesteps, batch, *shape), generator=torch.Generator().manual_seed(1)) * 1.5


@pytest.mark.parametrize("name", NETWORKS)
def test_stepper_equals_the_model_one_timestep_at_a_time(name):
    """Stepping gives the outputs and states of model calls of one timestep, bit for bit."""
    factory, shape = NETWORKS[name]
    torch.manual_seed(0)
    model = factory().make_model(shape)
    x = _inputs(shape)
    step = model.stepper()
    with torch.no_grad():
        stepped_state = expected_state = model.get_initial_state(x.shape[1])
        for x_t in x:
            y, stepped_state = step(x_t, stepped_state)
            expected, expected_state = model(x_t[None], expected_state)
            assert torch.equal(y, expected[0])
            got, want = rb.named_leaves(stepped_state), rb.named_leaves(expected_state)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[name], want[name]) for name in want)


def test_stepper_state_continues_in_the_model():
    """A state the stepper gave is one the model takes, and the model's is one the stepper takes."""
    model = recurrent_readout_net(6, snn.LIF()).make_model((4,))
    x = _inputs((4,), timesteps=4)
    step = model.stepper()
    with torch.no_grad():
        _, state = step(x[0], model.get_initial_state(3))
        _, state = model(x[1:3], state)
        y, _ = step(x[3], state)
        whole, _ = model(x)
    assert torch.allclose(y, whole[3])


def test_stepper_reads_parameters_at_each_call():
    """Changing a parameter after taking the stepper changes what it gives."""
    model = rb.Sequential(nn.Linear(3)).make_model((2,))
    step, state = model.stepper(), model.get_initial_state(1)
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if name.endswith("bias")).fill_(7.0)
        y, _ = step(torch.zeros(1, 2), state)
    assert y.tolist() == [[7.0, 7.0, 7.0]]


def test_stepper_gives_the_output_shape_in_every_input_mode():
    """The stepper takes (batch, *in_shape) whatever the model's input mode."""
    model = spiking_convolution().make_model((1, 92, 76), input_mode="single")
    step = model.stepper()
    with torch.no_grad():
        y, _ = step(torch.rand(2, 1, 92, 76), model.get_initial_state(2))
    assert tuple(y.shape) == (2, 3)
