"""Helpers for state trees: nested tuples, lists and dicts whose leaves are tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

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
