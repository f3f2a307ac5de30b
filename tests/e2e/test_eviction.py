"""Idle sessions leave device memory for their checkpoint and come back, exactly, on their next call;
sessions in a checkpoint folder are found on demand, also when another replica wrote them."""

import time

import grpc
import numpy as np
import pytest
import torch

from client import Client, NotFoundError
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from server import ServerConfig
from tests.helpers import recurrent_net, wait_until
from tests.server_fixture import running_server

LEASE = f"{b'default'.hex()}.lease"
"""The name of an open server's leases after the session id: ``<id>.<owner, hex>.lease``."""


def config(folder, server_id: str = "replica-a", **settings) -> ServerConfig:
    return ServerConfig(
        device="cpu", checkpoint_dir=str(folder), checkpoint_interval_s=3600, server_id=server_id, **settings
    )


def inputs() -> np.ndarray:
    return (np.random.default_rng(0).random((20, 2, 3)) * 2).astype(np.float32)


def test_idle_session_is_evicted_and_continues_exactly(tmp_path):
    """An idle session leaves memory; its next call loads it and the dynamics go on as if it never left."""
    x = inputs()
    with running_server(config(tmp_path, evict_idle_after_s=0.3)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=1)
        local = s.to_local()
        first = s.run(x[:8])
        wait_until(lambda: server.sessions.evictions["idle"] == 1)  # counted once the session is out
        assert not server.sessions.get(s.id).resident
        rest = s.run(x[8:])
        assert server.sessions.restores == 1
    with torch.no_grad():
        expected, _ = local(torch.from_numpy(x))
    assert np.array_equal(np.concatenate([first, rest]), expected.numpy())
    assert expected.sum() > 0


def test_evicted_session_still_lists_with_its_description(tmp_path):
    """An evicted session is listed and described as before, without being loaded."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,), batch_size=2)
        s.run(inputs()[:5])
        assert server.sessions.evict_idle(0) == 1
        [listed] = c.list_sessions()
        assert (listed.id, listed.timesteps_simulated, listed.output_shape) == (s.id, 5, (6,))
        assert server.sessions.restores == 0


def test_evicted_session_can_be_deleted(tmp_path):
    """Deleting an evicted session removes it and its checkpoint."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        server.sessions.evict_idle(0)
        s.close()
        with pytest.raises(NotFoundError):
            c.get_session(s.id)
    assert list(tmp_path.glob("*.snapshot")) == []


def test_evictions_and_restores_are_in_the_metrics(tmp_path):
    """Prometheus sees evictions by reason and restores."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        server.sessions.evict_idle(0)
        s.run(inputs()[:2, :1])
        text = server.metrics.text()
    assert 'rnnsim_evictions_total{reason="idle"} 1.0' in text
    assert "rnnsim_restores_total 1.0" in text


def test_unchanged_session_is_not_rewritten(tmp_path):
    """Checkpoints skip sessions unchanged since their last one (a new one is written as it is made)."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        assert server.sessions.checkpoint_all() == 0
        s.get_state()
        assert server.sessions.checkpoint_all() == 0
        s.run(inputs()[:2, :1])
        assert server.sessions.checkpoint_all() == 1


def test_a_replica_finds_a_session_another_replica_checkpointed(tmp_path):
    """Two servers sharing a folder: a session made on one and checkpointed on its shutdown continues on the other."""
    x = inputs()
    with running_server(config(tmp_path, "replica-b")) as (other, _), Client(other) as c:
        with running_server(config(tmp_path)) as (address, _), Client(address) as first:
            s = first.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=3)
            local = s.to_local()
            early = s.run(x[:8])
        late = c.get_session(s.id).run(x[8:])  # not there at start-up: found on demand
    with torch.no_grad():
        expected, _ = local(torch.from_numpy(x))
    assert np.array_equal(np.concatenate([early, late]), expected.numpy())


@pytest.fixture
def two_replicas(tmp_path):
    """Replicas a and b sharing ``tmp_path``: (a's server, a client of a, a client of b)."""
    with (
        running_server(config(tmp_path, "replica-b")) as (other, _),
        running_server(config(tmp_path)) as (address, server),
        Client(address) as here,
        Client(other) as there,
    ):
        yield server, here, there


def test_replicas_sharing_a_folder_list_each_others_sessions(two_replicas):
    """Each replica lists the sessions made, advanced (as of their checkpoint) and closed on the other."""
    server, here, there = two_replicas
    kept, closed = (here.create_session(recurrent_net(), input_shape=(3,)) for _ in range(2))
    assert [s.id for s in there.list_sessions()] == [kept.id, closed.id]
    kept.run(inputs()[:4, :1])
    closed.close()
    server.sessions.checkpoint_all()
    [listed] = there.list_sessions()
    assert (listed.id, listed.timesteps_simulated) == (kept.id, 4)


