"""Porting from the original ``rnnbuilder`` 0.1.1: load its trained models' ``state_dict``.

``convert_state_dict(original_state_dict, factory, in_shape)`` takes the ``state_dict()`` of a
model the original built with ``factory.make_model(in_shape)`` and gives the same tensors under the
keys of the model this package builds from the same network description (written with this
package's factories; the layer names, the order of definition and the factories' arguments must be
the original's). Load it with ``model.load_state_dict(..., strict=True)``.

>>> import torch
>>> import rnnbuilder as rb
>>> from rnnbuilder import nn, snn
>>> original = {                                  # what the original's state_dict() holds
...     "_device_zero": torch.zeros(1),
...     "inner.mlist.0.inner.weight": torch.ones(4, 3),
...     "inner.mlist.0.inner.bias": torch.zeros(4),
...     "inner.mlist.1.inner.initial_mem": torch.full((4,), 0.5),
... }
>>> factory = rb.Sequential(nn.Linear(4), snn.LIF())
>>> model = factory.make_model((3,))
>>> converted = convert_state_dict(original, factory, (3,))
>>> list(converted)
['net.runners.0.module.weight', 'net.runners.0.module.bias', 'net.runners.1.initial_v']
>>> model.load_state_dict(converted)
<All keys matched successfully>

How the original's keys map (its module tree; ``Q`` is the original's prefix, ``P`` ours):

- the model: ``inner.`` -> ``net.``; the original's ``_device_zero`` buffer is dropped.
- ``Sequential`` (and a layer of several factories): ``Q.mlist.<i>.`` -> ``P.runners.<i>.``, where a
  ``Sequential`` of one factory is that factory's runner itself here (``P.``).
- ``Network``: ``Q.layers.<name>.`` for layers outside placeholder cycles and
  ``Q.layers.c<i>.layers.<name>.`` for layers in cycle ``i`` (numbered in the order the original
  finds them: by each cycle's first defined layer) -> ``P.layers.<name>.``. A network inside a cycle
  has no cycle level of its own (``Q.layers.<name>.``). A ``Stack``/``Sum``/``List`` assigned to a
  network attribute was a layer with an identity module in the original: it has no parameters.
- ``nn`` factories and ``register_non_recurrent`` modules: ``Q.inner.`` -> ``P.module.``.
- neurons (``LIF``, ``NoReset``, ``Adaptive``, ``Cooldown``): ``Q.inner.initial_mem`` ->
  ``P.initial_v``, flattened to (n,). ``Cooldown``'s ``Q.inner.sgn`` buffer is fixed here (+1 for the
  first n // 2 neurons, -1 after; not in the state dict): it is checked to be that and dropped.
- ``rnn.LSTM``: ``Q.inner.lstm.`` -> ``P.module.`` (a ``torch.nn.LSTM`` on both sides).
- ``rnn.TempConvPlus2d``: ``Q.inner.inner.`` -> ``P.conv.`` (a ``torch.nn.Conv3d`` on both sides; the
  same weights, but this package's convolution is causal: see ``rnn.TempConvPlus2d``).
- ``register_recurrent`` modules: ``Q.inner.`` -> ``P.module.``.

Every key must be placed: a key of the original with no place here, a key of ours the original
lacks, or a tensor of the wrong shape raises ``PortingError`` listing them all. Layers with no
counterpart in the original (``rnn.GRU``, unnamed layers) are refused when they have parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ._factory import ModuleFactory, as_shape
from ._graph.network import Network
from ._graph.nodes import Input, Layer, Placeholder, Sequential
from ._runner import SequentialRunner, StatelessRunner
from .custom import RecurrentModuleRunner
from .errors import RnnbuilderError
from .rnn import TempConvRunner, TorchRNNRunner
from .snn import functional as F
from .snn.neurons import Cooldown, NeuronRunner

__all__ = ["PortingError", "convert_state_dict", "original_keys", "DROPPED_KEYS"]

DROPPED_KEYS = ("_device_zero",)
"""Keys of the original's state dict that hold nothing to port (the original's device marker)."""


class PortingError(RnnbuilderError, KeyError):
    """An original state dict doesn't fit the network description.

    ``missing``: our keys whose original key (named in the message) is absent; ``unexpected``: the
    original's keys with no place here; ``mismatched``: (original key, problem) pairs.
    """

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class _Rules:
    """Where each of our keys comes from in the original, found by walking the description."""

    prefixes: dict[str, str] = field(default_factory=dict)  # our prefix -> the original's prefix
    leaves: dict[str, str] = field(default_factory=dict)  # our key -> the original's key (reshaped)
    checked: dict[str, tuple[str, object]] = field(default_factory=dict)  # original key -> (what, check)
    refused: dict[str, str] = field(default_factory=dict)  # our prefix -> why it has no original

    def original_of(self, key: str) -> str | None:
        if key in self.leaves:
            return self.leaves[key]
        best = max((p for p in self.prefixes if key.startswith(p)), key=len, default=None)
        return None if best is None else self.prefixes[best] + key[len(best) :]

    def refusal(self, key: str) -> str | None:
        best = max((p for p in self.refused if key.startswith(p)), key=len, default=None)
        return None if best is None else self.refused[best]


def original_keys(factory: ModuleFactory, in_shape, original_state_dict: Mapping | None = None) -> dict[str, str]:
    """Our model's keys -> the original's key for the same tensor, for ``factory.make_model(in_shape)``.

    ``original_state_dict``, if given, settles the numbering of placeholder cycles where the
    description leaves it open (see ``convert_state_dict``).

    >>> import rnnbuilder as rb
    >>> from rnnbuilder import nn, snn
    >>> n = rb.Network()
    >>> n.output = rb.Placeholder()
    >>> n.output = n.input.stack(n.output).apply(nn.Linear(4), snn.LIF())
    >>> for ours, theirs in original_keys(n, (3,)).items():
    ...     print(ours, "<-", theirs)
    net.layers.output.runners.0.module.weight <- inner.layers.c0.layers.output.mlist.0.inner.weight
    net.layers.output.runners.0.module.bias <- inner.layers.c0.layers.output.mlist.0.inner.bias
    net.layers.output.runners.1.initial_v <- inner.layers.c0.layers.output.mlist.1.inner.initial_mem
    """
    model, rules = _plan(factory, in_shape, original_state_dict or {})
    mapping = {}
    for key in model.state_dict():
        theirs = rules.original_of(key)
        if theirs is None:
            raise PortingError(_no_place(key, rules))
        mapping[key] = theirs
    return mapping


def convert_state_dict(original_state_dict: Mapping[str, torch.Tensor], factory: ModuleFactory, in_shape) -> dict:
    """The original's ``state_dict`` under our model's keys, for ``factory.make_model(in_shape)``.

    ``factory`` describes the same network as the original's with this package's factories (same
    layer names, order of definition and arguments); ``in_shape`` is the original's. Tensors are
    the original's, flattened where our layout differs (a neuron's initial membrane). Load the
    result with ``model.load_state_dict(result)`` (strict). Placeholder cycles are numbered as the
    original numbered them from the order the layers were defined; where the original's keys show a
    cycle under another number (a layer that fills a placeholder was defined at another point than
    the description reveals), the keys win.

    Raises ``PortingError`` naming every original key with no place here, every original key our
    model needs but that is missing, and every tensor whose shape differs.
    """
    original_state_dict = dict(original_state_dict)
    model, rules = _plan(factory, in_shape, original_state_dict)
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    used = set(DROPPED_KEYS)
    missing, unplaced, mismatched = [], [], []
    for key, target in ours.items():
        theirs = rules.original_of(key)
        if theirs is None:
            unplaced.append(_no_place(key, rules))
            continue
        if theirs not in original_state_dict:
            missing.append((f"our {key}", theirs, tuple(target.shape)))
            continue
        used.add(theirs)
        tensor = original_state_dict[theirs]
        if not isinstance(tensor, torch.Tensor):
            mismatched.append((theirs, f"is a {type(tensor).__name__}, not a tensor"))
        elif tuple(tensor.shape) == tuple(target.shape):
            converted[key] = tensor
        elif key in rules.leaves and tensor.numel() == target.numel():
            converted[key] = tensor.reshape(target.shape)
        else:
            mismatched.append((theirs, f"has shape {tuple(tensor.shape)}, {key} needs {tuple(target.shape)}"))
    for theirs, (what, check) in rules.checked.items():
        if theirs in original_state_dict:
            used.add(theirs)
            problem = check(original_state_dict[theirs])
            if problem:
                mismatched.append((theirs, problem))
        else:
            missing.append((what, theirs, None))
    unexpected = [key for key in original_state_dict if key not in used]
    if unplaced or missing or unexpected or mismatched:
        raise PortingError(
            _report(unplaced, missing, unexpected, mismatched, original_state_dict),
            missing=[m[1] for m in missing],
            unexpected=unexpected,
            mismatched=mismatched,
        )
    return converted


_REPORT_LINES = 40
"""The most problems a ``PortingError`` message lists (its attributes hold them all)."""


def _report(unplaced, missing, unexpected, mismatched, original) -> str:
    lines = []
    lines += [f"  - {why}" for why in unplaced]
    for what, theirs, shape in missing:
        needed = f" of shape {shape}" if shape is not None else ""
        lines.append(f"  - missing {theirs!r}{needed} (for {what})")
    for key in unexpected:
        shape = tuple(original[key].shape) if isinstance(original[key], torch.Tensor) else type(original[key]).__name__
        lines.append(f"  - unexpected {key!r} {shape}: no layer of the description holds it")
    lines += [f"  - {key!r} {problem}" for key, problem in mismatched]
    if len(lines) > _REPORT_LINES:
        lines[_REPORT_LINES:] = [f"  ... and {len(lines) - _REPORT_LINES} more"]
    lines.insert(0, "the original state dict does not fit this network description:")
    if missing or unexpected:
        lines.append(
            "  (layer names, the order layers and placeholders were defined, and the factories must be the original's)"
        )
    return "\n".join(lines)


def _no_place(key: str, rules: _Rules) -> str:
    why = rules.refusal(key)
    return f"our {key} has no counterpart in rnnbuilder 0.1.1" + (f": {why}" if why else "")


def _plan(factory: ModuleFactory, in_shape, original: Mapping) -> tuple[torch.nn.Module, _Rules]:
    """Our model (parameters on the meta device: only keys and shapes matter) and the key rules."""
    if not isinstance(factory, ModuleFactory):
        raise TypeError(f"factory must be a rnnbuilder factory such as a Network, got {factory!r}")
    in_shape = as_shape(in_shape)
    try:
        with torch.device("meta"):
            model = factory.make_model(in_shape)
    except Exception:
        # Some custom modules can't be built on the meta device: build for real, RNG untouched.
        with torch.random.fork_rng(devices=[]):
            model = factory.make_model(in_shape)
    rules = _Rules()
    _walk(factory, model.net, "net.", "inner.", False, rules, original)
    return model, rules


def _walk(factory, runner, ours: str, theirs: str, unrolled: bool, rules: _Rules, original: Mapping) -> None:
    """Rules for ``runner`` (built from ``factory``) at our prefix ``ours``, the original's ``theirs``.

    ``unrolled``: the original built this part inside a placeholder cycle (its networks there have
    no cycle level).
    """
    if isinstance(factory, Sequential):
        _walk_sequence(factory.factories, runner, ours, theirs, unrolled, rules, original)
    elif isinstance(factory, Network):
        _walk_network(factory, runner, ours, theirs, unrolled, rules, original)
    elif isinstance(runner, NeuronRunner):
        rules.leaves[ours + "initial_v"] = theirs + "inner.initial_mem"
        if isinstance(factory, Cooldown):
            rules.checked[theirs + "inner.sgn"] = (f"the fixed sign of our {ours.rstrip('.')}", _sign_check(runner.n))
    elif isinstance(runner, TorchRNNRunner):
        if isinstance(runner.module, torch.nn.LSTM):
            rules.prefixes[ours + "module."] = theirs + "inner.lstm."
        else:
            rules.refused[ours] = f"{factory!r} (the original has no {type(runner.module).__name__})"
    elif isinstance(runner, TempConvRunner):
        rules.prefixes[ours + "conv."] = theirs + "inner.inner."
    elif isinstance(runner, (StatelessRunner, RecurrentModuleRunner)):
        rules.prefixes[ours + "module."] = theirs + "inner."
    else:
        rules.refused[ours] = f"{factory!r} builds a {type(runner).__name__}, unknown to the converter"


def _walk_sequence(factories, runner, ours, theirs, unrolled, rules, original) -> None:
    if len(factories) == 1:  # our Sequential of one factory is that factory's runner
        _walk(factories[0], runner, ours, theirs + "mlist.0.", unrolled, rules, original)
        return
    if not isinstance(runner, SequentialRunner) or len(runner.runners) != len(factories):
        raise PortingError(f"internal: expected a SequentialRunner of {len(factories)} at {ours!r}, got {runner!r}")
    for i, (f, r) in enumerate(zip(factories, runner.runners, strict=True)):
        _walk(f, r, f"{ours}runners.{i}.", f"{theirs}mlist.{i}.", unrolled, rules, original)


def _layer_factory(node: Layer):
    """The original's factory for a layer: its one factory, or a Sequential of several."""
    return node.factories[0] if len(node.factories) == 1 else Sequential(*node.factories)


