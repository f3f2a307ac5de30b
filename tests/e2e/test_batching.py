"""Cross-session batching: sessions of one network whose timesteps are ready together run as one
computation, and each still gets what its own model computes."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import Client
from client.errors import InvalidArgumentError
from rnnbuilder import nn, snn
from server import ServerConfig
from tests.server_fixture import running_server

NET = rb.Sequential(nn.Linear(8), snn.LIF())
IN, BATCH, TIMESTEPS, SESSIONS = (5,), 2, 24, 4
WINDOW_US = 5000  # long enough that concurrent streams' timesteps meet in the tests


def _inputs(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((TIMESTEPS, BATCH, *IN), dtype=np.float32) * 1.5


def _local(session, x: np.ndarray) -> np.ndarray:
    """What the session's own model computes, here, from its parameters."""
    model = NET.make_model(IN)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in session.parameters().items()})
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].numpy()


def _streamed(sessions, inputs, **stream_options) -> list[np.ndarray]:
    """Each session streamed its input one timestep at a time, all at once from threads of their own."""
    outputs: list = [None] * len(sessions)

    def stream(i):
        outputs[i] = np.concatenate(list(sessions[i].stream((x[None] for x in inputs[i]), **stream_options)))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outputs


@pytest.fixture
def batching_server():
    config = ServerConfig(device="cpu", workers=4, batching=True, batch_window_us=WINDOW_US)
    with running_server(config) as (address, server):
        clients = [Client(address) for _ in range(SESSIONS)]
        try:
            yield clients, server
        finally:
            for c in clients:
                c.close()


def _batched(server) -> float:
    return server.metrics.batched_timesteps._value.get()


def test_streams_of_one_network_run_batched_and_each_gets_its_own_result(batching_server):
    """Concurrent single-timestep streams batch, and every session's outputs equal its own model's."""
    clients, server = batching_server
    sessions = [c.create_session(NET, input_shape=IN, batch_size=BATCH, seed=i) for i, c in enumerate(clients)]
    inputs = [_inputs(i) for i in range(SESSIONS)]
    outputs = _streamed(sessions, inputs)
    assert _batched(server) > 0
    for session, x, out in zip(sessions, inputs, outputs, strict=True):
        np.testing.assert_array_equal(out, _local(session, x))


def test_sessions_of_other_networks_are_not_batched_together(batching_server):
    """Sessions whose networks differ (here in width) never share a computation."""
    clients, server = batching_server
    nets = [rb.Sequential(nn.Linear(8 + i), snn.LIF()) for i in range(SESSIONS)]
    sessions = [c.create_session(net, input_shape=IN, batch_size=BATCH) for c, net in zip(clients, nets)]
    _streamed(sessions, [_inputs(i) for i in range(SESSIONS)])
    assert _batched(server) == 0


def test_changed_parameters_count_from_the_next_batched_timestep(batching_server):
    """Parameters loaded into one session between two batched streams are the ones its next timesteps use."""
    clients, server = batching_server
    sessions = [c.create_session(NET, input_shape=IN, batch_size=BATCH, seed=i) for i, c in enumerate(clients)]
    inputs = [_inputs(i) for i in range(SESSIONS)]
    _streamed(sessions, inputs)
    changed = {name: value * 2 for name, value in sessions[0].parameters().items()}
    sessions[0].load_parameters(changed)
    for s in sessions:
        s.reset()
    before = _batched(server)
    outputs = _streamed(sessions, inputs)
    assert _batched(server) > before
    np.testing.assert_array_equal(outputs[0], _local(sessions[0], inputs[0]))


