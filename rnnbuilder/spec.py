"""Networks as data: ``to_spec`` describes a factory as plain JSON, ``from_spec`` rebuilds it.

A description carries no code. Its types are names that a ``Registry`` maps to classes an operator
allowed: the built-ins (``"nn.Linear"``, ``"rnn.LSTM"``, ``"snn.LIF"``, surrogates such as
``"snn.SpikeLinear"``, ``"Sequential"``, ``"Network"``) and registered custom factories. So a server
can rebuild what untrusted clients send: nothing is evaluated or unpickled, every argument is
checked against its type hint, and every mistake raises ``SpecError`` naming the exact place, such as
``root.layers[2].factories[1].args.tau``.

The format is ``{"format": "rnnbuilder.spec/1", "root": FACTORY}``. A FACTORY is one of

- ``{"type": "nn.Linear", "args": {"out_features": 10}}``: arguments by name, omitted ones take
  their defaults; surrogates are such objects too, and tuples are lists. An integer argument takes
  a real with no fractional part (``8.0``) as that integer, and refuses any other real;
- ``{"type": "Sequential", "factories": [FACTORY, ...]}``;
- a tensor argument (such as a per-neuron time constant) is ``{"tensor": {"dtype": "float32",
  "shape": [2, 3], "data": [...]}}``: ``data`` lists the elements in row-major order, as numbers
  (booleans for ``"bool"``), which give back the exact values (a float32 is exactly a JSON double).
  The dtypes are ``float16``, ``float32``, ``float64``, ``int8``, ``int16``, ``int32``, ``int64``,
  ``uint8`` and ``bool``;
- ``{"type": "Network", "layers": [NODE, ...], "names": [{"name": "output", "node": 2}, ...]}``.
  Nodes refer to each other by index in ``"layers"``, and each comes after its inputs (a
  placeholder may refer to a later layer). ``"names"`` are the network's attributes, in order. A
  NODE is ``{"kind": "input"}``, ``{"kind": "layer", "input": i, "factories": [FACTORY, ...]}``,
  ``{"kind": "stack" | "sum" | "list", "inputs": [i, ...]}`` or ``{"kind": "placeholder",
  "layer": i, "hint": name or null, "initial_value": null | "zeros" | "ones" | number}``.

A key that means nothing where it is given (``"args"`` on a Sequential or Network, ``"factories"``
on anything but a Sequential, an unknown key of a node) is refused, never ignored.

>>> from rnnbuilder import Network, Placeholder, nn
>>> n = Network()
>>> n.output = Placeholder()
>>> n.output = n.input.stack(n.output).apply(nn.Linear(8))
>>> spec = to_spec(n)
>>> for node in spec["root"]["layers"]:
...     print(node)
{'kind': 'input'}
{'kind': 'placeholder', 'layer': 3, 'hint': 'output', 'initial_value': None}
{'kind': 'stack', 'inputs': [0, 1]}
{'kind': 'layer', 'input': 2, 'factories': [{'type': 'nn.Linear', 'args': {'out_features': 8, 'bias': True}}]}
>>> spec["root"]["names"]
[{'name': 'output', 'node': 3}]
>>> to_spec(from_spec(spec)) == spec
True
>>> from_spec({"format": "rnnbuilder.spec/1", "root": {"type": "nn.Linear", "args": {"out_features": "8"}}})
Traceback (most recent call last):
...
rnnbuilder.errors.SpecError: root.args.out_features: expected integer, got "8"
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import math
import numbers
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

import torch

from . import encode, initial, nn, rnn, snn
from ._factory import ModuleFactory
from ._graph.compiler import definition_order
from ._graph.network import Network
from ._graph.nodes import Layer, List, Node, Placeholder, Sequential, Stack, Sum
from .custom import CustomFactory
from .encode import Encoder
from .errors import SpecError
from .snn import Surrogate

__all__ = [
    "FORMAT",
    "Registry",
    "builtin_registry",
    "default_registry",
    "register",
    "to_spec",
    "from_spec",
    "encoder_to_spec",
    "encoder_from_spec",
]

FORMAT = "rnnbuilder.spec/1"
"""The format marker of the descriptions this version writes and reads."""

_DESCRIBED = (ModuleFactory, Surrogate, Encoder)
_KINDS = ((Surrogate, "surrogate"), (Encoder, "encoder"), (ModuleFactory, "factory"))
_COMBINE = {cls.kind: cls for cls in (Stack, Sum, List)}
_NODE_KEYS = {  # kind -> (required keys, optional keys)
    "input": ((), ()),
    "layer": (("input", "factories"), ()),
    "placeholder": (("layer",), ("hint", "initial_value")),
    **{kind: (("inputs",), ()) for kind in _COMBINE},
}
_EXACT = 2**53  # every integer up to this is exactly a double; beyond it, doubles skip integers
_INITIAL = {"zeros": initial.zeros, "ones": initial.ones}
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", type(None): "null"}
# Unannotated custom arguments take any JSON value; lists stay lists, as there is no hint to make tuples.
_ANY = bool | int | float | str | list[Any] | ModuleFactory | Surrogate | torch.Tensor | None
_TENSOR_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
}
_TENSOR_DTYPE_NAMES = {dtype: name for name, dtype in _TENSOR_DTYPES.items()}
"""The dtypes a tensor argument may have, by the name its description gives."""
_TENSOR_KEYS = ("dtype", "shape", "data")


@functools.cache
def _parameters(cls: type) -> dict[str, tuple[Any, bool]]:
    """The constructor arguments of a describable class: name -> (type hint, required)."""
    if issubclass(cls, CustomFactory):
        try:
            hints = typing.get_type_hints(cls.module_class.__init__)
        except Exception:  # annotations that don't resolve: take any JSON value, as if unannotated
            hints = {}
        parameters = cls._constructor_signature().parameters.values()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name: (hints.get(p.name, Any), p.default is p.empty) for p in parameters if p.kind in named}
    if not is_dataclass(cls):
        raise TypeError(
            f"{cls.__name__} can't be described as data: make it a dataclass or a rnnbuilder.custom factory"
        )
    hints = typing.get_type_hints(cls)
    return {
        f.name: (hints[f.name], f.default is MISSING and f.default_factory is MISSING) for f in fields(cls) if f.init
    }


@functools.cache
def _extra_keywords(cls: type) -> Any:
    """The type hint of the extra keyword arguments a custom module's ``**kwargs`` takes; None if it takes none."""
    if not issubclass(cls, CustomFactory):
        return None
    for p in cls._constructor_signature().parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            try:
                return typing.get_type_hints(cls.module_class.__init__).get(p.name, Any)
            except Exception:
                return Any
    return None


