"""Figures of simulations: spike rasters, value traces and firing-rate histograms (matplotlib).

Each function takes what a model or the service gives back, ``(time, batch, *features)`` as a torch
tensor or numpy array (the features flattened into neurons), draws one sequence of the batch on
``ax`` (a new figure's when None) and returns the ``matplotlib.axes.Axes``. With ``dt``, the
timestep in seconds, the time axis is in seconds and rates in Hz; without, in timesteps and spikes
per timestep.

matplotlib is an optional dependency: ``pip install 'rnnbuilder-sim[plot]'``. Without a display,
figures render with the Agg backend (to files).

>>> import torch
>>> spikes = (torch.rand(100, 2, 8, 8) < 0.1).float()   # (time, batch, 8x8 features)
>>> ax = raster(spikes, dt=1e-3, title="input")
>>> ax.get_xlabel(), ax.get_ylabel()
('time (s)', 'neuron')
>>> ax.figure.savefig(__import__("io").BytesIO(), format="png")
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["raster", "traces", "rate_histogram"]


def raster(
    spikes, *, ax: Axes | None = None, batch: int = 0, dt: float | None = None, title: str | None = None
) -> Axes:
    """A spike raster of sequence ``batch`` of ``spikes`` (time, batch, *features): a tick per spike,
    one row per neuron (the features flattened), neuron 0 at the top.

    >>> import numpy as np
    >>> ax = raster(np.eye(5)[:, None, :])       # one spike per neuron, on the diagonal
    >>> [line[0].tolist() for line in ax.collections[0].get_segments()]   # a line per spike, at (time, neuron)
    [[0.0, -0.425], [1.0, 0.575], [2.0, 1.575], [3.0, 2.575], [4.0, 3.575]]
    """
    values = _sequence(spikes, batch, "spikes")
    ax = _axes(ax)
    times, neurons = np.nonzero(values)
    scale = 1.0 if dt is None else _positive(dt)
    # One vertical line per spike, in data coordinates (so that it keeps to its row however the
    # axes are resized), all in one collection (a collection per neuron is slow for thousands).
    ticks = np.stack([np.stack([times * scale, neurons - 0.425], 1), np.stack([times * scale, neurons + 0.425], 1)], 1)
    ax.add_collection(_line_collection(ticks))
    ax.set_xlim(-0.5 * scale, (values.shape[0] - 0.5) * scale)
    ax.set_ylim(values.shape[1] - 0.5, -0.5)
    ax.yaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel(_time_label(dt))
    ax.set_ylabel("neuron")
    _title(ax, title)
    return ax


def traces(
    values,
    *,
    ax: Axes | None = None,
    batch: int = 0,
    neurons=None,
    dt: float | None = None,
    threshold: float | None = None,
    title: str | None = None,
) -> Axes:
    """Traces over time of sequence ``batch`` of ``values`` (time, batch, *features), such as
    membrane potentials: a line per neuron (the features flattened); ``neurons`` picks some by
    index (all when None); ``threshold`` draws a dashed line at that value.

    >>> import torch
    >>> ax = traces(torch.randn(50, 1, 3).cumsum(0), neurons=[0, 2], threshold=1.0)
    >>> len(ax.get_lines())      # two traces and the threshold
    3
    """
    sequence = _sequence(values, batch, "values")
    chosen = np.arange(sequence.shape[1]) if neurons is None else np.asarray(neurons, dtype=int).reshape(-1)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= sequence.shape[1]):
        raise ValueError(f"neurons must be indices from 0 to {sequence.shape[1] - 1}, got {chosen.tolist()}")
    ax = _axes(ax)
    time = np.arange(sequence.shape[0]) * (1.0 if dt is None else _positive(dt))
    for n in chosen:
        ax.plot(time, sequence[:, n], linewidth=1, label=f"neuron {n}")
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label="threshold")
    if 0 < chosen.size <= 10:
        ax.legend(fontsize="small")
    ax.set_xlabel(_time_label(dt))
    ax.set_ylabel("value")
    _title(ax, title)
    return ax


def rate_histogram(
    spikes, *, ax: Axes | None = None, dt: float | None = None, bins: int = 20, title: str | None = None
) -> Axes:
    """A histogram of the neurons' firing rates in ``spikes`` (time, batch, *features): each
    neuron's spikes over all timesteps and sequences of the batch, per timestep (or per second,
    with ``dt``), in ``bins`` bins.

    >>> import torch
    >>> ax = rate_histogram((torch.rand(200, 4, 16) < 0.05).float(), dt=1e-3)
    >>> ax.get_xlabel()
    'firing rate (Hz)'
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    values = _array(spikes, "spikes")
    rates = values.reshape(values.shape[0] * values.shape[1], -1).mean(0)
    if dt is not None:
        rates = rates / _positive(dt)
    ax = _axes(ax)
    ax.hist(rates, bins=bins, color="C0", edgecolor="white")
    ax.set_xlabel("firing rate (Hz)" if dt is not None else "firing rate (spikes/timestep)")
    ax.set_ylabel("neurons")
    _title(ax, title)
    return ax


def _array(values, what: str) -> np.ndarray:
    """``values`` (time, batch, *features) as a float numpy array (time, batch, neurons)."""
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=float)
    if array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} must be (time, batch, *features) with at least one timestep, got shape {array.shape}")
    return array.reshape(array.shape[0], array.shape[1], -1)


def _sequence(values, batch: int, what: str) -> np.ndarray:
    """Sequence ``batch`` of ``values``: (time, neurons)."""
    array = _array(values, what)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch < array.shape[1]:
        raise ValueError(f"batch must be an index from 0 to {array.shape[1] - 1}, got {batch!r}")
    return array[:, batch]


def _line_collection(segments: np.ndarray):
    """Black lines, one per (2, 2) segment of ``segments`` (lines, 2 ends, x and y)."""
    from matplotlib.collections import LineCollection

    return LineCollection(segments, colors="black", linewidths=1.5)


def _integer_ticks():
    """A tick locator that puts ticks on whole numbers only (neuron indices)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _positive(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0 or dt == float("inf"):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    return float(dt)


def _time_label(dt: float | None) -> str:
    return "timestep" if dt is None else "time (s)"


def _title(ax: Axes, title: str | None) -> None:
    if title is not None:
        ax.set_title(title, fontsize=10)


def _axes(ax: Axes | None) -> Axes:
    """``ax``, or the axes of a new figure."""
    if ax is not None:
        return ax
    pyplot = _pyplot()
    return pyplot.figure().add_subplot()


def _pyplot():
    """matplotlib.pyplot, on the Agg backend where there is no display to show figures on."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "rnnbuilder.plot needs matplotlib: install the plot extra, pip install 'rnnbuilder-sim[plot]'"
        ) from None
    # A backend someone chose (MPLBACKEND, as Jupyter sets it, or pyplot already in use) stays.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _has_display() -> bool:
    """Whether figures could show on a screen: a Windows or macOS desktop, or an X or Wayland display."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
