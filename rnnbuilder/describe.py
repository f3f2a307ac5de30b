"""What a registry's types are and which arguments they take, read from the classes themselves.

``describe(registry)`` lists every factory, surrogate and encoder type a ``rnnbuilder.spec.Registry``
allows, each with a one-line description and its arguments: name, the kinds of value it takes,
whether it is required, its default and a one-line description. Nothing is written twice: the type's
description is the summary (first paragraph) of its class docstring, the kinds come from the type
hints that ``rnnbuilder.spec`` checks values against, required and default from the dataclass fields
(a custom factory's: its module's constructor), and an argument's description from the attribute
docstring after its field::

    @dataclass(frozen=True)
    class LIF(NeuronFactory):
        tau: float = 5.0
        \"\"\"Membrane time constant, in timesteps.\"\"\"

A custom module documents its constructor's arguments the same way, with an annotated class
attribute of the argument's name followed by a docstring. Where a class or argument has no
docstring, its description says ``(undocumented)``. Arguments whose type hint no description can
give (a ``Callable``, say) are left out.

>>> factories = {d.name: d for d in describe().factories}
>>> linear = factories["nn.Linear"]
>>> linear.description
'Fully connected layer on the flattened input: (*in_shape) -> (out_features,).'
>>> for a in linear.arguments:
...     print(a.name, [k.name for k in a.kinds], "required" if a.required else f"default {a.default}")
out_features ['INTEGER'] required
bias ['BOOLEAN'] default True
>>> kernel = factories["nn.Conv2d"].arguments[1]
>>> kernel.name, [k.name for k in kernel.kinds], [k.name for k in kernel.item_kinds]
('kernel_size', ['INTEGER', 'LIST'], ['INTEGER'])
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import sys
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any

import torch

from . import spec
from ._graph.network import Network
from ._graph.nodes import Sequential
from .custom import CustomFactory
from .errors import SpecError

__all__ = ["ArgumentKind", "ArgumentDescription", "TypeDescription", "Descriptions", "describe", "describe_type"]

_UNDOCUMENTED = "(undocumented)"


class ArgumentKind(enum.Enum):
    """A kind of value an argument takes, as a description (``rnnbuilder.spec``) writes it."""

    INTEGER = "integer"
    REAL = "real"
    BOOLEAN = "boolean"
    STRING = "string"
    FACTORY = "factory"
    """A factory or surrogate object, ``{"type": ..., "args": ...}``; the hint says which."""
    TENSOR = "tensor"
    LIST = "list"
    NULL = "null"


_SCALARS = {
    bool: ArgumentKind.BOOLEAN,
    int: ArgumentKind.INTEGER,
    float: ArgumentKind.REAL,
    str: ArgumentKind.STRING,
    list: ArgumentKind.LIST,
    type(None): ArgumentKind.NULL,
}


@dataclass(frozen=True)
class ArgumentDescription:
    """One argument of a type."""

    name: str
    """The argument's name, a key of a description's ``"args"``."""
    kinds: tuple[ArgumentKind, ...]
    """The kinds of value it takes, one or more (``INTEGER`` and ``LIST`` for a kernel size)."""
    item_kinds: tuple[ArgumentKind, ...]
    """For a ``LIST``: the kinds of its items; empty where they aren't known or there is no list."""
    required: bool
    """Whether a description must give it."""
    default: Any
    """What it takes when omitted, as a description writes it (a surrogate as ``{"type": ...,
    "args": ...}``); ``dataclasses.MISSING`` when it is required or its default can't be written as data."""
    description: str
    """One line on what it means, with its unit where it has one."""


@dataclass(frozen=True)
class TypeDescription:
    """A factory, surrogate or encoder type and its arguments."""

    name: str
    """The registered name, such as ``"nn.Linear"``."""
    description: str
    """One line on what it is."""
    arguments: tuple[ArgumentDescription, ...]
    """Its arguments, in the order it declares them; none for ``Sequential`` and ``Network``."""


@dataclass(frozen=True)
class Descriptions:
    """Every type of a registry, each group sorted by name."""

    factories: tuple[TypeDescription, ...]
    """The factory types, ``Sequential`` and ``Network`` among them."""
    surrogates: tuple[TypeDescription, ...]
    """The surrogate spike functions."""
    encoders: tuple[TypeDescription, ...]
    """The spike encoders; empty for a registry without any."""


def describe(registry: spec.Registry | None = None) -> Descriptions:
    """Every type ``registry`` (``rnnbuilder.spec.default_registry`` if None) allows, described.

    >>> [d.name for d in describe().surrogates][:2]
    ['snn.ATan', 'snn.FastSigmoid']
    """
    registry = spec.default_registry if registry is None else registry

    def group(names: list[str]) -> tuple[TypeDescription, ...]:
        return tuple(describe_type(name, registry._types[name], registry) for name in names)

    return Descriptions(
        group(registry.factory_names()), group(registry.surrogate_names()), group(registry.encoder_names())
    )


