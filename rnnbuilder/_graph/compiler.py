"""Compiling a ``Network`` for an input shape: its nodes in topological order, checked and named,
their shapes inferred, the layers built, and an execution plan in which the cycles through
placeholders are the strongly connected components (``CompiledNetwork``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._runner import Runner, Shape
from ..errors import GraphError, ShapeError
from .nodes import InitialValue, Input, Layer, List, Node, Placeholder, Stack, Sum

if TYPE_CHECKING:
    from .network import Network

__all__ = ["NodeInfo", "CompiledNetwork", "compile_network", "definition_order", "fixed_out_shape"]


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


def fixed_out_shape(net: Network) -> Shape | None:
    """The output shape that layers of fixed output size give without an input shape, else None."""
    if "output" not in net._names:
        return None
    order = definition_order(net)
    shape = _infer_shapes(order, _names(net, order), net.input, None)[net._names["output"]]
    return None if isinstance(shape, list) else shape


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
