"""Stateless layers mirroring ``torch.nn``, without input sizes (they are inferred).

Shapes are data shapes without time and batch. ``Linear`` flattens its input first, so it follows
convolutions directly. Dims of ``Softmax``/``LogSoftmax``/``Flatten``/``Unflatten`` count data dims
from 0 (torch's ``Flatten()`` default ``start_dim=1``, after the batch dim, is ``start_dim=0`` here).

Every factory takes the arguments of the ``torch.nn`` module it wraps, with the same names, defaults
and positional order, less the sizes inferred from the input (``in_features``, ``in_channels``,
``num_features``, ``normalized_shape``, ``num_channels``), less torch's deprecated spellings
(``Hardtanh``'s ``min_value``/``max_value``) and less ``device``/``dtype``: a model is built on the
default device and dtype and moved with ``model.to(...)``. Where rnnbuilder 0.1.1 had the factory,
its positional order is kept (it is torch's). String arguments (``padding``, ``padding_mode``,
``mode``, ``approximate``) and ``Upsample``'s ``size``/``scale_factor``/``align_corners`` are checked
at construction: a ``ValueError`` lists the valid values. ``return_indices=True`` is refused: the
module would return (values, indices), and a layer passes on one tensor. ``Conv1d/2d/3d`` also take
``weight`` (after torch's arguments) and a ``bias`` tensor: the initial values, as a NIR graph has
them.

The layers NIR graphs need that ``torch.nn`` lacks: ``Affine(weight, bias)`` (a ``Linear`` from
given weights), ``Scale(scale)``, ``SumPool2d`` and ``Delay(steps)``, which keeps state (the last
inputs). A factory holding tensors compares by their values; every model it builds starts from
copies of them, trainable.

``inplace=True`` works as in torch: the layer overwrites its input tensor. Right after a layer that
nothing else reads (``Linear(8), ReLU(inplace=True)`` in one ``Sequential`` or layer) that saves
memory. On the network's own input it overwrites the caller's tensor, as a torch module would; and
whatever else reads the same node (another layer, a placeholder holding it, the network's output,
a recording) may see the overwritten values.

>>> import torch
>>> from rnnbuilder import Sequential
>>> model = Sequential(Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2), Linear(10)).make_model((1, 8, 8))
>>> tuple(model(torch.zeros(5, 2, 1, 8, 8))[0].shape)
(5, 2, 10)
>>> Conv2d(4, 3, padding="same", padding_mode="circular").out_shape((1, 8, 8))
(4, 8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, NamedTuple

import torch

from ._factory import ArgumentEquality, ModuleFactory
from ._runner import Runner, StatelessRunner, flat_shape
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
    "Affine",
    "Scale",
    "SumPool2d",
    "Delay",
    "DelayState",
    "delay_step",
]

IntOrSingle = int | tuple[int]
IntOrPair = int | tuple[int, int]
IntOrTuple = int | tuple[int, ...]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
"""The ``padding_mode`` values of convolutions, as in torch."""
PADDING_STRINGS = ("valid", "same")
"""The strings a convolution's ``padding`` may be, as in torch."""
UPSAMPLE_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear", "area", "nearest-exact")
"""The ``mode`` values of ``Upsample``, as in torch."""
_ALIGNING_MODES = ("linear", "bilinear", "bicubic", "trilinear")


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_ints(owner, **values):
    for name, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if not all(_is_int(v) and v > 0 for v in items):
            raise ValueError(f"{type(owner).__name__}.{name} must be a positive int, got {value!r}")


def _one_of(owner, name: str, value, valid: tuple[str, ...]) -> None:
    if not (isinstance(value, str) and value in valid):
        raise ValueError(f"{type(owner).__name__}.{name} must be one of {', '.join(map(repr, valid))}, got {value!r}")


def _no_indices(owner) -> None:
    if owner.return_indices:
        raise ValueError(
            f"{type(owner).__name__}.return_indices=True is not supported: the module would return "
            "(values, indices), and a layer passes on a single tensor"
        )


