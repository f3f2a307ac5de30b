"""``python -m server`` as a process: flags, health, and graceful shutdown on SIGTERM."""

import json
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
from rnnbuilder_sim.v1 import simulator_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(address: str, *flags: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--address", address, "--device", "cpu", "--grace", "120"]
        + ["--metrics-port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while health(address, "", 1.0) != "SERVING":
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the server did not become healthy"
        time.sleep(0.2)
    return process


@pytest.fixture
def server_process(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    process = start_server(address, "--checkpoint-dir", str(tmp_path))
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
    line = next(line for line in process.stdout.read().splitlines() if "serving on" in line)
    assert f"serving on {address}" in line and "device cpu" in line and "no auth" in line


def test_health_probe_reports_unreachable_server():
    """The health probe exits non-zero when nothing listens."""
    probe = subprocess.run(
        [sys.executable, "-m", "client", "health", f"127.0.0.1:{free_port()}", "--timeout", "0.5"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 1 and "UNREACHABLE" in probe.stdout


def test_sessions_come_back_after_kill_9_from_their_last_checkpoint(tmp_path):
    """After kill -9 and a restart, a session returns from its last periodic checkpoint, trained weights included."""
    address = f"127.0.0.1:{free_port()}"
    flags = ("--checkpoint-dir", str(tmp_path), "--checkpoint-interval", "0.3")
    process = start_server(address, *flags)
    try:
        with Client(address) as c:
            s = c.create_session(rb.Sequential(nn.Linear(5), snn.LIF()), input_shape=(3,), batch_size=2)
            x = np.ones((6, 2, 3), np.float32)
            s.train_step(x, np.array([1, 3]), lr=0.05)
            s.run(x)
            parameters, state = s.parameters(), s.get_state()
            optimizer = pb.SessionSnapshot.FromString(s.save()).optimizer
            time.sleep(1.5)  # several checkpoint periods
    finally:
        process.kill()
        process.wait(30)
    process = start_server(address, *flags)
    try:
        with Client(address) as c:
            back = c.get_session(s.id)
            assert back.timesteps_simulated == 6
            assert all(np.array_equal(back.parameters()[k], v) for k, v in parameters.items())
            assert all(np.array_equal(back.get_state()[k], v) for k, v in state.items())
            assert pb.SessionSnapshot.FromString(back.save()).optimizer == optimizer
    finally:
        process.kill()
        process.wait(30)


def test_logs_are_one_json_object_per_event(server_process):
    """Each log line is one JSON object with time, level, logger and message; session events name the session."""
    address, process = server_process
    with Client(address) as c:
        s = c.create_session(rb.Sequential(nn.Linear(4), snn.LIF()), input_shape=(3,), batch_size=1)
        s.close()
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    records = [json.loads(line) for line in process.stdout.read().splitlines()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    created = [r for r in records if r.get("event") == "session_created"]
    assert [r["session"] for r in created] == [s.id] and created[0]["tenant"] == "default"
