"""Custom modules: bring your own ``torch.nn.Module`` and get a factory for it.

Recurrent modules subclass ``CustomModule``; ``register_recurrent`` turns the class into a
factory class. Stateless modules only need ``register_non_recurrent``. A factory takes the
arguments of the module's constructor, positional and keyword, and passes them on as given.

A server lists registered types with their arguments (``rnnbuilder.describe``): a custom factory's
description is the first paragraph of its module's docstring, and an argument's is the docstring
after an annotated class attribute of the argument's name, as dataclass fields have them::

    class Scale(torch.nn.Module):
        \"\"\"Multiplies its input by a constant.\"\"\"

        factor: float
        \"\"\"The constant, unitless.\"\"\"

        def __init__(self, factor: float = 2.0): ...

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
import itertools

import torch

from ._factory import ModuleFactory, argument_key
from ._runner import Runner, StatelessRunner, flat_shape, map_input, time_batch
from ._tree import tree_leaves, tree_map
from .errors import ShapeError
from .nn import infer_out_shape

__all__ = ["CustomModule", "CustomFactory", "register_recurrent", "register_non_recurrent"]

_DEVICE_MARKER = "_rnnbuilder_device"
_UNNAMED = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)


class CustomModule(torch.nn.Module, abc.ABC):
    """A recurrent module: ``forward(input, state) -> (output, new_state)``.

    Shapes: with ``single_step=True`` the input is (batch, *in_shape), otherwise (time, batch,
    *in_shape); list inputs are lists of such tensors. The output has ``get_out_shape(in_shape)``
    as its data shape. ``new_state`` is shaped like ``get_initial_state``'s, unless the library has
    set ``self._full_state`` (see ``register_recurrent``). ``self.device`` is where the model lives.
    """

    _full_state: bool = False
    """Set by the library before each call of a sequence module registered with
    ``unroll_full_state=False``: True when it must return the state after every timestep, stacked
    along a leading time dim; False when it returns the final state."""

    def __init__(self):
        super().__init__()
        # Moves with the model (.to(), .cuda()), so ``device`` is right even without parameters.
        self.register_buffer(_DEVICE_MARKER, torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device of the model this module is part of; create states there in ``get_initial_state``."""
        marker = self._buffers.get(_DEVICE_MARKER)
        if marker is not None:
            return marker.device
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @abc.abstractmethod
    def get_out_shape(self, in_shape):
        """The output data shape for ``in_shape`` (no time or batch dims), or None to infer it by a trial run."""

    @abc.abstractmethod
    def forward(self, input, state):
        """``(output, new_state)``; ``state`` is what ``get_initial_state`` or the last call gave."""

    def enter_in_shape(self, in_shape) -> None:
        """Called once with the input data shape, before anything else; create parameters here."""

    def get_initial_state(self, batch_size: int):
        """The state before the first timestep: a tensor, or a tuple/list/dict of tensors, batch first."""
        return ()

    def get_initial_output(self, full_shape: tuple[int, ...]) -> torch.Tensor:
        """What a placeholder fed by this module holds before the first timestep; ``full_shape`` = (batch, *out)."""
        return torch.zeros(full_shape, device=self.device)


