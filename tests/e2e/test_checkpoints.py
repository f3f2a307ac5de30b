"""Checkpoints: sessions survive a graceful restart exactly; unreadable checkpoints are skipped."""

import io
import threading

import numpy as np
import torch

import rnnbuilder as rb
from client import Client
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from server import ServerConfig
from server.checkpoints import CheckpointStore, skim
from server.session import SessionKey
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


def test_unreadable_checkpoint_is_logged_once(tmp_path, caplog):
    """Listings look at the folder every time, but an unreadable checkpoint is reported only once."""
    (tmp_path / "0123abcd.64656661756c74.snapshot").write_bytes(b"not a snapshot")
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        assert c.list_sessions() == [] and c.list_sessions() == []
    assert sum("unreadable checkpoint" in r.getMessage() for r in caplog.records) == 1


def test_sessions_keep_their_creation_time_and_order_across_a_restart(tmp_path):
    """After a restart, sessions list in the order they were made, with their creation times."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        made = [c.create_session(recurrent_net(), input_shape=(3,)) for _ in range(3)]
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        listed = c.list_sessions()
    assert [(s.id, s.create_time) for s in listed] == [(s.id, s.create_time) for s in made]


class CountingReader(io.FileIO):
    """A file opened for reading that counts the bytes read from it."""

    def __init__(self, path):
        super().__init__(path, "rb")
        self.bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_stored_session_is_described_without_reading_its_tensors(tmp_path):
    """Start-up reads a checkpoint's description and sizes its tensors without reading them."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        s = c.create_session(rb.Sequential(nn.Linear(1000), snn.LIF()), input_shape=(1000,), batch_size=4)
        s.run(np.ones((3, 4, 1000), dtype=np.float32))
    [path] = tmp_path.glob("*.snapshot")
    with CountingReader(path) as file:
        described, tensor_bytes = skim(file)
    full = pb.SessionSnapshot.FromString(path.read_bytes())
    assert file.bytes_read < 10_000 < path.stat().st_size // 100
    assert (described.network, described.input_shape, described.timesteps_simulated, described.create_time) == (
        full.network,
        full.input_shape,
        3,
        full.create_time,
    )
    assert not described.parameters and not described.state
    data = sum(len(t.tensor.data) for t in [*full.parameters, *full.state])
    assert data <= tensor_bytes < data * 1.01


def test_truncated_checkpoint_is_skipped(tmp_path):
    """A checkpoint cut off in the middle of its tensors is skipped at start-up; the others load."""
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        kept = c.create_session(recurrent_net(), input_shape=(3,)).id
    [path] = tmp_path.glob("*.snapshot")
    data = path.read_bytes()
    (tmp_path / f"0123abcd.{path.name.split('.')[1]}.snapshot").write_bytes(data[: len(data) // 2])
    with running_server(config(tmp_path)) as (address, _), Client(address) as c:
        assert [s.id for s in c.list_sessions()] == [kept]
        assert c.get_session(kept).run(np.ones((2, 1, 3), dtype=np.float32)).shape == (2, 1, 6)


def test_a_lease_written_by_several_threads_at_once_never_fails(tmp_path):
    """Writing one session's lease from several threads at the same moment (a renewal and a take) is safe."""
    store = CheckpointStore(tmp_path)
    failures = []

    def take(times):
        try:
            for _ in range(times):
                store.take_lease("abc123", "alice", "replica-a")
        except OSError as error:
            failures.append(error)

    threads = [threading.Thread(target=take, args=(300,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert store.lease_holder("abc123", "alice") == "replica-a"
    assert not list(tmp_path.glob("*.tmp"))


def test_renewing_a_lease_that_is_gone_reports_it_and_leaves_it_gone(tmp_path):
    """A lease removed (its session closed) while being renewed isn't written back by the renewal."""
    store = CheckpointStore(tmp_path)
    kept, closed = SessionKey("kept", "alice"), SessionKey("closed", "alice")
    store.take_lease(*kept, "replica-a")
    store.take_lease(*closed, "replica-a")
    store.remove(*closed)
    assert store.renew_leases([kept, closed], "replica-a") == ([], [closed])
    assert store.lease_holder(*closed) is None
    assert store.lease_holder(*kept) == "replica-a"