# Layers that carry their parameters (from a NIR graph, or any trained weights): a factory that
# holds tensors compares and hashes by their values, and every model it builds starts from them.


def _float_tensor(owner, name: str, value, dims: int | None = None) -> None:
    """Refuse a ``value`` that isn't a real-valued tensor with ``dims`` dims (any if None)."""
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise TypeError(f"{type(owner).__name__}.{name} must be a floating-point torch.Tensor, got {value!r}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{type(owner).__name__}.{name} must have {dims} dims, got shape {tuple(value.shape)}")


def _load(owner, module: torch.nn.Module, **tensors) -> None:
    """Set ``module``'s parameters of these names to copies of the given tensors (None: leave it)."""
    for name, value in tensors.items():
        if value is None:
            continue
        target = getattr(module, name)
        if tuple(target.shape) != tuple(value.shape):
            need, got = tuple(target.shape), tuple(value.shape)
            raise ShapeError(f"{type(owner).__name__}.{name} has shape {got}, but this input needs {need}")
        with torch.no_grad():
            target.copy_(value)


@dataclass(frozen=True)
class Linear(StatelessFactory):
    """Fully connected layer on the flattened input: (*in_shape) -> (out_features,)."""

    out_features: int
    """Number of output features."""
    bias: bool = True
    """Whether to add a learnable bias."""
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
    """Number of output features."""
    bias: bool = True
    """Whether to add a learnable bias."""

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


@dataclass(frozen=True, eq=False)
class _Conv(ArgumentEquality, StatelessFactory):
    out_channels: int
    """Number of output channels."""
    kernel_size: IntOrTuple
    """Size of the kernel, in input elements: one int for every spatial dim, or one per dim."""
    stride: IntOrTuple = 1
    """Step of the kernel, in input elements: one int for every spatial dim, or one per dim."""
    padding: IntOrTuple | str = 0
    """Zeros (see padding_mode) added to each side, in elements (one or one per dim), or 'valid' or 'same'."""
    dilation: IntOrTuple = 1
    """Spacing of the kernel's elements, in input elements: one int, or one per spatial dim."""
    groups: int = 1
    """Number of blocked connections from input to output channels; divides both channel counts."""
    bias: bool | torch.Tensor = True
    """Whether to add a learnable bias; a tensor of shape (out_channels,) is its initial value."""
    padding_mode: str = "zeros"
    """What the padding holds: 'zeros', 'reflect', 'replicate' or 'circular'."""
    weight: torch.Tensor | None = None
    """The kernel's initial value, shape (out_channels, in_channels // groups, *kernel_size); ``None``:
    torch's random initialisation."""
    rank: ClassVar[int]

    def __post_init__(self):
        _check_conv(self)
        kernel = self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,) * self.rank
        if self.weight is not None:
            _float_tensor(self, "weight", self.weight, self.rank + 2)
            if self.weight.shape[0] != self.out_channels or tuple(self.weight.shape[2:]) != kernel:
                raise ValueError(
                    f"{type(self).__name__}.weight must have shape ({self.out_channels}, in_channels // groups, "
                    f"{', '.join(map(str, kernel))}), got {tuple(self.weight.shape)}"
                )
        if isinstance(self.bias, torch.Tensor):
            _float_tensor(self, "bias", self.bias, 1)

    def _module(self, in_shape):
        args = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "weight"}
        args["bias"] = self.bias is not False
        module = self.torch_class(_channels(self, in_shape, self.rank), **args)
        bias = self.bias if isinstance(self.bias, torch.Tensor) else None
        _load(self, module, weight=self.weight, bias=bias)
        return module


def _check_conv(conv) -> None:
    _positive_ints(conv, out_channels=conv.out_channels, kernel_size=conv.kernel_size, groups=conv.groups)
    _one_of(conv, "padding_mode", conv.padding_mode, PADDING_MODES)
    if isinstance(conv.padding, str):
        _one_of(conv, "padding", conv.padding, PADDING_STRINGS)
        strides = conv.stride if isinstance(conv.stride, tuple) else (conv.stride,)
        if conv.padding == "same" and any(s != 1 for s in strides):
            raise ValueError(f"{type(conv).__name__}.padding='same' needs stride 1, got stride={conv.stride!r}")