class CustomFactory(ModuleFactory):
    """Base of the factory classes ``register_*`` return. Arguments go to the module's constructor as given,
    tensors copied: a model never shares storage with its factory, so training leaves the factory as it was.

    ``args`` and ``kwargs`` are the arguments as given; ``arguments`` are those that have a name
    (named parameters, however they were passed, and extra keywords a ``**kwargs`` takes), which is
    how descriptions (``rnnbuilder.spec``) carry them.
    """

    module_class: type[torch.nn.Module]
    """The module class the factory builds."""
    flatten_input: bool
    """Whether the module sees (batch, n) instead of (batch, *in_shape)."""

    def __init__(self, *args, **kwargs):
        try:
            bound = self._constructor_signature().bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(self).__name__}: {e}") from None
        self.args, self.kwargs = args, kwargs
        self._canonical = (bound.args, bound.kwargs)
        parameters = self._constructor_signature().parameters
        self.arguments: dict = {}
        self._unnamed: dict = {}  # parameter name -> what was passed to it that no name can carry
        for name, value in bound.arguments.items():
            kind = parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                self.arguments.update(value)
            elif kind in _UNNAMED:
                self._unnamed[name] = value
            else:
                self.arguments[name] = value

    @classmethod
    def _constructor_signature(cls) -> inspect.Signature:
        """The signature of ``module_class(...)``; ``torch.nn.Module``'s own constructor takes nothing."""
        if cls.module_class.__init__ is torch.nn.Module.__init__:
            return inspect.Signature()
        return inspect.signature(cls.module_class)

    def _make_module(self, in_shape):
        module = self.module_class(*_fresh(self.args), **_fresh(self.kwargs))
        if hasattr(module, "enter_in_shape"):
            module.enter_in_shape(in_shape)
        return module

    def _seen_shape(self, in_shape):
        return flat_shape(in_shape) if self.flatten_input else in_shape

    def __repr__(self):
        if self._unnamed:
            args, kwargs = self._canonical
            shown = [repr(v) for v in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        else:
            shown = [f"{k}={v!r}" for k, v in self.arguments.items()]
        return f"{type(self).__name__}({', '.join(shown)})"

    def __eq__(self, other):
        return type(self) is type(other) and argument_key(self._canonical) == argument_key(other._canonical)

    __hash__ = None


def _fresh(value):
    """``value`` with every tensor in it (in tuples, lists and dicts) a detached copy."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(map(_fresh, value))
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def register_recurrent(
    module_class: type[CustomModule], flatten_input: bool, single_step: bool, unroll_full_state: bool = True
) -> type[CustomFactory]:
    """A factory class for the recurrent ``module_class`` (a ``CustomModule``).

    ``flatten_input``: the module sees (batch, n) instead of (batch, *in_shape).
    ``single_step``: the module takes one timestep at a time; otherwise whole (time, batch, ...)
    sequences, and it returns its final state (as torch's LSTM does).
    ``unroll_full_state`` (sequence modules only): when the state of every timestep is needed (with
    ``full_state=True``, or when recording), feed the module one timestep at a time. If False, the
    module is given the whole sequence and must check ``self._full_state``: when the library set it
    to True, it returns the state after every timestep, stacked along a leading time dim. A returned
    state of the wrong shape raises ``ShapeError``. Inside a placeholder cycle a sequence module
    gets one-timestep sequences with ``_full_state`` False.

    >>> import torch
    >>> class Cumsum(CustomModule):
    ...     def enter_in_shape(self, in_shape):
    ...         self.n = in_shape[0]
    ...     def get_out_shape(self, in_shape):
    ...         return in_shape
    ...     def get_initial_state(self, batch_size):
    ...         return torch.zeros(batch_size, self.n, device=self.device)
    ...     def forward(self, x, state):                  # x: (time, batch, n)
    ...         y = state + x.cumsum(0)
    ...         return y, (y if self._full_state else y[-1])
    >>> CumsumFactory = register_recurrent(Cumsum, flatten_input=False, single_step=False, unroll_full_state=False)
    >>> model = CumsumFactory().make_model((2,))
    >>> model(torch.ones(3, 1, 2))[1].tolist()          # the final state
    [[3.0, 3.0]]
    >>> tuple(model.configure(full_state=True)(torch.ones(3, 1, 2))[1].shape)    # every step's state
    (3, 1, 2)
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
    it has one that doesn't return None, else from a trial run on an empty meta-device batch.
    Without a shape change, a list input's module gives the shape of the list's first element.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, torch.nn.Module)):
        raise TypeError(f"register_non_recurrent takes a torch.nn.Module subclass, got {module_class!r}")

    def build(self, in_shape):
        seen = self._seen_shape(in_shape)
        module = self._make_module(seen)
        if not self.shape_change:
            out_shape = seen[0] if isinstance(seen, list) else seen
        else:
            out_shape = module.get_out_shape(seen) if hasattr(module, "get_out_shape") else None
            out_shape = infer_out_shape(self, self._make_module, seen) if out_shape is None else tuple(out_shape)
        return StatelessRunner(in_shape, out_shape, module, self.flatten_input)

    attrs = {
        "module_class": module_class,
        "flatten_input": bool(flatten_input),
        "shape_change": bool(shape_change),
        "_build": build,
    }
    return type(f"{module_class.__name__}Factory", (CustomFactory,), attrs)


