"""``ModuleFactory``: a specification of a module, and ``Model``: what ``make_model`` gives."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import torch

from ._record import recording
from ._runner import Runner, Shape
from ._tree import State, last_state, tree_leaves, tree_map
from .errors import ShapeError

__all__ = ["INPUT_MODES", "ModuleFactory", "Model", "ArgumentEquality", "argument_key", "as_shape"]

INPUT_MODES = ("sequence", "batch", "single")


class ModuleFactory(abc.ABC):
    """A specification of a (possibly recurrent) module whose input sizes are inferred.

    A factory holds no parameters: every ``make_model`` call builds an independent model.
    """

    def make_model(self, in_shape, input_mode: str = "sequence", full_state: bool = False) -> Model:
        """Build a model for inputs of ``in_shape`` (data dims only, no time or batch).

        >>> from rnnbuilder import nn
        >>> model = nn.Linear(3).make_model((5,))
        >>> out, state = model(torch.zeros(7, 2, 5))     # (time, batch, 5)
        >>> tuple(out.shape)
        (7, 2, 3)
        """
        in_shape = as_shape(in_shape)
        return Model(self._build(in_shape), in_shape, input_mode, full_state)

    def out_shape(self, in_shape: Shape | None) -> Shape | None:
        """The output data shape for ``in_shape``; ``None`` in gives ``None`` unless it is fixed.

        Shapes are inferred without touching the random number generator.
        """
        if in_shape is None:
            return self._fixed_out_shape()
        try:
            with torch.device("meta"):
                return self._build(in_shape).out_shape
        except ShapeError:
            raise
        except Exception:
            # Some custom modules can't run on the meta device: build for real, RNG untouched.
            with torch.random.fork_rng(devices=[]):
                return self._build(in_shape).out_shape

    def _fixed_out_shape(self) -> Shape | None:
        """The output shape if it doesn't depend on the input shape (lets placeholder cycles resolve)."""
        return None

    @abc.abstractmethod
    def _build(self, in_shape: Shape) -> Runner:
        """Build the runner for inputs of ``in_shape``."""


