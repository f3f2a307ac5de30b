"""Import from NIR: ``from_nir(graph_or_path, *, dt) -> Network``, a factory with the graph's weights.

Each NIR node becomes one layer of a ``Network``, named after the node (characters that a layer
name can't hold, such as the dots of snnTorch's ``"rlif.lif"``, become ``_``); the edges into a
node are summed, as NIR sums them. Build it for the shape of the graph's ``Input`` node:
``from_nir(graph, dt=1e-4).make_model(shape)``; every model built starts from the graph's weights,
which stay trainable.

==================================  ===============================================================
NIR                                 rnnbuilder
==================================  ===============================================================
``Input``, ``Output``               the network's input and ``output`` (exactly one of each)
``Affine``, ``Linear``              ``nn.Affine(weight, bias)`` (``bias=None`` for ``Linear``)
``Scale``                           ``nn.Scale(scale)``
``Conv1d``, ``Conv2d``              ``nn.Conv1d``, ``nn.Conv2d`` with ``weight`` and ``bias`` tensors
``AvgPool2d``, ``SumPool2d``        ``nn.AvgPool2d``, ``nn.SumPool2d``
``Flatten``                         ``nn.Flatten`` (NIR counts data dims from 0, as rnnbuilder)
``Delay``                           ``nn.Delay(steps)``, ``steps = delay / dt`` (whole timesteps)
``Threshold``                       ``snn.Threshold(v_threshold=threshold)``
``I``, ``IF``, ``LI``, ``LIF``,     ``snn.Integrator``, ``snn.IntegrateAndFire``,
``CubaLI``, ``CubaLIF``             ``snn.LeakyIntegrator``, ``snn.LeakyIntegrateAndFire``,
                                    ``snn.CubaLeakyIntegrator``, ``snn.CubaLeakyIntegrateAndFire``:
                                    the node's parameters under the same names, and ``dt``
a nested ``NIRGraph``               its nodes, inlined as ``"<graph>.<node>"``
==================================  ===============================================================

A parameter array with one element becomes a number, any other a tensor of its own shape (per
neuron). ``dt`` is the length of one timestep in the graph's time unit: snnTorch's exporter writes
time constants for ``dt = 1e-4``, Norse's for its own ``dt`` (``1e-3`` by default).

A cycle of edges (a recurrent layer, such as snnTorch's ``RLeaky``: a ``LIF`` and an ``Affine``
that feeds it its own spikes) reads a neuron's output of the previous timestep: that neuron's
layer fills a ``Placeholder``, which starts at zero. Each cycle is cut at the first of its neurons,
counting from the input; a cycle without a neuron is an error.

Nothing is dropped: a node type, a field or a value that has no rnnbuilder form, a graph without
exactly one ``Input`` and one ``Output``, a node that isn't on a path from the input to the output,
and a declared ``input_type``/``output_type`` that disagrees with the shapes the weights give raise
a ``GraphError`` or ``ShapeError`` naming the node.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import fields, replace

import nir
import numpy as np
import torch

from .. import nn, snn
from .._factory import ModuleFactory
from .._graph.compiler import compile_network
from .._graph.network import Network
from .._graph.nodes import Node, Placeholder
from ..errors import GraphError, ShapeError
from ..snn import Surrogate
from ._neurons import NEURONS, parameter_names

__all__ = ["from_nir", "input_shape"]

_NOT_PARAMETERS = {"input_type", "output_type", "metadata"}
"""Fields every NIR node has: its types (checked against the built shapes) and free-form metadata."""
_PASS_THROUGH = (nir.Input, nir.Output)
_DELAY_TOLERANCE = 1e-5
"""How far from a whole number of timesteps (relative) a ``Delay`` may be: float rounding of delay / dt."""


def from_nir(
    graph_or_path: nir.NIRGraph | str | os.PathLike, *, dt: float, spike_function: Surrogate | None = None
) -> Network:
    """The ``Network`` factory of a NIR graph, or of a NIR file (``nir.write``'s HDF5) at a path.

    ``dt`` is one timestep in the graph's time unit (see the module docs). ``spike_function`` is
    the surrogate of every spiking layer (``IF``, ``LIF``, ``CubaLIF``, ``Threshold``; NIR has
    none): ``None`` keeps the layers' default, ``snn.SpikeLinear()``. Build the network for the
    shape of the graph's ``Input`` node.

    >>> import nir, numpy as np, torch
    >>> graph = nir.NIRGraph.from_list(nir.Affine(np.eye(2, dtype=np.float32), np.ones(2, dtype=np.float32)),
    ...                                nir.Scale(np.array([2.0, -1.0], dtype=np.float32)))
    >>> out, _ = from_nir(graph, dt=1.0).make_model((2,))(torch.zeros(1, 1, 2))
    >>> out.tolist()
    [[[2.0, -1.0]]]
    """
    graph = _graph(graph_or_path, "from_nir")
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number (one timestep in the graph's time unit), got {dt!r}")
    nodes, edges = _inline(graph)
    return _Importer(nodes, edges, float(dt), spike_function).network()


def input_shape(graph_or_path: nir.NIRGraph | str | os.PathLike) -> tuple[int, ...]:
    """The data shape (no time or batch dims) that a NIR graph's ``Input`` node declares: the shape
    to build ``from_nir``'s network for, and a session's ``input_shape``.

    >>> import nir, numpy as np
    >>> input_shape(nir.NIRGraph.from_list(nir.Affine(np.ones((3, 2), dtype=np.float32), np.zeros(3))))
    (2,)
    """
    graph = _graph(graph_or_path, "input_shape")
    inputs = [key for key, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise GraphError(f"a NIR graph needs exactly one Input node to declare its shape, found {inputs or 'none'}")
    shape = _declared(graph.nodes[inputs[0]].output_type)
    if shape is None:
        raise ShapeError(f"NIR Input node {inputs[0]!r} declares no shape; give the input shape yourself")
    return shape


def _graph(graph_or_path, caller: str) -> nir.NIRGraph:
    """The graph, read from its file where a path is given."""
    if isinstance(graph_or_path, (str, os.PathLike)):
        # Types are checked here, against the shapes the weights give, with errors that name the node.
        graph_or_path = nir.read(graph_or_path, type_check=False)
    if not isinstance(graph_or_path, nir.NIRGraph):
        raise TypeError(f"{caller} takes a nir.NIRGraph or the path of a NIR file, got {type(graph_or_path).__name__}")
    return graph_or_path


def _inline(graph: nir.NIRGraph, prefix: str = "") -> tuple[dict[str, nir.NIRNode], list[tuple[str, str]]]:
    """The graph's nodes and edges with every nested ``NIRGraph`` replaced by its nodes, named
    ``"<graph>.<node>"``; the edges into (out of) a nested graph go to (come from) what its Input
    feeds (its Output reads)."""
    nodes: dict[str, nir.NIRNode] = {}
    edges = [(prefix + a, prefix + b) for a, b in graph.edges]
    for key, node in graph.nodes.items():
        name = prefix + key
        if not isinstance(node, nir.NIRGraph):
            nodes[name] = node
            continue
        inner_nodes, inner_edges = _inline(node, f"{name}.")
        ends = {kind: [k for k, n in node.nodes.items() if isinstance(n, kind)] for kind in _PASS_THROUGH}
        if any(len(found) != 1 for found in ends.values()):
            raise GraphError(
                f"NIR node {name!r} is a subgraph with {len(ends[nir.Input])} Input and {len(ends[nir.Output])} "
                "Output nodes; rnnbuilder inlines subgraphs with exactly one of each"
            )
        entry, exit_ = (f"{name}.{ends[kind][0]}" for kind in _PASS_THROUGH)
        del inner_nodes[entry], inner_nodes[exit_]
        feeds = [b for a, b in inner_edges if a == entry]
        reads = [a for a, b in inner_edges if b == exit_]
        inner_edges = [(a, b) for a, b in inner_edges if entry not in (a, b) and exit_ not in (a, b)]
        outer = []
        for a, b in edges:
            sources = reads if a == name else [a]
            targets = feeds if b == name else [b]
            outer.extend((s, t) for s in sources for t in targets)
        edges = outer + inner_edges
        nodes.update(inner_nodes)
    return nodes, edges


class _Importer:
    """Turns a flat NIR graph (no nested graphs) into a ``Network``."""

    def __init__(self, nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]], dt: float, spike_function):
        self.nodes, self.dt, self.spike_function = nodes, dt, spike_function
        for key, node in nodes.items():
            if not isinstance(node, nir.NIRNode):
                raise GraphError(f"NIR node {key!r} is {node!r}, not a NIR node (an exporter found no NIR form for it)")
        for a, b in edges:
            for end in (a, b):
                if end not in nodes:
                    raise GraphError(f"NIR edge ({a!r}, {b!r}) names {end!r}, which is no node of the graph")
        self.edges = list(dict.fromkeys(edges))
        self.input = self._single(nir.Input)
        self.output = self._single(nir.Output)
        self.sources = {key: [a for a, b in self.edges if b == key] for key in nodes}
        self.targets = {key: [b for a, b in self.edges if a == key] for key in nodes}
        if self.sources[self.input]:
            raise GraphError(f"NIR Input node {self.input!r} has incoming edges from {self.sources[self.input]}")
        self.first_seen = {key: i for i, key in enumerate(_reachable(self.input, self.targets))}
        """Each node reached from the input, by its breadth-first order: how nodes are taken in turn."""
        self._check_paths()
        self.names = _layer_names([k for k in nodes if k not in (self.input, self.output)])

    def network(self) -> Network:
        delayed = self._delayed_edges()
        net = Network()
        placeholders: dict[str, Placeholder] = {}
        for source in dict.fromkeys(a for a, _ in delayed):
            # Not a network attribute: the layer that fills it keeps the node's name, even as the output.
            placeholders[source] = Placeholder()
            placeholders[source].hint = f"{self.names[source]}_previous"
        values: dict[str, Node] = {self.input: net.input}
        for key in self._order(delayed):
            inputs = [placeholders[a] if (a, key) in delayed else values[a] for a in self.sources[key]]
            combined = inputs[0].sum(*inputs[1:]) if len(inputs) > 1 else inputs[0]
            if key != self.output:
                values[key] = combined.apply(self._factory(key), placeholder=placeholders.get(key))
                setattr(net, self.names[key], values[key])
            elif self.sources[key] != [self.input]:
                # The output is the layer it reads (under both names), or the sum of those it reads.
                net.output = values[self.sources[key][0]] if len(inputs) == 1 else combined.apply(nn.Identity())
            else:
                net.output = net.input.apply(nn.Identity())
        self._check_types(net)
        return net

    def _single(self, kind: type) -> str:
        found = [key for key, node in self.nodes.items() if isinstance(node, kind)]
        if len(found) != 1:
            raise GraphError(
                f"the NIR graph has {len(found)} {kind.__name__} nodes ({', '.join(map(repr, found)) or 'none'}); "
                f"rnnbuilder imports graphs with exactly one"
            )
        return found[0]

    def _check_paths(self) -> None:
        leading = set(_reachable(self.output, self.sources))
        stray = [key for key in self.nodes if key not in self.first_seen or key not in leading]
        if stray:
            raise GraphError(
                f"NIR node(s) {', '.join(map(repr, stray))} are not on a path from the input {self.input!r} to the "
                f"output {self.output!r}; rnnbuilder imports every node, so remove them or connect them"
            )

    def _delayed_edges(self) -> set[tuple[str, str]]:
        """The edges read one timestep late: in each cycle, those out of its first neuron(s)."""
        delayed: set[tuple[str, str]] = set()
        for component in _cycles(self.nodes, self.edges):
            inside = set(component)
            neurons = sorted(
                (k for k in component if isinstance(self.nodes[k], tuple(NEURONS))), key=self.first_seen.get
            )
            for neuron in neurons:
                if not _cycles(component, self._edges_within(inside, delayed)):
                    break
                delayed.update((neuron, b) for b in self.targets[neuron] if b in inside)
            if _cycles(component, self._edges_within(inside, delayed)):
                raise GraphError(
                    f"the cycle through NIR nodes {', '.join(map(repr, component))} has no neuron whose previous "
                    f"output it could read; rnnbuilder reads a cycle one timestep late at a neuron "
                    f"({', '.join(t.__name__ for t in NEURONS)})"
                )
        return delayed

    def _edges_within(self, inside: set[str], delayed: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """The edges between nodes of ``inside`` that are read at the same timestep."""
        return [e for e in self.edges if e[0] in inside and e[1] in inside and e not in delayed]

    def _order(self, delayed: set[tuple[str, str]]) -> list[str]:
        """Every node but the input, each after the nodes it reads at the same timestep."""
        first_seen = self.first_seen
        waiting = {k: sum((a, k) not in delayed for a in self.sources[k]) for k in self.nodes}
        ready, order = sorted((k for k, n in waiting.items() if not n), key=first_seen.get), []
        while ready:
            key = ready.pop(0)
            order.append(key)
            for b in self.targets[key]:
                if (key, b) not in delayed:
                    waiting[b] -= 1
                    if not waiting[b]:
                        ready.append(b)
            ready.sort(key=first_seen.get)
        return [key for key in order if key != self.input]

    def _factory(self, key: str) -> ModuleFactory:
        node = self.nodes[key]
        # By the class's ancestry: a subclass is imported as its NIR type if it adds no fields.
        convert = next((_CONVERTERS[kind] for kind in type(node).__mro__ if kind in _CONVERTERS), None)
        if convert is None:
            raise GraphError(
                f"NIR node {key!r} is a {type(node).__name__}, which rnnbuilder does not import; it imports "
                f"{', '.join(sorted(t.__name__ for t in (*_CONVERTERS, *_PASS_THROUGH)))}"
            )
        consumed, make = convert
        extra = [f.name for f in fields(node) if f.name not in _NOT_PARAMETERS and f.name not in consumed]
        if extra:
            raise GraphError(
                f"NIR node {key!r} ({type(node).__name__}) has {', '.join(map(repr, extra))}, which rnnbuilder "
                "does not import"
            )
        try:
            factory = make(node, self.dt)
            if self.spike_function is not None and "spike_function" in {f.name for f in fields(factory)}:
                factory = replace(factory, spike_function=self.spike_function)
            return factory
        except (ValueError, TypeError) as e:
            raise GraphError(f"NIR node {key!r} ({type(node).__name__}): {e}") from None

    def _check_types(self, net: Network) -> None:
        """Build the network's shapes for the Input's shape; compare each node's declared types."""
        in_shape = _declared(self.nodes[self.input].output_type)
        if in_shape is None:
            raise ShapeError(f"NIR Input node {self.input!r} has no shape; rnnbuilder needs it to check the graph")
        try:
            with torch.device("meta"):
                compiled = compile_network(net, in_shape)
        except (ShapeError, GraphError) as e:
            renamed = {key: name for key, name in self.names.items() if key != name}
            aka = f" (layers named for NIR nodes {renamed})" if renamed else ""
            raise type(e)(f"the NIR graph does not fit together: {e}{aka}") from None
        by_name = {info.name: info for info in compiled.nodes}
        shapes = {self.input: in_shape, self.output: compiled.nodes[compiled.output].shape}
        shapes.update({key: by_name[name].shape for key, name in self.names.items()})
        for key, node in self.nodes.items():
            received = [shapes[a] for a in self.sources[key]]
            for kind, shape in (("input", received[0] if received else in_shape), ("output", shapes[key])):
                declared = _declared(getattr(node, f"{kind}_type"))
                if declared and kind == "input" and isinstance(node, (nir.Conv1d, nir.Conv2d)):
                    # NIR 1.0.8 declares a convolution's input channels as the weight's, per group.
                    declared = (declared[0] * int(node.groups), *declared[1:])
                if declared is not None and declared != tuple(shape):
                    raise ShapeError(
                        f"NIR node {key!r} ({type(node).__name__}) declares {kind} shape {declared}, but its "
                        f"{'inputs give' if kind == 'input' else 'layer gives'} {tuple(shape)}"
                    )


def _declared(types) -> tuple[int, ...] | None:
    """The shape a node's ``input_type``/``output_type`` declares; None where it declares none
    (no type, or an empty one, as nodes with scalar parameters have)."""
    if not types:
        return None
    (shape,) = types.values()
    if shape is None or np.size(shape) == 0:
        return None
    return tuple(int(d) for d in np.asarray(shape).reshape(-1))


def _reachable(start: str, neighbours: dict[str, list[str]]) -> list[str]:
    """The nodes reachable from ``start``, breadth first, ``start`` included."""
    found = [start]
    for key in found:
        found.extend(n for n in neighbours[key] if n not in found)
    return found


def _cycles(nodes, edges: list[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of (nodes, edges) that hold a cycle, each as listed in ``nodes``."""
    targets = {k: [b for a, b in edges if a == k] for k in nodes}
    reach = {k: set(_reachable(k, targets)) for k in nodes}
    components, seen = [], set()
    for k in nodes:
        if k in seen:
            continue
        component = [m for m in nodes if m in reach[k] and k in reach[m]]
        seen.update(component)
        if len(component) > 1 or k in targets[k]:
            components.append(component)
    return components


def _layer_names(keys: list[str]) -> dict[str, str]:
    """A network layer name for every NIR node key: dots and other characters a torch module name
    can't hold become ``_``, and names that would clash (with each other, ``input``, ``output``,
    or a leading ``_``) get a suffix."""
    names: dict[str, str] = {}
    taken = {"input", "output"}
    for key in keys:
        base = re.sub(r"\W", "_", key)
        base = f"n{base}" if base.startswith("_") or not base else base
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        names[key] = name
    return names


def _array(value, dtype=None) -> np.ndarray:
    """A NIR node's field as a NumPy array: exporters store NumPy arrays, numbers, sequences, and
    torch tensors (snnTorch's and Norse's convolution weights, Norse's neuron parameters)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.array(value, dtype=dtype)


def _parameter(value) -> float | torch.Tensor:
    """A NIR parameter array as a number (one element) or a float64 tensor of its shape: a neuron
    computes its coefficients in float64 and rounds them once, so a float64 graph loses nothing."""
    array = _array(value, np.float64)
    return float(array.reshape(-1)[0]) if array.size == 1 else torch.from_numpy(array)


def _tensor(value) -> torch.Tensor:
    return torch.from_numpy(_array(value, np.float32))


def _ints(value) -> int | tuple[int, ...]:
    """A NIR size (int, sequence or array) as an int or a tuple of ints."""
    array = _array(value)
    if array.ndim == 0:
        return int(array)
    return tuple(int(v) for v in array.reshape(-1))


def _neuron(factory: type):
    names = parameter_names(factory)

    def make(node, dt):
        return factory(**{name: _parameter(getattr(node, name)) for name in names}, dt=dt)

    return names, make


def _affine(node, dt) -> ModuleFactory:
    weight, bias = _tensor(node.weight), getattr(node, "bias", None)
    if weight.dim() != 2:
        raise ValueError(f"weight of shape {tuple(weight.shape)} (only 2-D weights, (out, in), are imported)")
    return nn.Affine(weight, None if bias is None else _tensor(bias))


def _conv(factory: type, rank: int):
    def make(node, dt):
        weight = _array(node.weight)
        if weight.ndim != rank + 2:
            raise ValueError(f"weight of shape {weight.shape}; a {rank}-D convolution's has {rank + 2} dims")
        return factory(
            out_channels=weight.shape[0],
            kernel_size=tuple(weight.shape[2:]),
            stride=_ints(node.stride),
            padding=node.padding if isinstance(node.padding, str) else _ints(node.padding),
            dilation=_ints(node.dilation),
            groups=int(node.groups),
            bias=False if node.bias is None else _tensor(node.bias),
            weight=_tensor(weight),
        )

    # The spatial input_shape is checked with input_type, which NIR derives from it.
    return ("input_shape", "weight", "stride", "padding", "dilation", "groups", "bias"), make


def _delay(node, dt) -> ModuleFactory:
    steps = _array(node.delay, np.float64) / dt
    whole = np.round(steps)
    if not np.allclose(steps, whole, rtol=_DELAY_TOLERANCE, atol=_DELAY_TOLERANCE) or (whole < 0).any():
        raise ValueError(
            f"delay {_array(node.delay).tolist()} is not a non-negative whole number of timesteps of dt={dt}"
        )
    return nn.Delay(int(whole.reshape(-1)[0]) if whole.size == 1 else torch.from_numpy(whole.astype(np.int64)))


_CONVERTERS: dict[type, tuple[tuple[str, ...], Callable[[nir.NIRNode, float], ModuleFactory]]] = {
    nir.Affine: (("weight", "bias"), _affine),
    nir.Linear: (("weight",), _affine),
    nir.Scale: (("scale",), lambda node, dt: nn.Scale(_tensor(node.scale))),
    nir.Conv1d: _conv(nn.Conv1d, 1),
    nir.Conv2d: _conv(nn.Conv2d, 2),
    nir.AvgPool2d: (
        ("kernel_size", "stride", "padding"),
        lambda node, dt: nn.AvgPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding)),
    ),
    nir.SumPool2d: (
        ("kernel_size", "stride", "padding"),
        lambda node, dt: nn.SumPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding)),
    ),
    nir.Flatten: (("start_dim", "end_dim"), lambda node, dt: nn.Flatten(int(node.start_dim), int(node.end_dim))),
    nir.Delay: (("delay",), _delay),
    nir.Threshold: (("threshold",), lambda node, dt: snn.Threshold(v_threshold=_parameter(node.threshold))),
    **{kind: _neuron(factory) for kind, factory in NEURONS.items()},
}
