"""``Network``: a graph of named layers, as a factory. Building it compiles the graph
(``compiler``) and runs it with a ``NetworkRunner`` (``network_runner``)."""

from __future__ import annotations

from .._factory import ModuleFactory
from ..errors import GraphError
from .compiler import compile_network, fixed_out_shape
from .network_runner import NetworkRunner
from .nodes import Input, Node, Placeholder

__all__ = ["Network"]


class Network(ModuleFactory):
    """A graph of layers. Attributes are layers; ``n.input`` is the input; ``n.output`` is required.

    >>> import torch
    >>> from rnnbuilder import nn, snn
    >>> n = Network()
    >>> n.output = Placeholder()
    >>> n.output = n.input.stack(n.output).apply(nn.Linear(16), snn.LIF())
    >>> out, state = n.make_model((4,))(torch.rand(10, 2, 4))
    >>> tuple(out.shape)
    (10, 2, 16)
    """

    def __init__(self):
        object.__setattr__(self, "_names", {})
        object.__setattr__(self, "_input", Input())

    @property
    def input(self) -> Input:
        """The network's input node."""
        return self._input

    @property
    def layers(self) -> dict[str, Node]:
        """The named nodes, in the order they were assigned."""
        return dict(self._names)

    def __setattr__(self, name: str, value) -> None:
        if name == "input":
            raise GraphError("n.input is the network's input; it can't be reassigned")
        if name.startswith("_"):
            raise GraphError(f"layer names must not start with '_', got {name!r}")
        if not isinstance(value, Node):
            raise GraphError(
                f"Network attributes are layers, got {type(value).__name__} for {name!r}; "
                f"build one with n.input.apply(...)"
            )
        current = self._names.get(name)
        if isinstance(current, Placeholder) and current.layer is None and not isinstance(value, Placeholder):
            current.assign(value)
        if isinstance(value, Placeholder) and value.hint is None:
            value.hint = name
        self._names[name] = value

    def __getattr__(self, name: str) -> Node:
        names = self.__dict__.get("_names", {})
        if name in names:
            return names[name]
        raise AttributeError(f"Network has no layer {name!r}; its layers are: {', '.join(names) or 'none yet'}")

    def __delattr__(self, name: str) -> None:
        if name not in self._names:
            raise AttributeError(f"Network has no layer {name!r}")
        del self._names[name]

    def _build(self, in_shape):
        return NetworkRunner(in_shape, compile_network(self, in_shape))

    def _fixed_out_shape(self):
        return fixed_out_shape(self)

    def __repr__(self):
        return f"Network({', '.join(self._names)})"
