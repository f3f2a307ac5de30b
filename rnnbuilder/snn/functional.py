"""Pure neuron updates: ``step(x, state, params) -> (spikes, new_state)``.

Shapes: ``x`` and every state field are (batch, n); spikes are (batch, n). Parameters are
NamedTuples of Python floats (decay factors ``beta = exp(-1 / tau)``), a spike function (a
``Surrogate``, or any callable from a tensor to spikes: the ``*_sequence`` functions run those
through ``unroll``) and, for ``Cooldown``, a (n,) tensor. Nothing is kept between calls: the state
is always returned.

Whole sequences: ``sequence(xs, state, params) -> (spikes, final_state)`` with xs (time, batch, n).
``unroll(step, ...)`` is the reference loop; ``lif_sequence``, ``adaptive_sequence`` and
``cooldown_sequence`` give the same spikes and states (bit-identical) and gradients (to float
tolerance) from fused multi-step implementations; see ``rnnbuilder.snn.fused`` for the backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import fused
from .surrogate import Surrogate

SpikeFunction = Surrogate | Callable[[torch.Tensor], torch.Tensor]
"""A ``Surrogate`` (fused backends), or any callable from a tensor to spikes (the step loop)."""

__all__ = [
    "decay",
    "LIFState",
    "LIFParameters",
    "lif_step",
    "AdaptiveState",
    "AdaptiveParameters",
    "adaptive_step",
    "CooldownState",
    "CooldownParameters",
    "cooldown_step",
    "cooldown_sign",
    "DiscontinuousParameters",
    "discontinuous_step",
    "unroll",
    "lif_sequence",
    "adaptive_sequence",
    "cooldown_sequence",
]


def decay(tau: float) -> float:
    """The per-timestep decay factor ``beta = exp(-1 / tau)`` of a time constant in timesteps."""
    return math.exp(-1.0 / tau)


class LIFState(NamedTuple):
    v: torch.Tensor
    """Membrane potential (batch, n)."""


class LIFParameters(NamedTuple):
    beta: float
    spike_fn: SpikeFunction
    reset: bool = True
    """Subtract the threshold after a spike (LIF) or not (NoReset)."""


def lif_step(x: torch.Tensor, state: LIFState, p: LIFParameters) -> tuple[torch.Tensor, LIFState]:
    """``v = beta * v + x``; ``s = H(v - 1)``; then ``v = v - s`` if ``p.reset``."""
    v = p.beta * state.v + x
    s = p.spike_fn(v - 1)
    if p.reset:
        v = v - s
    return s, LIFState(v)


class AdaptiveState(NamedTuple):
    v: torch.Tensor
    """Membrane potential (batch, n)."""
    a: torch.Tensor
    """Threshold adaptation (batch, n); the threshold is ``1 + a``."""


class AdaptiveParameters(NamedTuple):
    beta: float
    beta_thr: float
    gamma: float
    spike_fn: SpikeFunction


def adaptive_step(x: torch.Tensor, state: AdaptiveState, p: AdaptiveParameters) -> tuple[torch.Tensor, AdaptiveState]:
    """Adaptive threshold (Bellec et al. 2018); the spike reads the previous membrane.

    ``theta = 1 + a``; ``s = H((v - theta) / theta)``; ``v = beta * v + x - s * theta``;
    ``a = beta_thr * a + gamma * s``.
    """
    theta = 1 + state.a
    s = p.spike_fn((state.v - theta) / theta)
    v = p.beta * state.v + x - s * theta
    a = p.beta_thr * state.a + p.gamma * s
    return s, AdaptiveState(v, a)


class CooldownState(NamedTuple):
    v: torch.Tensor
    """Membrane potential (batch, n)."""


class CooldownParameters(NamedTuple):
    beta: float
    spike_fn: SpikeFunction
    sign: torch.Tensor
    """(n,): +1 for the first n // 2 neurons, -1 for the rest."""


def cooldown_sign(n: int, device=None, dtype=None) -> torch.Tensor:
    """The (n,) sign vector of a Cooldown layer: +1 for the first ``n // 2`` neurons, -1 after."""
    sign = torch.ones(n, device=device, dtype=dtype)
    sign[n // 2 :] = -1
    return sign


def cooldown_step(x: torch.Tensor, state: CooldownState, p: CooldownParameters) -> tuple[torch.Tensor, CooldownState]:
    """``s = H(sign * (v - 1))`` on the previous membrane; ``v = beta * v + (1 - beta) * exp(x)``."""
    s = p.spike_fn(p.sign * (state.v - 1))
    v = p.beta * state.v + (1 - p.beta) * torch.exp(x)
    return s, CooldownState(v)


class DiscontinuousParameters(NamedTuple):
    threshold: float
    spike_fn: SpikeFunction


def discontinuous_step(x: torch.Tensor, state: tuple, p: DiscontinuousParameters) -> tuple[torch.Tensor, tuple]:
    """Stateless: ``s = H(x - threshold)`` (LIF with tau -> 0). The state is ``()``."""
    return p.spike_fn(x - p.threshold), state


def unroll(
    step: Callable[[torch.Tensor, NamedTuple, NamedTuple], tuple[torch.Tensor, NamedTuple]],
    xs: torch.Tensor,
    state: NamedTuple,
    p: NamedTuple,
) -> tuple[torch.Tensor, NamedTuple]:
    """The reference loop: apply ``step`` over xs (time, batch, n) -> (spikes (time, batch, n), final state)."""
    spikes = []
    for x in xs.unbind(0):
        s, state = step(x, state, p)
        spikes.append(s)
    return torch.stack(spikes), state


def lif_sequence(xs: torch.Tensor, state: LIFState, p: LIFParameters) -> tuple[torch.Tensor, LIFState]:
    """``unroll(lif_step, xs, state, p)``, fused: one pass forward, one reverse-time pass backward.

    >>> from rnnbuilder.snn import SpikeLinear
    >>> xs = torch.full((2, 1, 1), 0.6)
    >>> s, state = lif_sequence(xs, LIFState(torch.zeros(1, 1)), LIFParameters(decay(5.0), SpikeLinear()))
    >>> s.flatten().tolist()
    [0.0, 1.0]
    """
    backend = fused.resolve_backend(xs, p.spike_fn)
    if backend == "reference":
        return unroll(lif_step, xs, state, p)
    s, v = fused.lif(xs, state.v, p.beta, p.reset, p.spike_fn, backend)
    return s, LIFState(v)


def adaptive_sequence(
    xs: torch.Tensor, state: AdaptiveState, p: AdaptiveParameters
) -> tuple[torch.Tensor, AdaptiveState]:
    """``unroll(adaptive_step, xs, state, p)``, fused."""
    backend = fused.resolve_backend(xs, p.spike_fn)
    if backend == "reference":
        return unroll(adaptive_step, xs, state, p)
    s, v, a = fused.adaptive(xs, state.v, state.a, p.beta, p.beta_thr, p.gamma, p.spike_fn, backend)
    return s, AdaptiveState(v, a)


def cooldown_sequence(
    xs: torch.Tensor, state: CooldownState, p: CooldownParameters
) -> tuple[torch.Tensor, CooldownState]:
    """``unroll(cooldown_step, xs, state, p)``, fused."""
    backend = fused.resolve_backend(xs, p.spike_fn)
    if backend == "reference":
        return unroll(cooldown_step, xs, state, p)
    s, v = fused.cooldown(xs, state.v, p.beta, p.sign, p.spike_fn, backend)
    return s, CooldownState(v)
