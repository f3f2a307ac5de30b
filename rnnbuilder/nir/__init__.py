"""NIR, the Neuromorphic Intermediate Representation (https://neuroir.org): ``from_nir`` imports a
graph as a rnnbuilder factory, and ``to_nir`` exports a model or factory as a graph.

Needs the ``nir`` extra (``pip install rnnbuilder-sim[nir]``); ``import rnnbuilder`` alone does not
import ``nir``.
"""

from ._export import to_nir
from ._import import from_nir

__all__ = ["from_nir", "to_nir"]
