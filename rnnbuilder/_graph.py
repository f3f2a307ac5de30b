"""Graph building: ``Network``, its nodes (``Layer``, ``Placeholder``, ``Stack``, ``Sum``, ``List``)
and ``Sequential``.

A ``Placeholder`` stands for the previous timestep's output of the layer assigned to it. Cycles
through placeholders are found when the network is built (strongly connected components of the
graph in which a placeholder depends on its layer) and run timestep by timestep; everything else
runs over the whole sequence at once.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ._factory import ModuleFactory
from ._record import call_child, child_stepper
from ._runner import Runner, SequentialRunner, Shape
from ._tree import tree_stack
from .errors import GraphError, ShapeError

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
        if "output" not in self._names:
            return None
        order = definition_order(self)
        shape = _infer_shapes(order, _names(self, order), self.input, None)[self._names["output"]]
        return None if isinstance(shape, list) else shape

    def __repr__(self):
        return f"Network({', '.join(self._names)})"


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


@dataclass
class NodeInfo:
    """A node of a compiled network, in topological order; ``inputs`` and ``layer`` are indices."""

    index: int
    kind: str
    name: str
    inputs: list[int]
    shape: Shape
    layer: int | None = None
    initial_value: InitialValue | None = None
    parts: list[Shape] | None = None
    """For a stack whose inputs aren't concatenated as they are: the shape each is viewed as first."""


@dataclass
class CompiledNetwork:
    """A network's nodes in topological order, with names, shapes and an execution plan."""

    nodes: list[NodeInfo]
    runners: dict[str, Runner]
    plan: list[list[int]]
    """Blocks of node indices in execution order; a block of several nodes is a cycle."""
    output: int
    input: int
    cycles: list[list[str]] = field(default_factory=list)


def compile_network(net: Network, in_shape: Shape) -> CompiledNetwork:
    """Find the nodes, check them, name them, infer shapes, build runners and plan the execution."""
    if "output" not in net._names:
        raise GraphError("the Network has no layer named 'output'; assign one, e.g. n.output = n.input.apply(...)")
    order = _topological(net)
    index = {node: i for i, node in enumerate(order)}
    names = _names(net, order)
    for node in order:
        if isinstance(node, Placeholder) and node.layer is None:
            raise GraphError(
                f"placeholder {names[node]!r} was never assigned a layer; after n.{node.hint or 'x'} = Placeholder(), "
                f"assign n.{node.hint or 'x'} = <layer>, or pass it to Layer(..., placeholder=p)"
            )
        if isinstance(node, Input) and node is not net.input:
            raise GraphError("a layer reads the input of another Network; use this network's n.input")
    shapes = _infer_shapes(order, names, net.input, in_shape)
    unknown = [names[node] for node in order if shapes[node] is None and isinstance(node, Placeholder)]
    if unknown:
        raise GraphError(
            f"cannot infer the shape of placeholder(s) {', '.join(map(repr, unknown))}: their layer's size depends "
            f"on their own; start the cycle with a layer of fixed output size, such as nn.Linear(n)"
        )
    output = net._names["output"]
    if isinstance(shapes[output], list):
        raise GraphError("the output layer must give a tensor, not a list; apply a module to the list first")
    # In definition order, so that seeded construction draws the same parameters as rnnbuilder 0.1.1.
    runners = {}
    for node in sorted(order, key=_definition):
        if isinstance(node, Layer):
            runners[names[node]] = node.factory._build(shapes[node.input])
    infos = [
        NodeInfo(
            index=i,
            kind=node.kind,
            name=names[node],
            inputs=[index[d] for d in node.inputs()],
            shape=shapes[node],
            layer=index[node.layer] if isinstance(node, Placeholder) else None,
            initial_value=node.initial_value if isinstance(node, Placeholder) else None,
            parts=_stack_layout([shapes[d] for d in node.inputs()])[1] if isinstance(node, Stack) else None,
        )
        for i, node in enumerate(order)
    ]
    plan = _plan(infos)
    cycles = [[infos[i].name for i in block] for block in plan if len(block) > 1]
    return CompiledNetwork(infos, runners, plan, index[output], index[net.input], cycles)


