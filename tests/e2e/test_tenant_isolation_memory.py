"""Memory budgets count what a call really allocates: every layer's activations, and the step that
checks a new session. A real server with two budgeted tenants; its peak memory is read from
/proc (the server runs in this process), reset before each attack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnbuilder as rb
from client import Client, ResourceExhaustedError
from rnnbuilder import nn
from server import Limits, ServerConfig
from tests.helpers import local_outputs, recurrent_net
from tests.server_fixture import running_server

AUTH = """
[tenants.alice]
token = "alice-secret-token"
max_memory_mb = 128

[tenants.mallory]
token = "mallory-secret-token"
max_memory_mb = 128
"""
MB = 1 << 20


def reset_peak() -> int:
    """Start a new peak of this process's resident memory (Linux: clear_refs 5); the bytes resident now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def peak() -> int:
    """The most bytes resident since ``reset_peak``."""
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@pytest.fixture
def budgets(tmp_path):
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH)
    config = ServerConfig(device="cpu", auth_file=str(auth), limits=Limits(max_memory_mb=256))
    with running_server(config) as (address, _), Client(address, token="alice-secret-token") as alice:
        session = alice.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=1)
        x = np.random.default_rng(0).random((10, 2, 3), dtype=np.float32) * 2
        before = session.run(x)
        yield address, session, x, before


def assert_untouched(session, x: np.ndarray, before: np.ndarray) -> None:
    """The session still continues its local model exactly from where it was."""
    first, want = local_outputs(session.to_local(), [x, x])
    assert np.array_equal(before, first)
    assert np.array_equal(session.run(x), want)


def test_hidden_activations_count_against_the_budget(budgets):
    """A Run whose Upsample makes 256 kB a timestep (750 MB over the run) before a pool shrinks it is refused
    before it allocates."""
    address, session, x, before = budgets
    with Client(address, token="mallory-secret-token") as mallory:
        net = rb.Sequential(nn.Upsample(scale_factor=256.0), nn.MaxPool1d(256))  # (1, 256) -> (1, 65536) -> (1, 256)
        heavy = mallory.create_session(net, input_shape=(1, 256))
        baseline = reset_peak()
        with pytest.raises(ResourceExhaustedError, match="device memory"):
            heavy.run(np.ones((3000, 1, 1, 256), np.float32))
        assert peak() - baseline < 64 * MB  # the 3 MB message and its copies, not the activations
    assert_untouched(session, x, before)


def test_the_trial_step_of_a_new_session_counts_against_the_budget(budgets):
    """CreateSession with 512 MiB inputs a timestep is refused before its checking step allocates them."""
    address, session, x, before = budgets
    with Client(address, token="mallory-secret-token") as mallory:
        baseline = reset_peak()
        with pytest.raises(ResourceExhaustedError, match="device memory"):
            mallory.create_session(rb.Sequential(nn.ReLU()), input_shape=(128, 1024, 1024))
        assert peak() - baseline < 64 * MB
        assert mallory.list_sessions() == []
    assert_untouched(session, x, before)
