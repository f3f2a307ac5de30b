"""Spiking neurons and surrogate spike functions.

Neurons: ``LIF``, ``NoReset``, ``Adaptive``, ``Cooldown``, ``Discontinuous``. Surrogates:
``SpikeLinear`` (the default), ``FastSigmoid``, ``ATan``, ``Triangular``, ``Sigmoid``,
``StraightThrough``; ``get_surrogate(name, **params)`` looks one up by name. The pure update
functions live in ``rnnbuilder.snn.functional``. A neuron layer given a whole sequence runs fused
(one forward and one backward over all timesteps; Triton kernels on CUDA), bit-identical to the
step loop; ``use_backend("reference")`` or ``RNNBUILDER_REFERENCE=1`` forces the step loop.

NIR's neurons, with its parameters (numbers, or tensors for per-neuron values) and forward-Euler
steps of length ``dt`` (``rnnbuilder.snn.nir_neurons``): ``Integrator``, ``IntegrateAndFire``,
``LeakyIntegrator``, ``LeakyIntegrateAndFire``, ``CubaLeakyIntegrator``,
``CubaLeakyIntegrateAndFire`` and ``Threshold``; their pure updates live in
``rnnbuilder.snn.nir_functional``.
"""

from . import functional, fused, nir_functional
from .fused import set_backend, use_backend
from .neurons import LIF, Adaptive, Cooldown, Discontinuous, NeuronFactory, NoReset
from .nir_neurons import (
    CubaLeakyIntegrateAndFire,
    CubaLeakyIntegrator,
    IntegrateAndFire,
    Integrator,
    LeakyIntegrateAndFire,
    LeakyIntegrator,
    Threshold,
)
from .surrogate import (
    ATan,
    FastSigmoid,
    Sigmoid,
    SpikeLinear,
    StraightThrough,
    Surrogate,
    Triangular,
    get_surrogate,
    heaviside,
    surrogate_names,
)

__all__ = [
    "LIF",
    "NoReset",
    "Adaptive",
    "Cooldown",
    "Discontinuous",
    "Integrator",
    "IntegrateAndFire",
    "LeakyIntegrator",
    "LeakyIntegrateAndFire",
    "CubaLeakyIntegrator",
    "CubaLeakyIntegrateAndFire",
    "Threshold",
    "NeuronFactory",
    "Surrogate",
    "SpikeLinear",
    "FastSigmoid",
    "ATan",
    "Triangular",
    "Sigmoid",
    "StraightThrough",
    "get_surrogate",
    "surrogate_names",
    "heaviside",
    "functional",
    "nir_functional",
    "fused",
    "use_backend",
    "set_backend",
]