class Registry:
    """The types a description may name: ``name -> class``, each a factory, surrogate or encoder class.

    >>> import torch
    >>> from rnnbuilder import custom
    >>> class Scale(torch.nn.Module):
    ...     def __init__(self, factor: float = 2.0):
    ...         super().__init__()
    ...         self.factor = factor
    ...     def forward(self, x):
    ...         return x * self.factor
    >>> ScaleFactory = custom.register_non_recurrent(Scale, flatten_input=False, shape_change=False)
    >>> registry = builtin_registry()
    >>> registry.register("example.Scale", ScaleFactory)
    >>> spec = to_spec(ScaleFactory(factor=3), registry)
    >>> spec["root"]
    {'type': 'example.Scale', 'args': {'factor': 3}}
    >>> from_spec(spec, registry)       # the hint makes it a float
    ScaleFactory(factor=3.0)
    """

    def __init__(self):
        self._types: dict[str, type] = {}
        self._names: dict[type, str] = {}

    def register(self, name: str, cls: type) -> None:
        """Allow ``cls`` in descriptions as ``name``.

        ``cls`` is ``Sequential``, ``Network``, a factory or surrogate dataclass, or a factory class
        from ``rnnbuilder.custom.register_*``, whose module's constructor hints type its arguments.
        Extra keywords that the constructor's ``**kwargs`` takes travel by name too, typed by its hint
        (any JSON value if none); extras for its ``*args`` have no name, so ``to_spec`` refuses them.
        A class registered under several names is described by the first.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a registered name must be a non-empty string, got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, _DESCRIBED)):
            raise TypeError(f"only factory, surrogate and encoder classes can be registered, got {cls!r}")
        if not issubclass(cls, (Network, Sequential)):
            _parameters(cls)  # fail now, not when a client names it
        if self._types.setdefault(name, cls) is not cls:
            raise ValueError(f"{name!r} is already registered for {self._types[name].__name__}")
        self._names.setdefault(cls, name)

    def factory_names(self) -> list[str]:
        """The registered factory names, sorted."""
        return self._names_of((ModuleFactory,))

    def surrogate_names(self) -> list[str]:
        """The registered surrogate names, sorted."""
        return self._names_of((Surrogate,))

    def encoder_names(self) -> list[str]:
        """The registered spike encoder names (``rnnbuilder.encode``), sorted."""
        return self._names_of((Encoder,))

    def copy(self) -> Registry:
        """An independent registry with the same entries."""
        other = Registry()
        other._types, other._names = dict(self._types), dict(self._names)
        return other

    def _names_of(self, bases: tuple[type, ...]) -> list[str]:
        return sorted(name for name, cls in self._types.items() if issubclass(cls, bases))

    def _name_of(self, cls: type, path: str) -> str:
        if cls not in self._names:
            raise SpecError(
                path, f"{cls.__name__} is not registered; register it with rnnbuilder.spec.register(name, class)"
            )
        return self._names[cls]

    def _lookup(self, name: str, bases: tuple[type, ...], path: str) -> type:
        cls = self._types.get(name)
        if cls is not None and issubclass(cls, bases):
            return cls
        valid = self._names_of(bases)
        close = difflib.get_close_matches(name, valid)
        suggestion = f"did you mean {' or '.join(close)}?" if close else f"valid types: {', '.join(valid)}"
        raise SpecError(path, f"unknown {_type_name(bases)} type {_show(name)}; {suggestion}")


def builtin_registry() -> Registry:
    """A new registry of the built-in factories and surrogates, named like ``"nn.Linear"``.

    >>> registry = builtin_registry()
    >>> "rnn.LSTM" in registry.factory_names(), "snn.SpikeLinear" in registry.surrogate_names()
    (True, True)
    """
    registry = Registry()
    for prefix, module in (("nn", nn), ("rnn", rnn), ("snn", snn), ("encode", encode)):
        for attr in module.__all__:
            cls = getattr(module, attr)
            if isinstance(cls, type) and issubclass(cls, _DESCRIBED) and is_dataclass(cls):
                registry.register(f"{prefix}.{attr}", cls)
    registry.register("Sequential", Sequential)
    registry.register("Network", Network)
    return registry


default_registry = builtin_registry()
"""The registry ``to_spec`` and ``from_spec`` use when given none."""


def register(name: str, cls: type) -> None:
    """Allow ``cls`` as ``name`` in ``default_registry``; see ``Registry.register``."""
    default_registry.register(name, cls)


def to_spec(factory: ModuleFactory, registry: Registry | None = None) -> dict:
    """A JSON-compatible description of ``factory`` (see the module docs for the format).

    >>> from rnnbuilder import nn
    >>> to_spec(nn.MaxPool2d((2, 2)))["root"]["args"]["kernel_size"]
    [2, 2]
    """
    if not isinstance(factory, ModuleFactory):
        raise SpecError("root", f"expected a factory such as nn.Linear(10), got {factory!r}")
    return {"format": FORMAT, "root": _Writer(_or_default(registry)).object(factory, "root")}


def from_spec(spec: dict, registry: Registry | None = None) -> ModuleFactory:
    """The factory ``spec`` describes, built only from types in ``registry``.

    >>> from_spec({"format": "rnnbuilder.spec/1", "root": {"type": "rnn.LSTM", "args": {"hidden_size": 8}}})
    LSTM(hidden_size=8, num_layers=1, bias=True, dropout=0.0)
    """
    if not isinstance(spec, dict):
        raise SpecError("spec", f"expected a JSON object with 'format' and 'root', got {_show(spec)}")
    if spec.get("format") != FORMAT:
        raise SpecError("format", f"expected {_show(FORMAT)}, got {_show(spec.get('format'))}")
    _keys(spec, "", ("format", "root"))
    try:
        return _Reader(_or_default(registry)).object(spec["root"], (ModuleFactory,), "root")
    except RecursionError:
        raise SpecError("root", "nested too deeply") from None


def encoder_to_spec(encoder: Encoder, registry: Registry | None = None) -> dict:
    """A JSON-compatible description of a spike encoder (``rnnbuilder.encode``): a FACTORY object.

    >>> from rnnbuilder import encode
    >>> encoder_to_spec(encode.Delta(threshold=0.5))
    {'type': 'encode.Delta', 'args': {'threshold': 0.5, 'padding': False, 'off_spike': False}}
    """
    if not isinstance(encoder, Encoder):
        raise SpecError("encoder", f"expected an encoder such as rnnbuilder.encode.Rate(num_steps=20), got {encoder!r}")
    return _Writer(_or_default(registry)).object(encoder, "encoder")


def encoder_from_spec(description: dict, registry: Registry | None = None) -> Encoder:
    """The spike encoder ``description`` (``encoder_to_spec``'s) describes, built only from types in
    ``registry``; ``SpecError`` names what is wrong, such as ``encoder.args.num_steps``.

    >>> encoder_from_spec({"type": "encode.Rate", "args": {"num_steps": 20}})
    Rate(num_steps=20, gain=1.0, offset=0.0, first_spike_time=0, time_var_input=False, poisson=False)
    >>> encoder_from_spec({"type": "encode.Rate", "args": {"num_steps": 0}})
    Traceback (most recent call last):
    ...
    rnnbuilder.errors.SpecError: encoder: rate: num_steps must be a positive integer, got 0
    """
    return _Reader(_or_default(registry)).object(description, (Encoder,), "encoder")


class _Writer:
    def __init__(self, registry: Registry):
        self.registry = registry

    def object(self, obj, path: str) -> dict:
        spec = {"type": self.registry._name_of(type(obj), path)}
        if isinstance(obj, Network):
            return {**spec, **self.network(obj, path)}
        if isinstance(obj, Sequential):
            return {**spec, "factories": self.value(obj.factories, f"{path}.factories")}
        if isinstance(obj, CustomFactory):
            if obj._unnamed:  # *args extras and positional-only arguments have no name to travel by
                name, values = next(iter(obj._unnamed.items()))
                module = obj.module_class.__name__
                if obj._constructor_signature().parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
                    reason = (
                        f"extra positional arguments {values!r} for *{name} can't be named in a description; "
                        f"pass them by keyword or give {module}'s constructor named parameters"
                    )
                else:
                    reason = f"{name!r} is positional-only, so a description can't name it; give {module}'s "
                    reason += "constructor a named parameter instead"
                raise SpecError(_join(f"{path}.args", name), f"{type(obj).__name__}: {reason}")
            args = obj.arguments
        else:
            args = {f.name: getattr(obj, f.name) for f in fields(obj) if f.init}
        return {**spec, "args": {name: self.value(v, _join(f"{path}.args", name)) for name, v in args.items()}}

    def value(self, value, path: str):
        if isinstance(value, _DESCRIBED):
            return self.object(value, path)
        if isinstance(value, torch.Tensor):
            return _write_tensor(value, path)
        if isinstance(value, (tuple, list)):
            return [self.value(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return _number(float(value), path)
        if callable(value):  # a custom spike function, say: it runs locally, but a description holds no code
            raise SpecError(
                path,
                f"a function or other callable ({value!r}) can't be described as data; the callables a "
                f"description holds are registered surrogates: {', '.join(self.registry.surrogate_names())}",
            )
        raise SpecError(
            path,
            f"a {type(value).__name__} can't be described; use numbers, strings, booleans, None, lists, "
            f"tensors, factories or surrogates",
        )

    def network(self, net: Network, path: str) -> dict:
        _require_output(net.layers, path)
        order = definition_order(net)  # rebuilt in this order, the layers are built in the same order
        index = {node: i for i, node in enumerate(order)}
        return {
            "layers": [self.node(node, index, net, f"{path}.layers[{i}]") for i, node in enumerate(order)],
            "names": [{"name": name, "node": index[node]} for name, node in net.layers.items()],
        }

    def node(self, node: Node, index: dict[Node, int], net: Network, path: str) -> dict:
        if node is net.input:
            return {"kind": "input"}
        if isinstance(node, Layer):
            return {
                "kind": "layer",
                "input": index[node.input],
                "factories": self.value(node.factories, f"{path}.factories"),
            }
        if isinstance(node, tuple(_COMBINE.values())):
            return {"kind": node.kind, "inputs": [index[n] for n in node.nodes]}
        if isinstance(node, Placeholder):
            if node.layer is None:
                raise SpecError(path, f"placeholder {node.hint or '(unnamed)'} was never assigned a layer")
            return {
                "kind": "placeholder",
                "layer": index[node.layer],
                "hint": node.hint,
                "initial_value": _write_initial(node.initial_value, f"{path}.initial_value"),
            }
        raise SpecError(path, f"{node!r} is not a node of this network (another network's input?)")


class _Reader:
    def __init__(self, registry: Registry):
        self.registry = registry

    def object(self, value, bases: tuple[type, ...], path: str):
        name = _tag(value, path, "type")
        cls = self.registry._lookup(name, bases, f"{path}.type")
        if issubclass(cls, Network):
            _keys(value, path, ("type", "layers", "names"), owner=name)
            return self.network(cls(), value, path)
        if issubclass(cls, Sequential):
            _keys(value, path, ("type", "factories"), owner=name)
            return _call(path, cls, *self.factories(value["factories"], f"{path}.factories"))
        _keys(value, path, ("type",), ("args",), owner=name)
        params = _parameters(cls)
        args = value.get("args", {})
        extra = _extra_keywords(cls)  # a module with **kwargs takes any other names
        if extra is not None and isinstance(args, dict):
            params = {**params, **{name: (extra, False) for name in args if name not in params}}
        required = [name for name, (_, needed) in params.items() if needed]
        _keys(args, f"{path}.args", required, [name for name in params if name not in required], what="argument")
        kwargs = {name: self.value(v, params[name][0], _join(f"{path}.args", name)) for name, v in args.items()}
        return _call(path, cls, **kwargs)

    def factories(self, value, path: str) -> list[ModuleFactory]:
        return [self.object(f, (ModuleFactory,), f"{path}[{i}]") for i, f in enumerate(self.value(value, list, path))]

    def value(self, value, hint, path: str):
        """``value`` checked against the type ``hint``; lists become tuples where the hint says so."""
        if hint is Any:
            hint = _ANY
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            return self.union(value, hint, path)
        if origin in (tuple, list):
            return self.sequence(value, hint, path)
        if isinstance(hint, type) and issubclass(hint, _DESCRIBED):
            return self.object(value, (hint,), path)
        if hint is float:
            return _number(value, path)
        if hint is int:
            return _integer(value, path)
        if hint is torch.Tensor:
            return _read_tensor(value, path)
        if hint not in _SCALARS:
            raise SpecError(path, f"arguments of type {hint} can't be given in a description")
        if not isinstance(value, (list, tuple) if hint is list else hint):
            raise SpecError(path, f"expected {_type_name(hint)}, got {_show(value)}")
        return value

    def union(self, value, hint, path: str):
        options = typing.get_args(hint)
        if isinstance(value, float) and float in options:  # a real stays a real where one may go (8.0 isn't 8)
            return _number(value, path)
        if isinstance(value, dict) and "tensor" in value and torch.Tensor in options:
            return _read_tensor(value, path)
        objects = tuple(o for o in options if isinstance(o, type) and issubclass(o, _DESCRIBED))
        if isinstance(value, dict) and objects:
            return self.object(value, objects, path)
        errors = []
        for option in options:
            try:
                return self.value(value, option, path)
            except SpecError as e:
                errors.append(e)
        # An error inside the value (a bad list item) says more than "expected int or list".
        deeper = [e for e in errors if e.path != path]
        raise deeper[0] if deeper else SpecError(path, f"expected {_type_name(hint)}, got {_show(value)}")

    def sequence(self, value, hint, path: str):
        origin, options = typing.get_origin(hint), typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise SpecError(path, f"expected {_type_name(hint)}, got {_show(value)}")
        if origin is list or options[-1] is Ellipsis:
            options = options[:1] * len(value)
        elif len(value) != len(options):
            raise SpecError(path, f"expected {_type_name(hint)}, got {_show(value)}")
        items = [self.value(v, option, f"{path}[{i}]") for i, (v, option) in enumerate(zip(value, options))]
        return tuple(items) if origin is tuple else items

    def network(self, net: Network, spec: dict, path: str) -> Network:
        entries = self.value(spec["layers"], list, f"{path}.layers")
        nodes: list[Node] = []
        pending = []
        for i, entry in enumerate(entries):
            at = f"{path}.layers[{i}]"
            kind = _tag(entry, at, "kind")
            if kind not in _NODE_KEYS:
                raise SpecError(
                    f"{at}.kind", f"unknown node kind {_show(kind)}; expected one of: {', '.join(_NODE_KEYS)}"
                )
            required, optional = _NODE_KEYS[kind]
            _keys(entry, at, ("kind", *required), optional)
            if kind == "input":
                node = net.input
            elif kind == "layer":
                source = _node_at(entry["input"], nodes, f"{at}.input", len(entries))
                node = _call(at, Layer, source, self.factories(entry["factories"], f"{at}.factories"))
            elif kind == "placeholder":
                node = Placeholder(_read_initial(entry.get("initial_value"), f"{at}.initial_value"))
                node.hint = self.value(entry.get("hint"), str | None, f"{at}.hint")
                pending.append((node, entry["layer"], f"{at}.layer"))
            else:
                refs = self.value(entry["inputs"], list, f"{at}.inputs")
                sources = [_node_at(r, nodes, f"{at}.inputs[{j}]", len(entries)) for j, r in enumerate(refs)]
                node = _call(at, _COMBINE[kind], *sources)
            nodes.append(node)
        for placeholder, ref, at in pending:  # after the loop: placeholders may refer to later layers
            _call(at, placeholder.assign, _node_at(ref, nodes, at, len(nodes)))
        names = self.value(spec["names"], list, f"{path}.names")
        for i, entry in enumerate(names):
            at = f"{path}.names[{i}]"
            _keys(entry, at, ("name", "node"))
            name = self.value(entry["name"], str, f"{at}.name")
            if name in net._names:
                raise SpecError(f"{at}.name", f"{_show(name)} is named twice")
            _call(f"{at}.name", setattr, net, name, _node_at(entry["node"], nodes, f"{at}.node", len(nodes)))
        _require_output(net.layers, path)
        return net


def _or_default(registry: Registry | None) -> Registry:
    return default_registry if registry is None else registry


def _join(path: str, key) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _show(value) -> str:
    """``value`` as the client wrote it, in JSON, shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(hint) -> str:
    origin, options = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, tuple) or origin in (typing.Union, types.UnionType):
        return " or ".join(map(_type_name, options or hint))
    if origin is list or (origin is tuple and options[-1] is Ellipsis):
        return f"[{_type_name(options[0])}, ...]"
    if origin is tuple:
        return f"[{', '.join(map(_type_name, options))}]"
    if isinstance(hint, type) and issubclass(hint, _DESCRIBED):
        return next(name for base, name in _KINDS if issubclass(hint, base))
    if hint is torch.Tensor:
        return 'tensor {"tensor": {"dtype", "shape", "data"}}'
    return _SCALARS.get(hint, "any value" if hint is Any else str(hint))