@dataclass(frozen=True, eq=False)
class Conv1d(_Conv):
    """1-D convolution: (channels, length) -> (out_channels, length'); arguments as ``Conv2d``."""

    torch_class: ClassVar = torch.nn.Conv1d
    rank: ClassVar[int] = 1


@dataclass(frozen=True, eq=False)
class Conv2d(_Conv):
    """2-D convolution: (channels, height, width) -> (out_channels, height', width').

    ``padding`` is ints, or ``'valid'`` or ``'same'`` (stride 1 only); ``padding_mode`` is one of
    ``PADDING_MODES``: 'zeros', 'reflect', 'replicate', 'circular'.

    >>> model = Conv2d(4, 3, padding=1, padding_mode="circular").make_model((2, 5, 5))
    >>> model.out_shape
    (4, 5, 5)
    """

    torch_class: ClassVar = torch.nn.Conv2d
    rank: ClassVar[int] = 2


@dataclass(frozen=True, eq=False)
class Conv3d(_Conv):
    """3-D convolution: (channels, depth, height, width) -> (out_channels, d', h', w'); arguments as ``Conv2d``."""

    torch_class: ClassVar = torch.nn.Conv3d
    rank: ClassVar[int] = 3


@dataclass(frozen=True)
class _ConvTranspose(StatelessFactory):
    """Arguments in torch's order (``output_padding`` after ``padding``, ``dilation`` after ``bias``);
    as in torch, ``padding`` is ints only and ``padding_mode`` only 'zeros'."""

    out_channels: int
    """Number of output channels."""
    kernel_size: IntOrTuple
    """Size of the kernel, in elements: one int for every spatial dim, or one per dim."""
    stride: IntOrTuple = 1
    """Step of the kernel over the output, in elements: one int, or one per spatial dim."""
    padding: IntOrTuple = 0
    """As in torch: each side of the input gets dilation * (kernel_size - 1) - padding zeros, in elements."""
    output_padding: IntOrTuple = 0
    """Extra size added to one side of the output, in elements: one int, or one per dim."""
    groups: int = 1
    """Number of blocked connections from input to output channels; divides both channel counts."""
    bias: bool = True
    """Whether to add a learnable bias."""
    dilation: IntOrTuple = 1
    """Spacing of the kernel's elements, in elements: one int, or one per spatial dim."""
    padding_mode: str = "zeros"
    """What the padding holds: only 'zeros', as in torch."""
    rank: ClassVar[int]

    def __post_init__(self):
        if isinstance(self.padding, str):
            raise ValueError(f"{type(self).__name__}.padding must be ints, got {self.padding!r}")
        _check_conv(self)
        _one_of(self, "padding_mode", self.padding_mode, ("zeros",))

    def _module(self, in_shape):
        args = {f.name: getattr(self, f.name) for f in fields(self)}
        return self.torch_class(_channels(self, in_shape, self.rank), **args)


@dataclass(frozen=True)
class ConvTranspose1d(_ConvTranspose):
    """Transposed 1-D convolution: (channels, length) -> (out_channels, length').

    Arguments in torch's order: ``output_padding`` after ``padding``, ``dilation`` after ``bias``.
    """

    torch_class: ClassVar = torch.nn.ConvTranspose1d
    rank: ClassVar[int] = 1


@dataclass(frozen=True)
class ConvTranspose2d(_ConvTranspose):
    """Transposed 2-D convolution: (channels, height, width) -> (out_channels, height', width').

    Arguments in torch's order: ``output_padding`` after ``padding``, ``dilation`` after ``bias``.
    """

    torch_class: ClassVar = torch.nn.ConvTranspose2d
    rank: ClassVar[int] = 2


