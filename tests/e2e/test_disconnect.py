"""A client killed mid-stream: the session it was streaming into stays whole and usable.

A client process attaches to a session the test created (``Client.get_session``), streams chunks of
K timesteps into it through ``Session.stream`` and is killed with SIGKILL after it has printed that
it got N replies, with more chunks on their way. Then the session has simulated a whole number of
chunks (at least N), its state is a local model's after exactly those chunks, it simulates on as the
local model does, and the server is SERVING.

The server may finish the chunk it was simulating when the client died, so the session is read once
its timestep count is stable, and atomically (``ExportSession``: count and state together).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client.__main__ import health
from rnnbuilder import snn
from rnnbuilder_sim.wire import tensors
from tests.helpers import quiet_snapshot, recurrent_readout_net

ROOT = Path(__file__).resolve().parents[2]
IN_SHAPE, B = (16,), 4
K = 5  # timesteps per chunk
N = 6  # replies the client gets before it is killed

CLIENT = """
import itertools, sys
from client import Client
from tests.e2e.test_disconnect import chunk

with Client(sys.argv[1]) as c:
    session = c.get_session(sys.argv[2])
    for i, _ in enumerate(session.stream(chunk(j) for j in itertools.count())):
        print("reply", i + 1, flush=True)
"""


def network():
    return recurrent_readout_net(64, snn.LIF())


def chunk(i: int) -> np.ndarray:
    """The client's i-th chunk, (K, B, *IN_SHAPE)."""
    return np.random.default_rng(i).random((K, B, *IN_SHAPE), dtype=np.float32) * 4


def local_run(model: rb.Model, chunks: int):
    """The local model's state after the client's first ``chunks`` chunks, run chunk by chunk."""
    state = None
    with torch.no_grad():
        for i in range(chunks):
            _, state = model(torch.from_numpy(chunk(i)), state)
    return state


@pytest.fixture(scope="module")
def killed(server_address):
    """(session, its quiet snapshot, the replies the client printed): after the client got SIGKILL."""
    from client import Client

    with Client(server_address) as c:
        session = c.create_session(network(), IN_SHAPE, batch_size=B, seed=9)
        process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, server_address, session.id],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            printed = 0
            while printed < N:
                line = process.stdout.readline()
                assert line, f"the client ended early: {process.stderr.read()}"
                printed = int(line.split()[1])
            process.send_signal(signal.SIGKILL)
            assert process.wait(30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        yield session, quiet_snapshot(session), printed
        session.close()


def test_killed_client_leaves_whole_chunks(killed):
    """The session has simulated a whole number of chunks, at least those the client got replies to."""
    _, snapshot, printed = killed
    done = snapshot.timesteps_simulated
    assert done % K == 0 and done >= printed * K, done


def test_killed_client_leaves_the_local_models_state(killed):
    """The session's state is the local model's after exactly the chunks it simulated."""
    session, snapshot, _ = killed
    state = local_run(session.to_local(), snapshot.timesteps_simulated // K)
    want = {k: v.numpy() for k, v in rb.named_leaves(state).items()}
    got = {item.name: tensors.decode(item.tensor) for item in snapshot.state}
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), f"state {name} differs from the local model's"


def test_session_of_a_killed_client_keeps_simulating(killed):
    """After the kill the session runs on from where it is (output and hidden spikes), as the local model does."""
    session, snapshot, _ = killed
    chunks = snapshot.timesteps_simulated // K
    model = session.to_local()
    x = chunk(chunks)
    with torch.no_grad():
        out, _, recorded = model.record(torch.from_numpy(x), ["hidden"], local_run(model, chunks))
    remote = session.record(x, ["hidden"])
    assert np.array_equal(remote.output, out.numpy())
    assert np.array_equal(remote["hidden"], recorded["hidden"].numpy())
    assert remote["hidden"].sum() > 0
    assert session.refresh().timesteps_simulated == (chunks + 1) * K


def test_server_serves_after_a_killed_client(killed, server_address):
    """After the kill the server answers its health check SERVING."""
    assert health(server_address, "", 10.0) == "SERVING"
    assert health(server_address, "rnnbuilder_sim.v1.SimulatorService", 10.0) == "SERVING"