# Keys that mean something only for some factories: key -> what they belong to.
_KEY_OWNERS = {
    "args": "factories and surrogates other than Sequential and Network",
    "factories": "Sequential",
    "layers": "Network",
    "names": "Network",
}


def _keys(value, path: str, required, optional=(), what: str = "key", owner: str | None = None) -> None:
    """Check that ``value`` is an object with all ``required`` keys and nothing but those and ``optional``.

    ``owner`` is the type of the object ``value`` describes: a key that belongs to other types is refused
    saying that ``owner`` takes no such thing, rather than as unknown.
    """
    if not isinstance(value, dict):
        raise SpecError(path, f"expected an object, got {_show(value)}")
    allowed = (*required, *optional)
    for key in value:
        if key in allowed:
            continue
        if owner is not None and key in _KEY_OWNERS:
            takes = "arguments" if key == "args" else key
            raise SpecError(
                _join(path, key),
                f"{owner} takes no {takes} ({key} are only for {_KEY_OWNERS[key]}); "
                f"expected only: {', '.join(allowed)}",
            )
        raise SpecError(_join(path, key), f"unknown {what}; expected one of: {', '.join(allowed) or 'none'}")
    for key in required:
        if key not in value:
            raise SpecError(_join(path, key), f"missing required {what}")