def _topological(net: Network) -> list[Node]:
    """Every node reachable from the named ones, each after the nodes it reads at the same timestep.

    First the nodes are found (through inputs and through placeholders to their layers), then
    ordered depth-first by their same-timestep inputs only, in the order they were found. Both
    passes are iterative, so long chains don't hit Python's recursion limit.
    """
    found: list[Node] = []
    seen: set[int] = set()
    todo = [net.input, *net._names.values()][::-1]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        delayed = [node.layer] if isinstance(node, Placeholder) and node.layer is not None else []
        todo.extend(reversed(node.inputs() + delayed))
    order: list[Node] = []
    placed: set[int] = set()
    for root in found:
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, inputs_placed = stack.pop()
            if inputs_placed:
                order.append(node)
            elif id(node) not in placed:
                placed.add(id(node))
                stack.append((node, True))
                stack.extend((dep, False) for dep in reversed(node.inputs()))
    return order


def definition_order(net: Network) -> list[Node]:
    """The network's nodes in the order they were made. Each comes after the nodes it reads at the
    same timestep (they had to exist first), so it is also a topological order."""
    return sorted(_topological(net), key=_definition)


def _definition(node: Node) -> int:
    return node._defined


def _names(net: Network, order: list[Node]) -> dict[Node, str]:
    names: dict[Node, str] = {net.input: "input"}
    # A name that first held a placeholder this node fills is the placeholder's; prefer another.
    fills = {(p.hint, id(p.layer)) for p in order if isinstance(p, Placeholder)}
    attributes = sorted(net._names.items(), key=lambda item: (item[0], id(item[1])) in fills)
    for name, node in attributes:
        if node not in names and not isinstance(node, Placeholder):
            names[node] = name
    counts: dict[str, int] = {}
    placeholder_names: set[str] = set()
    for node in order:
        if isinstance(node, Placeholder):
            name = node.hint or "_placeholder"
            while name in placeholder_names:
                counts[name] = counts.get(name, 0) + 1
                name = f"{node.hint or '_placeholder'}_{counts[name]}"
            placeholder_names.add(name)
            names[node] = name
        elif node not in names:
            counts[node.kind] = counts.get(node.kind, -1) + 1
            names[node] = f"_{node.kind}{counts[node.kind]}"
    return names


def _infer_shapes(
    order: list[Node], names: dict[Node, str], input: Input, in_shape: Shape | None
) -> dict[Node, Shape | None]:
    """Shapes by fixed-point iteration: placeholders start unknown (None) until their layer's is known.
    With ``in_shape`` None, what is known comes from layers of fixed output size only."""
    shapes: dict[Node, Shape | None] = {node: None for node in order}
    shapes[input] = in_shape
    for _ in range(len(order) + 2):
        changed = False
        for node in order:
            shape = _node_shape(node, shapes, names)
            if shape != shapes[node]:
                shapes[node], changed = shape, True
        if not changed:
            break
    return shapes


def _node_shape(node: Node, shapes: dict, names: dict) -> Shape | list | None:
    if isinstance(node, Input):
        return shapes[node]
    if isinstance(node, Placeholder):
        return shapes[node.layer]
    if isinstance(node, Layer):
        shape = shapes[node.input]
        for f in node.factories:
            try:
                shape = f.out_shape(shape)
            except ShapeError as e:
                raise ShapeError(f"layer {names[node]!r}: {e}") from None
        return shape
    parts = [shapes[d] for d in node.inputs()]
    if isinstance(node, List):
        return None if any(p is None for p in parts) else parts
    known = [(names[d], p) for d, p in zip(node.inputs(), parts) if p is not None]
    if isinstance(node, Sum):
        for name, shape in known:
            if shape != known[0][1]:
                raise ShapeError(
                    f"sum {names[node]!r}: shapes differ: {known[0][0]!r} gives {known[0][1]}, {name!r} gives {shape}"
                )
        return known[0][1] if known else None
    if len(known) < len(parts):
        return None
    for name, shape in known:
        if isinstance(shape, list):
            raise ShapeError(f"stack {names[node]!r}: {name!r} gives a list; a stack takes tensors")
    return _stack_layout(parts)[0]