@dataclass(frozen=True)
class MaxPool1d(StatelessFactory):
    """Max pooling over (channels, length). ``return_indices=True`` is refused (see the module docs)."""

    kernel_size: IntOrSingle
    """Size of the window, in input elements."""
    stride: IntOrSingle | None = None
    """Step of the window, in input elements; None: kernel_size."""
    padding: IntOrSingle = 0
    """Negative infinity added to each side, in input elements."""
    dilation: IntOrSingle = 1
    """Spacing of the window's elements, in input elements."""
    return_indices: bool = False
    """Must be False: a layer passes on one tensor, not (values, indices)."""
    ceil_mode: bool = False
    """Whether the output size is rounded up instead of down."""
    torch_class: ClassVar = torch.nn.MaxPool1d

    def __post_init__(self):
        _no_indices(self)


@dataclass(frozen=True)
class MaxPool2d(StatelessFactory):
    """Max pooling over (channels, height, width). ``return_indices=True`` is refused (see the module docs)."""

    kernel_size: IntOrPair
    """Size of the window, in input elements: one int for both dims, or (height, width)."""
    stride: IntOrPair | None = None
    """Step of the window, in input elements: one int or (height, width); None: kernel_size."""
    padding: IntOrPair = 0
    """Negative infinity added to each side, in input elements: one int or (height, width)."""
    dilation: IntOrPair = 1
    """Spacing of the window's elements, in input elements: one int or (height, width)."""
    return_indices: bool = False
    """Must be False: a layer passes on one tensor, not (values, indices)."""
    ceil_mode: bool = False
    """Whether the output size is rounded up instead of down."""
    torch_class: ClassVar = torch.nn.MaxPool2d

    def __post_init__(self):
        _no_indices(self)


@dataclass(frozen=True)
class AvgPool1d(StatelessFactory):
    """Average pooling over (channels, length)."""

    kernel_size: IntOrSingle
    """Size of the window, in input elements."""
    stride: IntOrSingle | None = None
    """Step of the window, in input elements; None: kernel_size."""
    padding: IntOrSingle = 0
    """Zeros added to each side, in input elements."""
    ceil_mode: bool = False
    """Whether the output size is rounded up instead of down."""
    count_include_pad: bool = True
    """Whether padded zeros count in the average's divisor."""
    torch_class: ClassVar = torch.nn.AvgPool1d


@dataclass(frozen=True)
class AvgPool2d(StatelessFactory):
    """Average pooling over (channels, height, width); ``divisor_override`` replaces the window size."""

    kernel_size: IntOrPair
    """Size of the window, in input elements: one int for both dims, or (height, width)."""
    stride: IntOrPair | None = None
    """Step of the window, in input elements: one int or (height, width); None: kernel_size."""
    padding: IntOrPair = 0
    """Zeros added to each side, in input elements: one int or (height, width)."""
    ceil_mode: bool = False
    """Whether the output size is rounded up instead of down."""
    count_include_pad: bool = True
    """Whether padded zeros count in the average's divisor."""
    divisor_override: int | None = None
    """What each window's sum is divided by; None: the number of elements averaged."""
    torch_class: ClassVar = torch.nn.AvgPool2d

    def __post_init__(self):
        if self.divisor_override is not None:
            _positive_ints(self, divisor_override=self.divisor_override)


@dataclass(frozen=True)
class AdaptiveAvgPool1d(StatelessFactory):
    """Average pooling to a fixed length: (channels, length) -> (channels, output_size)."""

    output_size: int
    """Length of the output."""
    torch_class: ClassVar = torch.nn.AdaptiveAvgPool1d


@dataclass(frozen=True)
class AdaptiveAvgPool2d(StatelessFactory):
    """Average pooling to a fixed size: (channels, h, w) -> (channels, *output_size); a ``None`` size
    keeps that dim of the input."""

    output_size: int | tuple[int | None, int | None]
    """Size of the output: one int for both dims, or (height, width), None keeping that dim."""
    torch_class: ClassVar = torch.nn.AdaptiveAvgPool2d


