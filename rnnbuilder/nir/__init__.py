"""NIR, the Neuromorphic Intermediate Representation (https://neuroir.org): ``from_nir`` imports a
graph as a rnnbuilder factory (``input_shape`` is the shape to build it for), and ``to_nir`` exports
a model or factory as a graph.

Needs the ``nir`` extra (``pip install rnnbuilder-sim[nir]``); ``import rnnbuilder`` alone does not
import ``nir``.
"""

from ._export import to_nir
from ._import import from_nir, input_shape

__all__ = ["from_nir", "input_shape", "to_nir"]