class RecurrentModuleRunner(Runner):
    """Runs a ``CustomModule`` by steps or whole sequences, as its registration says.

    It sets the module's ``_full_state`` before every call, and checks the state it returns.
    """

    def __init__(self, in_shape, factory: CustomFactory):
        seen = factory._seen_shape(in_shape)
        module = factory._make_module(seen)
        module._full_state = False
        out_shape = module.get_out_shape(seen)
        if out_shape is None:
            out_shape = _trial_out_shape(factory, seen)
        super().__init__(in_shape, tuple(out_shape))
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

    def _call(self, x, state, full_state: bool):
        """The module on ``x``, with ``_full_state`` set as asked; its state checked against ``state``'s shapes."""
        module = self.module
        module._full_state = full_state
        try:
            y, new_state = module(x, state)
        finally:
            module._full_state = False
        _check_state(module, new_state, state, time_batch(x)[0] if full_state else None, self.single_step)
        return y, new_state

    def step(self, x, state):
        x = self._flat(x, 1)
        if self.single_step:
            return self._call(x, state, False)
        y, state = self._call(map_input(lambda t: t.unsqueeze(0), x), state, False)  # a one-step sequence
        return y[0], state

    def sequence(self, x, state):
        if self.single_step:
            return super().sequence(x, state)
        return self._call(self._flat(x, 2), state, False)

    def sequence_full(self, x, state):
        if self.single_step or self.unroll_full_state:
            return super().sequence_full(x, state)
        return self._call(self._flat(x, 2), state, True)


def _check_state(module: torch.nn.Module, returned, given, time: int | None, single_step: bool) -> None:
    """Raise ``ShapeError`` unless ``returned`` has ``given``'s leaf shapes, with a leading ``time`` dim if given."""
    lead = () if time is None else (time,)
    want = [(*lead, *t.shape) for t in tree_leaves(given)]
    try:
        got = [tuple(t.shape) for t in tree_leaves(returned)]
    except TypeError as e:
        got = f"a state that isn't a tree of tensors ({e})"
    if got == want:
        return
    name = type(module).__name__
    if single_step:
        rule = "a single_step module must return the new state (batch, ...), shaped like get_initial_state's"
    elif time is None:
        rule = (
            "with _full_state=False it must return the final state (batch, ...), shaped like "
            "get_initial_state's, not one per timestep"
        )
    else:
        rule = (
            "with _full_state=True it must return the state after every timestep, stacked along a "
            f"leading time dim: (time={time}, batch, ...)"
        )
    raise ShapeError(f"{name} returned a state with leaf shapes {got}; {rule}: expected {want}")


def _trial_out_shape(factory: CustomFactory, seen) -> tuple[int, ...]:
    """The output shape of a fresh module run once on one timestep of batch 1, from its own
    initial state: on the meta device if it can, else for real, the random number generator untouched."""

    def run():
        module = factory._make_module(seen)
        module._full_state = False
        lead = (1,) if factory.single_step else (1, 1)
        x = [torch.zeros(*lead, *s) for s in seen] if isinstance(seen, list) else torch.zeros(*lead, *seen)
        y, _ = module(x, module.get_initial_state(1))
        return tuple(y.shape[len(lead) :])

    try:
        with torch.device("meta"):
            return run()
    except ShapeError:
        raise
    except Exception:
        pass  # some modules can't run on the meta device
    try:
        with torch.random.fork_rng(devices=[]):
            return run()
    except ShapeError:
        raise
    except Exception as e:
        raise ShapeError(
            f"{factory!r}: get_out_shape returned None and a trial run on input of shape {seen} failed: {e}"
        ) from e
