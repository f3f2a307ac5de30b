"""Session ids are per tenant: the same id in two tenants names two sessions, and naming another
tenant's id, on any replica, tells nothing and moves nothing. Things in the checkpoint folder that
aren't checkpoints neither stop nor stall the server."""

import os

import grpc
import numpy as np
import pytest
import torch

from client import Client, NotFoundError
from client.__main__ import health
from rnnbuilder import spec
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import networks
from server import ServerConfig
from tests.helpers import recurrent_net
from tests.server_fixture import running_server

ALICE, BOB = "alice-secret-token", "bob-secret-token"
AUTH = f"""
[tenants.alice]
token = "{ALICE}"

[tenants.bob]
token = "{BOB}"
"""
X = (np.random.default_rng(0).random((20, 2, 3)) * 2).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """A checkpoint folder, next to the tenants' auth file."""
    (tmp_path / "auth.toml").write_text(AUTH)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


def config(folder, server_id: str = "replica-a") -> ServerConfig:
    auth = str(folder.parent / "auth.toml")
    return ServerConfig(
        device="cpu", auth_file=auth, checkpoint_dir=str(folder), checkpoint_interval_s=3600, server_id=server_id
    )


def create(address: str, token: str, session_id: str, seed: int) -> pb.CreateSessionResponse:
    """CreateSession under a chosen id, as a raw stub sends it."""
    requested = pb.Session(
        network=networks.to_message(spec.to_spec(recurrent_net())), input_shape=[3], batch_size=2, seed=seed
    )
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.SimulatorServiceStub(channel).CreateSession(
            pb.CreateSessionRequest(session=requested, session_id=session_id),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )


def expected(local, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return local(torch.from_numpy(x))[0].numpy()


@pytest.fixture
def two_replicas(folder):
    """Replicas a and b sharing the folder: (a's server, a's address, b's address)."""
    with running_server(config(folder, "replica-b")) as (b, _), running_server(config(folder)) as (a, server):
        yield server, a, b


def test_another_tenants_id_on_another_replica_is_not_found_and_stays_put(two_replicas, folder):
    """Bob naming Alice's session on the replica that doesn't hold it gets NOT_FOUND, and it isn't handed over."""
    server, a, b = two_replicas
    with Client(a, token=ALICE) as alice, Client(b, token=BOB) as bob:
        s = alice.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=1)
        local = s.to_local()
        early = s.run(X[:8])
        with pytest.raises(NotFoundError):
            bob.get_session(s.id)
        server.sessions.tend_leases()
        assert server.sessions.get(s.id, "alice").resident
        assert not list(folder.glob("*.wanted"))
        late = s.run(X[8:])
        assert health(a, "", 3.0) == health(b, "", 3.0) == "SERVING"
    assert np.array_equal(np.concatenate([early, late]), expected(local, X))


def test_the_same_id_in_two_tenants_names_two_sessions(folder):
    """Bob can create an id Alice uses; each session runs, is evicted, loads back and closes on its own."""
    with running_server(config(folder)) as (address, server), Client(address, token=ALICE) as alice:
        create(address, ALICE, "shared", seed=1)
        create(address, BOB, "shared", seed=2)  # ALREADY_EXISTS would tell Bob that Alice uses it
        with Client(address, token=BOB) as bob:
            theirs = bob.get_session("shared")
            s = alice.get_session("shared")
            local, bobs = s.to_local(), theirs.to_local()
            early = s.run(X[:8])
            assert np.array_equal(theirs.run(X[:8]), expected(bobs, X[:8]))
            assert server.sessions.evict_idle(0) == 2
            assert np.array_equal(theirs.run(X[8:]), expected(bobs, X)[8:])
            theirs.close()
            assert [x.id for x in bob.list_sessions()] == []
        late = s.run(X[8:])
        assert [x.id for x in alice.list_sessions()] == ["shared"]
        assert health(address, "", 3.0) == "SERVING"
    assert np.array_equal(np.concatenate([early, late]), expected(local, X))
    assert not np.array_equal(expected(local, X), expected(bobs, X))


