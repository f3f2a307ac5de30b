"""Spiking neurons and surrogate spike functions.

Neurons: ``LIF``, ``NoReset``, ``Adaptive``, ``Cooldown``, ``Discontinuous``. Surrogates:
``SpikeLinear`` (the default), ``FastSigmoid``, ``ATan``, ``Triangular``, ``Sigmoid``,
``StraightThrough``; ``get_surrogate(name, **params)`` looks one up by name. The pure update
functions live in ``rnnbuilder.snn.functional``.
"""

from . import functional
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
]
