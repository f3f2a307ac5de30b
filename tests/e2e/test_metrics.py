"""Prometheus metrics: RPC latency and errors by method, timesteps, sessions per tenant, memory."""

import argparse
import re
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import rnnbuilder as rb
from client import Client, NotFoundError
from rnnbuilder import nn, snn
from server import ServerConfig
from tests.server_fixture import running_server


def value(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus' text format."""
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the text format sorts labels
    pattern = rf"^{re.escape(name)}{{{re.escape(selector)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name} {labels} not in the metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def served():
    with running_server(ServerConfig(device="cpu")) as (address, server), Client(address) as c:
        s = c.create_session(rb.Sequential(nn.Linear(6), snn.LIF()), input_shape=(3,), batch_size=2)
        s.run(np.ones((7, 2, 3), np.float32))
        list(s.stream([np.ones((2, 2, 3), np.float32)] * 3))
        with pytest.raises(NotFoundError):
            c.get_session("missing")
        deadline = time.monotonic() + 10  # the server records a call just after the client has its answer
        while "rnnsim_rpc_errors_total{" not in server.metrics.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield server, server.metrics.text()


def test_timesteps_are_counted(served):
    """Run and Simulate add the timesteps they simulated."""
    assert value(served[1], "rnnsim_timesteps_total") == 13


def test_rpc_latency_is_recorded_by_method(served):
    """Every RPC lands in its method's latency histogram, streams included."""
    text = served[1]
    assert value(text, "rnnsim_rpc_duration_seconds_count", method="Run") == 1
    assert value(text, "rnnsim_rpc_duration_seconds_count", method="Simulate") == 1
    assert value(text, "rnnsim_rpc_duration_seconds_count", method="CreateSession") == 1


def test_errors_are_counted_by_status_code(served):
    """A failed call is counted under its method and status code."""
    assert value(served[1], "rnnsim_rpc_errors_total", method="GetSession", code="NOT_FOUND") == 1


def test_sessions_and_memory_are_reported(served):
    """Open sessions per tenant and the memory they hold are read at scrape time."""
    text = served[1]
    assert value(text, "rnnsim_sessions", tenant="default") == 1
    # Linear(3 -> 6) weight and bias, LIF initial membrane, LIF state (2, 6): 24 + 6 + 6 + 12 floats.
    assert value(text, "rnnsim_device_memory_bytes") == (18 + 6 + 6 + 12) * 4


def test_metrics_endpoint_serves_prometheus_text(served):
    """start(metrics_port=0) exposes /metrics over HTTP."""
    server, _ = served
    port = server.metrics.serve(0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "rnnsim_rpc_duration_seconds_bucket" in body


def test_metrics_endpoint_can_listen_on_loopback_only(served):
    """--metrics-host 127.0.0.1 binds /metrics to loopback, so tenants on the network can't read it."""
    server, _ = served
    port = server.metrics.serve(0, "127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    local = {(row[1], row[3]) for row in listening}
    assert (f"0100007F:{port:04X}", "0A") in local  # 127.0.0.1:port in state LISTEN


def test_metrics_host_is_a_flag():
    """--metrics-host reaches the server's configuration."""
    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    config = ServerConfig.from_arguments(parser.parse_args(["--metrics-host", "127.0.0.1"]))
    assert config.metrics_host == "127.0.0.1"
