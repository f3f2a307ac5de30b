"""Spiking neuron factories. Each wraps a pure update from ``functional``.

Neurons flatten each sample to n = prod(in_shape) neurons for their state and parameters and give
spikes in the input's shape. The membrane starts at a learnable per-neuron value (zeros at first).

``spike_function`` is a ``Surrogate`` (``SpikeLinear()`` by default), or any other callable from a
tensor to spikes, as in rnnbuilder 0.1.1: a plain function, a custom ``torch.autograd.Function``'s
``apply``. A neuron calls it exactly where the step function applies its threshold, e.g.
``spike_function(v - 1)``. Only a ``Surrogate`` has the ``gradient`` that the fused backends need;
a layer with another callable runs the step loop through autograd (the ``"reference"`` backend), so
its gradient is the callable's own, and it can't be described as data (``rnnbuilder.spec``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._factory import ModuleFactory
from .._runner import Runner, StatelessRunner, numel
from . import functional as F
from .surrogate import SpikeLinear, Surrogate

__all__ = ["LIF", "NoReset", "Adaptive", "Cooldown", "Discontinuous", "NeuronFactory"]


class NeuronFactory(ModuleFactory):
    """Base of the stateful neuron factories: each names its state type and step function."""

    state_type: ClassVar[type]
    step_fn: ClassVar
    sequence_fn: ClassVar = None
    """``(xs, state, params) -> (spikes, final state)`` over a whole sequence; ``None``: unroll ``step_fn``."""
    persistent_buffers: ClassVar[bool] = False
    """Whether ``neuron_buffers`` go into the model's ``state_dict`` (they hold the factory's arguments)."""
    learnable_initial_state: ClassVar[bool] = True
    """Whether training learns the initial membrane (rnnbuilder 0.1.1's neurons) or it stays at its
    start value (the NIR neurons: NIR has no initial state, so a learnt one couldn't be exported)."""

    def __post_init__(self):
        for name in ("tau", "tau_thr"):
            value = getattr(self, name, 1.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive number, got {value!r}")
        _check_spike_function(self)

    def _build(self, in_shape):
        return NeuronRunner(in_shape, self)

    @abc.abstractmethod
    def neuron_parameters(self, runner: NeuronRunner) -> tuple:
        """The parameter tuple for ``step_fn``."""

    def neuron_buffers(self, in_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Constant tensors the layer derives from its shape (no time or batch dims); they follow ``.to(device)``."""
        return {}

    def initial_spikes(self, runner: NeuronRunner, v: torch.Tensor) -> torch.Tensor | None:
        """The (n,) output before the first timestep, from the (n,) initial membrane ``v`` (in the
        run's device and dtype); ``None``: zeros. By default the spike of that membrane,
        ``spike_function(v - 1)``, as rnnbuilder 0.1.1 gives it: differentiable in the learnable
        initial membrane through the spike function's surrogate."""
        return self.spike_function(v - 1)


def _check_spike_function(factory) -> None:
    value = factory.spike_function
    if isinstance(value, type) or not callable(value):
        hint = f"; pass an instance, e.g. {value.__name__}()" if isinstance(value, type) else ""
        raise TypeError(
            f"{type(factory).__name__}.spike_function must be a Surrogate such as snn.SpikeLinear() or another "
            f"callable from a tensor to spikes (a function, a torch.autograd.Function's apply), got {value!r}{hint}"
        )


class NeuronRunner(Runner):
    """Holds a neuron layer's learnable initial membrane (n,) and calls its pure step function."""

    def __init__(self, in_shape, factory: NeuronFactory):
        super().__init__(in_shape, in_shape)
        self.factory = factory
        self.n = numel(in_shape)
        self.initial_v = torch.nn.Parameter(torch.zeros(self.n), requires_grad=factory.learnable_initial_state)
        for name, buffer in factory.neuron_buffers(self.in_shape).items():
            self.register_buffer(name, buffer, persistent=factory.persistent_buffers)

    def initial_state(self, batch_size, device, dtype):
        v = self.initial_v.to(device=device, dtype=dtype).expand(batch_size, self.n)
        rest = (
            torch.zeros(batch_size, self.n, device=device, dtype=dtype) for _ in self.factory.state_type._fields[1:]
        )
        return self.factory.state_type(v, *rest)

    def initial_output(self, batch_size, device, dtype):
        spikes = self.factory.initial_spikes(self, self.initial_v.to(device=device, dtype=dtype))
        if spikes is None:
            return super().initial_output(batch_size, device, dtype)
        return spikes.expand(batch_size, self.n).reshape(batch_size, *self.out_shape)

    def step(self, x, state):
        return self.stepper()(x, state)

    def stepper(self):
        step_fn, params = self.factory.step_fn, self.factory.neuron_parameters(self)
        if len(self.in_shape) == 1:  # (batch, n) already: no reshaping per step
            return lambda x, state: step_fn(x, state, params)

        def step(x, state):
            s, state = step_fn(x.flatten(1), state, params)
            return s.reshape(x.shape), state

        return step

    def sequence(self, x, state):
        """The whole sequence at once, through the factory's fused ``sequence_fn`` where it has one.
        A single timestep takes the step function: the same numbers, without the fused path's setup."""
        if x.shape[0] == 1:
            s, state = self.step(x[0], state)
            return s.unsqueeze(0), state
        params = self.factory.neuron_parameters(self)
        if self.factory.sequence_fn is None:
            s, state = F.unroll(self.factory.step_fn, x.flatten(2), state, params)
        else:
            s, state = self.factory.sequence_fn(x.flatten(2), state, params)
        return s.reshape(x.shape), state


@dataclass(frozen=True)
class LIF(NeuronFactory):
    """Leaky integrate-and-fire with subtractive reset.

    ``v = beta * v + x``; ``s = H(v - 1)``; ``v = v - s``; ``beta = exp(-1 / tau)``, tau in timesteps.

    >>> import torch
    >>> out, state = LIF(tau=5.0).make_model((3,))(torch.full((2, 1, 3), 0.6))
    >>> out[:, 0, 0].tolist()     # v = 0.6, then 0.6 * exp(-0.2) + 0.6 = 1.09 > 1
    [0.0, 1.0]
    """

    tau: float = 5.0
    """Membrane time constant, in timesteps (decay ``exp(-1 / tau)`` a step)."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function: a surrogate, whose gradient stands in for the step's (or any callable, step loop only)."""
    state_type: ClassVar = F.LIFState
    step_fn: ClassVar = staticmethod(F.lif_step)
    sequence_fn: ClassVar = staticmethod(F.lif_sequence)

    def neuron_parameters(self, runner):
        return F.LIFParameters(F.decay(self.tau), self.spike_function, True)


@dataclass(frozen=True)
class NoReset(NeuronFactory):
    """LIF without the reset: ``v = beta * v + x``; ``s = H(v - 1)``."""

    tau: float = 5.0
    """Membrane time constant, in timesteps (decay ``exp(-1 / tau)`` a step)."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function: a surrogate, whose gradient stands in for the step's (or any callable, step loop only)."""
    state_type: ClassVar = F.LIFState
    step_fn: ClassVar = staticmethod(F.lif_step)
    sequence_fn: ClassVar = staticmethod(F.lif_sequence)

    def neuron_parameters(self, runner):
        return F.LIFParameters(F.decay(self.tau), self.spike_function, False)


@dataclass(frozen=True)
class Adaptive(NeuronFactory):
    """Adaptive threshold (Bellec et al. 2018). The spike reads the previous membrane.

    ``theta = 1 + a``; ``s = H((v - theta) / theta)``; ``v = beta * v + x - s * theta``;
    ``a = beta_thr * a + gamma * s``, with ``beta_thr = exp(-1 / tau_thr)``.
    """

    tau: float = 5.0
    """Membrane time constant, in timesteps (decay ``exp(-1 / tau)`` a step)."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function: a surrogate, whose gradient stands in for the step's (or any callable, step loop only)."""
    tau_thr: float = 5.0
    """Time constant of the threshold adaptation, in timesteps."""
    gamma: float = 0.25
    """Threshold increase per spike, in units of the base threshold (1)."""
    state_type: ClassVar = F.AdaptiveState
    step_fn: ClassVar = staticmethod(F.adaptive_step)
    sequence_fn: ClassVar = staticmethod(F.adaptive_sequence)

    def neuron_parameters(self, runner):
        return F.AdaptiveParameters(F.decay(self.tau), F.decay(self.tau_thr), float(self.gamma), self.spike_function)


@dataclass(frozen=True)
class Cooldown(NeuronFactory):
    """Cooldown neuron: ``s = H(sign * (v - 1))`` on the previous membrane, then
    ``v = beta * v + (1 - beta) * exp(x)``. ``sign`` is +1 for the first n // 2 neurons, -1 for the
    rest, and those start spiking: a placeholder fed by this layer starts at 1 there.
    """

    tau: float = 5.0
    """Membrane time constant, in timesteps (decay ``exp(-1 / tau)`` a step)."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function: a surrogate, whose gradient stands in for the step's (or any callable, step loop only)."""
    state_type: ClassVar = F.CooldownState
    step_fn: ClassVar = staticmethod(F.cooldown_step)
    sequence_fn: ClassVar = staticmethod(F.cooldown_sequence)

    def neuron_parameters(self, runner):
        return F.CooldownParameters(F.decay(self.tau), self.spike_function, runner.sign)

    def neuron_buffers(self, in_shape):
        return {"sign": F.cooldown_sign(numel(in_shape))}

    def initial_spikes(self, runner, v):
        return (runner.sign < 0).to(v.dtype)


class _Threshold(torch.nn.Module):
    def __init__(self, p: F.DiscontinuousParameters):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.discontinuous_step(x, (), self.p)[0]


@dataclass(frozen=True)
class Discontinuous(ModuleFactory):
    """Stateless spiking: ``s = H(x - threshold)``, i.e. LIF with tau -> 0."""

    spike_function: Surrogate = SpikeLinear()
    """The spike function: a surrogate, whose gradient stands in for the step's (or any callable, step loop only)."""
    threshold: float = 1.0
    """The input spikes where it exceeds this, in input units."""

    def __post_init__(self):
        _check_spike_function(self)

    def _build(self, in_shape):
        p = F.DiscontinuousParameters(float(self.threshold), self.spike_function)
        return StatelessRunner(in_shape, in_shape, _Threshold(p))
