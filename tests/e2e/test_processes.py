"""``python -m server --processes N``: N server processes on one address, sharing sessions through
the checkpoint folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import Client
from client.errors import ResourceExhaustedError
from rnnbuilder import nn, snn
from server import Limits, ServerConfig
from server.memory import MB
from tests.e2e.test_server_process import free_port
from tests.server_fixture import running_server

NET = rb.Sequential(nn.Linear(4), snn.LIF())
X = np.ones((1, 3), dtype=np.float32)


class Supervised:
    """``python -m server --processes N`` with its output collected as it comes."""

    def __init__(self, *flags: str, processes: int = 2):
        self.address = f"127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "server", "--address", self.address, "--device", "cpu"]
        command += ["--processes", str(processes), "--metrics-port", "-1", "--log-format", "text", *flags]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def wait_serving(self, processes: int = 2) -> Supervised:
        deadline = time.monotonic() + 90
        while sum("serving on" in line for line in self.lines) < processes:
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "the processes did not start: " + "".join(self.lines)
            time.sleep(0.2)
        return self

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        self._reader.join(10)
        return code


@pytest.fixture
def two_processes(tmp_path):
    server = Supervised("--checkpoint-dir", str(tmp_path)).wait_serving()
    clients: list[Client] = []
    yield server, clients
    for c in clients:
        c.close()
    server.stop()


def test_clients_spread_over_the_processes(two_processes):
    """Clients of one address reach both processes, each answering as its own replica."""
    server, clients = two_processes
    clients += [Client(server.address) for _ in range(12)]
    sessions = [c.create_session(NET, input_shape=(3,)) for c in clients]
    assert len({s.server_id for s in sessions}) == 2


def test_a_session_reached_through_the_other_process_moves_with_its_state(two_processes):
    """A session asked for through the other process's connection goes on from where it was."""
    server, clients = two_processes
    clients += [Client(server.address) for _ in range(12)]
    sessions = [c.create_session(NET, input_shape=(3,), seed=0) for c in clients]
    first = sessions[0]
    expected = NET.make_model((3,))
    expected.load_state_dict({name: torch.from_numpy(value) for name, value in first.parameters().items()})
    y0 = first.step(X)
    other = next(c for c, s in zip(clients, sessions, strict=True) if s.server_id != first.server_id)
    moved = other.get_session(first.id)
    y1 = moved.step(X)
    with torch.no_grad():
        local, _ = expected(torch.from_numpy(np.stack([X, X])))
    np.testing.assert_array_equal(np.stack([y0, y1]), local.numpy())
    assert moved.refresh().timesteps_simulated == 2


def test_session_limits_count_every_process(tmp_path):
    """--max-sessions bounds the sessions of all processes together, not of each."""
    server = Supervised("--checkpoint-dir", str(tmp_path), "--max-sessions", "3").wait_serving()
    clients = [Client(server.address) for _ in range(8)]
    try:
        made, refused = 0, 0
        for c in clients:
            try:
                c.create_session(NET, input_shape=(3,))
                made += 1
            except ResourceExhaustedError:
                refused += 1
        assert made == 3 and refused == 5
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_sigterm_stops_every_process_and_keeps_the_sessions(tmp_path):
    """SIGTERM ends all processes cleanly; started again, they serve the same sessions."""
    server = Supervised("--checkpoint-dir", str(tmp_path)).wait_serving()
    with Client(server.address) as c:
        session = c.create_session(NET, input_shape=(3,))
        session.step(X)
    assert server.stop() == 0
    assert sum("stopped" in line for line in server.lines) == 2
    again = Supervised("--checkpoint-dir", str(tmp_path)).wait_serving()
    try:
        with Client(again.address) as c:
            assert c.get_session(session.id).timesteps_simulated == 1
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--checkpoint-dir", ""), "needs --checkpoint-dir"),
        (("--address", "unix:{tmp}/sim.sock"), "HOST:PORT"),
    ],
)
def test_processes_refuse_what_they_cannot_share(tmp_path, flags, problem):
    """Several processes need a checkpoint folder and a TCP address; otherwise the server says so and exits."""
    server = Supervised("--checkpoint-dir", str(tmp_path), *(f.format(tmp=tmp_path) for f in flags))
    assert server.process.wait(60) != 0
    server._reader.join(10)
    assert problem in "".join(server.lines)


def test_each_process_has_its_share_of_the_memory_budget(tmp_path):
    """With --processes 2, each process may hold half of --max-memory-mb."""
    config = ServerConfig(device="cpu", processes=2, checkpoint_dir=str(tmp_path), limits=Limits(max_memory_mb=100))
    with running_server(config) as (_, server):
        assert server.sessions.ledger.server_budget == 50 * MB
