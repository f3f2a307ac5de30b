"""``Stacked``: many models of one structure stepped together, as one batched computation.

A server holds many sessions whose models come from the same factory for the same input shape:
the same modules, each with its own parameters and state. ``Stacked`` keeps their parameters and
buffers stacked along a new leading dim (one slot per model) and runs one timestep of any of them
at once through ``torch.func.vmap`` over ``torch.func.functional_call`` of the runner's
``stepper()``.

>>> import torch
>>> import rnnbuilder as rb
>>> from rnnbuilder import nn, snn
>>> factory = rb.Sequential(nn.Linear(4), snn.LIF())
>>> models = [factory.make_model((3,)) for _ in range(5)]
>>> stacked = rb.Stacked(models)
>>> states = [m.get_initial_state(2) for m in models]
>>> y, states = stacked.step(range(5), torch.rand(5, 2, 3), states)      # (members, batch, *in_shape)
>>> tuple(y.shape), type(states[0][1]).__name__
((5, 2, 4), 'LIFState')
>>> y, some = stacked.step([3, 1], torch.rand(2, 2, 3), [states[3], states[1]])   # any subset

Results equal each model stepped alone up to float rounding: spikes match, while membranes and
linear outputs can differ in the last bits where the batched matrix product sums in another order
than the model's own (on the CPU: convolutions, and small Linear layers at batch 1; see
``docs/batching.md``).
Networks with an operation that vmap can't batch (``rnn.LSTM``, ``rnn.GRU``) are stepped one
member after another on their slots: the same numbers as the models, without the speed-up.

Only parameters and buffers are per member; everything else comes from the first model. A
``Stacked`` is not thread-safe: one ``step`` or ``refresh`` at a time.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, vmap

from ._factory import Model
from ._runner import SequentialRunner, StatelessRunner
from ._tree import State
from .snn.neurons import NeuronRunner

__all__ = ["Stacked"]

_PREFIX = "net."


class _Step(torch.nn.Module):
    """``net.stepper()(x, state)`` as a module's forward, for ``functional_call``. The stepper is
    taken on every call, inside the call, so that what it looks up once are the given tensors."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, state: State):
        return self.net.stepper()(x, state)


class Stacked:
    """K models of one structure (built from one factory for one input shape): their parameters and
    buffers stacked along a new leading dim, kept between calls, and stepped together (torch.func.vmap)."""

    def __init__(self, models: Sequence[Model]):
        models = list(models)
        if not models:
            raise ValueError("Stacked needs at least one model")
        first = models[0]
        self._structure = _structure(first)
        self._signature = _signature(first)
        for i, model in enumerate(models[1:], start=1):
            _check_same(self._structure, _structure(model), i, "structure")
            _check_same(self._signature, _signature(model), i, "tensor")
        with torch.no_grad():
            self._stacked = [torch.stack([t.detach() for t in ts]) for ts in zip(*(_tensors(m) for m in models))]
        self._tensors = dict(zip(self._signature, self._stacked, strict=True))
        self._all = list(range(len(models)))
        self._device = next(iter(self._signature.values()))[2] if self._signature else torch.device("cpu")
        self._net = _skeleton(first.net)
        self._slots = _slots(self._net)
        self._flatten, self._build = _codec(first.get_initial_state(1))
        direct = _direct(first.net, list(self._signature), self._flatten, self._build)
        self._vstep = direct or vmap(self._batched, randomness="different")
        self._module = _Step(self._net)
        # Modules that cache their tensors when assigned (torch's RNNs) get them through
        # functional_call, one member at a time; vmap has no batching rule for them anyway.
        plain = all(type(m).__setattr__ is torch.nn.Module.__setattr__ for m in self._net.modules())
        self._vmappable = direct is not None or plain
        if direct is None and plain:
            self._vmappable = self._probe(first)

    def __len__(self) -> int:
        return len(self._all)

    def refresh(self, index: int, model: Model) -> None:
        """Copy ``model``'s current parameters and buffers into slot ``index``, in place (no
        reallocation): after training or loading a member's parameters."""
        if not 0 <= index < len(self._all):
            raise IndexError(f"slot {index} out of range for {len(self._all)} models")
        _check_same(self._signature, _signature(model), index, "tensor")
        with torch.no_grad():
            for stacked, tensor in zip(self._stacked, _tensors(model), strict=True):
                stacked[index].copy_(tensor)

    def step(
        self, members: Sequence[int], x: torch.Tensor, states: Sequence[State]
    ) -> tuple[torch.Tensor, list[State]]:
        """One timestep (inference, under ``torch.no_grad``) of the models in slots ``members``.

        ``x`` is (len(members), batch, *in_shape); ``states[i]`` is member i's state as its own
        model takes and returns it. Gives y (len(members), batch, *out_shape) and each member's new
        state, structured like the model's own (views into one stacked tensor per leaf).
        """
        count = len(members)
        if len(states) != count or x.shape[0] != count:
            raise ValueError(
                f"{count} members need {count} states and x of shape ({count}, batch, ...), "
                f"got {len(states)} states and x of shape {tuple(x.shape)}"
            )
        with torch.no_grad():
            if count == len(self._all) and list(members) == self._all:
                tensors = self._stacked
            else:
                index = torch.as_tensor(members, dtype=torch.long, device=self._device)
                tensors = [t.index_select(0, index) for t in self._stacked]
            if not self._vmappable:
                return self._loop(tensors, x, states)
            flatten, per_member = self._flatten, []
            for state in states:
                leaves: list[torch.Tensor] = []
                flatten(state, leaves)
                per_member.append(leaves)
            stacked = [torch.stack(leaves) for leaves in zip(*per_member)]
            y, new = self._vstep(tensors, x, stacked)
        split = [leaf.unbind(0) for leaf in new]
        build = self._build
        return y, [build(iter([leaves[i] for leaves in split])) for i in range(count)]

    def _batched(self, tensors: list[torch.Tensor], x: torch.Tensor, leaves: list[torch.Tensor]):
        """One member's step on its tensors and state leaves (vmap maps it over the members)."""
        for owner, name, i, _ in self._slots:
            owner[name] = tensors[i]
        try:
            y, state = self._net.stepper()(x, self._build(iter(leaves)))
        finally:
            for owner, name, _, empty in self._slots:
                owner[name] = empty
        out: list[torch.Tensor] = []
        self._flatten(state, out)
        return y, out

    def _loop(self, tensors, x, states):
        """Member after member on its slot, through functional_call: for networks vmap can't batch."""
        ys, news = [], []
        for i, state in enumerate(states):
            named = {_PREFIX + name: t[i] for name, t in zip(self._signature, tensors, strict=True)}
            y, state = functional_call(self._module, named, (x[i], state))
            ys.append(y)
            news.append(state)
        return torch.stack(ys), news

    def _probe(self, model: Model) -> bool:
        """Whether vmap can batch this structure: one step of slot 0 at batch 1 (zeros)."""
        x = torch.zeros((1, 1, *model.in_shape), device=self._device, dtype=_dtype(self._signature))
        try:
            self.step([0], x, [model.get_initial_state(1)])
        except RuntimeError as e:
            if "Batching rule not implemented" not in str(e) and "vmap" not in str(e):
                raise
            return False
        return True