def _stack_layout(shapes: list[Shape]) -> tuple[Shape, list[Shape] | None]:
    """A stack's output shape, and the shape each input is viewed as before concatenating along the
    first data dim (None: as it is). Fewer dims count as leading 1s; where the dims after the first
    still differ, every input is flattened (as rnnbuilder 0.1.1 stacks)."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    if all(p[1:] == padded[0][1:] for p in padded):
        out = (sum(p[0] for p in padded), *padded[0][1:])
        return out, None if all(len(s) == rank for s in shapes) else padded
    flat = [(math.prod(s),) for s in shapes]
    return (sum(f[0] for f in flat),), flat


def _plan(nodes: list[NodeInfo]) -> list[list[int]]:
    """Strongly connected components (Tarjan), dependencies first; a placeholder depends on its layer."""

    def deps(i: int) -> list[int]:
        info = nodes[i]
        return info.inputs + ([info.layer] if info.layer is not None else [])

    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    blocks: list[list[int]] = []

    def enter(v: int) -> tuple[int, Iterator[int]]:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        return v, iter(deps(v))

    for root in range(len(nodes)):
        if root in index:
            continue
        work = [enter(root)]
        while work:
            v, pending = work[-1]
            for w in pending:
                if w not in index:
                    work.append(enter(w))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    block = []
                    while not block or block[-1] != v:
                        block.append(stack.pop())
                        on_stack.discard(block[-1])
                    blocks.append(sorted(block))
    return blocks


class NetworkRunner(Runner):
    """Runs a compiled network. The state is ``{"layers": {name: state}, "placeholders": {name: (batch, ...)}}``."""

    def __init__(self, in_shape, compiled: CompiledNetwork):
        super().__init__(in_shape, compiled.nodes[compiled.output].shape)
        self.layers = torch.nn.ModuleDict(compiled.runners)
        self.nodes = compiled.nodes
        self.plan = compiled.plan
        self.output = compiled.output
        self.input = compiled.input
        self.cycles = compiled.cycles
        self.read_later = _read_later(compiled.nodes, compiled.plan, compiled.output)

    def inner_runners(self):
        return list(self.layers.items())

    def _placeholders(self) -> Iterable[NodeInfo]:
        return (info for info in self.nodes if info.kind == "placeholder")

    def initial_state(self, batch_size, device, dtype):
        layers = {name: runner.initial_state(batch_size, device, dtype) for name, runner in self.layers.items()}
        placeholders = {}
        for info in self._placeholders():
            if info.initial_value is not None:
                value = torch.as_tensor(info.initial_value((batch_size, *info.shape)))
                value = value.to(device=device, dtype=dtype).expand(batch_size, *info.shape)
            else:
                value = self._initial_output(self.nodes[info.layer], batch_size, device, dtype)
            placeholders[info.name] = value
        return {"layers": layers, "placeholders": placeholders}

    def initial_output(self, batch_size, device, dtype):
        return self._initial_output(self.nodes[self.output], batch_size, device, dtype)

    def _initial_output(self, info: NodeInfo, batch_size, device, dtype):
        if info.kind == "layer":
            return self.layers[info.name].initial_output(batch_size, device, dtype)
        return torch.zeros((batch_size, *info.shape), device=device, dtype=dtype)

    def step(self, x, state):
        y, state = self.sequence(x.unsqueeze(0), state)
        return y[0], state

    def sequence(self, x, state):
        return self._run(x, state, full=False)

    def sequence_full(self, x, state):
        return self._run(x, state, full=True)

    def _run(self, x, state, full: bool):
        values: list = [None] * len(self.nodes)
        values[self.input] = x
        layers = dict(state["layers"])
        placeholders = dict(state["placeholders"])
        for block in self.plan:
            if len(block) > 1:
                self._run_cycle(block, values, layers, placeholders, full)
                continue
            info = self.nodes[block[0]]
            if info.kind == "layer":
                runner = self.layers[info.name]
                method = "sequence_full" if full else "sequence"
                values[info.index], layers[info.name] = call_child(
                    info.name, runner, method, values[info.inputs[0]], layers[info.name]
                )
            elif info.kind == "placeholder":
                previous, layer_out = placeholders[info.name], values[info.layer]
                values[info.index] = torch.cat([previous.unsqueeze(0), layer_out[:-1]])
                placeholders[info.name] = layer_out if full else layer_out[-1]
            elif info.kind != "input":
                values[info.index] = _combine(info, [values[i] for i in info.inputs], data_dim=2)
        return values[self.output], {"layers": layers, "placeholders": placeholders}

    def _run_cycle(self, block: list[int], values: list, layers: dict, placeholders: dict, full: bool) -> None:
        members = set(block)
        outside = {i: values[i].unbind(0) for b in block for i in self.nodes[b].inputs if i not in members}
        length = values[self.input].shape[0]
        infos = [self.nodes[i] for i in block]
        steps = {info.index: child_stepper(info.name, self.layers[info.name]) for info in infos if info.kind == "layer"}
        fed = [info for info in infos if info.kind == "placeholder"]
        outputs: dict[int, list] = {i: [] for i in block if i in self.read_later}
        history: dict[int, list] = {i: [] for i in block}  # states after each step, for full_state
        for t in range(length):
            now: dict[int, object] = {}
            for info in infos:
                i = info.index
                inputs = [now[j] if j in members else outside[j][t] for j in info.inputs]
                if info.kind == "layer":
                    now[i], layers[info.name] = steps[i](inputs[0], layers[info.name])
                    if full:
                        history[i].append(layers[info.name])
                elif info.kind == "placeholder":
                    now[i] = placeholders[info.name]
                else:
                    now[i] = _combine(info, inputs, data_dim=1)
            for i, steps_out in outputs.items():
                steps_out.append(now[i])
            for info in fed:
                placeholders[info.name] = now[info.layer]
                if full:
                    history[info.index].append(now[info.layer])
        for i, steps_out in outputs.items():
            values[i] = _stack_time(steps_out)
        for i in block if full else ():
            info = self.nodes[i]
            if info.kind == "layer":
                layers[info.name] = tree_stack(history[i])
            elif info.kind == "placeholder":
                placeholders[info.name] = torch.stack(history[i])


def _read_later(nodes: list[NodeInfo], plan: list[list[int]], output: int) -> set[int]:
    """The nodes whose whole sequence is read after their own block has run: by a node of a later
    block (a placeholder reads its layer), or as the network's output. Cycles stack only these."""
    block_of = {i: b for b, block in enumerate(plan) for i in block}
    read = {output}
    for info in nodes:
        sources = info.inputs + ([info.layer] if info.layer is not None else [])
        read.update(j for j in sources if block_of[j] != block_of[info.index])
    return read


def _combine(info: NodeInfo, inputs: list, data_dim: int):
    """The value of a stack, sum or list node from its inputs' values, data dims from ``data_dim``."""
    if info.kind == "stack":
        if info.parts is not None:
            inputs = [t.reshape(*t.shape[:data_dim], *part) for t, part in zip(inputs, info.parts)]
        return torch.cat(inputs, dim=data_dim)
    if info.kind == "sum":
        return functools.reduce(operator.add, inputs)
    return list(inputs)


def _stack_time(steps: list):
    if isinstance(steps[0], list):
        return [torch.stack(parts) for parts in zip(*steps)]
    return torch.stack(steps)
