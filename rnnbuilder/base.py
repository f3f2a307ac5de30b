"""The base classes under rnnbuilder 0.1.1's names, for code that subclasses or checks against them.

=================  ===========================  ===================================================
0.1.1 name         here                         what it is
=================  ===========================  ===================================================
``ModuleFactory``  ``rnnbuilder.ModuleFactory``  a specification; ``make_model(in_shape)`` builds it
``LayerInput``     ``rnnbuilder.Node``           anything a ``Layer`` can read
``LayerBase``      ``LayerBase``                 the input, a layer or a placeholder
``InputBase``      ``InputBase``                 ``Stack``, ``Sum`` or ``List``
``OuterModule``    ``rnnbuilder.Model``          what ``make_model`` gives
=================  ===========================  ===================================================

>>> import rnnbuilder as rb
>>> n = rb.Network()
>>> isinstance(n.input, LayerBase), isinstance(n.input.stack(n.input), InputBase)
(True, True)
"""

from ._factory import Model as OuterModule
from ._factory import ModuleFactory
from ._graph.nodes import InputBase, LayerBase
from ._graph.nodes import Node as LayerInput

__all__ = ["ModuleFactory", "LayerInput", "LayerBase", "InputBase", "OuterModule"]
