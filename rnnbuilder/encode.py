"""Spike encoders: analog data to spike trains, time first, as ``snntorch.spikegen`` makes them.

Three codes, each a function and a registered encoder type (a frozen dataclass with the function's
arguments, which a description, ``rnnbuilder.spec.encoder_to_spec``, or a server's
``RunRequest.encoder`` names as ``"encode.Rate"`` and so on):

- ``rate`` / ``Rate`` (``"encode.Rate"``): every timestep spikes at random, with a probability set
  by the value (Bernoulli, as snnTorch; or ``poisson=True``, see ``rate``);
- ``latency`` / ``Latency`` (``"encode.Latency"``): one spike per feature, earlier for larger values;
- ``delta`` / ``Delta`` (``"encode.Delta"``): a spike where the data rose (or, with ``off_spike``,
  fell) by at least a threshold since the previous timestep.

Data without a time axis, ``(batch, *features)``, gets ``num_steps`` timesteps; data with one,
``(time, batch, *features)``, keeps its own. Spikes are ``(time, batch, *features)``, in the data's
floating dtype (float32 for integer data). Random draws come from ``generator`` (torch's global
generator if None), so that a seeded generator gives the same spikes every time.

>>> import torch
>>> from rnnbuilder import encode
>>> pixels = torch.tensor([[0.0, 0.5, 1.0]])                # (batch 1, 3 features)
>>> encode.latency(pixels, num_steps=5, normalize=True, linear=True)[:, 0]
tensor([[0., 0., 1.],
        [0., 0., 0.],
        [0., 1., 0.],
        [0., 0., 0.],
        [1., 0., 0.]])
>>> spikes = encode.Rate(num_steps=100)(pixels, generator=torch.Generator().manual_seed(0))
>>> tuple(spikes.shape)
(100, 1, 3)
>>> spikes[:, 0].sum(0)          # spike counts over the 100 steps: about 100 * value
tensor([  0.,  56., 100.])

Differences from ``snntorch.spikegen`` (same names and defaults otherwise; latency and delta give
its exact results, and rate its draws, from a generator in the same state):

- errors are ``RnnbuilderError`` (a ``ValueError``) naming the argument, not bare ``Exception``;
- ``num_steps`` is None rather than False when not given;
- ``rate`` also scales time-varying data (``time_var_input=True``) by ``gain`` and ``offset``,
  which snnTorch applies to static data only; it takes a ``generator`` and ``poisson``;
- ``latency`` has no ``interpolate`` (its ramps are not spikes) nor ``bypass`` (the time length
  would depend on the data): give ``num_steps``, and ``normalize=True`` or a smaller ``tau`` where
  spike times would pass it;
- ``delta``'s ``threshold`` must be positive (0 would make a spike of every unchanged step);
- data with NaN or infinity is refused;
- spikes keep the data's floating dtype (snnTorch's latency makes float32 of any data).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import torch

from .errors import RnnbuilderError, ShapeError

__all__ = ["Encoder", "Rate", "Latency", "Delta", "rate", "latency", "delta"]


class Encoder:
    """Base of the encoder types: frozen dataclasses whose fields are their function's arguments.

    Calling one, ``encoder(data, generator=None)``, encodes ``data`` into spikes (time, batch,
    *features).
    """

    @property
    def data_has_time(self) -> bool:
        """Whether the data comes with its time axis first (which the spikes keep); False: the data
        is (batch, *features) and the encoder adds ``num_steps`` timesteps."""
        raise NotImplementedError

    def encoded_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the spikes this encoder makes of data of ``data_shape``, without drawing them.

        >>> Rate(num_steps=25).encoded_shape((4, 40))
        (25, 4, 40)
        """
        raise NotImplementedError

    def __call__(self, data, generator: torch.Generator | None = None) -> torch.Tensor:
        """The spikes (time, batch, *features) encoding ``data``; random draws come from ``generator``."""
        raise NotImplementedError

    def arguments(self) -> dict:
        """The encoder's arguments by name, as its function takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Rate(Encoder):
    """Rate code (``rate``): spikes drawn at random, each timestep on its own.

    >>> Rate(num_steps=10, gain=0.5)
    Rate(num_steps=10, gain=0.5, offset=0.0, first_spike_time=0, time_var_input=False, poisson=False)
    """

    num_steps: int | None = None
    """Timesteps to make of data without a time axis; None when ``time_var_input`` (the data's own)."""
    gain: float = 1.0
    """Scales the data: the probability (or expected count, with ``poisson``) is ``gain * data + offset``."""
    offset: float = 0.0
    """Shifts the scaled data; see ``gain``."""
    first_spike_time: int = 0
    """Timesteps of silence first: with ``num_steps``, the first ones are zeroed; with time-varying
    data, that many zero timesteps go before it."""
    time_var_input: bool = False
    """True: the data is (time, batch, *features) already, and ``num_steps`` stays None."""
    poisson: bool = False
    """False: ``gain * data + offset``, clipped to [0, 1], is the spike probability per timestep
    (snnTorch's rate code). True: it is the expected spike count per timestep (a rate in Hz times
    the timestep in seconds, clipped below at 0) of a Poisson process, and a timestep spikes if the
    process fires at least once in it: with probability ``1 - exp(-count)``."""

    def __post_init__(self):
        _check_rate(self.num_steps, self.gain, self.offset, self.first_spike_time, self.time_var_input)

    @property
    def data_has_time(self) -> bool:
        return self.time_var_input

    def encoded_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.time_var_input:
            _need_time(data_shape, "rate")
            return (data_shape[0] + self.first_spike_time, *data_shape[1:])
        return (self.num_steps, *data_shape)

    def __call__(self, data, generator: torch.Generator | None = None) -> torch.Tensor:
        return rate(data, **self.arguments(), generator=generator)


@dataclass(frozen=True)
class Latency(Encoder):
    """Latency code (``latency``): one spike per feature, the larger the value the earlier.

    >>> Latency(num_steps=20, linear=True).encoded_shape((8, 64))
    (20, 8, 64)
    """

    num_steps: int
    """Timesteps to make: every spike falls within them."""
    threshold: float = 0.01
    """Values below it spike at the last timestep, or not at all with ``clip``; in (0, 1)."""
    tau: float = 1.0
    """Time constant of the code, in timesteps: the RC constant of the log code, or the slope of
    the linear one (a value v spikes at ``tau * (1 - v)``); replaced by ``normalize``."""
    first_spike_time: int = 0
    """The earliest timestep a spike may fall on: every spike time is shifted by it."""
    on_target: float = 1.0
    """The value of a spike."""
    off_target: float = 0.0
    """The value of every other timestep (the result is at least this everywhere)."""
    clip: bool = False
    """True: values below ``threshold`` make no spike at all."""
    normalize: bool = False
    """True: spike times are stretched so that the latest falls on the last timestep."""
    linear: bool = False
    """True: spike time falls linearly with the value; False: logarithmically, as a leaky
    integrator driven by the value reaches ``threshold``."""
    epsilon: float = 1e-7
    """Added to ``threshold`` as the smallest value of the log code, which has a pole there."""

    def __post_init__(self):
        _check_latency(self.num_steps, self.threshold, self.tau, self.first_spike_time, self.epsilon)

    @property
    def data_has_time(self) -> bool:
        return False

    def encoded_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.num_steps, *data_shape)

    def __call__(self, data, generator: torch.Generator | None = None) -> torch.Tensor:
        """The spikes of ``latency``; ``generator`` is unused (the code draws nothing)."""
        return latency(data, **self.arguments())