@dataclass(frozen=True)
class AdaptiveMaxPool2d(StatelessFactory):
    """Max pooling to a fixed size: (channels, h, w) -> (channels, *output_size); a ``None`` size keeps
    that dim of the input. ``return_indices=True`` is refused (see the module docs)."""

    output_size: int | tuple[int | None, int | None]
    """Size of the output: one int for both dims, or (height, width), None keeping that dim."""
    return_indices: bool = False
    """Must be False: a layer passes on one tensor, not (values, indices)."""
    torch_class: ClassVar = torch.nn.AdaptiveMaxPool2d

    def __post_init__(self):
        _no_indices(self)


@dataclass(frozen=True)
class _BatchNorm(StatelessFactory):
    """``momentum=None`` keeps a cumulative average; ``bias`` (keyword only, as in torch) is the shift."""

    eps: float = 1e-5
    """Added to the variance for numerical stability."""
    momentum: float | None = 0.1
    """Weight of each new batch in the running statistics; None: a cumulative average."""
    affine: bool = True
    """Whether to learn a scale and shift per channel."""
    track_running_stats: bool = True
    """Whether to keep running statistics for eval mode; False: batch statistics always."""
    bias: bool = field(default=True, kw_only=True)
    """Whether the learned affine transform has a shift (with affine=True)."""
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
    """Added to the variance for numerical stability."""
    elementwise_affine: bool = True
    """Whether to learn a scale (and, with bias, a shift) per element."""
    bias: bool = True
    """Whether the learned affine transform has a shift (with elementwise_affine=True)."""

    def _module(self, in_shape):
        return torch.nn.LayerNorm(tuple(in_shape), self.eps, self.elementwise_affine, self.bias)


@dataclass(frozen=True)
class GroupNorm(StatelessFactory):
    """Group norm over (channels, ...): ``num_groups`` must divide the channels."""

    num_groups: int
    """Number of groups the channels are split into; must divide the number of channels."""
    eps: float = 1e-5
    """Added to the variance for numerical stability."""
    affine: bool = True
    """Whether to learn a scale and shift per channel."""
    bias: bool = field(default=True, kw_only=True)
    """Whether the learned affine transform has a shift (with affine=True)."""

    def _module(self, in_shape):
        return torch.nn.GroupNorm(self.num_groups, in_shape[0], self.eps, self.affine, bias=self.bias)


@dataclass(frozen=True)
class Dropout(StatelessFactory):
    """Zeroes elements with probability ``p`` in training mode (fresh mask every timestep)."""

    p: float = 0.5
    """Probability of zeroing an element (for Dropout2d a whole channel), in [0, 1]."""
    inplace: bool = False
    """Whether to overwrite the input tensor (see the module docs)."""
    torch_class: ClassVar = torch.nn.Dropout

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise ValueError(f"{type(self).__name__}.p must be in [0, 1], got {self.p!r}")


@dataclass(frozen=True)
class Dropout2d(Dropout):
    """Zeroes whole channels of (channels, height, width) with probability ``p`` in training mode."""

    torch_class: ClassVar = torch.nn.Dropout2d


@dataclass(frozen=True)
class Flatten(StatelessFactory):
    """Flattens data dims ``start_dim`` to ``end_dim`` (counted from 0, after time and batch) into one.

    >>> Flatten().out_shape((2, 3, 4)), Flatten(1).out_shape((2, 3, 4)), Flatten(0, 1).out_shape((2, 3, 4))
    ((24,), (2, 12), (6, 4))
    """

    start_dim: int = 0
    """First data dim to flatten, counted from 0 (negative: from the end)."""
    end_dim: int = -1
    """Last data dim to flatten, counted from 0 (negative: from the end)."""

    def _module(self, in_shape):
        return torch.nn.Flatten(_torch_dim(self.start_dim), _torch_dim(self.end_dim))


@dataclass(frozen=True)
class Unflatten(StatelessFactory):
    """Splits data dim ``dim`` into ``unflattened_size``: (64,) -> (4, 4, 4) with ``Unflatten(0, (4, 4, 4))``."""

    dim: int
    """Data dim to split, counted from 0 (negative: from the end)."""
    unflattened_size: tuple[int, ...]
    """Sizes the dim is split into; their product is the dim's size."""

    def _module(self, in_shape):
        return torch.nn.Unflatten(_torch_dim(self.dim), tuple(self.unflattened_size))