def describe_type(name: str, cls: type, registry: spec.Registry | None = None) -> TypeDescription:
    """The description of ``cls`` registered as ``name``; ``registry`` names the types its defaults hold.

    >>> from rnnbuilder import snn
    >>> lif = describe_type("snn.SpikeLinear", snn.SpikeLinear)
    >>> lif.arguments[0].name, lif.arguments[0].default
    ('gradient_factor', 0.3)
    """
    registry = spec.default_registry if registry is None else registry
    documented = cls.module_class if issubclass(cls, CustomFactory) else cls
    if issubclass(cls, (Network, Sequential)):  # their structure is the description's, not arguments
        return TypeDescription(name, _class_summary(cls), ())
    defaults, docs = _defaults(cls), _attribute_docs(documented)
    arguments = []
    for argument, (hint, required) in spec._parameters(cls).items():
        kinds = _kinds(hint)
        if not kinds:
            continue
        default = MISSING if required else _written(defaults[argument], registry, f"{name}.{argument}")
        text = docs.get(argument, f"{argument} {_UNDOCUMENTED}")
        arguments.append(ArgumentDescription(argument, kinds, _item_kinds(hint), required, default, text))
    return TypeDescription(name, _class_summary(documented), tuple(arguments))


def _defaults(cls: type) -> dict[str, Any]:
    """The default of every optional constructor argument of a dataclass or custom factory."""
    if issubclass(cls, CustomFactory):
        parameters = cls._constructor_signature().parameters.values()
        return {p.name: p.default for p in parameters if p.default is not p.empty}
    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()
        for f in fields(cls)
        if f.default is not MISSING or f.default_factory is not MISSING
    }


def _written(value, registry: spec.Registry, path: str):
    """``value`` as a description writes it; MISSING where it can't be written (a function, say)."""
    try:
        return spec._Writer(registry).value(value, path)
    except SpecError:
        return MISSING


def _options(hint) -> tuple:
    """The alternatives of a union hint; the hint itself otherwise. Unannotated arguments take any JSON value."""
    if hint is Any:
        hint = spec._ANY
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _kinds(hint) -> tuple[ArgumentKind, ...]:
    """The kinds of value ``hint`` admits, without looking into lists."""
    kinds = []
    for option in _options(hint):
        origin = typing.get_origin(option)
        if origin in (tuple, list):
            kind = ArgumentKind.LIST
        elif isinstance(option, type) and issubclass(option, spec._DESCRIBED):
            kind = ArgumentKind.FACTORY
        elif isinstance(option, type) and issubclass(option, torch.Tensor):
            kind = ArgumentKind.TENSOR
        else:
            kind = _SCALARS.get(option)
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


def _item_kinds(hint) -> tuple[ArgumentKind, ...]:
    """The kinds of the items of the lists ``hint`` admits."""
    items = []
    for option in _options(hint):
        if typing.get_origin(option) in (tuple, list):
            items += [kind for item in typing.get_args(option) if item is not Ellipsis for kind in _kinds(item)]
    return tuple(dict.fromkeys(items))


def _summary(docstring: str) -> str:
    """The first paragraph of ``docstring``, on one line."""
    return " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())


def _class_summary(cls: type) -> str:
    doc = _class_source(cls)[0]
    return _summary(doc) if doc else f"{cls.__name__} {_UNDOCUMENTED}"


def _attribute_docs(cls: type) -> dict[str, str]:
    """The summaries of the attribute docstrings of ``cls`` and its bases, the nearest class's first."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if not base.__module__.startswith(("torch", "builtins")):  # torch.nn.Module's attributes are no arguments
            docs.update(_class_source(base)[1])
    return docs


@functools.cache
def _class_source(cls: type) -> tuple[str | None, dict[str, str]]:
    """The class's own docstring and attribute docstrings (name -> summary), read from its source;
    for a class without source (one made by ``type()``, or in a doctest), its ``__doc__`` only."""
    node = _classes_of(cls.__module__).get(cls.__qualname__)
    if node is None:
        doc = vars(cls).get("__doc__")
        generated = is_dataclass(cls) and doc is not None and doc.startswith(f"{cls.__name__}(")
        return (None if generated else doc), {}
    attributes = {}
    for statement, after in zip(node.body, node.body[1:]):
        target = statement.target if isinstance(statement, ast.AnnAssign) else None
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(target, ast.Name) and is_doc and isinstance(after.value.value, str):
            attributes[target.id] = _summary(after.value.value)
    return ast.get_docstring(node), attributes


@functools.cache
def _classes_of(module: str) -> dict[str, ast.ClassDef]:
    """The class definitions in a module's source, by qualified name; the module is parsed once."""
    try:
        tree = ast.parse(inspect.getsource(sys.modules[module]))
    except (KeyError, OSError, TypeError, SyntaxError):
        return {}
    classes: dict[str, ast.ClassDef] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(prefix + node.name, node)
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, f"{prefix}{node.name}.<locals>.")

    visit(tree.body, "")
    return classes
