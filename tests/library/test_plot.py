"""rnnbuilder.plot: each figure renders to a PNG of the figure's size, from torch tensors and numpy arrays."""

import sys

import numpy as np
import pytest
import torch
from matplotlib import image, pyplot

from rnnbuilder import plot

SPIKES = (torch.rand(80, 3, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.1).float()  # (time, batch, 4x5)
VALUES = torch.randn(80, 3, 6, generator=torch.Generator().manual_seed(1)).cumsum(0).numpy()


@pytest.fixture(autouse=True)
def closed_figures():
    yield
    pyplot.close("all")


def rendered(ax, path) -> np.ndarray:
    """The PNG of ``ax``'s figure at 50 dpi, read back as (height, width, channels)."""
    ax.figure.set_size_inches(6, 4)
    ax.figure.savefig(path, dpi=50)
    return image.imread(path)


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plot.raster(SPIKES, batch=2, dt=1e-3, title="raster"),
        lambda: plot.raster(SPIKES.numpy()),
        lambda: plot.traces(VALUES, neurons=[0, 3], threshold=1.0, dt=0.5, title="membranes"),
        lambda: plot.traces(torch.from_numpy(VALUES), batch=1),
        lambda: plot.rate_histogram(SPIKES, dt=1e-3, bins=10, title="rates"),
        lambda: plot.rate_histogram(SPIKES.numpy()),
    ],
    ids=["raster-dt", "raster-numpy", "traces-dt", "traces-torch", "histogram-dt", "histogram-numpy"],
)
def test_figure_renders_to_a_png_of_its_size(draw, tmp_path):
    """The figure saves as a 300 x 200 pixel PNG (6 x 4 inches at 50 dpi) that is not blank."""
    picture = rendered(draw(), tmp_path / "figure.png")
    assert picture.shape[:2] == (200, 300)
    assert picture.std() > 0


def test_dt_puts_the_time_axis_in_seconds():
    """With dt, the time axis is labelled in seconds and spans time x dt."""
    ax = plot.raster(SPIKES, dt=1e-3)
    assert ax.get_xlabel() == "time (s)"
    assert ax.get_xlim()[1] == pytest.approx(79.5e-3)


def test_without_dt_time_is_in_timesteps_and_rates_per_timestep():
    """Without dt, the axes say timestep and spikes/timestep."""
    assert plot.traces(VALUES).get_xlabel() == "timestep"
    assert plot.rate_histogram(SPIKES).get_xlabel() == "firing rate (spikes/timestep)"


def test_rate_histogram_counts_every_neuron_at_its_rate_in_hertz():
    """Each of the 20 neurons falls in the bin of its spikes per second over all steps and sequences."""
    ax = plot.rate_histogram(SPIKES, dt=1e-3, bins=5)
    heights = [patch.get_height() for patch in ax.patches]
    assert sum(heights) == 20
    rates = SPIKES.reshape(-1, 20).mean(0) / 1e-3
    assert ax.patches[0].get_x() == pytest.approx(float(rates.min()))


def test_raster_draws_on_given_axes():
    """Given axes, the raster draws there: one marker per spike of the chosen sequence."""
    figure, (top, bottom) = pyplot.subplots(2, 1)
    assert plot.raster(SPIKES, ax=bottom, batch=1) is bottom
    assert len(bottom.collections[0].get_segments()) == int(SPIKES[:, 1].sum())
    assert not top.collections


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: plot.raster(SPIKES, batch=3), "batch"),
        (lambda: plot.raster(torch.zeros(5)), r"\(time, batch, \*features\)"),
        (lambda: plot.traces(VALUES, neurons=[6]), "neurons"),
        (lambda: plot.traces(VALUES, dt=0), "dt"),
        (lambda: plot.rate_histogram(SPIKES, bins=0), "bins"),
    ],
)
def test_bad_arguments_say_what_to_fix(call, message):
    """A bad argument raises ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        call()


def test_without_matplotlib_the_error_names_the_plot_extra(monkeypatch):
    """With matplotlib missing, drawing raises ImportError that names the ``plot`` extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"rnnbuilder-sim\[plot\]"):
        plot.raster(SPIKES)
