"""Stateless layers mirroring ``torch.nn``, without input sizes (they are inferred).

Shapes are data shapes without time and batch. ``Linear`` flattens its input first, so it follows
convolutions directly. Dims of ``Softmax``/``LogSoftmax``/``Unflatten`` count data dims from 0.

>>> import torch
>>> from rnnbuilder import Sequential
>>> model = Sequential(Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2), Linear(10)).make_model((1, 8, 8))
>>> tuple(model(torch.zeros(5, 2, 1, 8, 8))[0].shape)
(5, 2, 10)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from ._factory import ModuleFactory
from ._runner import StatelessRunner, flat_shape
from .errors import ShapeError

__all__ = [
    "StatelessFactory",
    "Linear",
    "Bilinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "MaxPool1d",
    "MaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "Dropout",
    "Dropout2d",
    "Flatten",
    "Unflatten",
    "Upsample",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "Hardtanh",
    "Softplus",
    "Softmax",
    "LogSoftmax",
    "Identity",
]

IntOrPair = int | tuple[int, int]
IntOrTriple = int | tuple[int, int, int]


class StatelessFactory(ModuleFactory):
    """A factory for a memoryless ``torch.nn`` module; time and batch are merged when it runs.

    Subclasses are frozen dataclasses and define ``_module(in_shape)``. By default that is
    ``torch_class(**fields)``.
    """

    torch_class: ClassVar[type[torch.nn.Module]]
    flatten_input: ClassVar[bool] = False

    def _module(self, in_shape) -> torch.nn.Module:
        return self.torch_class(**{f.name: getattr(self, f.name) for f in fields(self)})

    def _build(self, in_shape):
        seen = flat_shape(in_shape) if self.flatten_input else in_shape
        return StatelessRunner(
            in_shape, infer_out_shape(self, self._module, seen), self._module(seen), self.flatten_input
        )


def infer_out_shape(owner, make_module, in_shape) -> tuple[int, ...]:
    """Run a module built by ``make_module(in_shape)`` on an empty meta batch to read its output shape."""
    with torch.device("meta"):
        try:
            module = make_module(in_shape).eval()
            x = [torch.empty(2, *s) for s in in_shape] if isinstance(in_shape, list) else torch.empty(2, *in_shape)
            y = module(x)
        except ShapeError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ShapeError(f"{owner!r} cannot take input of shape {in_shape}: {e}") from None
    return tuple(y.shape[1:])


def _channels(owner, in_shape, rank: int) -> int:
    if len(in_shape) != rank + 1:
        dims = {1: ("channels", "length"), 2: ("channels", "height", "width")}.get(
            rank, ("channels", "depth", "height", "width")
        )
        raise ShapeError(f"{owner!r} expects input of shape ({', '.join(dims)}), got {tuple(in_shape)}")
    return in_shape[0]


def _positive_ints(owner, **values):
    for name, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            raise ValueError(f"{type(owner).__name__}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Linear(StatelessFactory):
    """Fully connected layer on the flattened input: (*in_shape) -> (out_features,)."""

    out_features: int
    bias: bool = True
    flatten_input: ClassVar[bool] = True

    def __post_init__(self):
        _positive_ints(self, out_features=self.out_features)

    def _module(self, in_shape):
        return torch.nn.Linear(in_shape[0], self.out_features, bias=self.bias)

    def _fixed_out_shape(self):
        return (self.out_features,)


@dataclass(frozen=True)
class Bilinear(StatelessFactory):
    """Bilinear form of a two-element list input (see ``Layer.append``): [(a,), (b,)] -> (out_features,)."""

    out_features: int
    bias: bool = True

    def __post_init__(self):
        _positive_ints(self, out_features=self.out_features)

    def _module(self, in_shape):
        if not (isinstance(in_shape, list) and len(in_shape) == 2 and all(len(s) == 1 for s in in_shape)):
            raise ShapeError(f"{self!r} takes a list of two vectors (use a.append(b)), got {in_shape!r}")
        return _Bilinear(in_shape[0][0], in_shape[1][0], self.out_features, self.bias)

    def _fixed_out_shape(self):
        return (self.out_features,)


class _Bilinear(torch.nn.Bilinear):
    def forward(self, inputs):
        return super().forward(*inputs)


@dataclass(frozen=True)
class _Conv(StatelessFactory):
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    bias: bool = True
    rank: ClassVar[int]

    def __post_init__(self):
        _positive_ints(self, out_channels=self.out_channels, kernel_size=self.kernel_size, groups=self.groups)

    def _module(self, in_shape):
        args = {f.name: getattr(self, f.name) for f in fields(self)}
        return self.torch_class(_channels(self, in_shape, self.rank), **args)


@dataclass(frozen=True)
class Conv1d(_Conv):
    """1-D convolution: (channels, length) -> (out_channels, length')."""

    torch_class: ClassVar = torch.nn.Conv1d
    rank: ClassVar[int] = 1


@dataclass(frozen=True)
class Conv2d(_Conv):
    """2-D convolution: (channels, height, width) -> (out_channels, height', width')."""

    torch_class: ClassVar = torch.nn.Conv2d
    rank: ClassVar[int] = 2


@dataclass(frozen=True)
class Conv3d(_Conv):
    """3-D convolution: (channels, depth, height, width) -> (out_channels, d', h', w')."""

    torch_class: ClassVar = torch.nn.Conv3d
    rank: ClassVar[int] = 3


@dataclass(frozen=True)
class ConvTranspose1d(_Conv):
    """Transposed 1-D convolution: (channels, length) -> (out_channels, length')."""

    torch_class: ClassVar = torch.nn.ConvTranspose1d
    rank: ClassVar[int] = 1


@dataclass(frozen=True)
class ConvTranspose2d(_Conv):
    """Transposed 2-D convolution: (channels, height, width) -> (out_channels, height', width')."""

    torch_class: ClassVar = torch.nn.ConvTranspose2d
    rank: ClassVar[int] = 2


@dataclass(frozen=True)
class MaxPool1d(StatelessFactory):
    """Max pooling over (channels, length)."""

    kernel_size: int
    stride: int | None = None
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False
    torch_class: ClassVar = torch.nn.MaxPool1d


@dataclass(frozen=True)
class MaxPool2d(StatelessFactory):
    """Max pooling over (channels, height, width)."""

    kernel_size: IntOrPair
    stride: IntOrPair | None = None
    padding: IntOrPair = 0
    dilation: IntOrPair = 1
    ceil_mode: bool = False
    torch_class: ClassVar = torch.nn.MaxPool2d


@dataclass(frozen=True)
class AvgPool1d(StatelessFactory):
    """Average pooling over (channels, length)."""

    kernel_size: int
    stride: int | None = None
    padding: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    torch_class: ClassVar = torch.nn.AvgPool1d


@dataclass(frozen=True)
class AvgPool2d(StatelessFactory):
    """Average pooling over (channels, height, width)."""

    kernel_size: IntOrPair
    stride: IntOrPair | None = None
    padding: IntOrPair = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    torch_class: ClassVar = torch.nn.AvgPool2d


@dataclass(frozen=True)
class AdaptiveAvgPool1d(StatelessFactory):
    """Average pooling to a fixed length: (channels, length) -> (channels, output_size)."""

    output_size: int
    torch_class: ClassVar = torch.nn.AdaptiveAvgPool1d


@dataclass(frozen=True)
class AdaptiveAvgPool2d(StatelessFactory):
    """Average pooling to a fixed size: (channels, h, w) -> (channels, *output_size)."""

    output_size: IntOrPair
    torch_class: ClassVar = torch.nn.AdaptiveAvgPool2d


@dataclass(frozen=True)
class AdaptiveMaxPool2d(StatelessFactory):
    """Max pooling to a fixed size: (channels, h, w) -> (channels, *output_size)."""

    output_size: IntOrPair
    torch_class: ClassVar = torch.nn.AdaptiveMaxPool2d


@dataclass(frozen=True)
class _BatchNorm(StatelessFactory):
    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True
    track_running_stats: bool = True
    rank: ClassVar[tuple[int, ...]]

    def _module(self, in_shape):
        if len(in_shape) not in self.rank:
            raise ShapeError(
                f"{self!r} takes inputs with {' or '.join(map(str, self.rank))} dims, got {tuple(in_shape)}"
            )
        args = {f.name: getattr(self, f.name) for f in fields(self)}
        return self.torch_class(in_shape[0], **args)


@dataclass(frozen=True)
class BatchNorm1d(_BatchNorm):
    """Batch norm over (features,) or (channels, length); statistics over time and batch."""

    torch_class: ClassVar = torch.nn.BatchNorm1d
    rank: ClassVar = (1, 2)


@dataclass(frozen=True)
class BatchNorm2d(_BatchNorm):
    """Batch norm over (channels, height, width); statistics over time, batch and space."""

    torch_class: ClassVar = torch.nn.BatchNorm2d
    rank: ClassVar = (3,)


@dataclass(frozen=True)
class LayerNorm(StatelessFactory):
    """Layer norm over all data dims of each sample."""

    eps: float = 1e-5
    elementwise_affine: bool = True

    def _module(self, in_shape):
        return torch.nn.LayerNorm(tuple(in_shape), eps=self.eps, elementwise_affine=self.elementwise_affine)


@dataclass(frozen=True)
class GroupNorm(StatelessFactory):
    """Group norm over (channels, ...): ``num_groups`` must divide the channels."""

    num_groups: int
    eps: float = 1e-5
    affine: bool = True

    def _module(self, in_shape):
        return torch.nn.GroupNorm(self.num_groups, in_shape[0], eps=self.eps, affine=self.affine)


@dataclass(frozen=True)
class Dropout(StatelessFactory):
    """Zeroes elements with probability ``p`` in training mode (fresh mask every timestep)."""

    p: float = 0.5
    torch_class: ClassVar = torch.nn.Dropout

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise ValueError(f"Dropout.p must be in [0, 1], got {self.p!r}")


@dataclass(frozen=True)
class Dropout2d(Dropout):
    """Zeroes whole channels of (channels, height, width) with probability ``p`` in training mode."""

    torch_class: ClassVar = torch.nn.Dropout2d


@dataclass(frozen=True)
class Flatten(StatelessFactory):
    """(*in_shape) -> (prod(in_shape),)."""

    torch_class: ClassVar = torch.nn.Flatten


@dataclass(frozen=True)
class Unflatten(StatelessFactory):
    """Splits data dim ``dim`` into ``sizes``: e.g. (64,) -> (4, 4, 4) with ``Unflatten(0, (4, 4, 4))``."""

    dim: int
    sizes: tuple[int, ...]

    def _module(self, in_shape):
        return torch.nn.Unflatten(_torch_dim(self.dim), tuple(self.sizes))


@dataclass(frozen=True)
class Upsample(StatelessFactory):
    """Upsampling of (channels, ...) by ``scale_factor`` (mode 'nearest', 'linear', 'bilinear', ...)."""

    scale_factor: float
    mode: str = "nearest"
    torch_class: ClassVar = torch.nn.Upsample


@dataclass(frozen=True)
class ReLU(StatelessFactory):
    """max(0, x)."""

    torch_class: ClassVar = torch.nn.ReLU


@dataclass(frozen=True)
class LeakyReLU(StatelessFactory):
    """x if x > 0 else negative_slope * x."""

    negative_slope: float = 0.01
    torch_class: ClassVar = torch.nn.LeakyReLU


@dataclass(frozen=True)
class ELU(StatelessFactory):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    alpha: float = 1.0
    torch_class: ClassVar = torch.nn.ELU


@dataclass(frozen=True)
class GELU(StatelessFactory):
    """Gaussian error linear unit; ``approximate`` is 'none' or 'tanh'."""

    approximate: str = "none"
    torch_class: ClassVar = torch.nn.GELU


@dataclass(frozen=True)
class SiLU(StatelessFactory):
    """x * sigmoid(x)."""

    torch_class: ClassVar = torch.nn.SiLU


@dataclass(frozen=True)
class Sigmoid(StatelessFactory):
    """1 / (1 + exp(-x))."""

    torch_class: ClassVar = torch.nn.Sigmoid


@dataclass(frozen=True)
class Tanh(StatelessFactory):
    """tanh(x)."""

    torch_class: ClassVar = torch.nn.Tanh


@dataclass(frozen=True)
class Hardtanh(StatelessFactory):
    """x clamped to [min_val, max_val]."""

    min_val: float = -1.0
    max_val: float = 1.0
    torch_class: ClassVar = torch.nn.Hardtanh


@dataclass(frozen=True)
class Softplus(StatelessFactory):
    """log(1 + exp(beta * x)) / beta."""

    beta: float = 1.0
    threshold: float = 20.0
    torch_class: ClassVar = torch.nn.Softplus


@dataclass(frozen=True)
class Softmax(StatelessFactory):
    """Softmax over data dim ``dim`` (0 is the first data dim)."""

    dim: int = 0

    def _module(self, in_shape):
        return torch.nn.Softmax(_torch_dim(self.dim))


@dataclass(frozen=True)
class LogSoftmax(StatelessFactory):
    """Log-softmax over data dim ``dim`` (0 is the first data dim)."""

    dim: int = 0

    def _module(self, in_shape):
        return torch.nn.LogSoftmax(_torch_dim(self.dim))


@dataclass(frozen=True)
class Identity(StatelessFactory):
    """x."""

    torch_class: ClassVar = torch.nn.Identity


def _torch_dim(dim: int) -> int:
    """A data dim as a torch dim of the merged (batch, *data) tensor."""
    return dim + 1 if dim >= 0 else dim