def _slots(net: torch.nn.Module) -> list[tuple[dict, str, int, torch.Tensor]]:
    """Where each parameter and buffer of ``net`` lives, shared ones at every place:
    (the owning module's ``_parameters`` or ``_buffers``, its name there, its index in
    ``_signature`` order, the placeholder it holds between calls)."""
    unique = [t for _, t in net.named_parameters()] + [t for _, t in net.named_buffers()]
    index = {id(t): i for i, t in enumerate(unique)}
    slots = []
    for module in net.modules():
        for owner in (module._parameters, module._buffers):
            for name, t in owner.items():
                if t is not None:
                    slots.append((owner, name, index[id(t)], t))
    return slots


def _codec(template: State):
    """``(flatten(tree, out), build(leaves_iterator))`` for trees structured like ``template``:
    the leaves in a fixed order, and the tree back from them, with the template's types."""
    if isinstance(template, torch.Tensor):
        return (lambda tree, out: out.append(tree)), next
    if template is None:
        return (lambda tree, out: None), (lambda leaves: None)
    if isinstance(template, dict):
        keys = list(template)
        parts = [_codec(template[k]) for k in keys]

        def flatten_dict(tree, out):
            for key, (flatten, _) in zip(keys, parts):
                flatten(tree[key], out)

        return flatten_dict, lambda leaves: {key: build(leaves) for key, (_, build) in zip(keys, parts)}
    if isinstance(template, (tuple, list)):
        kind = type(template)
        parts = [_codec(t) for t in template]

        def flatten_sequence(tree, out):
            for item, (flatten, _) in zip(tree, parts, strict=True):
                flatten(item, out)

        if hasattr(template, "_fields"):
            return flatten_sequence, lambda leaves: kind(*[build(leaves) for _, build in parts])
        return flatten_sequence, lambda leaves: kind([build(leaves) for _, build in parts])
    raise TypeError(f"state leaves must be tensors, got {type(template).__name__}")


def _tensors(model: Model) -> list[torch.Tensor]:
    """The model's parameters, then buffers, in a fixed order (the order of ``_signature``)."""
    net = model.net
    return [p for _, p in net.named_parameters()] + [b for _, b in net.named_buffers()]


def _signature(model: Model) -> dict[str, tuple[tuple[int, ...], torch.dtype, torch.device]]:
    """Name -> (shape, dtype, device) of every parameter and buffer (non-persistent ones too)."""
    net = model.net
    named = list(net.named_parameters()) + list(net.named_buffers())
    return {name: (tuple(t.shape), t.dtype, t.device) for name, t in named}


