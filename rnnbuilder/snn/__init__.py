"""Spiking neurons and surrogate spike functions.

Neurons: ``LIF``, ``NoReset``, ``Adaptive``, ``Cooldown``, ``Discontinuous``. Surrogates:
``SpikeLinear`` (the default), ``FastSigmoid``, ``ATan``, ``Triangular``, ``Sigmoid``,
``StraightThrough``; ``get_surrogate(name, **params)`` looks one up by name. The pure update
functions live in ``rnnbuilder.snn.functional``. A neuron layer given a whole sequence runs fused
(one forward and one backward over all timesteps; Triton kernels on CUDA), bit-identical to the
step loop; ``use_backend("reference")`` or ``RNNBUILDER_REFERENCE=1`` forces the step loop.
"""

from . import functional, fused
from .fused import set_backend, use_backend
from .neurons import LIF, Adaptive, Cooldown, Discontinuous, NeuronFactory, NoReset
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
    "fused",
    "use_backend",
    "set_backend",
]
