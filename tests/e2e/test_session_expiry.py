"""Sessions no call names for their time-to-live are deleted with their checkpoint, and their ids
answer NOT_FOUND with reason SESSION_EXPIRED; any call keeps a session alive, across restarts."""

import time

import numpy as np
import pytest

import rnnbuilder as rb
from client import Client, NotFoundError
from rnnbuilder import nn, snn
from server import ServerConfig
from tests.helpers import wait_until
from tests.server_fixture import running_server

NET = rb.Sequential(nn.Linear(4), snn.LIF())
AUTH = """
[tenants.alice]
token = "alice-secret-token"
max_sessions = 2
session_ttl_s = 1

[tenants.bob]
token = "bob-secret-token"
"""


def config(folder, **settings) -> ServerConfig:
    return ServerConfig(device="cpu", checkpoint_dir=str(folder / "checkpoints"), server_id="replica-a", **settings)


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "auth.toml"
    path.write_text(AUTH)
    return str(path)


def test_abandoned_sessions_expire_with_their_files_and_free_the_quota(tmp_path, auth_file):
    """A tenant fills its quota and leaves: after its TTL the sessions and files are gone, the ids
    answer SESSION_EXPIRED, and the quota is free again."""
    with (
        running_server(config(tmp_path, auth_file=auth_file)) as (address, server),
        Client(address, token="alice-secret-token") as alice,
    ):
        left = [alice.create_session(NET, input_shape=(3,)) for _ in range(2)]
        wait_until(lambda: server.sessions.expiries["alice"] == 2, 10)
        assert alice.list_sessions() == []
        assert list((tmp_path / "checkpoints").glob("*.snapshot")) == []
        for session in left:
            with pytest.raises(NotFoundError) as caught:
                alice.get_session(session.id)
            assert caught.value.reason == "SESSION_EXPIRED" and "expired" in caught.value.message
        again = [alice.create_session(NET, input_shape=(3,)) for _ in range(2)]
        assert len(again) == 2


def test_expiries_are_counted_by_tenant(tmp_path, auth_file):
    """Prometheus counts expiries by tenant."""
    with (
        running_server(config(tmp_path, auth_file=auth_file)) as (address, server),
        Client(address, token="alice-secret-token") as alice,
    ):
        alice.create_session(NET, input_shape=(3,))
        wait_until(lambda: server.sessions.expiries["alice"] == 1, 10)
        assert 'rnnsim_session_expiries_total{tenant="alice"} 1.0' in server.metrics.text()


def test_a_tenant_without_a_ttl_keeps_its_sessions(tmp_path, auth_file):
    """Without --session-ttl, only tenants with their own session_ttl_s have sessions expire."""
    with (
        running_server(config(tmp_path, auth_file=auth_file)) as (address, server),
        Client(address, token="alice-secret-token") as alice,
        Client(address, token="bob-secret-token") as bob,
    ):
        kept = bob.create_session(NET, input_shape=(3,))
        alice.create_session(NET, input_shape=(3,))
        wait_until(lambda: server.sessions.expiries["alice"] == 1, 10)
        assert [s.id for s in bob.list_sessions()] == [kept.id]


def test_sessions_in_memory_only_expire_too(tmp_path):
    """Without a checkpoint folder, --session-ttl deletes unused sessions from memory alike."""
    with running_server(ServerConfig(device="cpu", session_ttl_s=0.5)) as (address, server), Client(address) as c:
        s = c.create_session(NET, input_shape=(3,))
        wait_until(lambda: server.sessions.expiries["default"] == 1, 10)
        with pytest.raises(NotFoundError) as caught:
            s.run(np.ones((1, 1, 3), np.float32))
        assert caught.value.reason == "SESSION_EXPIRED"


def test_a_session_used_within_its_ttl_survives_through_a_restart(tmp_path):
    """A session named by a call more often than its TTL stays, before and after a restart."""
    ttl = 3.0
    with running_server(config(tmp_path, session_ttl_s=ttl)) as (address, server), Client(address) as c:
        s = c.create_session(NET, input_shape=(3,))
        for _ in range(5):  # 2 TTLs of calls that change nothing the checkpoint holds
            time.sleep(ttl / 2.5)
            s.get_state()
    with running_server(config(tmp_path, session_ttl_s=ttl)) as (address, server), Client(address) as c:
        for _ in range(3):
            assert c.get_session(s.id).run(np.ones((1, 1, 3), np.float32)).shape == (1, 1, 4)
            time.sleep(ttl / 2.5)
        assert server.sessions.expiries["default"] == 0
    assert len(list((tmp_path / "checkpoints").glob("*.snapshot"))) == 1