def _walk_network(net: Network, runner, ours, theirs, unrolled, rules, original) -> None:
    layers = _original_layers(net)
    cycles = {} if unrolled else _cycles(net, layers, original, theirs)
    names_of: dict[int, list[str]] = {}
    for name, node in layers.items():
        names_of.setdefault(id(node), []).append(name)
    for name, node in layers.items():
        if not isinstance(node, Layer):
            continue  # a Stack/Sum/List: an identity module in the original, no parameters
        names = names_of[id(node)]
        if len(names) > 1:  # the original builds a copy, with parameters of its own, under each name
            here = next((n for n in names if n in runner.layers), name)
            rules.refused[f"{ours}layers.{here}."] = (
                f"layer {here!r} is assigned to the attributes {', '.join(map(repr, names))}; the original "
                f"builds a separate copy with parameters of its own under each"
            )
            continue
        if name not in runner.layers:
            raise PortingError(f"internal: our network at {ours!r} has no layer {name!r}; it has {list(runner.layers)}")
        cycle = cycles.get(name)
        _walk(
            _layer_factory(node),
            runner.layers[name],
            f"{ours}layers.{name}.",
            f"{theirs}layers.{name}." if cycle is None else f"{theirs}layers.c{cycle}.layers.{name}.",
            unrolled or cycle is not None,
            rules,
            original,
        )
    for name in runner.layers:
        if name not in layers:
            rules.refused[f"{ours}layers.{name}."] = (
                f"layer {name!r} is not assigned to an attribute of the network; the original names every layer"
            )


