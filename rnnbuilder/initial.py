"""Initial values for placeholders: callables from a shape (batch, *data) to a tensor.

These are the values a network description (``rnnbuilder.spec``) can carry.

>>> Constant(0.5)((2, 3)).tolist()
[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["InitialValue", "Zeros", "Ones", "Constant", "zeros", "ones"]


class InitialValue:
    """Base class: ``value(shape) -> tensor`` of that shape."""

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(InitialValue):
    """Every element is ``value``."""

    value: float

    def __call__(self, shape):
        return torch.full(shape, float(self.value))


@dataclass(frozen=True)
class Zeros(InitialValue):
    """Every element is 0."""

    def __call__(self, shape):
        return torch.zeros(shape)


@dataclass(frozen=True)
class Ones(InitialValue):
    """Every element is 1."""

    def __call__(self, shape):
        return torch.ones(shape)


zeros = Zeros()
ones = Ones()