@dataclass(frozen=True)
class Upsample(StatelessFactory):
    """Upsampling of (channels, ...) to ``size`` or by ``scale_factor`` (exactly one of them).

    ``mode`` is one of ``UPSAMPLE_MODES``; ``align_corners`` only goes with the interpolating modes
    ('linear', 'bilinear', 'bicubic', 'trilinear'). The arguments are in torch's order:
    ``Upsample(scale_factor=2.0)``, not ``Upsample(2.0)``.
    """

    size: IntOrTuple | None = None
    """Output size of the dims after channels: one int for all, or one per dim; None: use scale_factor."""
    scale_factor: float | tuple[float, ...] | None = None
    """Multiplier of the sizes of the dims after channels: one, or one per dim; None: use size."""
    mode: str = "nearest"
    """Interpolation: 'nearest', 'linear', 'bilinear', 'bicubic', 'trilinear', 'area' or 'nearest-exact'."""
    align_corners: bool | None = None
    """Whether corner elements of input and output align (interpolating modes only); None: no."""
    recompute_scale_factor: bool | None = None
    """Whether the interpolation recomputes the scale from the output size; None: no."""
    torch_class: ClassVar = torch.nn.Upsample

    def __post_init__(self):
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError(f"Upsample takes exactly one of size and scale_factor, got {self!r}")
        if self.size is not None and not (
            _is_int(self.size) or (isinstance(self.size, tuple) and self.size and all(map(_is_int, self.size)))
        ):
            hint = f" (for a scale factor write scale_factor={self.size!r})" if isinstance(self.size, float) else ""
            raise ValueError(f"Upsample.size must be ints, got {self.size!r}{hint}")
        if self.size is not None:
            _positive_ints(self, size=self.size)
        _one_of(self, "mode", self.mode, UPSAMPLE_MODES)
        if self.align_corners is not None and self.mode not in _ALIGNING_MODES:
            raise ValueError(
                f"Upsample.align_corners goes only with mode {', '.join(map(repr, _ALIGNING_MODES))}, "
                f"got mode={self.mode!r}"
            )


@dataclass(frozen=True)
class ReLU(StatelessFactory):
    """max(0, x). ``inplace=True`` overwrites the input (see the module docs).

    >>> from rnnbuilder import Sequential
    >>> model = Sequential(Linear(3), ReLU(inplace=True)).make_model((4,))
    >>> bool((model(torch.randn(2, 1, 4))[0] >= 0).all())
    True
    """

    inplace: bool = False
    """Whether to overwrite the input tensor (see the module docs)."""
    torch_class: ClassVar = torch.nn.ReLU


@dataclass(frozen=True)
class LeakyReLU(StatelessFactory):
    """x if x > 0 else negative_slope * x."""

    negative_slope: float = 0.01
    """Slope for negative inputs."""
    inplace: bool = False
    """Whether to overwrite the input tensor (see the module docs)."""
    torch_class: ClassVar = torch.nn.LeakyReLU


@dataclass(frozen=True)
class ELU(StatelessFactory):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    alpha: float = 1.0
    """Scale of the negative part, alpha * (exp(x) - 1)."""
    inplace: bool = False
    """Whether to overwrite the input tensor (see the module docs)."""
    torch_class: ClassVar = torch.nn.ELU


@dataclass(frozen=True)
class GELU(StatelessFactory):
    """Gaussian error linear unit; ``approximate`` is 'none' or 'tanh'."""

    approximate: str = "none"
    """'none' for the exact function, 'tanh' for the tanh approximation."""
    torch_class: ClassVar = torch.nn.GELU

    def __post_init__(self):
        _one_of(self, "approximate", self.approximate, ("none", "tanh"))


@dataclass(frozen=True)
class SiLU(StatelessFactory):
    """x * sigmoid(x)."""

    inplace: bool = False
    """Whether to overwrite the input tensor (see the module docs)."""
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
    """x clamped to [min_val, max_val] (torch's deprecated ``min_value``/``max_value`` spellings are not taken)."""

    min_val: float = -1.0
    """Lower bound of the output."""
    max_val: float = 1.0
    """Upper bound of the output."""
    inplace: bool = False
    """Whether to overwrite the input tensor (see the module docs)."""
    torch_class: ClassVar = torch.nn.Hardtanh