class Model(torch.nn.Module):
    """A built network. Call it as ``model(x, state=None) -> (out, state)``.

    Shapes by ``input_mode``: ``'sequence'`` takes (time, batch, *in_shape), ``'batch'`` takes
    (batch, *in_shape) as one timestep, ``'single'`` takes (*in_shape) as one timestep of batch 1.
    The output has the same leading dims. With ``full_state=True`` the returned state holds the
    state after every timestep, stacked along a leading time dim (``'sequence'`` mode only; pass
    ``rnnbuilder.last_state(states)`` back in to continue).
    """

    def __init__(self, runner: Runner, in_shape: Shape, input_mode: str, full_state: bool):
        super().__init__()
        self.net = runner
        self.in_shape = in_shape
        self.input_mode = "sequence"
        self.full_state = False
        self._state_shapes: dict[int, list[tuple[int, ...]]] = {}  # derived from the structure, which never changes
        self._record_names: list[str] | None = None
        self.configure(input_mode=input_mode, full_state=full_state)

    @property
    def out_shape(self) -> Shape:
        """The output data shape (no time or batch dims)."""
        return self.net.out_shape

    def configure(self, input_mode: str | None = None, full_state: bool | None = None) -> Model:
        """Change the input mode and/or full-state output; ``None`` keeps the current setting."""
        if input_mode is not None:
            if input_mode not in INPUT_MODES:
                raise ValueError(f"input_mode must be one of {', '.join(map(repr, INPUT_MODES))}, got {input_mode!r}")
            self.input_mode = input_mode
        if full_state is not None:
            if not isinstance(full_state, bool):
                raise TypeError(f"full_state must be True or False, got {full_state!r}")
            self.full_state = full_state
        return self

    def get_initial_state(self, batch_size: int) -> State:
        """The state before the first timestep, for ``batch_size`` parallel sequences."""
        device, dtype = self._device_dtype()
        return self.net.initial_state(batch_size, device, dtype)

    def reset_state(self, state: State, batch_indices) -> State:
        """``state`` with the entries of ``batch_indices`` back at the initial state (episodes that
        restart), the others untouched. A pure function: ``state`` itself is not changed.

        >>> from rnnbuilder import snn
        >>> model = snn.LIF().make_model((2,))
        >>> _, state = model(torch.ones(3, 2, 2) * 0.7)
        >>> fresh = model.reset_state(state, [1])
        >>> bool((fresh.v[0] == state.v[0]).all()), fresh.v[1].tolist()
        (True, [0.0, 0.0])
        """
        batch_size = self.batch_size_of(state)
        indices = torch.as_tensor(list(batch_indices), dtype=torch.long)
        if indices.numel() and not (int(indices.min()) >= 0 and int(indices.max()) < batch_size):
            raise ShapeError(f"batch_indices must be in [0, {batch_size}), got {indices.tolist()}")
        initial = self.get_initial_state(batch_size)
        dims = iter(self._batch_dims(batch_size))

        def reset(current: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            dim = next(dims)
            return current.index_copy(
                dim, indices.to(current.device), fresh.to(current).index_select(dim, indices.to(fresh.device))
            )

        return tree_map(reset, state, initial)

    def forward(self, x: torch.Tensor, state: State = None, *, h: State = None) -> tuple[torch.Tensor, State]:
        """``(out, new_state)`` for input ``x`` from ``state`` (``None``: the initial state).

        ``h`` is rnnbuilder 0.1.1's name for ``state``; give one of the two.
        """
        if h is not None:
            if state is not None:
                raise TypeError("give the state once: as state (or positionally), or as h, not both")
            state = h
        full = self.full_state and self.input_mode == "sequence"
        out, state = self._run(x, state, full)
        return self._from_sequence(out), state

    def stepper(self) -> Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]:
        """A function for one timestep, ``(x_t, state) -> (y_t, new_state)`` with x_t (batch,
        *in_shape) and y_t (batch, *out_shape) in every input mode, that gives the same numbers
        as ``model(x_t[None], state)`` in ``'sequence'`` mode.

        What stays the same from one call to the next (the layers, their order, their step
        functions) is looked up once, here, and nothing is checked per call: the state must be
        one this model gave (``get_initial_state`` or a call's), at x_t's batch size. For a
        stream of single timesteps, where per-call work would outweigh the tensor operations.
        Parameters are read at each call, so training and loading show; take a new stepper
        after moving the model (``.to(...)``).

        >>> from rnnbuilder import nn, snn
        >>> import rnnbuilder as rb
        >>> model = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,))
        >>> step, state = model.stepper(), model.get_initial_state(2)
        >>> x = torch.rand(2, 3)
        >>> y, state = step(x, state)
        >>> tuple(y.shape)
        (2, 4)
        """
        return self.net.stepper()

    def record(self, x: torch.Tensor, names, state: State = None) -> tuple[torch.Tensor, State, dict]:
        """Like ``model(x, state)``, and also the values of inner layers: ``(out, state, recordings)``.

        ``names`` come from ``record_names()``: a layer's output (spikes of a neuron layer) or a
        state field such as a membrane ``"hidden.1.v"``. Each recording has the output's leading
        dims, e.g. (time, batch, *shape) in ``'sequence'`` mode.

        >>> import rnnbuilder as rb
        >>> from rnnbuilder import nn, snn
        >>> model = rb.Sequential(nn.Linear(4), snn.LIF()).make_model((3,))
        >>> model.record_names()
        ['0', '1', '1.v']
        >>> out, state, rec = model.record(torch.ones(10, 2, 3), ["1.v"])
        >>> tuple(rec["1.v"].shape)
        (10, 2, 4)
        """
        names = list(names)
        valid = self.record_names()
        unknown = [name for name in names if name not in valid]
        if unknown:
            raise ValueError(f"cannot record {', '.join(map(repr, unknown))}; this model has: {', '.join(valid)}")
        with recording(names) as rec:
            out, states = self._run(x, state, full=True)
        if not (self.full_state and self.input_mode == "sequence"):
            states = last_state(states)
        recordings = {name: self._from_sequence(value) for name, value in rec.result().items()}
        return self._from_sequence(out), states, recordings

    def record_names(self) -> list[str]:
        """What ``record`` can capture: inner layers by dotted path (network layer names, indices in
        a ``Sequential``) and the named state fields of neuron layers (``"<layer>.v"``)."""
        if self._record_names is None:
            self._record_names = self._find_record_names()
        return list(self._record_names)

    def _find_record_names(self) -> list[str]:
        names: list[str] = []
        todo = [(name, child) for name, child in self.net.inner_runners()]
        while todo:
            path, runner = todo.pop(0)
            names.append(path)
            with torch.device("meta"):
                state = runner.initial_state(1, torch.device("meta"), torch.float32)
            names.extend(f"{path}.{field}" for field in getattr(state, "_fields", ()))
            todo[:0] = [(f"{path}.{name}", child) for name, child in runner.inner_runners()]
        return names

    def _run(self, x, state: State, full: bool) -> tuple[torch.Tensor, State]:
        """The whole network on ``x`` in this model's input mode, as (time, batch, ...) output."""
        seq = self._to_sequence(x)
        if state is None:
            dtype = seq.dtype if seq.is_floating_point() else self._device_dtype()[1]
            state = self.net.initial_state(seq.shape[1], seq.device, dtype)
        else:
            self._check_state(state, seq.shape[1])
        return self.net.sequence_full(seq, state) if full else self.net.sequence(seq, state)

    def _to_sequence(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        lead = {"sequence": 2, "batch": 1, "single": 0}[self.input_mode]
        if x.dim() != lead + len(self.in_shape) or tuple(x.shape[lead:]) != self.in_shape:
            names = {"sequence": "(time, batch, ", "batch": "(batch, ", "single": "("}[self.input_mode]
            expected = names + ", ".join(map(str, self.in_shape)) + ")"
            raise ShapeError(f"input_mode={self.input_mode!r} expects input of shape {expected}, got {tuple(x.shape)}")
        return x.reshape(*(1,) * (2 - lead), *x.shape)

    def _from_sequence(self, y: torch.Tensor) -> torch.Tensor:
        if self.input_mode == "batch":
            return y[0]
        if self.input_mode == "single":
            return y[0, 0]
        return y

    def _check_state(self, state: State, batch_size: int) -> None:
        if batch_size not in self._state_shapes:
            with torch.device("meta"):
                expected = self.net.initial_state(batch_size, torch.device("meta"), torch.float32)
            self._state_shapes[batch_size] = [tuple(t.shape) for t in tree_leaves(expected)]
        try:
            got = [tuple(t.shape) for t in tree_leaves(state)]
        except TypeError as e:
            raise ShapeError(f"state does not match this model: {e}") from None
        want = self._state_shapes[batch_size]
        if got != want:
            raise ShapeError(
                f"state does not match this model at batch size {batch_size}: expected leaf shapes "
                f"{want}, got {got}. Pass the state this model returned, or None to start fresh"
                " (with full_state=True, pass rnnbuilder.last_state(state))."
            )

    def _batch_dims(self, batch_size: int) -> list[int]:
        """The batch dim of every state leaf: the dim that changes with the batch size."""
        with torch.device("meta"):
            one, two = (
                self.net.initial_state(b, torch.device("meta"), torch.float32) for b in (batch_size, batch_size + 1)
            )
        return [
            next(d for d, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q)
            for a, b in zip(tree_leaves(one), tree_leaves(two))
        ]

    def batch_size_of(self, state: State) -> int:
        """The batch size of ``state``, checked against this model's state shapes (0 if stateless)."""
        leaves = tree_leaves(state)
        if not leaves:
            return 0
        first, dim = leaves[0], self._batch_dims(1)[0]
        if first.dim() <= dim:
            raise ShapeError(f"state does not match this model: a leaf of shape {tuple(first.shape)}")
        self._check_state(state, first.shape[dim])
        return first.shape[dim]

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        device, dtype = torch.device("cpu"), torch.get_default_dtype()
        for t in self.net.parameters():
            return t.device, t.dtype
        for t in self.net.buffers():
            device = t.device
            break
        return device, dtype


def argument_key(value):
    """``value`` (a factory's arguments: numbers, tensors, tuples, lists, dicts, factories) as a
    hashable value that compares equal where the arguments are equal; a tensor counts by its dtype,
    shape and values, not by identity, so factories with tensor arguments compare and hash by value.

    >>> argument_key((1.0, torch.tensor([0.5, 2.0]))) == argument_key((1.0, torch.tensor([0.5, 2.0])))
    True
    """
    if isinstance(value, torch.Tensor):
        value, shape = value.detach().cpu(), tuple(value.shape)
        return (torch.Tensor, str(value.dtype), shape, value.reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(value, (tuple, list)):
        return (type(value), *map(argument_key, value))
    if isinstance(value, dict):
        return (dict, *sorted((k, argument_key(v)) for k, v in value.items()))
    return value


class ArgumentEquality:
    """Mixin for a frozen dataclass factory with tensor arguments, declared with ``eq=False``: it
    compares and hashes by its arguments' values (``argument_key``), not by the tensors' identity.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, eq=False)
    ... class Offset(ArgumentEquality):
    ...     offset: torch.Tensor
    >>> Offset(torch.ones(2)) == Offset(torch.ones(2)), len({Offset(torch.ones(2)), Offset(torch.ones(2))})
    (True, 1)
    """

    def _argument_key(self):
        return argument_key(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    def __eq__(self, other):
        return type(self) is type(other) and self._argument_key() == other._argument_key()

    def __hash__(self):
        return hash((type(self), self._argument_key()))


def as_shape(in_shape) -> Shape:
    """``in_shape`` as a tuple of positive ints (an int n is (n,)), or a ``ShapeError``."""
    shape = (in_shape,) if isinstance(in_shape, int) else in_shape
    if not (
        isinstance(shape, (tuple, list))
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ShapeError(f"in_shape must be a tuple of positive ints such as (64,), got {in_shape!r}")
    return tuple(shape)
