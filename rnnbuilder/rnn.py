"""Classic recurrent layers: ``LSTM``, ``GRU`` (the math of ``torch.nn.LSTM``/``GRU``) and
``TempConvPlus2d`` (a 2-D convolution that also reaches back over the last frames).

>>> import torch
>>> model = LSTM(8).make_model((3,))
>>> out, (h, c) = model(torch.zeros(5, 2, 3))      # state: (num_layers, batch, hidden_size) each
>>> tuple(out.shape), tuple(h.shape)
((5, 2, 8), (1, 2, 8))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ._factory import ModuleFactory
from ._runner import Runner, numel
from .errors import ShapeError
from .nn import PADDING_MODES, _one_of, _positive_ints

__all__ = ["LSTM", "GRU", "TempConvPlus2d", "MAX_LAYERS"]

MAX_LAYERS = 256
"""The most stacked layers an LSTM or GRU may have: deeper stacks don't train, and a huge number
would take minutes to build before any size limit could refuse it."""


@dataclass(frozen=True)
class _TorchRNN(ModuleFactory):
    hidden_size: int
    """Number of features of the hidden state and the output."""
    num_layers: int = 1
    """Number of stacked layers, at most MAX_LAYERS (256)."""
    bias: bool = True
    """Whether the layers have bias weights."""
    dropout: float = 0.0
    """Probability of zeroing each layer's output but the last's, in training mode, in [0, 1]."""
    torch_class: ClassVar[type[torch.nn.RNNBase]]

    def __post_init__(self):
        for name in ("hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, got {value!r}")
        if self.num_layers > MAX_LAYERS:
            raise ValueError(f"{type(self).__name__}.num_layers must be at most {MAX_LAYERS}, got {self.num_layers}")

    def _build(self, in_shape):
        module = self.torch_class(numel(in_shape), self.hidden_size, self.num_layers, self.bias, dropout=self.dropout)
        return TorchRNNRunner(in_shape, module)

    def _fixed_out_shape(self):
        return (self.hidden_size,)


class TorchRNNRunner(Runner):
    """A ``torch.nn.LSTM``/``GRU`` on the flattened input; the state has the shapes torch uses."""

    def __init__(self, in_shape, module: torch.nn.RNNBase):
        super().__init__(in_shape, (module.hidden_size,))
        self.module = module

    def initial_state(self, batch_size, device, dtype):
        shape = (self.module.num_layers, batch_size, self.module.hidden_size)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return (h, torch.zeros_like(h)) if isinstance(self.module, torch.nn.LSTM) else h

    def step(self, x, state):
        y, state = self.module(x.flatten(1).unsqueeze(0), state)
        return y[0], state

    def sequence(self, x, state):
        return self.module(x.flatten(2), state)


@dataclass(frozen=True)
class LSTM(_TorchRNN):
    """Long short-term memory, as ``torch.nn.LSTM``: (*in_shape) -> (hidden_size,).

    The state is ``(h, c)``, each (num_layers, batch, hidden_size).
    """

    torch_class: ClassVar = torch.nn.LSTM


@dataclass(frozen=True)
class GRU(_TorchRNN):
    """Gated recurrent unit, as ``torch.nn.GRU``: (*in_shape) -> (hidden_size,).

    The state is ``h``, (num_layers, batch, hidden_size).
    """

    torch_class: ClassVar = torch.nn.GRU


@dataclass(frozen=True)
class TempConvPlus2d(ModuleFactory):
    """A 2-D convolution over space combined with a causal convolution over the last frames
    (frame stacking), as one causal 3-D convolution: (channels, height, width) -> (out_channels, height', width').

    ``y_t = b + sum_{k < time_kernel_size} W_k * x_{t - k * time_dilation}``, each ``W_k`` a 2-D
    kernel (with ``stride``, ``padding``, ``dilation``, ``groups`` and ``padding_mode`` as in
    ``torch.nn.Conv2d``), and frames before the first one zero.

    Shapes: (channels, height, width) -> (out_channels, height', width'), one output per input frame,
    so that a long sequence gives the same outputs whole or in chunks. The state is the last
    ``(time_kernel_size - 1) * time_dilation`` input frames, (batch, channels, frames, height, width),
    zeros at the start. ``padding_mode`` pads space only: over time the padding is always those
    frames (zeros before the start). rnnbuilder 0.1.1's ``time_stride`` and ``time_padding`` don't
    exist here; ``time_dilation`` is keyword-only, so positional arguments past ``dilation`` are
    ``groups``, ``bias``, ``padding_mode``.

    >>> model = TempConvPlus2d(4, 3, 2, padding=1, padding_mode="circular").make_model((2, 6, 6))
    >>> out, state = model(torch.zeros(5, 3, 2, 6, 6))
    >>> tuple(out.shape), tuple(state.shape)
    ((5, 3, 4, 6, 6), (3, 2, 1, 6, 6))
    """

    out_channels: int
    """Number of output channels."""
    kernel_size: int | tuple[int, int]
    """Spatial size of the kernel, in pixels: one int for both dims, or (height, width)."""
    time_kernel_size: int
    """Number of frames the kernel reads: the current one and earlier ones."""
    stride: int | tuple[int, int] = 1
    """Spatial step of the kernel, in pixels: one int for both dims, or (height, width)."""
    padding: int | tuple[int, int] = 0
    """Spatial padding added to each side, in pixels: one int for both dims, or (height, width)."""
    dilation: int | tuple[int, int] = 1
    """Spacing of the kernel's spatial elements, in pixels: one int, or (height, width)."""
    groups: int = 1
    """Number of blocked connections from input to output channels; divides both channel counts."""
    bias: bool = True
    """Whether to add a learnable bias."""
    padding_mode: str = "zeros"
    """What the spatial padding holds: 'zeros', 'reflect', 'replicate' or 'circular'."""
    time_dilation: int = field(default=1, kw_only=True)
    """Spacing of the frames the kernel reads, in timesteps."""

    def __post_init__(self):
        for name in ("time_kernel_size", "time_dilation"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TempConvPlus2d.{name} must be an int >= 1, got {value!r}")
        _positive_ints(self, out_channels=self.out_channels, kernel_size=self.kernel_size, groups=self.groups)
        _one_of(self, "padding_mode", self.padding_mode, PADDING_MODES)

    def _build(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"{self!r} expects input of shape (channels, height, width), got {tuple(in_shape)}")
        history = (self.time_kernel_size - 1) * self.time_dilation
        with torch.device("meta"):
            try:
                probe = self._conv(in_shape[0])(torch.empty(1, in_shape[0], history + 1, *in_shape[1:]))
            except (RuntimeError, ValueError) as e:
                raise ShapeError(f"{self!r} cannot take input of shape {tuple(in_shape)}: {e}") from None
        return TempConvRunner(in_shape, (self.out_channels, *probe.shape[3:]), self._conv(in_shape[0]), history)

    def _conv(self, in_channels: int) -> torch.nn.Conv3d:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        return torch.nn.Conv3d(
            in_channels,
            self.out_channels,
            (self.time_kernel_size, *pair(self.kernel_size)),
            stride=(1, *pair(self.stride)),
            padding=(0, *pair(self.padding)),  # time: the state's frames; space: padding_mode
            dilation=(self.time_dilation, *pair(self.dilation)),
            groups=self.groups,
            bias=self.bias,
            padding_mode=self.padding_mode,
        )


class TempConvRunner(Runner):
    def __init__(self, in_shape, out_shape, conv: torch.nn.Conv3d, history: int):
        super().__init__(in_shape, out_shape)
        self.conv = conv
        self.history = history

    def initial_state(self, batch_size, device, dtype):
        c, h, w = self.in_shape
        return torch.zeros(batch_size, c, self.history, h, w, device=device, dtype=dtype)

    def step(self, x, state):
        y, state = self.sequence(x.unsqueeze(0), state)
        return y[0], state

    def sequence(self, x, state):
        frames = torch.cat([state, x.permute(1, 2, 0, 3, 4)], dim=2)  # (batch, channels, time, h, w)
        y = self.conv(frames).permute(2, 0, 1, 3, 4)
        return y, frames[:, :, frames.shape[2] - self.history :]