@dataclass(frozen=True)
class Softplus(StatelessFactory):
    """log(1 + exp(beta * x)) / beta."""

    beta: float = 1.0
    """Steepness: log(1 + exp(beta * x)) / beta."""
    threshold: float = 20.0
    """Where beta * x passes this, the output is x (for numerical stability)."""
    torch_class: ClassVar = torch.nn.Softplus


@dataclass(frozen=True)
class Softmax(StatelessFactory):
    """Softmax over data dim ``dim`` (0 is the first data dim)."""

    dim: int = 0
    """Data dim the softmax normalizes over, counted from 0 (negative: from the end)."""

    def _module(self, in_shape):
        return torch.nn.Softmax(_torch_dim(self.dim))


@dataclass(frozen=True)
class LogSoftmax(StatelessFactory):
    """Log-softmax over data dim ``dim`` (0 is the first data dim)."""

    dim: int = 0
    """Data dim the log-softmax normalizes over, counted from 0 (negative: from the end)."""

    def _module(self, in_shape):
        return torch.nn.LogSoftmax(_torch_dim(self.dim))


@dataclass(frozen=True)
class Identity(StatelessFactory):
    """x."""

    torch_class: ClassVar = torch.nn.Identity


def _torch_dim(dim: int) -> int:
    """A data dim as a torch dim of the merged (batch, *data) tensor."""
    return dim + 1 if dim >= 0 else dim


@dataclass(frozen=True, eq=False)
class Affine(ArgumentEquality, StatelessFactory):
    """``y = weight @ x + bias`` on the flattened input, from given tensors: (in_features,) ->
    (out_features,), as ``Linear`` but initialised from ``weight`` and ``bias`` (both trainable).

    >>> layer = Affine(torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([0.5, 0.0]))
    >>> out, _ = layer.make_model((2,))(torch.tensor([[[1.0, 1.0]]]))
    >>> out.tolist()
    [[[3.5, -1.0]]]
    """

    weight: torch.Tensor
    """The weight matrix, shape (out_features, in_features); in_features must be the input's size."""
    bias: torch.Tensor | None = None
    """The bias, shape (out_features,); ``None``: no bias."""
    flatten_input: ClassVar[bool] = True

    def __post_init__(self):
        _float_tensor(self, "weight", self.weight, 2)
        if self.bias is not None:
            _float_tensor(self, "bias", self.bias, 1)
            if self.bias.shape[0] != self.weight.shape[0]:
                raise ValueError(
                    f"Affine.bias must have {self.weight.shape[0]} elements (weight's rows), got {self.bias.shape[0]}"
                )

    def _module(self, in_shape):
        out_features, in_features = self.weight.shape
        if in_shape[0] != in_features:
            raise ShapeError(f"Affine takes {in_features} input features (weight's columns), got input {in_shape}")
        module = torch.nn.Linear(in_features, out_features, bias=self.bias is not None)
        _load(self, module, weight=self.weight, bias=self.bias)
        return module

    def _fixed_out_shape(self):
        return (self.weight.shape[0],)


class _Scale(torch.nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.empty(shape))

    def forward(self, x):
        return x * self.scale


@dataclass(frozen=True, eq=False)
class Scale(ArgumentEquality, StatelessFactory):
    """``y = x * scale`` elementwise, with a trainable ``scale`` that broadcasts to the input's shape.

    >>> out, _ = Scale(torch.tensor([2.0, -1.0])).make_model((2,))(torch.ones(1, 1, 2))
    >>> out.tolist()
    [[[2.0, -1.0]]]
    """

    scale: torch.Tensor
    """The factors, broadcastable to the input's data shape (no time or batch dims), e.g. one per feature."""

    def __post_init__(self):
        _float_tensor(self, "scale", self.scale)

    def _module(self, in_shape):
        if not _broadcasts_to(self.scale.shape, in_shape):
            raise ShapeError(f"Scale.scale of shape {tuple(self.scale.shape)} does not broadcast to input {in_shape}")
        module = _Scale(tuple(self.scale.shape))
        _load(self, module, scale=self.scale)
        return module


