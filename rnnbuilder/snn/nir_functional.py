"""Pure updates of NIR's neurons, discretised by forward Euler: ``step(x, state, params) -> (out, new_state)``.

NIR describes each neuron by a differential equation in continuous time (``tau`` in some time unit);
one step of length ``dt`` (same unit) replaces ``dv/dt`` by ``(v_new - v) / dt``. The parameters
here are the per-step coefficients that this gives (``rnnbuilder.snn.LeakyIntegrateAndFire`` and its
siblings compute them from NIR's parameters):

- leaky integrator (NIR LI, and I with ``decay = 1``, ``leak = 0``): ``tau dv/dt = v_leak - v + r x``
  gives ``v <- decay * v + (leak + gain * x)`` with ``decay = 1 - dt / tau``,
  ``leak = dt / tau * v_leak``, ``gain = dt / tau * r``;
- integrate-and-fire (LIF, IF): the same, then ``s = H(v - v_threshold)`` and, where it spiked,
  ``v <- v_reset`` in the same step (the membrane a step returns is already reset);
- current-based (CubaLI, CubaLIF): ``tau_syn di/dt = -i + w_in x`` first, then the membrane
  driven by the new current: ``i <- syn_decay * i + syn_gain * x`` with
  ``syn_decay = 1 - dt / tau_syn``, ``syn_gain = dt / tau_syn * w_in``; then
  ``v <- decay * v + (leak + gain * i)`` with ``tau = tau_mem``, and the spike and reset;
- threshold (NIR Threshold): stateless ``s = H(x - v_threshold)``.

``H`` is the spike function: a ``Surrogate`` (whose ``gradient`` the backward uses) or any callable.
Integrators output their membrane. Shapes: ``x`` and state fields (batch, n); coefficients (n,)
tensors or numbers. Whole sequences: ``*_sequence(xs, state, params) -> (out, final_state)`` with xs
(time, batch, n), bit-identical to ``functional.unroll`` over the step (``rnnbuilder.snn.fused.euler``).

>>> import torch
>>> p = LeakyFireParameters(decay=0.5, leak=0.0, gain=1.0, v_threshold=1.0, v_reset=0.0, spike_fn=SpikeLinear())
>>> xs = torch.tensor([0.8, 0.8, 0.8]).reshape(3, 1, 1)
>>> s, state = leaky_integrate_and_fire_sequence(xs, LeakyState(torch.zeros(1, 1)), p)
>>> s.flatten().tolist(), state.v.item()   # v: 0.8, 1.2 -> spike, reset to 0, then 0.8
([0.0, 1.0, 0.0], 0.800000011920929)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import fused
from .functional import SpikeFunction, unroll
from .fused.euler import charge, drive, euler, fire, input_current, reset, synapse
from .surrogate import SpikeLinear

__all__ = [
    "LeakyState",
    "CubaState",
    "LeakyParameters",
    "LeakyFireParameters",
    "CubaParameters",
    "CubaFireParameters",
    "ThresholdParameters",
    "leaky_integrator_step",
    "leaky_integrate_and_fire_step",
    "cuba_leaky_integrator_step",
    "cuba_leaky_integrate_and_fire_step",
    "threshold_step",
    "leaky_integrator_sequence",
    "leaky_integrate_and_fire_sequence",
    "cuba_leaky_integrator_sequence",
    "cuba_leaky_integrate_and_fire_sequence",
]

Coefficient = torch.Tensor | float
"""A per-neuron (n,) tensor, or one number for all neurons."""


class LeakyState(NamedTuple):
    v: torch.Tensor
    """Membrane potential (batch, n)."""


class CubaState(NamedTuple):
    v: torch.Tensor
    """Membrane potential (batch, n)."""
    i: torch.Tensor
    """Synaptic current (batch, n)."""


class LeakyParameters(NamedTuple):
    decay: Coefficient
    """``1 - dt / tau`` (1 for an integrator without leak)."""
    leak: Coefficient
    """``dt / tau * v_leak``."""
    gain: Coefficient
    """``dt / tau * r`` (``dt * r`` without leak)."""


class LeakyFireParameters(NamedTuple):
    decay: Coefficient
    """``1 - dt / tau``."""
    leak: Coefficient
    """``dt / tau * v_leak``."""
    gain: Coefficient
    """``dt / tau * r``."""
    v_threshold: Coefficient
    """The membrane spikes where it exceeds this."""
    v_reset: Coefficient
    """The membrane after a spike."""
    spike_fn: SpikeFunction = SpikeLinear()


class CubaParameters(NamedTuple):
    syn_decay: Coefficient
    """``1 - dt / tau_syn``."""
    syn_gain: Coefficient
    """``dt / tau_syn * w_in``."""
    decay: Coefficient
    """``1 - dt / tau_mem``."""
    leak: Coefficient
    """``dt / tau_mem * v_leak``."""
    gain: Coefficient
    """``dt / tau_mem * r``."""


class CubaFireParameters(NamedTuple):
    syn_decay: Coefficient
    """``1 - dt / tau_syn``."""
    syn_gain: Coefficient
    """``dt / tau_syn * w_in``."""
    decay: Coefficient
    """``1 - dt / tau_mem``."""
    leak: Coefficient
    """``dt / tau_mem * v_leak``."""
    gain: Coefficient
    """``dt / tau_mem * r``."""
    v_threshold: Coefficient
    """The membrane spikes where it exceeds this."""
    v_reset: Coefficient
    """The membrane after a spike."""
    spike_fn: SpikeFunction = SpikeLinear()


class ThresholdParameters(NamedTuple):
    v_threshold: Coefficient
    """The input spikes where it exceeds this."""
    spike_fn: SpikeFunction = SpikeLinear()


def leaky_integrator_step(x: torch.Tensor, state: LeakyState, p: LeakyParameters) -> tuple[torch.Tensor, LeakyState]:
    """``v = decay * v + (leak + gain * x)``; the output is ``v``."""
    v = charge(state.v, drive(x, p.leak, p.gain), p.decay)
    return v, LeakyState(v)


def leaky_integrate_and_fire_step(
    x: torch.Tensor, state: LeakyState, p: LeakyFireParameters
) -> tuple[torch.Tensor, LeakyState]:
    """``u = decay * v + (leak + gain * x)``; ``s = H(u - v_threshold)``; ``v = (1 - s) * u + s * v_reset``."""
    u = charge(state.v, drive(x, p.leak, p.gain), p.decay)
    s = fire(u, p.v_threshold, p.spike_fn)
    return s, LeakyState(reset(u, s, p.v_reset))


def cuba_leaky_integrator_step(x: torch.Tensor, state: CubaState, p: CubaParameters) -> tuple[torch.Tensor, CubaState]:
    """``i = syn_decay * i + syn_gain * x``; ``v = decay * v + (leak + gain * i)``; the output is ``v``."""
    i = synapse(state.i, input_current(x, p.syn_gain), p.syn_decay)
    v = charge(state.v, drive(i, p.leak, p.gain), p.decay)
    return v, CubaState(v, i)


def cuba_leaky_integrate_and_fire_step(
    x: torch.Tensor, state: CubaState, p: CubaFireParameters
) -> tuple[torch.Tensor, CubaState]:
    """``i = syn_decay * i + syn_gain * x``; ``u = decay * v + (leak + gain * i)``;
    ``s = H(u - v_threshold)``; ``v = (1 - s) * u + s * v_reset``."""
    i = synapse(state.i, input_current(x, p.syn_gain), p.syn_decay)
    u = charge(state.v, drive(i, p.leak, p.gain), p.decay)
    s = fire(u, p.v_threshold, p.spike_fn)
    return s, CubaState(reset(u, s, p.v_reset), i)


def threshold_step(x: torch.Tensor, state: tuple, p: ThresholdParameters) -> tuple[torch.Tensor, tuple]:
    """Stateless: ``s = H(x - v_threshold)``. The state is ``()``."""
    return fire(x, p.v_threshold, p.spike_fn), state


def _fused(xs: torch.Tensor, state: NamedTuple, p: NamedTuple, spike_fn) -> bool:
    """Whether the fused loop runs this call: not for the ``"reference"`` backend, a spike function
    without a ``gradient``, coefficients that need a gradient (the fused backward gives them none),
    or coefficient or state tensors of another dtype than the input (the fused loop writes every
    op's result in the input's dtype, where the step's type promotion differs op by op)."""
    tensors = [c for c in (*p, *state) if isinstance(c, torch.Tensor)]
    if any(t.requires_grad for t in p if isinstance(t, torch.Tensor)) or any(t.dtype != xs.dtype for t in tensors):
        return False
    if spike_fn is None:
        return fused.get_backend() != "reference"
    return fused.resolve_backend(xs, spike_fn) != "reference"


def leaky_integrator_sequence(
    xs: torch.Tensor, state: LeakyState, p: LeakyParameters
) -> tuple[torch.Tensor, LeakyState]:
    """``unroll(leaky_integrator_step, xs, state, p)``, fused."""
    if not _fused(xs, state, p, None):
        return unroll(leaky_integrator_step, xs, state, p)
    out, v, _ = euler(xs, state.v, None, None, (p.decay, p.leak, p.gain), None)
    return out, LeakyState(v)


def leaky_integrate_and_fire_sequence(
    xs: torch.Tensor, state: LeakyState, p: LeakyFireParameters
) -> tuple[torch.Tensor, LeakyState]:
    """``unroll(leaky_integrate_and_fire_step, xs, state, p)``, fused."""
    if not _fused(xs, state, p, p.spike_fn):
        return unroll(leaky_integrate_and_fire_step, xs, state, p)
    firing = (p.v_threshold, p.v_reset, p.spike_fn)
    s, v, _ = euler(xs, state.v, None, None, (p.decay, p.leak, p.gain), firing)
    return s, LeakyState(v)


def cuba_leaky_integrator_sequence(
    xs: torch.Tensor, state: CubaState, p: CubaParameters
) -> tuple[torch.Tensor, CubaState]:
    """``unroll(cuba_leaky_integrator_step, xs, state, p)``, fused."""
    if not _fused(xs, state, p, None):
        return unroll(cuba_leaky_integrator_step, xs, state, p)
    out, v, i = euler(xs, state.v, state.i, (p.syn_decay, p.syn_gain), (p.decay, p.leak, p.gain), None)
    return out, CubaState(v, i)


def cuba_leaky_integrate_and_fire_sequence(
    xs: torch.Tensor, state: CubaState, p: CubaFireParameters
) -> tuple[torch.Tensor, CubaState]:
    """``unroll(cuba_leaky_integrate_and_fire_step, xs, state, p)``, fused."""
    if not _fused(xs, state, p, p.spike_fn):
        return unroll(cuba_leaky_integrate_and_fire_step, xs, state, p)
    firing = (p.v_threshold, p.v_reset, p.spike_fn)
    s, v, i = euler(xs, state.v, state.i, (p.syn_decay, p.syn_gain), (p.decay, p.leak, p.gain), firing)
    return s, CubaState(v, i)
