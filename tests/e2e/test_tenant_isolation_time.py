"""One tenant can't make another wait: a heavy call never holds the event loop, long training and
evaluation take their turns in the fair scheduler, and work for a caller that has gone stops."""

import threading
import time

import grpc
import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import Client
from client.__main__ import health
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import tensors
from server import ServerConfig
from server.config import Limits
from tests.helpers import wait_until
from tests.server_fixture import running_server

TOKENS = {"attacker": "attacker-secret-token", "victim": "victim-secret-token"}
ATTACKER, VICTIM = ((("authorization", f"Bearer {token}"),) for token in TOKENS.values())

WIDE = rb.Sequential(*[m for _ in range(6) for m in (nn.Linear(384), nn.ReLU())], nn.Linear(1))
"""Six hidden layers of width 384 between a one-element input and output: 32,000 timesteps take
about 2 s on two CPU cores."""


def chain(layers: int) -> rb.Network:
    """``layers`` of Linear(1) and LIF in a placeholder cycle: a few elements per timestep, but every
    timestep is its own pass through every layer (1,700 timesteps of 10 layers take about 2 s)."""
    n = rb.Network()
    n.output = rb.Placeholder()
    n.output = n.input.stack(n.output).apply(*[m for _ in range(layers) for m in (nn.Linear(1), snn.LIF())])
    return n


LIGHT = rb.Sequential(nn.Linear(4), snn.LIF())
CLASSIFIER = rb.Sequential(nn.Linear(16), snn.LIF(), nn.Linear(3))


@pytest.fixture
def two_tenants(tmp_path):
    """A server with two scheduler slots and room for five sessions; yields (address, server)."""
    path = tmp_path / "auth.toml"
    path.write_text("".join(f'[tenants.{name}]\ntoken = "{token}"\n' for name, token in TOKENS.items()))
    config = ServerConfig(device="cpu", workers=2, auth_file=str(path), limits=Limits(max_sessions=5))
    with running_server(config) as running:
        yield running


def assert_intact(session) -> None:
    """From a reset state, the session answers exactly as its network and parameters do locally."""
    x = np.random.default_rng(0).random((6, 1, *session.input_shape), dtype=np.float32)
    session.reset()
    with torch.no_grad():
        local, _ = session.to_local()(torch.from_numpy(x))
    np.testing.assert_array_equal(session.run(x), local.numpy())


def dataset(samples: int, seed: int = 0) -> tuple[pb.Tensor, pb.Tensor]:
    """``samples`` sequences of 5 timesteps of 4 inputs, with labels of 3 classes, as messages."""
    rng = np.random.default_rng(seed)
    x = rng.random((samples, 5, 4), dtype=np.float32)
    return tensors.encode(x), tensors.encode(rng.integers(0, 3, samples).astype(np.int64))


def evaluate_request(session, samples: int, batch_size: int) -> pb.EvaluateRequest:
    inputs, targets = dataset(samples)
    return pb.EvaluateRequest(name=session.name, inputs=inputs, targets=targets, batch_size=batch_size)


def train_request(session, samples: int, epochs: int, batch_size: int) -> pb.TrainRequest:
    inputs, targets = dataset(samples)
    config = pb.TrainingConfig(loss="ce_count", optimizer=pb.OptimizerConfig(name="adam", learning_rate=1e-3))
    return pb.TrainRequest(
        name=session.name, inputs=inputs, targets=targets, config=config, epochs=epochs, batch_size=batch_size
    )


@pytest.mark.parametrize("network, timesteps", [(WIDE, 32000), (chain(10), 1700)], ids=["wide", "chain"])
def test_a_heavy_run_leaves_health_and_other_tenants_answering(two_tenants, network, timesteps):
    """A long Run with one-element input and output doesn't stall health checks or another tenant's steps."""
    address, server = two_tenants
    with Client(address, token=TOKENS["attacker"]) as attacker, Client(address, token=TOKENS["victim"]) as victim:
        heavy = attacker.create_session(network, input_shape=(1,))
        heavy.step(np.ones((1, 1), np.float32))  # the attacker's session has run before
        light = victim.create_session(LIGHT, input_shape=(3,))
        running = threading.Thread(target=heavy.run, args=(np.ones((timesteps, 1, 1), np.float32),))
        running.start()
        wait_until(lambda: server.scheduler.running().get("attacker", 0) == 1)
        started = time.perf_counter()
        status = health(address, "", 10.0)
        health_s = time.perf_counter() - started
        started = time.perf_counter()
        light.step(np.ones((1, 3), np.float32))
        step_s = time.perf_counter() - started
        in_flight = running.is_alive()
        running.join(120)
        assert status == "SERVING" and health_s < 0.5 and step_s < 0.5, (status, health_s, step_s)
        assert in_flight, "the heavy run ended too soon to tell; make it longer"
        assert_intact(light)


def test_long_train_streams_leave_another_tenants_evaluate_and_train_on_time(two_tenants):
    """While a tenant holds more long Train streams than the server has sessions, another tenant's
    Evaluate and Train finish within their deadlines."""
    address, server = two_tenants
    with Client(address, token=TOKENS["attacker"]) as attacker, Client(address, token=TOKENS["victim"]) as victim:
        mine = [attacker.create_session(CLASSIFIER, input_shape=(4,)) for _ in range(4)]
        theirs = victim.create_session(CLASSIFIER, input_shape=(4,))
        stub = pb_grpc.SimulatorServiceStub(attacker._channel)
        streams = [stub.Train(train_request(s, 64, 10_000, 8), metadata=ATTACKER) for s in mine * 2]
        try:
            wait_until(lambda: server.scheduler.device_seconds().get("attacker", 0) > 0.5)
            victims = pb_grpc.SimulatorServiceStub(victim._channel)
            victims.Evaluate(evaluate_request(theirs, 64, 8), timeout=5.0, metadata=VICTIM)
            trained = list(victims.Train(train_request(theirs, 64, 1, 8), timeout=5.0, metadata=VICTIM))
            assert len(trained) == 9  # 8 batches and the epoch
        finally:
            for stream in streams:
                stream.cancel()
        assert health(address, "", 3.0) == "SERVING"
        assert_intact(theirs)


def test_evaluations_past_their_deadline_stop_working(two_tenants):
    """Evaluate calls whose deadline has passed stop at their next batch: no more slot time goes to them."""
    address, server = two_tenants
    with Client(address, token=TOKENS["attacker"]) as attacker, Client(address, token=TOKENS["victim"]) as victim:
        mine = attacker.create_session(CLASSIFIER, input_shape=(4,))
        theirs = victim.create_session(CLASSIFIER, input_shape=(4,))
        stub = pb_grpc.SimulatorServiceStub(attacker._channel)
        calls = [
            stub.Evaluate.future(evaluate_request(mine, 4096, 1), timeout=0.5, metadata=ATTACKER) for _ in range(8)
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call.result()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.5)  # a batch that had started when the deadline passed ends
        spent = server.scheduler.device_seconds()["attacker"]
        time.sleep(1.0)
        assert server.scheduler.device_seconds()["attacker"] == pytest.approx(spent, abs=0.05)
        assert server.scheduler.queued() == {}
        started = time.perf_counter()
        pb_grpc.SimulatorServiceStub(victim._channel).Evaluate(
            evaluate_request(theirs, 64, 8), timeout=5.0, metadata=VICTIM
        )
        assert time.perf_counter() - started < 1.0
        assert health(address, "", 3.0) == "SERVING"
        assert_intact(theirs)