def test_listing_leaves_sessions_on_the_replica_that_holds_them(two_replicas, tmp_path):
    """A replica listing the folder never asks another to hand its sessions over."""
    server, here, there = two_replicas
    s = here.create_session(recurrent_net(), input_shape=(3,))
    there.list_sessions()
    server.sessions.tend_leases()
    assert server.sessions.get(s.id).resident
    assert not list(tmp_path.glob("*.wanted"))


def test_a_held_session_whose_lease_file_went_missing_takes_it_again(tmp_path):
    """The lease renewal restores the lease of a session this replica still holds."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        (tmp_path / f"{s.id}.{LEASE}").unlink()
        server.sessions.tend_leases()
        assert (tmp_path / f"{s.id}.{LEASE}").read_text() == "replica-a"


def test_a_new_session_is_checkpointed_as_it_is_made(tmp_path):
    """With a checkpoint folder, a session is on disk as soon as CreateSession answers: a crash loses nothing."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        assert [p.name.split(".")[0] for p in tmp_path.glob("*.snapshot")] == [s.id]


def test_a_new_session_may_have_a_chosen_id(client):
    """CreateSession's session_id names the new session."""
    stub = pb_grpc.SimulatorServiceStub(client._channel)
    session = stub.CreateSession(create_request("my-run_01")).session
    assert session.name == "sessions/my-run_01"
    assert client.get_session("my-run_01").id == "my-run_01"
    client.get_session("my-run_01").close()


def test_a_taken_session_id_is_already_exists(client):
    """A chosen id that another session has gets ALREADY_EXISTS; the first session is untouched."""
    stub = pb_grpc.SimulatorServiceStub(client._channel)
    stub.CreateSession(create_request("taken-id"))
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateSession(create_request("taken-id"))
    assert caught.value.code().name == "ALREADY_EXISTS" and "taken-id" in caught.value.details()
    assert client.get_session("taken-id").timesteps_simulated == 0
    client.get_session("taken-id").close()


@pytest.mark.parametrize("bad", ["has space", "../etc", "x" * 65, "a.b", "*"])
def test_a_malformed_session_id_is_invalid(client, bad):
    """A chosen id must be letters, digits, '-' or '_' (up to 64): others get INVALID_ARGUMENT."""
    stub = pb_grpc.SimulatorServiceStub(client._channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateSession(create_request(bad))
    assert caught.value.code().name == "INVALID_ARGUMENT" and "session id" in caught.value.details()


def create_request(session_id: str) -> pb.CreateSessionRequest:
    from rnnbuilder import spec
    from rnnbuilder_sim.wire import networks as network

    requested = pb.Session(
        network=network.to_message(spec.to_spec(recurrent_net())), input_shape=[3], batch_size=1, seed=0
    )
    return pb.CreateSessionRequest(session=requested, session_id=session_id)


def test_a_session_another_replica_holds_moves_over_with_its_latest_state(tmp_path):
    """A replica asked for a session another one holds answers UNAVAILABLE and asks for it; the
    holder writes its checkpoint and lets go within a second, the client's retry gets it, and
    back again: never from an older checkpoint, as a rolling restart needs."""
    x = inputs()
    with (
        running_server(config(tmp_path, "replica-a")) as (address_a, _),
        running_server(config(tmp_path, "replica-b")) as (address_b, _),
        Client(address_a) as a,
        Client(address_b) as b,
    ):
        s = a.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=3)
        local = s.to_local()
        outputs = [s.run(x[:5])]
        with grpc.insecure_channel(address_b) as plain, pytest.raises(grpc.RpcError) as caught:  # no retries
            pb_grpc.SimulatorServiceStub(plain).GetSession(pb.GetSessionRequest(name=s.name))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "replica-a" in caught.value.details()
        outputs.append(b.get_session(s.id).run(x[5:12]))  # retried until replica-a let go
        outputs.append(a.get_session(s.id).run(x[12:]))  # and back to replica-a
        assert (tmp_path / f"{s.id}.{LEASE}").read_text() == "replica-a"
    with torch.no_grad():
        expected, _ = local(torch.from_numpy(x))
    assert np.array_equal(np.concatenate(outputs), expected.numpy())


def test_a_lease_another_replica_took_makes_the_holder_drop_its_copy(tmp_path):
    """If a replica's lease was taken over (it stalled past the expiry), it drops its copy unwritten."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        s.run(inputs()[:3, :1])
        server.sessions.store.take_lease(s.id, "default", "replica-b")
        assert server.sessions.tend_leases() == 1
        assert not server.sessions.get(s.id).resident
        assert server.sessions.checkpoint_all() == 0


def test_renewing_leases_never_waits_for_a_busy_session_another_replica_took(tmp_path):
    """A taken-over session that a call still holds is dropped at a later renewal; this one doesn't wait."""
    with running_server(config(tmp_path)) as (address, server), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,))
        held = server.sessions.get(s.id)
        with held.lock:  # as a long call would
            server.sessions.store.take_lease(s.id, "default", "replica-b")
            started = time.monotonic()
            assert server.sessions.tend_leases() == 0
            assert time.monotonic() - started < 1.0
            assert held.resident
        server.sessions.tend_leases()  # or the server's own lease task got there first
        assert not held.resident