def _tag(value, path: str, key: str) -> str:
    """The string under ``key`` that says what the object ``value`` is."""
    if not isinstance(value, dict) or key not in value:
        raise SpecError(path, f'expected an object with a "{key}", got {_show(value)}')
    tag = value[key]
    if not isinstance(tag, str):
        raise SpecError(_join(path, key), f"expected string, got {_show(tag)}")
    return tag


def _number(value, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(path, f"expected a finite number, got {_show(value)}")
    return number


def _integer(value, path: str) -> int:
    """An integer argument; a real with no fractional part (8.0, as clients without integers send) counts,
    up to 2**53, beyond which reals skip integers, so that the real stands for one integer only."""
    if isinstance(value, float):
        if not value.is_integer():
            raise SpecError(path, f"expected integer, got {_show(value)}: this argument needs a whole number")
        if abs(value) > _EXACT:
            raise SpecError(path, f"expected integer, got {_show(value)}: give it as an integer, not a real")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"expected integer, got {_show(value)}")
    return value


def _call(path: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its complaints about the values turned into ``SpecError`` at ``path``."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise SpecError(path, str(e)) from e


def _node_at(ref, nodes: list[Node], path: str, total: int) -> Node:
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise SpecError(path, f"expected the index of a node in layers, got {_show(ref)}")
    if not 0 <= ref < total:
        raise SpecError(path, f"refers to layers[{ref}], which doesn't exist (there are {total} layers)")
    if ref >= len(nodes):
        raise SpecError(path, f"refers to layers[{ref}], which comes later; list every node after its inputs")
    return nodes[ref]


def _require_output(names: dict, path: str) -> None:
    if "output" not in names:
        raise SpecError(f"{path}.names", "no layer is named 'output'; name the network's result 'output'")


def _write_initial(value, path: str):
    if value is None:
        return None
    if isinstance(value, initial.Zeros) or value is torch.zeros:
        return "zeros"
    if isinstance(value, initial.Ones) or value is torch.ones:
        return "ones"
    if isinstance(value, initial.Constant):
        return _number(value.value, path)
    raise SpecError(
        path,
        f"{value!r} can't be described; use None, rnnbuilder.initial.zeros, .ones or .Constant(x), "
        f"torch.zeros or torch.ones",
    )


def _read_initial(value, path: str):
    if value is None:
        return None
    if isinstance(value, str) and value in _INITIAL:
        return _INITIAL[value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return initial.Constant(_number(value, path))
    raise SpecError(path, f'expected null, "zeros", "ones" or a number, got {_show(value)}')


def _write_tensor(value: torch.Tensor, path: str) -> dict:
    """The description of a tensor argument: its dtype's name, shape and elements in row-major order."""
    names = _TENSOR_DTYPE_NAMES
    if value.dtype not in names:
        raise SpecError(
            path, f"a tensor of dtype {value.dtype} can't be described; use one of {', '.join(names.values())}"
        )
    value = value.detach().cpu()
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise SpecError(path, "a tensor argument must be finite (JSON has no NaN or infinity)")
    return {"tensor": {"dtype": names[value.dtype], "shape": list(value.shape), "data": value.flatten().tolist()}}


def _read_tensor(value, path: str) -> torch.Tensor:
    """The tensor a ``{"tensor": {"dtype", "shape", "data"}}`` description holds, checked, as a new tensor."""
    if not isinstance(value, dict) or "tensor" not in value:
        raise SpecError(path, f'expected a tensor {{"tensor": {{"dtype", "shape", "data"}}}}, got {_show(value)}')
    _keys(value, path, ("tensor",))
    path = f"{path}.tensor"
    body = value["tensor"]
    _keys(body, path, _TENSOR_KEYS)
    name = body["dtype"]
    if not isinstance(name, str) or name not in _TENSOR_DTYPES:
        raise SpecError(f"{path}.dtype", f"expected one of {', '.join(_TENSOR_DTYPES)}, got {_show(name)}")
    shape, data = body["shape"], body["data"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SpecError(f"{path}.shape", f"expected a list of non-negative integers, got {_show(shape)}")
    if not isinstance(data, list) or len(data) != math.prod(shape):
        got = f"{len(data)} elements" if isinstance(data, list) else _show(data)
        raise SpecError(f"{path}.data", f"expected a list of {math.prod(shape)} elements for shape {shape}, got {got}")
    dtype = _TENSOR_DTYPES[name]
    if dtype is torch.bool:
        check, kind = (lambda x: isinstance(x, bool)), "a boolean"
    elif dtype.is_floating_point:
        check, kind = (
            (lambda x: not isinstance(x, bool) and _number_or_none(x) is not None),
            "a finite number",
        )
    else:
        info = torch.iinfo(dtype)
        check, kind = (
            (lambda x: isinstance(x, int) and not isinstance(x, bool) and info.min <= x <= info.max),
            f"an integer from {info.min} to {info.max} ({name})",
        )
    for i, x in enumerate(data):
        if not check(x):
            raise SpecError(f"{path}.data[{i}]", f"expected {kind}, got {_show(x)}")
    tensor = torch.tensor([float(x) for x in data] if dtype.is_floating_point else data, dtype=dtype).reshape(shape)
    if dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise SpecError(f"{path}.data", f"an element is too large for {name}")
    return tensor


def _number_or_none(value) -> float | None:
    """``value`` as a finite float, or None if it is no number or not finite."""
    try:
        return _number(value, "")
    except SpecError:
        return None