def _original_layers(net: Network) -> dict:
    """The original's layers: attribute name -> node (a Layer, or a Stack/Sum/List it made a layer of),
    in the order of the network's attributes."""
    layers = {}
    for name, node in net.layers.items():
        if isinstance(node, (Placeholder, Input)):
            continue
        layers[name] = node
    return layers


def _cycles(net: Network, layers: dict, original: Mapping, theirs: str) -> dict[str, int]:
    """Layer name -> the number of the original's placeholder cycle holding it (absent: no cycle).

    The original finds the cycles through its layers in the order they were defined, numbering
    each when it meets its first layer; a layer defined into a name that held a placeholder counts
    from its own definition. The original's keys (``...layers.c<i>.layers.<name>...``) win where
    they say otherwise.
    """
    name_of = {}
    for name, node in layers.items():
        name_of.setdefault(id(node), name)

    def deps(node) -> set[str]:
        found, todo = set(), list(node.inputs())
        while todo:
            d = todo.pop()
            if isinstance(d, Placeholder):
                d = d.layer
            if d is None or isinstance(d, Input):
                continue
            if id(d) in name_of:
                found.add(name_of[id(d)])
            else:  # an unnamed Stack/Sum/List feeding a layer: the original's layer reads its members
                todo.extend(d.inputs())
        return found

    edges = {name: deps(node) for name, node in layers.items()}
    reach = {}
    for name in layers:
        seen, todo = set(), list(edges[name])
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo.extend(edges[d])
        reach[name] = seen
    order = sorted(layers, key=_definition_order(net, layers))
    numbered: dict[str, int] = {}
    groups: list[list[str]] = []
    for name in order:
        if name in numbered or name not in reach[name]:
            continue
        group = [other for other in order if other in reach[name] and name in reach[other]]
        for other in group:
            numbered[other] = len(groups)
        groups.append(group)
    return _settle(numbered, groups, layers, original, theirs)


