"""Runners: the built modules behind every factory, over explicit (time, batch, ...) sequences.

A runner never keeps state between calls. Every call takes the state and returns the new one, so
the same runner can drive many independent streams (the server relies on this).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._record import call_child
from ._tree import State, tree_stack

__all__ = [
    "Shape",
    "Runner",
    "StatelessRunner",
    "SequentialRunner",
    "map_input",
    "time_batch",
    "flat_shape",
    "numel",
]

Shape = tuple[int, ...]
"""A data shape, without the time and batch dimensions. List inputs have a list of shapes."""


class Runner(torch.nn.Module):
    """A module that maps a sequence (time, batch, *in_shape) to (time, batch, *out_shape).

    Subclasses implement ``step``; recurrent ones may also override ``sequence`` with a faster
    whole-sequence formulation that gives the same result.
    """

    def __init__(self, in_shape, out_shape: Shape):
        super().__init__()
        self.in_shape = in_shape
        self.out_shape = tuple(out_shape)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        """The state before the first timestep. Stateless runners return ``()``."""
        return ()

    def initial_output(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """What a placeholder fed by this runner holds before the first timestep: (batch, *out_shape)."""
        return torch.zeros((batch_size, *self.out_shape), device=device, dtype=dtype)

    def inner_runners(self) -> list[tuple[str, Runner]]:
        """The named inner runners whose outputs can be recorded."""
        return []

    def step(self, x, state: State) -> tuple[torch.Tensor, State]:
        """One timestep: x (batch, *in_shape) -> ((batch, *out_shape), new state)."""
        raise NotImplementedError

    def stepper(self) -> Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]:
        """``step``, with what stays the same from one timestep to the next looked up once.

        A placeholder cycle takes it once per call and calls it every timestep, where per-step
        Python overhead adds up; it gives the same numbers as ``step``.
        """
        return self.step

    def sequence(self, x, state: State) -> tuple[torch.Tensor, State]:
        """All timesteps: x (time, batch, *in_shape) -> ((time, batch, *out_shape), final state)."""
        outputs = []
        for x_t in _unbind_time(x):
            y, state = self.step(x_t, state)
            outputs.append(y)
        return torch.stack(outputs), state

    def sequence_full(self, x, state: State) -> tuple[torch.Tensor, State]:
        """Like ``sequence``, but the state comes back for every timestep, stacked along dim 0."""
        outputs, states = [], []
        for x_t in _unbind_time(x):
            y, state = self.step(x_t, state)
            outputs.append(y)
            states.append(state)
        return torch.stack(outputs), tree_stack(states)


class StatelessRunner(Runner):
    """A runner without memory: it sees time and batch merged into one batch dimension."""

    def __init__(self, in_shape, out_shape: Shape, module: torch.nn.Module, flatten_input: bool = False):
        super().__init__(in_shape, out_shape)
        self.module = module
        self.flatten_input = flatten_input

    def apply(self, x):
        """x (batch, *in_shape) -> (batch, *out_shape)."""
        if self.flatten_input:
            x = map_input(lambda t: t.flatten(1), x)
        return self.module(x)

    def step(self, x, state: State):
        return self.apply(x), state

    def stepper(self):
        if self.flatten_input and not _is_flat(self.in_shape):
            return self.step
        module = self.module
        return lambda x, state: (module(x), state)

    def sequence(self, x, state: State):
        length, batch = time_batch(x)
        merged = map_input(lambda t: t.reshape(length * batch, *t.shape[2:]), x)
        y = self.apply(merged)
        return y.reshape(length, batch, *y.shape[1:]), state

    def sequence_full(self, x, state: State):
        return self.sequence(x, state)


class SequentialRunner(Runner):
    """Runners applied one after another; the state is the tuple of their states."""

    def __init__(self, in_shape, runners: list[Runner]):
        super().__init__(in_shape, runners[-1].out_shape if runners else in_shape)
        self.runners = torch.nn.ModuleList(runners)

    def initial_state(self, batch_size, device, dtype):
        return tuple(r.initial_state(batch_size, device, dtype) for r in self.runners)

    def initial_output(self, batch_size, device, dtype):
        if not self.runners:
            return super().initial_output(batch_size, device, dtype)
        return self.runners[-1].initial_output(batch_size, device, dtype)

    def inner_runners(self):
        return [(str(i), runner) for i, runner in enumerate(self.runners)]

    def _chain(self, method: str, x, state: State):
        new_states = []
        for i, (runner, s) in enumerate(zip(self.runners, state, strict=True)):
            x, s = call_child(str(i), runner, method, x, s)
            new_states.append(s)
        return x, tuple(new_states)

    def step(self, x, state):
        return self._chain("step", x, state)

    def stepper(self):
        steps = [runner.stepper() for runner in self.runners]

        def step(x, state):
            new_states = []
            for fn, s in zip(steps, state, strict=True):
                x, s = fn(x, s)
                new_states.append(s)
            return x, tuple(new_states)

        return step

    def sequence(self, x, state):
        return self._chain("sequence", x, state)

    def sequence_full(self, x, state):
        return self._chain("sequence_full", x, state)


def map_input(fn, x):
    """Apply ``fn`` to a tensor input, or to each tensor of a list input."""
    return [fn(t) for t in x] if isinstance(x, (list, tuple)) else fn(x)


def _first(x) -> torch.Tensor:
    return x[0] if isinstance(x, (list, tuple)) else x


def time_batch(x) -> tuple[int, int]:
    """(time, batch) of a sequence input, tensor or list of tensors."""
    first = _first(x)
    return first.shape[0], first.shape[1]


def _unbind_time(x) -> list:
    """Split a (time, batch, ...) input into timesteps. ``unbind`` keeps the backward pass O(T)."""
    if isinstance(x, (list, tuple)):
        return [list(steps) for steps in zip(*(t.unbind(0) for t in x), strict=True)]
    return list(x.unbind(0))


def flat_shape(in_shape):
    """The shape a flattening module sees: (n,), or a list of (n_i,) for a list input."""
    return [(numel(s),) for s in in_shape] if isinstance(in_shape, list) else (numel(in_shape),)


def _is_flat(in_shape) -> bool:
    """Whether (batch, *in_shape) is already (batch, n): one dim, not a list."""
    return isinstance(in_shape, tuple) and len(in_shape) == 1


def numel(shape: Shape) -> int:
    """The number of elements of one sample of ``shape``."""
    return math.prod(shape)
