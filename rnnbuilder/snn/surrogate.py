"""Surrogate spike functions: the Heaviside step forward, a smooth pseudo-derivative backward.

Each surrogate is a frozen dataclass, so it is picklable, comparable and describable as data.
Call one on a tensor ``v`` (any shape) to get spikes ``H(v) = 1 if v > 0 else 0`` of ``v``'s dtype.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch

__all__ = [
    "Surrogate",
    "SpikeLinear",
    "FastSigmoid",
    "ATan",
    "Triangular",
    "Sigmoid",
    "StraightThrough",
    "heaviside",
    "get_surrogate",
    "surrogate_names",
]


def heaviside(v: torch.Tensor) -> torch.Tensor:
    """``1`` where ``v > 0``, else ``0``, in ``v``'s dtype."""
    return (v > 0).to(v.dtype)


class _SurrogateSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, surrogate):
        ctx.save_for_backward(v)
        ctx.surrogate = surrogate
        return heaviside(v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * ctx.surrogate.gradient(v), None


class Surrogate(abc.ABC):
    """Base class. Subclasses define ``gradient(v)``, the pseudo-derivative dH/dv."""

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not (v.requires_grad and torch.is_grad_enabled()):  # no backward: skip autograd's bookkeeping
            return heaviside(v)
        return _SurrogateSpike.apply(v, self)

    @abc.abstractmethod
    def gradient(self, v: torch.Tensor) -> torch.Tensor:
        """The surrogate of dH/dv at ``v`` (same shape as ``v``)."""


def _positive(owner: object, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{type(owner).__name__}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class SpikeLinear(Surrogate):
    """Triangle: ``gradient_factor * max(0, 1 - |v|)``. rnnbuilder's default."""

    gradient_factor: float = 0.3
    """Height of the triangle at v = 0; it is zero from |v| = 1 on."""

    def __post_init__(self):
        _positive(self, gradient_factor=self.gradient_factor)

    def gradient(self, v):
        return self.gradient_factor * torch.clamp(1 - v.abs(), min=0)


@dataclass(frozen=True)
class FastSigmoid(Surrogate):
    """Fast sigmoid, also known as SuperSpike (Zenke & Ganguli 2018): ``1 / (slope * |v| + 1)**2``."""

    slope: float = 25.0
    """Steepness, in 1 / units of v: the gradient falls to 1/4 at |v| = 1 / slope."""

    def __post_init__(self):
        _positive(self, slope=self.slope)

    def gradient(self, v):
        return 1 / (self.slope * v.abs() + 1) ** 2


@dataclass(frozen=True)
class ATan(Surrogate):
    """Arctangent (Fang et al. 2021): ``(alpha / 2) / (1 + (pi / 2 * alpha * v)**2)``."""

    alpha: float = 2.0
    """Steepness, in 1 / units of v: the gradient at v = 0 is alpha / 2."""

    def __post_init__(self):
        _positive(self, alpha=self.alpha)

    def gradient(self, v):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * v) ** 2)


@dataclass(frozen=True)
class Triangular(Surrogate):
    """Triangle of unit area and half-width ``width``: ``max(0, width - |v|) / width**2``."""

    width: float = 1.0
    """Half-width of the triangle, in units of v."""

    def __post_init__(self):
        _positive(self, width=self.width)

    def gradient(self, v):
        return torch.clamp(self.width - v.abs(), min=0) / self.width**2


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Derivative of a sigmoid of steepness ``slope``: ``slope * s * (1 - s)``, ``s = sigmoid(slope * v)``."""

    slope: float = 5.0
    """Steepness, in 1 / units of v: the gradient at v = 0 is slope / 4."""

    def __post_init__(self):
        _positive(self, slope=self.slope)

    def gradient(self, v):
        s = torch.sigmoid(self.slope * v)
        return self.slope * s * (1 - s)


@dataclass(frozen=True)
class StraightThrough(Surrogate):
    """Straight-through estimator: the gradient passes unchanged (``1``)."""

    def gradient(self, v):
        return torch.ones_like(v)


_SURROGATES: dict[str, type[Surrogate]] = {
    cls.__name__: cls for cls in (SpikeLinear, FastSigmoid, ATan, Triangular, Sigmoid, StraightThrough)
}


def surrogate_names() -> list[str]:
    """The names ``get_surrogate`` accepts."""
    return sorted(_SURROGATES)


def get_surrogate(name: str, **params: float) -> Surrogate:
    """The surrogate registered as ``name``, built with ``params``.

    >>> get_surrogate("FastSigmoid", slope=10.0)
    FastSigmoid(slope=10.0)
    """
    try:
        cls = _SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; valid names: {', '.join(surrogate_names())}") from None
    return cls(**params)
