"""One tenant's session that can't be described or checkpointed never costs another tenant its
state: a real server with two tenants and a checkpoint folder, restarted between the calls."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import rnnbuilder as rb
from client import Client, InvalidArgumentError
from client.__main__ import health
from rnnbuilder import spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import networks
from server import ServerConfig
from tests.helpers import local_outputs, recurrent_net
from tests.server_fixture import running_server

AUTH = """
[tenants.alice]
token = "alice-secret-token"

[tenants.mallory]
token = "mallory-secret-token"
"""


def too_deep_to_describe() -> dict:
    """A LIF inside 95 Sequentials, its arguments left to their defaults: the request parses, but the
    server's own description, with the surrogate filled in, passes protobuf's nesting limit."""
    root: dict = {"type": "snn.LIF"}
    for _ in range(95):
        root = {"type": "Sequential", "factories": [root]}
    return {"format": spec.FORMAT, "root": root}


@pytest.fixture
def config(tmp_path) -> ServerConfig:
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH)
    return ServerConfig(device="cpu", auth_file=str(auth), checkpoint_dir=str(tmp_path / "checkpoints"))


def test_a_network_too_deep_to_describe_is_refused_and_another_tenant_keeps_its_state(config):
    """The deep network is INVALID_ARGUMENT and leaves nothing; the other tenant's stepped session
    comes back after a restart with its last state, equal to its local model."""
    x = np.random.default_rng(0).random((20, 2, 3), dtype=np.float32) * 2
    alice_token, mallory_token = "alice-secret-token", "mallory-secret-token"
    with running_server(config) as (address, _), Client(address, token=alice_token) as alice:
        session = alice.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=3)
        out = session.run(x)
        with Client(address, token=mallory_token) as mallory:
            with pytest.raises(InvalidArgumentError, match="nested too deeply"):
                mallory.create_session(too_deep_to_describe(), input_shape=(3,))
            assert mallory.list_sessions() == []
        assert health(address, "", 10.0) == "SERVING"
        local = session.to_local()
        session_id = session.id
    with running_server(config) as (address, _), Client(address, token="alice-secret-token") as alice:
        again = alice.get_session(session_id)
        assert again.timesteps_simulated == 20
        more = np.random.default_rng(1).random((5, 2, 3), dtype=np.float32) * 2
        first, want = local_outputs(local, [x, more])
        assert np.array_equal(out, first)
        assert np.array_equal(again.run(more), want)


def test_a_raw_request_too_deep_to_describe_is_invalid_argument(config):
    """Through a raw stub too (no client-side checks): INVALID_ARGUMENT naming the nesting, not INTERNAL."""
    request = pb.CreateSessionRequest(
        session=pb.Session(network=networks.to_message(too_deep_to_describe()), input_shape=[3], batch_size=1)
    )
    with running_server(config) as (address, _), grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SimulatorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateSession(request, metadata=[("authorization", "Bearer mallory-secret-token")], timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = stub.ListSessions(
            pb.ListSessionsRequest(), metadata=[("authorization", "Bearer mallory-secret-token")], timeout=30
        )
        assert list(listed.sessions) == []


def test_a_network_just_shallow_enough_is_accepted(config):
    """A network nested as deeply as its description still fits is made, listed and checkpointed."""
    factory = rb.nn.Linear(2)
    for _ in range(80):
        factory = rb.Sequential(factory)
    with running_server(config) as (address, _), Client(address, token="alice-secret-token") as alice:
        session = alice.create_session(factory, input_shape=(3,))
        assert [s.id for s in alice.list_sessions()] == [session.id]
        assert alice.restore(session.save()).output_shape == (2,)


def test_a_network_over_the_node_limit_is_refused_before_it_is_read(config):
    """A network of 20,000 chained nodes is RESOURCE_EXHAUSTED at once (the limit is 10,000), naming the limit."""
    n = rb.Network()
    x = n.input
    for _ in range(20_000):
        x = x.apply(rb.nn.Identity())
    n.output = x
    request = pb.CreateSessionRequest(
        session=pb.Session(network=networks.factory_to_message(n), input_shape=[3], batch_size=1)
    )
    with running_server(config) as (address, _), grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SimulatorServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateSession(request, metadata=[("authorization", "Bearer mallory-secret-token")], timeout=60)
        assert time.monotonic() - started < 1.0
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_network_nodes" in caught.value.details()
        assert health(address, "", 10.0) == "SERVING"