def _structure(model: Model) -> dict[str, object]:
    """What makes two models run the same step: input shape, and every module's type, settings
    (``extra_repr``), neuron factory and network plan, by module path."""
    found: dict[str, object] = {"input shape": tuple(model.in_shape)}
    for path, module in model.net.named_modules():
        where = f"module {path!r}" if path else "the top module"
        found[where] = (type(module).__qualname__, module.extra_repr())
        if hasattr(module, "factory"):
            found[f"{where}'s factory"] = repr(module.factory)
        if hasattr(module, "plan"):
            nodes = [(n.kind, n.name, n.inputs, n.shape, n.layer, n.parts) for n in module.nodes]
            found[f"{where}'s graph"] = (nodes, module.plan, module.output, module.input)
    return found


def _check_same(expected: dict, got: dict, index: int, what: str) -> None:
    """A ``ValueError`` naming the first difference between model ``index`` and model 0."""
    for name, value in expected.items():
        if name not in got:
            raise ValueError(f"model {index} differs from model 0: it has no {what} {name!r}")
        if got[name] != value:
            raise ValueError(
                f"model {index} differs from model 0 in {what} {name!r}: {_show(got[name])} instead of {_show(value)}"
            )
    for name in got:
        if name not in expected:
            raise ValueError(f"model {index} differs from model 0: it has an extra {what} {name!r}")


def _show(value) -> str:
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], torch.dtype):
        shape, dtype, device = value
        return f"shape {shape}, {dtype}, on {device}"
    return repr(value)


def _dtype(signature: dict) -> torch.dtype:
    floats = [dtype for _, dtype, _ in signature.values() if dtype.is_floating_point]
    return floats[0] if floats else torch.get_default_dtype()


def _skeleton(net: torch.nn.Module) -> torch.nn.Module:
    """A private copy of ``net`` whose parameters and buffers are data-less meta tensors: every
    call supplies the real ones, and the models themselves are never touched."""
    memo: dict[int, object] = {}
    for p in net.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in net.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(net, memo)


def _direct(net: torch.nn.Module, names: list[str], flatten, build) -> Callable | None:
    """The batched step written out with batched matrix products, for the common networks: a layer
    or a ``Sequential`` of Linear layers, neuron layers and parameter-free modules on flat
    features; None for any other (vmap steps those). A neuron's update is elementwise, so it
    runs on (members, batch, n) as it is, and a parameter-free module on the members' batches
    merged: both give each member's numbers bit for bit. Only the Linear layers' ``baddbmm`` can
    round differently from a member's own ``addmm``. ``flatten`` and ``build``: the state's codec
    (``_codec``), between state trees and their leaves."""
    layers = list(net.runners) if isinstance(net, SequentialRunner) else [net]
    prefix = "runners.{}." if isinstance(net, SequentialRunner) else ""
    index = {name: i for i, name in enumerate(names)}
    steps = []
    for i, runner in enumerate(layers):
        at = prefix.format(i)
        if isinstance(runner, NeuronRunner) and len(runner.in_shape) == 1 and not runner.factory.persistent_buffers:
            # Buffers a neuron's parameters hold (Cooldown's signs) follow from the size: the same in every member.
            # Coefficients kept as buffers (the NIR neurons') may differ between members: vmap reads each slot's.
            step_fn, params = runner.factory.step_fn, runner.factory.neuron_parameters(runner)
            steps.append(lambda x, state, tensors, f=step_fn, p=params: f(x, state, p))
        elif isinstance(runner, StatelessRunner) and isinstance(runner.module, torch.nn.Linear):
            if len(runner.in_shape) != 1:
                return None
            weight, bias = index[at + "module.weight"], index.get(at + "module.bias")
            steps.append(functools.partial(_linear, weight, bias))
        elif isinstance(runner, StatelessRunner) and _parameter_free(runner.module):
            steps.append(functools.partial(_merged, runner))
        else:
            return None

    def batched(tensors: list[torch.Tensor], x: torch.Tensor, leaves: list[torch.Tensor]):
        state = build(iter(leaves))
        if len(steps) == 1:
            y, new = steps[0](x, state, tensors)
        else:
            y, new_parts = x, []
            for step, part in zip(steps, state, strict=True):
                y, part = step(y, part, tensors)
                new_parts.append(part)
            new = tuple(new_parts)
        out: list[torch.Tensor] = []
        flatten(new, out)
        return y, out

    return batched


def _linear(weight: int, bias: int | None, x: torch.Tensor, state, tensors: list[torch.Tensor]):
    """(members, batch, in) -> (members, batch, out) with each member's weight and bias."""
    w = tensors[weight].transpose(1, 2)
    if bias is None:
        return torch.bmm(x, w), state
    return torch.baddbmm(tensors[bias].unsqueeze(1), x, w), state


def _merged(runner: StatelessRunner, x: torch.Tensor, state, tensors):
    """A parameter-free module on the members' batches as one batch."""
    y = runner.apply(x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]))
    return y.reshape(x.shape[0], x.shape[1], *y.shape[1:]), state


def _parameter_free(module: torch.nn.Module) -> bool:
    """No tensors of its own, and no randomness (dropout draws per call, not per member)."""
    tensors = next(module.parameters(), None) is None and next(module.buffers(), None) is None
    return tensors and not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in module.modules())
