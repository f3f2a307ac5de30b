"""Checkpoints: sessions survive a graceful restart exactly; unreadable checkpoints are skipped."""

import numpy as np
import torch

from client import Client
from server import ServerConfig
from tests.helpers import recurrent_net
from tests.server_fixture import running_server


def config(folder) -> ServerConfig:
    return ServerConfig(device="cpu", checkpoint_dir=str(folder), checkpoint_interval_s=3600)


def test_session_continues_exactly_after_a_graceful_restart(tmp_path):
    """A session checkpointed on shutdown continues after a restart as if never interrupted."""
    x = (np.random.default_rng(0).random((20, 2, 3)) * 2).astype(np.float32)
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        s = c.create_session(recurrent_net(), input_shape=(3,), batch_size=2, seed=1)
        local = s.to_local()
        first = s.run(x[:8])
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        rest = c.get_session(s.id).run(x[8:])
    with torch.no_grad():
        expected, _ = local(torch.from_numpy(x))
    assert np.array_equal(np.concatenate([first, rest]), expected.numpy())
    assert expected.sum() > 0


def test_checkpoints_are_written_atomically(tmp_path):
    """After a checkpoint there is one snapshot file per session and no temporary file."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        c.create_session(recurrent_net(), input_shape=(3,))
        c.create_session(recurrent_net(), input_shape=(3,))
    assert len(list(tmp_path.glob("*.snapshot"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_deleted_session_leaves_no_checkpoint(tmp_path):
    """Closing a session removes its checkpoint, so it doesn't come back."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        c.create_session(recurrent_net(), input_shape=(3,)).close()
    assert not list(tmp_path.glob("*.snapshot"))


def test_unreadable_checkpoint_is_skipped(tmp_path):
    """A corrupt checkpoint file is skipped; the server starts and restores the others."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        kept = c.create_session(recurrent_net(), input_shape=(3,)).id
    (tmp_path / "0123abcd.64656661756c74.snapshot").write_bytes(b"not a snapshot")
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        assert [s.id for s in c.list_sessions()] == [kept]


def test_sessions_keep_their_creation_time_and_order_across_a_restart(tmp_path):
    """After a restart, sessions list in the order they were made, with their creation times."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        made = [c.create_session(recurrent_net(), input_shape=(3,)) for _ in range(3)]
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        listed = c.list_sessions()
    assert [(s.id, s.create_time) for s in listed] == [(s.id, s.create_time) for s in made]
