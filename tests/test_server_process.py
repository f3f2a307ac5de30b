"""``python -m server`` as a process: flags, health, and graceful shutdown on SIGTERM."""

import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import rnnbuilder as rb
from client import Client
from client.__main__ import health
from rnnbuilder import nn, snn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_process():
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--address", address, "--device", "cpu", "--grace", "120"]
        + ["--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while health(address, "", 1.0) != "SERVING":
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the server did not become healthy"
        time.sleep(0.2)
    yield address, process
    if process.poll() is None:
        process.kill()
    process.wait(30)


def test_sigterm_lets_calls_in_flight_finish(server_process):
    """On SIGTERM a running call completes, then the server exits cleanly and logs it."""
    address, process = server_process
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(nn.Linear(200), snn.LIF())
    with Client(address) as c:
        s = c.create_session(n, input_shape=(20,), batch_size=4)
        result = {}
        call = threading.Thread(target=lambda: result.update(out=s.run(np.ones((20000, 4, 20), np.float32))))
        call.start()
        time.sleep(0.5)
        in_flight = call.is_alive()
        process.send_signal(signal.SIGTERM)
        call.join(180)
    assert in_flight, "the call finished before SIGTERM; make it longer"
    assert result["out"].shape == (20000, 4, 200)
    assert process.wait(180) == 0
    log = process.stdout.read()
    assert "shutting down" in log and "stopped" in log


def test_startup_log_names_address_device_and_mode(server_process):
    """The start-up line says where it serves, on which device, and that it runs without auth."""
    address, process = server_process
    process.send_signal(signal.SIGINT)
    process.wait(60)
    first = process.stdout.read().splitlines()[0]
    assert f"serving on {address}" in first and "device cpu" in first and "no auth" in first


def test_health_probe_reports_unreachable_server():
    """The health probe exits non-zero when nothing listens."""
    probe = subprocess.run(
        [sys.executable, "-m", "client", "health", f"127.0.0.1:{free_port()}", "--timeout", "0.5"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 1 and "UNREACHABLE" in probe.stdout