def _definition_order(net: Network, layers: dict):
    """A sort key giving the order the layers were defined, as the original saw it.

    Nodes are stamped when created (``_defined``), which is when they are defined for layers built
    in their assignment. Without stamps: the attribute order, where a layer that filled a
    placeholder's name sits at the placeholder's place (the original's keys settle that).
    """
    stamps = {name: getattr(node, "_defined", None) for name, node in layers.items()}
    if all(isinstance(s, int) for s in stamps.values()):
        return stamps.__getitem__
    return {name: i for i, name in enumerate(net.layers)}.__getitem__


_CYCLE_KEY = re.compile(r"c(\d+)\.layers\.([^.]+)\.")


def _settle(numbered: dict[str, int], groups: list[list[str]], layers: dict, original: Mapping, theirs: str):
    """The cycle numbers, where the original's keys show them, else as predicted."""
    seen: dict[int, set[int]] = {}
    for key in original:
        if not key.startswith(theirs + "layers."):
            continue
        match = _CYCLE_KEY.match(key, len(theirs) + len("layers."))
        if match and match.group(2) in numbered and f"c{match.group(1)}" not in layers:
            seen.setdefault(numbered[match.group(2)], set()).add(int(match.group(1)))
    settled = {g: ids.pop() for g, ids in seen.items() if len(ids) == 1}
    if len(set(settled.values())) != len(settled):
        return numbered  # the keys contradict each other: keep the prediction, the errors will show
    free = iter(i for i in range(len(groups) + len(settled)) if i not in settled.values())
    final = {g: settled[g] if g in settled else next(free) for g in range(len(groups))}
    return {name: final[g] for name, g in numbered.items()}


def _sign_check(n: int):
    expected = F.cooldown_sign(n)

    def check(tensor) -> str | None:
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (n,):
            return f"has shape {tuple(getattr(tensor, 'shape', ()))}, a Cooldown layer of {n} neurons needs ({n},)"
        if not torch.equal(tensor.detach().cpu().float(), expected):
            return f"differs from the fixed sign of Cooldown (+1 for the first {n // 2} neurons, -1 after)"
        return None

    return check
