"""The NIR neuron family on both sides of the conversion: each NIR neuron node type and the
``rnnbuilder.snn`` factory that takes the node's parameters under the same names (and ``dt``)."""

from __future__ import annotations

from dataclasses import fields

import nir

from .. import snn

__all__ = ["NEURONS", "parameter_names"]

NEURONS: dict[type, type] = {
    nir.I: snn.Integrator,
    nir.IF: snn.IntegrateAndFire,
    nir.LI: snn.LeakyIntegrator,
    nir.LIF: snn.LeakyIntegrateAndFire,
    nir.CubaLI: snn.CubaLeakyIntegrator,
    nir.CubaLIF: snn.CubaLeakyIntegrateAndFire,
}
"""NIR neuron type -> rnnbuilder factory."""


def parameter_names(factory: type) -> tuple[str, ...]:
    """The NIR parameters of a neuron factory: its arguments but ``dt`` and ``spike_function``, in order.

    >>> parameter_names(snn.LeakyIntegrateAndFire)
    ('tau', 'r', 'v_leak', 'v_threshold', 'v_reset')
    """
    return tuple(f.name for f in fields(factory) if f.name not in ("dt", "spike_function"))