def _broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` (no more dims, each 1 or equal)."""
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


@dataclass(frozen=True)
class SumPool2d(StatelessFactory):
    """Sum pooling over (channels, height, width): the sum of each window (zero padding).

    >>> out, _ = SumPool2d(2).make_model((1, 2, 2))(torch.ones(1, 1, 1, 2, 2))
    >>> out.tolist()
    [[[[[4.0]]]]]
    """

    kernel_size: IntOrPair
    """Window size (height, width), or one int for both."""
    stride: IntOrPair | None = None
    """Step between windows; ``None``: ``kernel_size``."""
    padding: IntOrPair = 0
    """Zeros added on each side of height and width."""

    def __post_init__(self):
        _positive_ints(self, kernel_size=self.kernel_size)

    def _module(self, in_shape):
        return torch.nn.AvgPool2d(self.kernel_size, self.stride, self.padding, divisor_override=1)


class DelayState(NamedTuple):
    """A ``Delay`` layer's state: the last inputs, newest first."""

    history: torch.Tensor
    """(batch, max_steps, n): ``history[:, k]`` is the input of k + 1 timesteps ago, flattened."""


def delay_step(x: torch.Tensor, state: DelayState, steps: torch.Tensor) -> tuple[torch.Tensor, DelayState]:
    """One timestep of a per-neuron delay: x (batch, n) -> y (batch, n) with ``y[:, i]`` the input
    of ``steps[i]`` timesteps ago (``steps`` (n,) long, each at most ``max_steps``; zeros before
    the first input), and the new state."""
    window = torch.cat([x.unsqueeze(1), state.history], dim=1)
    index = steps.view(1, 1, -1).expand(x.shape[0], 1, x.shape[1])
    return window.gather(1, index).squeeze(1), DelayState(window[:, : state.history.shape[1]])


class _DelayRunner(Runner):
    def __init__(self, in_shape, steps: torch.Tensor):
        super().__init__(in_shape, in_shape)
        self.register_buffer("steps", steps, persistent=False)
        self.max_steps = int(steps.max()) if steps.numel() else 0

    def initial_state(self, batch_size, device, dtype):
        return DelayState(torch.zeros(batch_size, self.max_steps, self.steps.numel(), device=device, dtype=dtype))

    def step(self, x, state):
        y, state = delay_step(x.flatten(1), state, self.steps)
        return y.reshape(x.shape), state


@dataclass(frozen=True, eq=False)
class Delay(ArgumentEquality, ModuleFactory):
    """``y[t] = x[t - steps]`` for each neuron (zeros before the first input); the state holds the
    last ``max(steps)`` inputs.

    >>> x = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1).expand(3, 1, 2)  # (time, batch, 2)
    >>> out, state = Delay(torch.tensor([0, 2])).make_model((2,))(x)
    >>> out[:, 0].tolist()
    [[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]]
    """

    steps: int | torch.Tensor = 1
    """The delay in timesteps: a non-negative int, or a tensor of them that broadcasts to the input's
    data shape (one per neuron)."""

    def __post_init__(self):
        steps = torch.as_tensor(self.steps)
        if (
            isinstance(self.steps, bool)
            or steps.is_complex()
            or not bool((steps == steps.round()).all() and (steps >= 0).all())
        ):
            raise ValueError(f"Delay.steps must be a non-negative int or a tensor of them, got {self.steps!r}")

    def _build(self, in_shape):
        steps = torch.as_tensor(self.steps, device="cpu")
        if not _broadcasts_to(steps.shape, in_shape):
            raise ShapeError(f"Delay.steps of shape {tuple(steps.shape)} does not broadcast to input {in_shape}")
        return _DelayRunner(in_shape, steps.round().long().expand(in_shape).flatten())