def test_importing_under_an_id_another_tenant_uses_succeeds(folder):
    """ImportSession under Alice's id makes Bob's own session and leaves Alice's as it was."""
    with running_server(config(folder)) as (address, _):
        create(address, ALICE, "shared", seed=1)
        with Client(address, token=ALICE) as alice, Client(address, token=BOB) as bob:
            s = alice.get_session("shared")
            local = s.to_local()
            early = s.run(X[:8])
            mine = bob.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=2)
            mine.run(X[:5])
            snapshot = pb.SessionSnapshot.FromString(mine.save())
            with grpc.insecure_channel(address) as channel:
                pb_grpc.SimulatorServiceStub(channel).ImportSession(
                    pb.ImportSessionRequest(snapshot=snapshot, session_id="shared"),
                    metadata=(("authorization", f"Bearer {BOB}"),),
                    timeout=30,
                )
            assert bob.get_session("shared").timesteps_simulated == 5
            assert np.array_equal(s.run(X[8:]), expected(local, X)[8:])
            assert s.refresh().timesteps_simulated == 20 and early.shape == (8, 2, 6)


def test_the_same_id_on_another_replica_moves_nothing(two_replicas, folder):
    """Bob creating Alice's id on the other replica neither fails nor takes Alice's session from its replica."""
    server, a, b = two_replicas
    create(a, ALICE, "shared", seed=1)
    with Client(a, token=ALICE) as alice:
        s = alice.get_session("shared")
        local = s.to_local()
        early = s.run(X[:8])
        create(b, BOB, "shared", seed=2)
        server.sessions.tend_leases()
        assert server.sessions.get("shared", "alice").resident
        assert not list(folder.glob("*.wanted"))
        late = s.run(X[8:])
    assert np.array_equal(np.concatenate([early, late]), expected(local, X))


def test_sessions_of_the_same_id_in_two_tenants_survive_a_restart(folder):
    """After a restart on the same folder, each tenant's session of the shared id continues exactly."""
    with running_server(config(folder)) as (address, _):
        create(address, ALICE, "shared", seed=1)
        create(address, BOB, "shared", seed=2)
        with Client(address, token=ALICE) as alice, Client(address, token=BOB) as bob:
            mine, theirs = alice.get_session("shared"), bob.get_session("shared")
            local, bobs = mine.to_local(), theirs.to_local()
            early = mine.run(X[:8]), theirs.run(X[:4])
    with (
        running_server(config(folder)) as (address, _),
        Client(address, token=ALICE) as alice,
        Client(address, token=BOB) as bob,
    ):
        late = alice.get_session("shared").run(X[8:]), bob.get_session("shared").run(X[4:])
    assert np.array_equal(np.concatenate([early[0], late[0]]), expected(local, X))
    assert np.array_equal(np.concatenate([early[1], late[1]]), expected(bobs, X))


def _named_like_a_checkpoint(folder, session_id: str) -> str:
    return str(folder / f"{session_id}.{b'alice'.hex()}.snapshot")


def test_a_symbolic_link_loop_in_the_folder_is_skipped(folder):
    """A link loop named like a checkpoint neither stops start-up nor ListSessions; real checkpoints still load."""
    with running_server(config(folder)) as (address, _):
        create(address, ALICE, "kept", seed=1)
        with Client(address, token=ALICE) as alice:
            local = alice.get_session("kept").to_local()
    os.symlink(_named_like_a_checkpoint(folder, "loop"), _named_like_a_checkpoint(folder, "loop"))
    with running_server(config(folder)) as (address, _), Client(address, token=ALICE) as alice:
        assert [s.id for s in alice.list_sessions()] == ["kept"]
        with pytest.raises(NotFoundError):
            alice.get_session("loop")
        assert np.array_equal(alice.get_session("kept").run(X), expected(local, X))
        assert health(address, "", 3.0) == "SERVING"


def test_a_fifo_in_the_folder_is_skipped(folder):
    """A FIFO named like a checkpoint is skipped at start-up and when named: nothing waits for a writer."""
    os.mkfifo(_named_like_a_checkpoint(folder, "fifo"))
    os.mkfifo(folder / f"fifo.{b'alice'.hex()}.lease")
    with running_server(config(folder)) as (address, _), Client(address, token=ALICE) as alice:
        assert alice.list_sessions() == []
        with pytest.raises(NotFoundError):
            alice.get_session("fifo")
        s = alice.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=1)
        assert np.array_equal(s.run(X), expected(s.to_local(), X))
        assert health(address, "", 3.0) == "SERVING"
