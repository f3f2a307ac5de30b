"""Custom modules: bring your own ``torch.nn.Module`` and get a factory for it.

Recurrent modules subclass ``CustomModule``; ``register_recurrent`` turns the class into a
factory class. Stateless modules only need ``register_non_recurrent``.

>>> import torch
>>> class Hadamard(torch.nn.Module):          # a two-element list input -> its elementwise product
...     def forward(self, inputs):
...         return inputs[0] * inputs[1]
>>> HadamardFactory = register_non_recurrent(module_class=Hadamard, flatten_input=False, shape_change=True)
>>> import rnnbuilder as rb
>>> n = rb.Network()
>>> n.output = n.input.append(n.input).apply(HadamardFactory())
>>> n.make_model((3,))(torch.full((1, 1, 3), 2.0))[0].tolist()
[[[4.0, 4.0, 4.0]]]
"""

from __future__ import annotations

import abc
import inspect

import torch

from ._factory import ModuleFactory
from ._runner import Runner, StatelessRunner, flat_shape, map_input
from ._tree import last_state, tree_map
from .nn import infer_out_shape

__all__ = ["CustomModule", "CustomFactory", "register_recurrent", "register_non_recurrent"]


class CustomModule(torch.nn.Module, abc.ABC):
    """A recurrent module: ``forward(input, state) -> (output, new_state)``.

    Shapes: with ``single_step=True`` the input is (batch, *in_shape), otherwise (time, batch,
    *in_shape); list inputs are lists of such tensors. The output has ``get_out_shape(in_shape)``
    as its data shape.
    """

    @abc.abstractmethod
    def get_out_shape(self, in_shape):
        """The output data shape for ``in_shape`` (no time or batch dims)."""

    @abc.abstractmethod
    def forward(self, input, state):
        """``(output, new_state)``; ``state`` is what ``get_initial_state`` or the last call gave."""

    def enter_in_shape(self, in_shape) -> None:
        """Called once with the input data shape, before anything else; create parameters here."""

    def get_initial_state(self, batch_size: int):
        """The state before the first timestep: a tensor, or a tuple/list/dict of tensors."""
        return ()

    def get_initial_output(self, full_shape: tuple[int, ...]) -> torch.Tensor:
        """What a placeholder fed by this module holds before the first timestep; ``full_shape`` = (batch, *out)."""
        return torch.zeros(full_shape)


class CustomFactory(ModuleFactory):
    """Base of the factory classes ``register_*`` return. Arguments go to the module's constructor."""

    module_class: type[torch.nn.Module]
    flatten_input: bool

    def __init__(self, *args, **kwargs):
        try:
            bound = inspect.signature(self.module_class).bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}: {e}") from None
        self.arguments = dict(bound.arguments)

    def _make_module(self, in_shape):
        module = self.module_class(**self.arguments)
        if hasattr(module, "enter_in_shape"):
            module.enter_in_shape(in_shape)
        return module

    def _seen_shape(self, in_shape):
        return flat_shape(in_shape) if self.flatten_input else in_shape

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.arguments == other.arguments

    __hash__ = None


def register_recurrent(
    module_class: type[CustomModule], flatten_input: bool, single_step: bool, unroll_full_state: bool = True
) -> type[CustomFactory]:
    """A factory class for the recurrent ``module_class`` (a ``CustomModule``).

    ``flatten_input``: the module sees (batch, n) instead of (batch, *in_shape).
    ``single_step``: the module takes one timestep at a time; otherwise whole (time, batch, ...) sequences.
    ``unroll_full_state`` (sequence modules only): when the state of every timestep is needed (with
    ``full_state=True``, or inside a placeholder cycle), feed the module length-1 sequences; if
    False, the module's returned state always holds every timestep along a leading time dim.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, CustomModule)):
        raise TypeError(f"register_recurrent takes a CustomModule subclass, got {module_class!r}")
    attrs = {
        "module_class": module_class,
        "flatten_input": bool(flatten_input),
        "single_step": bool(single_step),
        "unroll_full_state": bool(unroll_full_state),
        "_build": lambda self, in_shape: RecurrentModuleRunner(in_shape, self),
    }
    return type(f"{module_class.__name__}Factory", (CustomFactory,), attrs)


def register_non_recurrent(
    module_class: type[torch.nn.Module], flatten_input: bool, shape_change: bool
) -> type[CustomFactory]:
    """A factory class for the stateless ``module_class`` (any ``torch.nn.Module``).

    Its ``forward(x)`` gets (batch, *in_shape), with time merged into batch, or a list of such
    tensors for a list input. ``flatten_input``: it sees (batch, n) instead. ``shape_change``: the
    output shape differs from the input's; it comes from the module's ``get_out_shape(in_shape)`` if
    it has one, else from a trial run on an empty meta-device batch. Without a shape change, a
    list input's module gives the shape of the list's first element.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, torch.nn.Module)):
        raise TypeError(f"register_non_recurrent takes a torch.nn.Module subclass, got {module_class!r}")

    def build(self, in_shape):
        seen = self._seen_shape(in_shape)
        module = self._make_module(seen)
        if not self.shape_change:
            out_shape = seen[0] if isinstance(seen, list) else seen
        elif hasattr(module, "get_out_shape"):
            out_shape = tuple(module.get_out_shape(seen))
        else:
            out_shape = infer_out_shape(self, self._make_module, seen)
        return StatelessRunner(in_shape, out_shape, module, self.flatten_input)

    attrs = {
        "module_class": module_class,
        "flatten_input": bool(flatten_input),
        "shape_change": bool(shape_change),
        "_build": build,
    }
    return type(f"{module_class.__name__}Factory", (CustomFactory,), attrs)


class RecurrentModuleRunner(Runner):
    """Runs a ``CustomModule`` by steps or whole sequences, as its registration says."""

    def __init__(self, in_shape, factory: CustomFactory):
        seen = factory._seen_shape(in_shape)
        module = factory._make_module(seen)
        super().__init__(in_shape, tuple(module.get_out_shape(seen)))
        self.module = module
        self.flatten_input = factory.flatten_input
        self.single_step = factory.single_step
        self.unroll_full_state = factory.unroll_full_state

    def initial_state(self, batch_size, device, dtype):
        return tree_map(lambda t: t.to(device), self.module.get_initial_state(batch_size))

    def initial_output(self, batch_size, device, dtype):
        return self.module.get_initial_output((batch_size, *self.out_shape)).to(device=device, dtype=dtype)

    def _flat(self, x, lead: int):
        return map_input(lambda t: t.flatten(lead), x) if self.flatten_input else x

    def step(self, x, state):
        x = self._flat(x, 1)
        if self.single_step:
            return self.module(x, state)
        y, state = self.module(map_input(lambda t: t.unsqueeze(0), x), state)
        return y[0], (state if self.unroll_full_state else last_state(state))

    def sequence(self, x, state):
        if self.single_step:
            return super().sequence(x, state)
        y, state = self.module(self._flat(x, 2), state)
        return y, (state if self.unroll_full_state else last_state(state))

    def sequence_full(self, x, state):
        if self.single_step or self.unroll_full_state:
            return super().sequence_full(x, state)
        return self.module(self._flat(x, 2), state)
