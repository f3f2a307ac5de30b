"""Small things several test modules share: recurrent networks, waiting for a condition."""

from __future__ import annotations

import time

import numpy as np
import torch

import rnnbuilder as rb
from rnnbuilder import custom, nn, rnn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb


def recurrent_net(width: int = 6) -> rb.Network:
    """The input stacked with the network's last output, through Linear(width) and LIF: a placeholder
    cycle, so it runs step by step (a long input is slow to simulate but quick to send)."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(width), snn.LIF())
    return n


def recurrent_readout_net(hidden: int, readout: rb.ModuleFactory) -> rb.Network:
    """A placeholder cycle of Linear(hidden) and LIF on the input, then Linear(10) into ``readout``
    (a neuron factory): a recurrent spiking network whose state has membranes and a placeholder."""
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(hidden), snn.LIF())
    n.output = n.hidden.apply(nn.Linear(10), readout)
    return n


def interlocking_cycles(width: int = 8, out: int = 4) -> rb.Network:
    """Two placeholder cycles that share a layer: feedback comes from a layer after the shared one."""
    n = rb.Network()
    n.echo = rb.Placeholder()
    n.feedback = rb.Placeholder()
    n.hidden = n.input.stack(n.feedback).apply(nn.Linear(width), snn.LIF())
    n.mixed = n.hidden.sum(n.echo).apply(nn.Linear(width), snn.LIF())
    n.echo = n.mixed
    n.feedback = n.mixed.apply(nn.Linear(out), snn.LIF())
    n.output = n.feedback
    return n


def wait_until(condition, seconds: float = 30.0) -> None:
    """Poll ``condition()`` until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def quiet_snapshot(session, settle_s: float = 0.5, limit_s: float = 60.0) -> pb.SessionSnapshot:
    """The session's snapshot once its timestep count has stopped changing for ``settle_s``."""
    deadline = time.monotonic() + limit_s
    count, since = session.refresh().timesteps_simulated, time.monotonic()
    while time.monotonic() - since < settle_s:
        assert time.monotonic() < deadline, "the session kept changing"
        time.sleep(0.05)
        now = session.refresh().timesteps_simulated
        if now != count:
            count, since = now, time.monotonic()
    return pb.SessionSnapshot.FromString(session.save())


class RefSpike(torch.autograd.Function):
    """Heaviside forward; SpikeLinear(0.3) pseudo-derivative 0.3 * max(0, 1 - |v|) backward."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * 0.3 * torch.clamp(1 - v.abs(), min=0)


class VectorState(custom.CustomModule):
    """A custom module base whose output and state are (batch, n) like its input; the state starts at zeros."""

    def enter_in_shape(self, in_shape):
        self.n = in_shape[0]

    def get_out_shape(self, in_shape):
        return in_shape

    def get_initial_state(self, batch_size):
        return torch.zeros(batch_size, self.n)


def spiking_convolution(out: int = 3) -> rb.Sequential:
    """rnnbuilder 0.1.1's spiking-convolution example: a TempConvPlus2d and Conv2d stack of
    Discontinuous neurons into a LIF layer that stacks its input (64, 8, 6) with its own (512,)
    spikes, then a Linear readout."""
    conv_neuron = snn.Discontinuous()
    conv_stack = rb.Sequential(
        rnn.TempConvPlus2d(out_channels=32, kernel_size=8, stride=4, time_kernel_size=4),
        conv_neuron,
        nn.Conv2d(out_channels=64, kernel_size=4, stride=2),
        conv_neuron,
        nn.Conv2d(out_channels=64, kernel_size=3, stride=1),
        conv_neuron,
    )
    ll = rb.Network()
    ll.output = rb.Placeholder()
    ll.output = ll.input.stack(ll.output).apply(nn.Linear(512), snn.LIF())
    return rb.Sequential(conv_stack, ll, nn.Linear(out))


CONV_IN = (1, 92, 76)


def conv_input(timesteps: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand((timesteps, batch, *CONV_IN), generator=torch.Generator().manual_seed(seed)) * 3


def defined_apart_from_topology() -> rb.Network:
    """A network whose layer 'x' is defined first but comes after 'output' in the attribute order."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.x = n.input.apply(nn.Linear(3))
    n.output = n.input.stack(n.output).apply(nn.Linear(2))
    return n


def local_outputs(model: rb.Model, chunks, state=None) -> list[np.ndarray]:
    """The local model's output for each chunk, the state carried from one to the next."""
    outputs = []
    with torch.no_grad():
        for chunk in chunks:
            out, state = model(torch.from_numpy(np.ascontiguousarray(chunk)), state)
            outputs.append(out.numpy())
    return outputs


class Offset(torch.nn.Module):
    """Adds a tensor argument: a custom module whose factory takes a tensor (spec and wire tests)."""

    def __init__(self, offset: torch.Tensor):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


OffsetFactory = custom.register_non_recurrent(Offset, flatten_input=False, shape_change=False)
