"""Helpers for state trees: nested tuples, lists and dicts whose leaves are tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["State", "tree_map", "tree_leaves", "tree_stack", "last_state", "named_leaves", "replace_leaves"]

State = Any
"""A tensor, or a tuple, list or dict of states. ``()`` is the state of a stateless module."""


def tree_map(fn: Callable[..., torch.Tensor], tree: State, *others: State) -> State:
    """Apply ``fn`` leaf by leaf to ``tree`` and to trees of the same structure in ``others``."""
    if isinstance(tree, torch.Tensor):
        return fn(tree, *others)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(o[k] for o in others)) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        mapped = [tree_map(fn, *leaves) for leaves in zip(tree, *others, strict=True)]
        return type(tree)(*mapped) if hasattr(tree, "_fields") else type(tree)(mapped)
    if tree is None:
        return None
    raise TypeError(f"state leaves must be tensors, got {type(tree).__name__}")


def tree_leaves(tree: State) -> list[torch.Tensor]:
    """The tensors of ``tree`` in a fixed order (dicts by insertion order)."""
    leaves: list[torch.Tensor] = []
    tree_map(lambda t: leaves.append(t) or t, tree)
    return leaves


def tree_stack(trees: list[State]) -> State:
    """Stack a list of same-structured states along a new leading (time) dimension."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)


def last_state(tree: State) -> State:
    """The final state from a ``full_state`` state: the last entry along every leaf's leading (time) dim."""
    return tree_map(lambda t: t[-1], tree)


def named_leaves(tree: State) -> dict[str, torch.Tensor]:
    """The tensors of ``tree`` by dotted path: dict keys, NamedTuple fields, tuple indices.

    >>> from rnnbuilder.snn.functional import LIFState
    >>> list(named_leaves({"layers": {"hidden": (LIFState(torch.zeros(1)), ())}}))
    ['layers.hidden.0.v']
    """
    named: dict[str, torch.Tensor] = {}

    def visit(node: State, path: str) -> None:
        if isinstance(node, torch.Tensor):
            named[path] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, (tuple, list)):
            keys = node._fields if hasattr(node, "_fields") else range(len(node))
            for key, value in zip(keys, node):
                visit(value, f"{path}.{key}" if path else str(key))

    visit(tree, "")
    return named


def replace_leaves(template: State, named: dict[str, torch.Tensor]) -> State:
    """``template`` with every leaf replaced by ``named[path]`` (as ``named_leaves`` names them).

    Every path must be given, with the template leaf's shape; the new leaves take its device and dtype.
    """
    from .errors import ShapeError

    expected = named_leaves(template)
    missing, unknown = expected.keys() - named.keys(), named.keys() - expected.keys()
    if missing or unknown:
        raise ShapeError(
            f"state names don't match this model: missing {sorted(missing) or 'none'}, "
            f"unknown {sorted(unknown) or 'none'}"
        )
    for path, leaf in expected.items():
        if tuple(named[path].shape) != tuple(leaf.shape):
            raise ShapeError(f"state {path!r} must have shape {tuple(leaf.shape)}, got {tuple(named[path].shape)}")
    paths = iter(expected)
    return tree_map(lambda leaf: named[next(paths)].to(device=leaf.device, dtype=leaf.dtype), template)
