"""rnnbuilder: recurrent and spiking PyTorch networks from factories, keras style.

Factories are specifications: ``make_model(in_shape)`` builds an independent ``torch.nn.Module``
whose input sizes are inferred. Models map (time, batch, *in_shape) to (time, batch, *out_shape)
and take and return their state explicitly: ``out, state = model(x, state)``.

>>> import torch
>>> import rnnbuilder as rb
>>> from rnnbuilder import nn, snn
>>> n = rb.Network()
>>> n.output = rb.Placeholder()
>>> n.output = n.input.stack(n.output).apply(nn.Linear(128), snn.LIF(tau=5))
>>> model = rb.Sequential(n, nn.Linear(10)).make_model((64,))
>>> out, state = model(torch.rand(100, 32, 64))
>>> tuple(out.shape)
(100, 32, 10)
>>> more, state = model(torch.rand(50, 32, 64), state)
"""

from . import base, custom, describe, encode, initial, nn, plot, porting, rnn, snn, spec
from ._factory import INPUT_MODES, Model, ModuleFactory
from ._graph.network import Network
from ._graph.nodes import Input, Layer, List, Node, Placeholder, Sequential, Stack, Sum
from ._tree import last_state, named_leaves, replace_leaves
from .errors import GraphError, RnnbuilderError, ShapeError, SpecError
from .stacked import Stacked

__version__ = "0.1.0"

__all__ = [
    "ModuleFactory",
    "Model",
    "INPUT_MODES",
    "last_state",
    "named_leaves",
    "replace_leaves",
    "Stacked",
    "Network",
    "Node",
    "Input",
    "Layer",
    "Placeholder",
    "Stack",
    "Sum",
    "List",
    "Sequential",
    "RnnbuilderError",
    "GraphError",
    "ShapeError",
    "SpecError",
    "nn",
    "rnn",
    "snn",
    "base",
    "custom",
    "describe",
    "encode",
    "plot",
    "initial",
    "spec",
    "porting",
    "__version__",
]
