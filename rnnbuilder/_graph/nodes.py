"""The nodes a ``Network`` is built from (``Input``, ``Layer``, ``Placeholder``, ``Stack``, ``Sum``,
``List``) and ``Sequential``, the factory of factories applied one after another."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch

from .._factory import ModuleFactory
from .._runner import SequentialRunner
from ..errors import GraphError

__all__ = [
    "InitialValue",
    "Node",
    "LayerBase",
    "Input",
    "Layer",
    "Placeholder",
    "InputBase",
    "Stack",
    "Sum",
    "List",
    "Sequential",
]

InitialValue = Callable[[tuple[int, ...]], torch.Tensor]

_DEFINITIONS = itertools.count()
"""Stamps nodes in the order they are defined: networks build their layers in that order."""


class Node:
    """A value in a ``Network``: its input, a layer's output, a placeholder or a combination."""

    kind: str = "node"

    def __new__(cls, *args, **kwargs):
        node = super().__new__(cls)
        node._defined = next(_DEFINITIONS)
        return node

    def inputs(self) -> list[Node]:
        """The nodes this one reads at the same timestep."""
        return []

    def apply(self, *factories: ModuleFactory, placeholder: Placeholder | None = None) -> Layer:
        """A new layer that applies ``factories`` (or one iterable of them) in order to this node's
        output; ``placeholder``, if given, will hold the new layer's previous output."""
        return Layer(self, _factory_list(factories, "apply"), placeholder=placeholder)

    def stack(self, *nodes: Node) -> Stack:
        """This node's output concatenated with ``nodes``' (see ``Stack`` for how shapes combine)."""
        return Stack(self, *nodes)

    def sum(self, *nodes: Node) -> Sum:
        """The elementwise sum of this node's output and ``nodes``' (shapes must be equal)."""
        return Sum(self, *nodes)

    def append(self, *nodes: Node) -> List:
        """A list input ``[this, *nodes]``, for modules that take several inputs."""
        return List(self, *nodes)


class LayerBase(Node):
    """A node that holds one value: the network's input, a layer's output or a placeholder."""


class Input(LayerBase):
    """The input of a ``Network`` (``n.input``)."""

    kind = "input"


class Layer(LayerBase):
    """The output of ``factories`` applied in order to ``input``.

    ``factory_or_factories`` is a factory or an iterable of factories (a list, a generator).
    ``placeholder``, if given, is assigned this layer: it will hold this layer's previous output.
    """

    kind = "layer"

    def __init__(self, input: Node, factory_or_factories, placeholder: Placeholder | None = None):
        _check_node(input, "Layer input")
        factories = _factory_list((factory_or_factories,), "Layer")
        if not factories:
            raise GraphError("a Layer needs at least one factory, e.g. n.input.apply(nn.Linear(10))")
        self.input = input
        self.factories = factories
        if placeholder is not None:
            _check_node(placeholder, "placeholder", Placeholder)
            placeholder.assign(self)

    def inputs(self):
        return [self.input]

    @property
    def factory(self) -> ModuleFactory:
        """The layer's factories as one factory."""
        return self.factories[0] if len(self.factories) == 1 else Sequential(*self.factories)

    def __repr__(self):
        return f"Layer({', '.join(map(repr, self.factories))})"


class Placeholder(LayerBase):
    """The previous timestep's output of the layer assigned to it.

    ``initial_value(shape)`` gives its value before the first timestep for ``shape`` = (batch,
    *data); by default zeros, or the assigned neuron layer's own initial output. Assign a layer
    with ``n.name = Placeholder()`` followed by ``n.name = <layer>``, or ``Layer(..., placeholder=p)``.
    """

    kind = "placeholder"

    def __init__(self, initial_value: InitialValue | None = None):
        if initial_value is not None and not callable(initial_value):
            raise GraphError(
                f"Placeholder initial_value must be a callable from shape to tensor such as "
                f"rnnbuilder.initial.zeros, got {initial_value!r}"
            )
        self.initial_value = initial_value
        self.layer: Node | None = None
        self.hint: str | None = None

    def assign(self, node: Node) -> None:
        """Make this placeholder hold ``node``'s previous output."""
        _check_node(node, "a placeholder's layer")
        if isinstance(node, Placeholder):
            raise GraphError("a placeholder must be assigned a layer, not another placeholder")
        if self.layer is not None and self.layer is not node:
            raise GraphError(f"placeholder {self.hint or ''!s} is already assigned to {self.layer!r}")
        self.layer = node

    def __repr__(self):
        return f"Placeholder({self.hint or ''})"


class InputBase(Node):
    """A combination of nodes that a layer reads as its input: ``Stack``, ``Sum`` or ``List``."""

    def __init__(self, *nodes: Node):
        if not nodes:
            raise GraphError(f"{type(self).__name__} needs at least one input")
        for node in nodes:
            _check_node(node, f"{type(self).__name__} input")
        self.nodes = list(nodes)

    def inputs(self):
        return list(self.nodes)


class Stack(InputBase):
    """Inputs concatenated along the first data dim where their other dims are equal, else flattened.

    Shapes with fewer dims count as having leading 1s: (8, 6) stacked with (64, 8, 6) gives
    (65, 8, 6). Where the dims after the first differ, every input is flattened and the results
    are concatenated: (64, 8, 6) stacked with (512,) gives (3584,). Both give the same values in
    the same order as flattening first, as rnnbuilder 0.1.1 does.
    """

    kind = "stack"


class Sum(InputBase):
    """The elementwise sum of inputs of equal shape."""

    kind = "sum"


class List(InputBase):
    """The inputs as a list, for modules that take several inputs (see ``custom``)."""

    kind = "list"


class Sequential(ModuleFactory):
    """Factories applied one after another, given as arguments or as one iterable.

    >>> from rnnbuilder import nn, snn
    >>> model = Sequential(nn.Linear(8), snn.LIF(), nn.Linear(2)).make_model((4,))
    >>> model.out_shape
    (2,)
    """

    def __init__(self, *factories: ModuleFactory):
        factories = _factory_list(factories, "Sequential")
        if not factories:
            raise GraphError("Sequential needs at least one factory")
        self.factories = factories

    def _build(self, in_shape):
        runners = []
        for f in self.factories:
            runners.append(f._build(in_shape))
            in_shape = runners[-1].out_shape
        return runners[0] if len(runners) == 1 else SequentialRunner(runners[0].in_shape, runners)

    def _fixed_out_shape(self):
        shape = None
        for f in self.factories:
            shape = f.out_shape(shape)
        return shape

    def __repr__(self):
        return f"Sequential({', '.join(map(repr, self.factories))})"


def _factory_list(items: tuple, owner: str) -> list[ModuleFactory]:
    """``items`` as a list of factories: factories, or one iterable of them (a list, a generator)."""
    if len(items) == 1 and isinstance(items[0], Iterable) and not isinstance(items[0], (ModuleFactory, str, bytes)):
        items = tuple(items[0])
    for f in items:
        if not isinstance(f, ModuleFactory):
            raise GraphError(f"{owner} takes factories such as nn.Linear(10), got {f!r}")
    return list(items)


def _check_node(node, what: str, cls: type = Node) -> None:
    if not isinstance(node, cls):
        raise GraphError(f"{what} must be a {cls.__name__} (a layer of a Network), got {node!r}")