@dataclass(frozen=True)
class Delta(Encoder):
    """Delta code (``delta``): a spike wherever the data changed enough since the previous timestep.

    >>> Delta(threshold=0.5, off_spike=True).encoded_shape((100, 8, 64))
    (100, 8, 64)
    """

    threshold: float = 0.1
    """The least change from one timestep to the next that spikes; positive."""
    padding: bool = False
    """True: the first timestep is compared with itself (no spike); False: with zeros."""
    off_spike: bool = False
    """True: a fall by at least ``threshold`` makes a spike of -1."""

    def __post_init__(self):
        _check_delta(self.threshold)

    @property
    def data_has_time(self) -> bool:
        return True

    def encoded_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        _need_time(data_shape, "delta")
        return tuple(data_shape)

    def __call__(self, data, generator: torch.Generator | None = None) -> torch.Tensor:
        """The spikes of ``delta``; ``generator`` is unused (the code draws nothing)."""
        return delta(data, **self.arguments())


def rate(
    data,
    num_steps: int | None = None,
    gain: float = 1.0,
    offset: float = 0.0,
    first_spike_time: int = 0,
    time_var_input: bool = False,
    poisson: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rate-coded spikes of ``data``: (num_steps, *data.shape), or data's shape (plus
    ``first_spike_time`` leading timesteps) with ``time_var_input``. The arguments are ``Rate``'s.

    A timestep spikes with probability ``p = clip(gain * data + offset, 0, 1)``, or with
    ``poisson``, ``p = 1 - exp(-max(gain * data + offset, 0))``; draws come from ``generator``.

    >>> import torch
    >>> rate(torch.tensor([1.0, 0.0]), num_steps=3)
    tensor([[1., 0.],
            [1., 0.],
            [1., 0.]])
    >>> rate(torch.full((2, 4, 3), 0.5), time_var_input=True, first_spike_time=1).shape
    torch.Size([3, 4, 3])
    """
    _check_rate(num_steps, gain, offset, first_spike_time, time_var_input)
    data = _analog(data, "rate")
    if time_var_input:
        _need_time(tuple(data.shape), "rate")
    else:
        data = data.expand(num_steps, *data.shape)
    level = data * gain + offset
    probability = -torch.expm1(-level.clamp(min=0)) if poisson else level.clamp(0, 1)
    spikes = torch.bernoulli(probability, generator=generator)
    if first_spike_time == 0:
        return spikes
    if time_var_input:
        return torch.cat((spikes.new_zeros(first_spike_time, *spikes.shape[1:]), spikes))
    spikes[:first_spike_time] = 0
    return spikes


def latency(
    data,
    num_steps: int,
    threshold: float = 0.01,
    tau: float = 1.0,
    first_spike_time: int = 0,
    on_target: float = 1.0,
    off_target: float = 0.0,
    clip: bool = False,
    normalize: bool = False,
    linear: bool = False,
    epsilon: float = 1e-7,
) -> torch.Tensor:
    """Latency-coded spikes of ``data`` (values in [0, 1]): (num_steps, *data.shape), one spike
    per feature at its spike time, rounded. The arguments are ``Latency``'s.

    The log code's spike time is ``tau * log(v / (v - threshold))`` (v at least ``threshold +
    epsilon``), the linear code's ``tau * (1 - v)`` (v at least ``threshold``), each plus
    ``first_spike_time``. A spike time past the last timestep is an error naming ``tau`` and
    ``normalize``, which bring it within.

    >>> import torch
    >>> latency(torch.tensor([0.02, 0.5, 1.0]), num_steps=5, tau=2, linear=True).argmax(0)
    tensor([2, 1, 0])
    """
    _check_latency(num_steps, threshold, tau, first_spike_time, epsilon)
    data = _analog(data, "latency")
    if data.numel() and (data.min() < 0 or data.max() > 1):
        raise RnnbuilderError(
            f"latency: data must be in [0, 1], got values in [{data.min().item()}, {data.max().item()}]; scale it first"
        )
    if linear:
        slope = num_steps - 1 - first_spike_time if normalize else tau
        time = torch.clamp_max(-slope * (data - 1), -slope * (threshold - 1)) + first_spike_time
    else:
        clamped = torch.clamp(data, threshold + epsilon)
        time = tau * torch.log(clamped / (clamped - threshold))
        if first_spike_time > 0:
            time += first_spike_time
        if normalize:
            time = (time - first_spike_time) * (num_steps - first_spike_time - 1) / torch.max(
                time - first_spike_time
            ) + first_spike_time
    if not bool(torch.isfinite(time).all()):  # tau past the dtype's range, or epsilon below its resolution
        raise RnnbuilderError(
            f"latency: spike times overflow {data.dtype}: lower tau, or raise epsilon above the data's resolution"
        )
    steps = torch.round(time).long()
    if steps.numel() and steps.max() > num_steps - 1:
        raise RnnbuilderError(
            f"latency: a spike time ({steps.max().item()}) falls past the last of num_steps={num_steps} timesteps; "
            "lower tau, set normalize=True, or give more num_steps"
        )
    spikes = torch.zeros(num_steps, *data.shape, dtype=data.dtype, device=data.device)
    spikes.scatter_(0, steps.unsqueeze(0), 1)
    if clip:
        spikes = spikes * ~(data < threshold)
    return torch.clamp(spikes * on_target, off_target)


def delta(data, threshold: float = 0.1, padding: bool = False, off_spike: bool = False) -> torch.Tensor:
    """Delta-coded spikes of ``data`` (time, batch, *features): the same shape, 1 where a value rose
    by at least ``threshold`` since the previous timestep (and -1 where it fell by as much, with
    ``off_spike``). The arguments are ``Delta``'s.

    >>> import torch
    >>> delta(torch.tensor([1.0, 2.0, 0.0, 2.0, 2.9]), threshold=1, off_spike=True)
    tensor([ 1.,  1., -1.,  1.,  0.])
    """
    _check_delta(threshold)
    data = _analog(data, "delta")
    _need_time(tuple(data.shape), "delta")
    first = data[:1] if padding else torch.zeros_like(data[:1])
    change = data - torch.cat((first, data[:-1]))
    spikes = (change >= threshold).to(data.dtype)
    if off_spike:
        spikes = spikes - (change <= -threshold).to(data.dtype)
    return spikes


def _analog(data, code: str) -> torch.Tensor:
    """``data`` as a floating tensor (float32 if it was integer), or an error if it isn't finite."""
    data = torch.as_tensor(data)
    if not data.is_floating_point():
        data = data.to(torch.float32)
    if not bool(torch.isfinite(data).all()):
        raise RnnbuilderError(f"{code}: data contains NaN or infinity")
    return data


