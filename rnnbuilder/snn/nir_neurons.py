"""The neurons of NIR (the Neuromorphic Intermediate Representation), with its parameters, per neuron.

Each argument is a number or a tensor that broadcasts to the layer's shape (no time or batch dims):
``tau=torch.tensor([2.0, 4.0])`` for two neurons, a (C, 1, 1) tensor for one value per channel after a
convolution. The equations are NIR's, in continuous time; ``dt`` is the length of one timestep in
the unit of the time constants, and one step is forward Euler (``rnnbuilder.snn.nir_functional``
lists the updates):

=============================  ====================================================================
factory                        one step (``H``: the spike function, 1 where its argument is > 0)
=============================  ====================================================================
``Integrator``                 ``v += dt * r * x``; outputs ``v``
``IntegrateAndFire``           ``v += dt * r * x``; ``s = H(v - v_threshold)``; ``v = v_reset`` where ``s``
``LeakyIntegrator``            ``v += dt / tau * (v_leak - v + r * x)``; outputs ``v``
``LeakyIntegrateAndFire``      as ``LeakyIntegrator``, then spike and reset as ``IntegrateAndFire``
``CubaLeakyIntegrator``        ``i += dt / tau_syn * (w_in * x - i)``, then ``LeakyIntegrator``'s step on ``i``
``CubaLeakyIntegrateAndFire``  ``CubaLeakyIntegrator``'s two steps, then spike and reset
``Threshold``                  stateless: ``s = H(x - v_threshold)``
=============================  ====================================================================

The reset comes in the step of the spike: the membrane that a step returns (and a recording shows)
is ``v_reset`` where it spiked. The membrane follows the new current in the same step. With
``r = tau / dt`` (``w_in = tau_syn / dt``) and ``v_leak = 0`` these are snnTorch's ``Leaky``
(``Synaptic``) with ``beta = 1 - dt / tau`` (``alpha = 1 - dt / tau_syn``),
``reset_mechanism="zero"`` and ``reset_delay=False``, bit for bit.

A layer keeps the per-step coefficients (``decay = 1 - dt / tau``, ``leak = dt / tau * v_leak``,
``gain = dt / tau * r``, ``syn_decay``, ``syn_gain``, ``v_threshold``, ``v_reset``) as buffers of
the layer's shape: computed in float64 from the arguments, rounded once to the default dtype,
in the model's ``state_dict``, moved by ``.to(device)``, never trained. The membrane starts at zero
and, unlike rnnbuilder 0.1.1's neurons, training doesn't learn it: NIR starts every neuron at rest,
so a trained network still exports exactly. A sequence runs fused.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from .._factory import ArgumentEquality, ModuleFactory
from .._runner import StatelessRunner
from ..errors import ShapeError
from . import nir_functional as N
from .fused.euler import fire
from .neurons import NeuronFactory, _check_spike_function
from .surrogate import SpikeLinear, Surrogate

__all__ = [
    "Integrator",
    "IntegrateAndFire",
    "LeakyIntegrator",
    "LeakyIntegrateAndFire",
    "CubaLeakyIntegrator",
    "CubaLeakyIntegrateAndFire",
    "Threshold",
]


class _Arguments(ArgumentEquality):
    """Tensor-or-number arguments: checked and copied at construction, compared and hashed by
    value, and broadcast to a layer's shape as float64."""

    _positive: ClassVar[tuple[str, ...]] = ()
    """The arguments that must be > 0 (time constants, dt)."""

    def __post_init__(self):
        self._check_arguments()

    def _values(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _check_arguments(self) -> None:
        for name, value in self._values().items():
            if name != "spike_function":
                object.__setattr__(self, name, _checked(self, name, value))
        if hasattr(self, "spike_function"):
            _check_spike_function(self)

    def _broadcast(self, in_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Every tensor-or-number argument as a float64 tensor of ``in_shape``; ShapeError naming the
        argument that doesn't broadcast."""
        out = {}
        for name, value in self._values().items():
            if name == "spike_function":
                continue
            value = torch.as_tensor(value, dtype=torch.float64)
            try:
                out[name] = value.broadcast_to(in_shape)
            except RuntimeError:
                raise ShapeError(
                    f"{type(self).__name__}.{name} has shape {tuple(value.shape)}, which doesn't broadcast to the "
                    f"layer's shape {in_shape}; give one value, one per neuron, or a shape that broadcasts "
                    f"(such as (channels, 1, 1) after a convolution)"
                ) from None
        return out


def _checked(owner, name: str, value):
    """``value`` as a float or a private CPU copy of the tensor; ValueError/TypeError naming the argument."""
    where = f"{type(owner).__name__}.{name}"
    positive = name in owner._positive
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{where} must be a real tensor, got one of dtype {value.dtype}")
        value = value.detach().to("cpu", torch.float64 if not value.is_floating_point() else value.dtype, copy=True)
        if value.numel() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where} must be finite, got {value}")
        if positive and value.numel() and not bool((value > 0).all()):
            raise ValueError(f"{where} must be positive everywhere, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number or a tensor, got {value!r}")
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{where} must be a {'positive' if positive else 'finite'} number, got {value!r}")
    return float(value)


class _EulerNeuron(_Arguments, NeuronFactory):
    """A NIR neuron: its coefficients from its arguments (``_coefficients``), kept as buffers."""

    persistent_buffers: ClassVar[bool] = True
    learnable_initial_state: ClassVar[bool] = False
    parameters_type: ClassVar[type]
    """The NamedTuple of ``step_fn``'s coefficients; a spiking one ends with ``spike_fn``."""

    def neuron_buffers(self, in_shape):
        dtype = torch.get_default_dtype()
        return {name: c.to(dtype).contiguous() for name, c in self._coefficients(self._broadcast(in_shape)).items()}

    @abc.abstractmethod
    def _coefficients(self, a: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The coefficients of ``parameters_type`` (but the spike function) from the broadcast arguments."""

    def neuron_parameters(self, runner):
        names = [n for n in self.parameters_type._fields if n != "spike_fn"]
        values = [getattr(runner, n).reshape(-1) for n in names]
        if "spike_fn" in self.parameters_type._fields:
            values.append(self.spike_function)
        return self.parameters_type(*values)

    def initial_spikes(self, runner, v):
        if "spike_fn" not in self.parameters_type._fields:
            return v  # an integrator outputs its membrane
        return fire(v, runner.v_threshold.reshape(-1).to(v), self.spike_function)


def _leaky(tau, r, v_leak, dt) -> dict[str, torch.Tensor]:
    rate = dt / tau
    return {"decay": 1 - rate, "leak": rate * v_leak, "gain": rate * r}


def _firing(a: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"v_threshold": a["v_threshold"], "v_reset": a["v_reset"]}


def _synapse(a: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rate = a["dt"] / a["tau_syn"]
    return {"syn_decay": 1 - rate, "syn_gain": rate * a["w_in"]}


def _integrate(a: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"decay": torch.ones_like(a["r"]), "leak": torch.zeros_like(a["r"]), "gain": a["dt"] * a["r"]}


@dataclass(frozen=True, eq=False)
class Integrator(_EulerNeuron):
    """NIR's integrator ``I``: ``dv/dt = r * x``, so ``v = v + dt * r * x`` a step; outputs ``v``.

    >>> import torch
    >>> out, state = Integrator(r=0.5).make_model((2,))(torch.ones(3, 1, 2))
    >>> out[:, 0, 0].tolist()
    [0.5, 1.0, 1.5]
    """

    r: float | torch.Tensor = 1.0
    """Resistance: the input's weight, in membrane units per input unit and time unit."""
    dt: float | torch.Tensor = 1.0
    """The length of one timestep, in the time unit of the other arguments."""
    state_type: ClassVar = N.LeakyState
    parameters_type: ClassVar = N.LeakyParameters
    step_fn: ClassVar = staticmethod(N.leaky_integrator_step)
    sequence_fn: ClassVar = staticmethod(N.leaky_integrator_sequence)
    _positive: ClassVar = ("dt",)

    def _coefficients(self, a):
        return _integrate(a)


@dataclass(frozen=True, eq=False)
class IntegrateAndFire(_EulerNeuron):
    """NIR's ``IF``: ``v = v + dt * r * x``; ``s = H(v - v_threshold)``; ``v = v_reset`` where it spiked.

    >>> import torch
    >>> out, state = IntegrateAndFire(v_threshold=1.5).make_model((1,))(torch.ones(4, 1, 1))
    >>> out.flatten().tolist(), state.v.item()      # v: 1, 2 -> spike, 0, 1, 2 -> spike, 0
    ([0.0, 1.0, 0.0, 1.0], 0.0)
    """

    r: float | torch.Tensor = 1.0
    """Resistance: the input's weight, in membrane units per input unit and time unit."""
    v_threshold: float | torch.Tensor = 1.0
    """The membrane spikes where it exceeds this, in membrane units."""
    v_reset: float | torch.Tensor = 0.0
    """The membrane after a spike, in membrane units."""
    dt: float | torch.Tensor = 1.0
    """The length of one timestep, in the time unit of the other arguments."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function ``H``: a surrogate, whose gradient stands in for the step's."""
    state_type: ClassVar = N.LeakyState
    parameters_type: ClassVar = N.LeakyFireParameters
    step_fn: ClassVar = staticmethod(N.leaky_integrate_and_fire_step)
    sequence_fn: ClassVar = staticmethod(N.leaky_integrate_and_fire_sequence)
    _positive: ClassVar = ("dt",)

    def _coefficients(self, a):
        return {**_integrate(a), **_firing(a)}


@dataclass(frozen=True, eq=False)
class LeakyIntegrator(_EulerNeuron):
    """NIR's ``LI``: ``tau dv/dt = v_leak - v + r * x``, so ``v = v + dt / tau * (v_leak - v + r * x)``
    a step; outputs ``v``.

    >>> import torch
    >>> out, state = LeakyIntegrator(tau=4.0, r=4.0).make_model((1,))(torch.ones(3, 1, 1))
    >>> out.flatten().tolist()     # v = 0.75 v + x
    [1.0, 1.75, 2.3125]
    """

    tau: float | torch.Tensor
    """Membrane time constant, in the time unit of ``dt``."""
    r: float | torch.Tensor = 1.0
    """Resistance: the input's weight, in membrane units per input unit."""
    v_leak: float | torch.Tensor = 0.0
    """The membrane's resting value, in membrane units."""
    dt: float | torch.Tensor = 1.0
    """The length of one timestep, in the time unit of ``tau``."""
    state_type: ClassVar = N.LeakyState
    parameters_type: ClassVar = N.LeakyParameters
    step_fn: ClassVar = staticmethod(N.leaky_integrator_step)
    sequence_fn: ClassVar = staticmethod(N.leaky_integrator_sequence)
    _positive: ClassVar = ("tau", "dt")

    def _coefficients(self, a):
        return _leaky(a["tau"], a["r"], a["v_leak"], a["dt"])


@dataclass(frozen=True, eq=False)
class LeakyIntegrateAndFire(_EulerNeuron):
    """NIR's ``LIF``: ``v = v + dt / tau * (v_leak - v + r * x)``; ``s = H(v - v_threshold)``;
    ``v = v_reset`` where it spiked, in the same step.

    With ``r = tau / dt`` and ``v_leak = 0`` a step is ``v = (1 - dt / tau) * v + x``: snnTorch's
    ``Leaky(beta=1 - dt / tau, reset_mechanism="zero", reset_delay=False)``.

    >>> import torch
    >>> lif = LeakyIntegrateAndFire(tau=torch.tensor([2.0, 4.0]), r=torch.tensor([2.0, 4.0]))
    >>> out, state = lif.make_model((2,))(torch.full((3, 1, 2), 0.6))
    >>> out[:, 0].tolist()     # v = 0.5 v + x spikes at the 3rd step (1.05), v = 0.75 v + x at the 2nd (1.05)
    [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    """

    tau: float | torch.Tensor
    """Membrane time constant, in the time unit of ``dt``."""
    r: float | torch.Tensor = 1.0
    """Resistance: the input's weight, in membrane units per input unit."""
    v_leak: float | torch.Tensor = 0.0
    """The membrane's resting value, in membrane units."""
    v_threshold: float | torch.Tensor = 1.0
    """The membrane spikes where it exceeds this, in membrane units."""
    v_reset: float | torch.Tensor = 0.0
    """The membrane after a spike, in membrane units."""
    dt: float | torch.Tensor = 1.0
    """The length of one timestep, in the time unit of ``tau``."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function ``H``: a surrogate, whose gradient stands in for the step's."""
    state_type: ClassVar = N.LeakyState
    parameters_type: ClassVar = N.LeakyFireParameters
    step_fn: ClassVar = staticmethod(N.leaky_integrate_and_fire_step)
    sequence_fn: ClassVar = staticmethod(N.leaky_integrate_and_fire_sequence)
    _positive: ClassVar = ("tau", "dt")

    def _coefficients(self, a):
        return {**_leaky(a["tau"], a["r"], a["v_leak"], a["dt"]), **_firing(a)}


@dataclass(frozen=True, eq=False)
class CubaLeakyIntegrator(_EulerNeuron):
    """NIR's ``CubaLI``: ``tau_syn di/dt = -i + w_in * x``, then ``tau_mem dv/dt = v_leak - v + r * i``
    on the new current; outputs ``v``.

    A step: ``i = i + dt / tau_syn * (w_in * x - i)``; ``v = v + dt / tau_mem * (v_leak - v + r * i)``.

    >>> import torch
    >>> out, state = CubaLeakyIntegrator(tau_syn=2.0, tau_mem=2.0, r=2.0, w_in=2.0).make_model((1,))(
    ...     torch.ones(3, 1, 1))
    >>> out.flatten().tolist(), state.i.item()     # i = 0.5 i + x: 1, 1.5, 1.75; v = 0.5 v + i
    ([1.0, 2.0, 2.75], 1.75)
    """

    tau_syn: float | torch.Tensor
    """Synaptic time constant, in the time unit of ``dt``."""
    tau_mem: float | torch.Tensor
    """Membrane time constant, in the time unit of ``dt``."""
    r: float | torch.Tensor = 1.0
    """Resistance: the current's weight on the membrane, in membrane units per current unit."""
    v_leak: float | torch.Tensor = 0.0
    """The membrane's resting value, in membrane units."""
    w_in: float | torch.Tensor = 1.0
    """The input's weight on the current, in current units per input unit."""
    dt: float | torch.Tensor = 1.0
    """The length of one timestep, in the time unit of the time constants."""
    state_type: ClassVar = N.CubaState
    parameters_type: ClassVar = N.CubaParameters
    step_fn: ClassVar = staticmethod(N.cuba_leaky_integrator_step)
    sequence_fn: ClassVar = staticmethod(N.cuba_leaky_integrator_sequence)
    _positive: ClassVar = ("tau_syn", "tau_mem", "dt")

    def _coefficients(self, a):
        return {**_synapse(a), **_leaky(a["tau_mem"], a["r"], a["v_leak"], a["dt"])}


@dataclass(frozen=True, eq=False)
class CubaLeakyIntegrateAndFire(_EulerNeuron):
    """NIR's ``CubaLIF``: ``CubaLeakyIntegrator``'s step, then ``s = H(v - v_threshold)`` and
    ``v = v_reset`` where it spiked, in the same step.

    With ``w_in = tau_syn / dt``, ``r = tau_mem / dt`` and ``v_leak = 0`` a step is
    ``i = alpha * i + x``; ``v = beta * v + i`` (alpha, beta = 1 - dt / tau_syn, 1 - dt / tau_mem):
    snnTorch's ``Synaptic(alpha, beta, reset_mechanism="zero", reset_delay=False)``.

    >>> import torch
    >>> neuron = CubaLeakyIntegrateAndFire(tau_syn=2.0, tau_mem=2.0, r=2.0, w_in=2.0)
    >>> out, state = neuron.make_model((1,))(torch.ones(3, 1, 1))
    >>> out.flatten().tolist(), state.v.item()     # v: 1, 2 -> spike, reset to 0, then 1.75
    ([0.0, 1.0, 1.0], 0.0)
    """

    tau_syn: float | torch.Tensor
    """Synaptic time constant, in the time unit of ``dt``."""
    tau_mem: float | torch.Tensor
    """Membrane time constant, in the time unit of ``dt``."""
    r: float | torch.Tensor = 1.0
    """Resistance: the current's weight on the membrane, in membrane units per current unit."""
    v_leak: float | torch.Tensor = 0.0
    """The membrane's resting value, in membrane units."""
    v_threshold: float | torch.Tensor = 1.0
    """The membrane spikes where it exceeds this, in membrane units."""
    v_reset: float | torch.Tensor = 0.0
    """The membrane after a spike, in membrane units."""
    w_in: float | torch.Tensor = 1.0
    """The input's weight on the current, in current units per input unit."""
    dt: float | torch.Tensor = 1.0
    """The length of one timestep, in the time unit of the time constants."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function ``H``: a surrogate, whose gradient stands in for the step's."""
    state_type: ClassVar = N.CubaState
    parameters_type: ClassVar = N.CubaFireParameters
    step_fn: ClassVar = staticmethod(N.cuba_leaky_integrate_and_fire_step)
    sequence_fn: ClassVar = staticmethod(N.cuba_leaky_integrate_and_fire_sequence)
    _positive: ClassVar = ("tau_syn", "tau_mem", "dt")

    def _coefficients(self, a):
        return {**_synapse(a), **_leaky(a["tau_mem"], a["r"], a["v_leak"], a["dt"]), **_firing(a)}


class _ThresholdModule(torch.nn.Module):
    """``spike_function(x - v_threshold)`` with ``v_threshold`` a buffer of the layer's shape."""

    def __init__(self, v_threshold: torch.Tensor, spike_function):
        super().__init__()
        self.register_buffer("v_threshold", v_threshold)
        self.spike_function = spike_function

    def forward(self, x):
        return N.threshold_step(x, (), N.ThresholdParameters(self.v_threshold, self.spike_function))[0]


@dataclass(frozen=True, eq=False)
class Threshold(_Arguments, ModuleFactory):
    """NIR's ``Threshold``: stateless ``s = H(x - v_threshold)``, with a surrogate gradient.

    >>> import torch
    >>> Threshold(v_threshold=torch.tensor([0.0, 1.0])).make_model((2,))(torch.full((1, 1, 2), 0.5))[0].tolist()
    [[[1.0, 0.0]]]
    """

    v_threshold: float | torch.Tensor = 1.0
    """The input spikes where it exceeds this, in input units."""
    spike_function: Surrogate = SpikeLinear()
    """The spike function ``H``: a surrogate, whose gradient stands in for the step's."""

    def _build(self, in_shape):
        v_threshold = self._broadcast(in_shape)["v_threshold"].to(torch.get_default_dtype()).contiguous()
        return StatelessRunner(in_shape, in_shape, _ThresholdModule(v_threshold, self.spike_function))
