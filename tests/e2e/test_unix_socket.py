"""Clients on the server's own host can reach it over a Unix domain socket (``unix:/path``)."""

from __future__ import annotations

import signal

import numpy as np
import torch

from client import Client
from client.__main__ import health
from server import ServerConfig
from tests.e2e.test_server_process import start_server
from tests.helpers import recurrent_net
from tests.server_fixture import running_server


def test_a_session_over_a_unix_socket_equals_its_local_model(tmp_path):
    """A server listening on unix:/path serves the client, and the session runs as its local model."""
    address = f"unix:{tmp_path / 'sim.sock'}"
    x = np.random.default_rng(0).random((8, 2, 3), dtype=np.float32) * 2
    with running_server(ServerConfig(device="cpu"), address) as (reached, _), Client(reached) as c:
        assert reached == address
        session = c.create_session(recurrent_net(), input_shape=(3,), batch_size=2)
        out = session.run(x)
        with torch.no_grad():
            want, _ = session.to_local()(torch.from_numpy(x))
        assert np.array_equal(out, want.numpy())


def test_the_server_process_listens_on_a_unix_socket(tmp_path):
    """python -m server --address unix:/path is healthy there and logs that address."""
    address = f"unix:{tmp_path / 'sim.sock'}"
    process = start_server(address)
    try:
        assert health(address, "", 5.0) == "SERVING"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    assert f"serving on {address} " in process.stdout.read()
