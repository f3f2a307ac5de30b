"""``NetworkRunner``: runs a compiled network over a sequence. A block of the plan that is a single
node runs over the whole sequence at once; a cycle through placeholders runs timestep by timestep."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable

import torch

from .._record import call_child, child_stepper
from .._runner import Runner
from .._tree import tree_stack
from .compiler import CompiledNetwork, NodeInfo

__all__ = ["NetworkRunner"]


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

    def stepper(self):
        """One timestep through the nodes in plan order, each layer's own stepper taken once: a
        placeholder gives its layer's previous output and then holds this timestep's. The same
        numbers as ``step``, without its per-call sequence bookkeeping."""
        order = [self.nodes[i] for block in self.plan for i in block]
        steps = {info.name: child_stepper(info.name, self.layers[info.name]) for info in order if info.kind == "layer"}
        fed = [(info.name, info.layer) for info in order if info.kind == "placeholder"]
        size, entry, output = len(self.nodes), self.input, self.output

        def step(x, state):
            values: list = [None] * size
            values[entry] = x
            layers = dict(state["layers"])
            placeholders = state["placeholders"]
            for info in order:
                kind, i = info.kind, info.index
                if kind == "layer":
                    name = info.name
                    values[i], layers[name] = steps[name](values[info.inputs[0]], layers[name])
                elif kind == "placeholder":
                    values[i] = placeholders[info.name]
                elif kind != "input":
                    values[i] = _combine(info, [values[j] for j in info.inputs], data_dim=1)
            return values[output], {"layers": layers, "placeholders": {name: values[j] for name, j in fed}}

        return step

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