def _need_time(shape: tuple[int, ...], code: str) -> None:
    if len(shape) < 1 or shape[0] < 1:
        raise ShapeError(f"{code}: data must have a time axis first with at least one timestep, got shape {shape}")


def _whole(value, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        kind = "positive" if least == 1 else "non-negative"
        raise RnnbuilderError(f"{name} must be a {kind} integer, got {value!r}")


def _real(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RnnbuilderError(f"{name} must be a finite number, got {value!r}")


def _check_rate(num_steps, gain, offset, first_spike_time, time_var_input) -> None:
    _real(gain, "rate: gain")
    _real(offset, "rate: offset")
    _whole(first_spike_time, "rate: first_spike_time", 0)
    if time_var_input:
        if num_steps is not None:
            raise RnnbuilderError(
                "rate: num_steps must be None when time_var_input=True (the data's time axis sets the length)"
            )
        return
    if num_steps is None:
        raise RnnbuilderError("rate: num_steps is needed for data without a time axis (or set time_var_input=True)")
    _whole(num_steps, "rate: num_steps", 1)
    if first_spike_time > num_steps - 1:
        raise RnnbuilderError(
            f"rate: first_spike_time ({first_spike_time}) must be at most num_steps - 1 ({num_steps - 1})"
        )


def _check_latency(num_steps, threshold, tau, first_spike_time, epsilon) -> None:
    _whole(num_steps, "latency: num_steps", 1)
    _whole(first_spike_time, "latency: first_spike_time", 0)
    for value, name in ((threshold, "threshold"), (tau, "tau"), (epsilon, "epsilon")):
        _real(value, f"latency: {name}")
    if not 0 < threshold < 1:
        raise RnnbuilderError(f"latency: threshold must be in (0, 1), got {threshold!r}")
    if tau <= 0:
        raise RnnbuilderError(f"latency: tau must be positive, got {tau!r}")
    if epsilon <= 0:
        raise RnnbuilderError(f"latency: epsilon must be positive, got {epsilon!r}")
    if first_spike_time > num_steps - 1:
        raise RnnbuilderError(
            f"latency: first_spike_time ({first_spike_time}) must be at most num_steps - 1 ({num_steps - 1})"
        )


def _check_delta(threshold) -> None:
    _real(threshold, "delta: threshold")
    if threshold <= 0:
        raise RnnbuilderError(f"delta: threshold must be positive, got {threshold!r}")