def test_bad_input_in_a_batch_fails_only_its_own_call(batching_server):
    """A NaN timestep gets INVALID_ARGUMENT; the other sessions' streams go on and stay exact."""
    clients, server = batching_server
    sessions = [c.create_session(NET, input_shape=IN, batch_size=BATCH, seed=i) for i, c in enumerate(clients)]
    inputs = [_inputs(i) for i in range(SESSIONS)]
    bad = inputs[0].copy()
    bad[3, 0, 0] = np.nan
    errors = []

    def stream_bad():
        try:
            list(sessions[0].stream(x[None] for x in bad))
        except InvalidArgumentError as error:
            errors.append(error)

    thread = threading.Thread(target=stream_bad)
    thread.start()
    outputs = _streamed(sessions[1:], inputs[1:])
    thread.join()
    assert len(errors) == 1 and "NaN" in str(errors[0])
    for session, x, out in zip(sessions[1:], inputs[1:], outputs, strict=True):
        np.testing.assert_array_equal(out, _local(session, x))
    assert sessions[0].refresh().timesteps_simulated == 3  # the timesteps before the bad one count


def test_batching_off_runs_every_call_alone():
    """With --batching off nothing batches, and the server says so."""
    with running_server(ServerConfig(device="cpu", batching=False, batch_window_us=WINDOW_US)) as (address, server):
        clients = [Client(address) for _ in range(SESSIONS)]
        sessions = [c.create_session(NET, input_shape=IN, batch_size=BATCH) for c in clients]
        _streamed(sessions, [_inputs(i) for i in range(SESSIONS)])
        assert _batched(server) == 0
        assert clients[0].info().batching is False
        for c in clients:
            c.close()


def test_batching_is_off_by_default_on_a_cpu_server_and_announced():
    """By default a CPU server runs every call alone (batching measured no faster there), and says so."""
    with running_server(ServerConfig(device="cpu")) as (address, server), Client(address) as c:
        assert c.info().batching is False and server.batcher is None


def test_batching_on_is_announced():
    """GetServerInfo tells clients when calls may be batched."""
    with running_server(ServerConfig(device="cpu", batching=True)) as (address, _), Client(address) as c:
        assert c.info().batching is True


def test_exact_sessions_are_never_batched(batching_server):
    """Sessions created with exact=True run alone, bit for bit their own model, however they meet."""
    clients, server = batching_server
    sessions = [
        c.create_session(NET, input_shape=IN, batch_size=BATCH, seed=i, exact=True) for i, c in enumerate(clients)
    ]
    inputs = [_inputs(i) for i in range(SESSIONS)]
    outputs = _streamed(sessions, inputs)
    assert _batched(server) == 0
    for session, x, out in zip(sessions, inputs, outputs, strict=True):
        np.testing.assert_array_equal(out, _local(session, x))


def test_unary_steps_of_a_cohort_batch_too(batching_server):
    """Concurrent Session.step calls batch like stream chunks, each with its own result."""
    clients, server = batching_server
    sessions = [c.create_session(NET, input_shape=IN, batch_size=BATCH, seed=i) for i, c in enumerate(clients)]
    inputs = [_inputs(i) for i in range(SESSIONS)]
    outputs: list = [None] * SESSIONS

    def steps(i):
        outputs[i] = np.stack([sessions[i].step(x) for x in inputs[i]])

    threads = [threading.Thread(target=steps, args=(i,)) for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _batched(server) > 0
    for session, x, out in zip(sessions, inputs, outputs, strict=True):
        np.testing.assert_array_equal(out, _local(session, x))


def test_stacks_let_go_of_deleted_sessions(batching_server):
    """Once its sessions are deleted, a cohort's stacked parameters are released."""
    clients, server = batching_server
    sessions = [c.create_session(NET, input_shape=IN, batch_size=BATCH, seed=i) for i, c in enumerate(clients)]
    _streamed(sessions, [_inputs(i) for i in range(SESSIONS)])
    assert _batched(server) > 0 and server.batcher.stacked_sessions() == SESSIONS
    for s in sessions:
        s.close()
    server.batcher.release_departed()
    assert server.batcher.stacked_sessions() == 0


@pytest.mark.parametrize(("flag", "value"), [("auto", None), ("on", True), ("off", False)])
def test_batching_flag_reaches_the_configuration(flag, value):
    """--batching auto|on|off and --batch-window-us reach the server's configuration."""
    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    config = ServerConfig.from_arguments(parser.parse_args(["--batching", flag, "--batch-window-us", "250"]))
    assert config.batching is value and config.batch_window_us == 250
