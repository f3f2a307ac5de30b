"""The checkpoint folder as a store, without a server: names per owner, what isn't a checkpoint, and
the leases of replicas of the previous version during a rolling upgrade."""

import logging
import os
import threading
import time

import pytest

from server.checkpoints import CheckpointStore
from server.session import SessionKey

ALICE = b"alice".hex()


@pytest.fixture
def store(tmp_path):
    return CheckpointStore(tmp_path)


def stored(store: CheckpointStore, session_id: str, owner: str) -> None:
    """A checkpoint file under the session's name (its contents don't matter here)."""
    (store.directory / f"{session_id}.{owner.encode().hex()}.snapshot").write_bytes(b"")


def returns_at_once(call, *args):
    """``call(*args)``'s result, failing if it waits (for a FIFO's writer, say)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call(*args)), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "waited on a file"
    return result[0]


def test_leases_and_requests_are_per_owner(store):
    """Alice's lease and request of an id are not Bob's of the same id."""
    store.take_lease("same", "alice", "replica-a")
    assert store.lease_holder("same", "alice") == "replica-a" and store.lease_holder("same", "bob") is None
    store.want("same", "bob")
    assert store.wanted() == {SessionKey("same", "bob")}
    store.remove("same", "bob")
    assert store.wanted() == set() and store.lease_holder("same", "alice") == "replica-a"


def test_things_that_arent_checkpoints_are_skipped_and_logged_once(store, caplog):
    """A link loop, a FIFO and a folder named like checkpoints are left out of the index, logged once each."""
    os.symlink(store.directory / f"loop.{ALICE}.snapshot", store.directory / f"loop.{ALICE}.snapshot")
    os.mkfifo(store.directory / f"fifo.{ALICE}.snapshot")
    (store.directory / f"dir.{ALICE}.snapshot").mkdir()
    stored(store, "real", "alice")
    with caplog.at_level(logging.WARNING, "rnnsim.checkpoints"):
        assert [key for key, _ in store.index()] == [SessionKey("real", "alice")]
        assert [key for key, _ in store.index()] == [SessionKey("real", "alice")]
    assert len(caplog.records) == 3


def test_a_fifo_or_link_loop_is_never_waited_on(store):
    """Reading, describing or asking for the lease of a FIFO or a link loop answers None at once."""
    os.mkfifo(store.directory / f"fifo.{ALICE}.snapshot")
    os.mkfifo(store.directory / f"fifo.{ALICE}.lease")
    os.symlink(store.directory / f"loop.{ALICE}.lease", store.directory / f"loop.{ALICE}.lease")
    for session_id in ("fifo", "loop"):
        assert returns_at_once(store.read, session_id, "alice") is None
        assert returns_at_once(store.describe, session_id, "alice") is None
        assert returns_at_once(store.lease_holder, session_id, "alice") is None


def test_a_lease_that_isnt_a_file_is_missing_to_its_renewal(store):
    """A FIFO where a lease should be counts as no lease: the holder takes it again, replacing it."""
    key = SessionKey("s", "alice")
    os.mkfifo(store.directory / f"s.{ALICE}.lease")
    assert returns_at_once(store.renew_leases, [key], "replica-a") == ([], [key])
    store.take_lease(*key, "replica-a")
    assert store.lease_holder(*key) == "replica-a"


def test_a_previous_versions_lease_counts_for_the_owner_of_the_checkpoint(store):
    """During a rolling upgrade, an old replica's <id>.lease holds the session of whoever has its checkpoint."""
    stored(store, "old", "alice")
    (store.directory / "old.lease").write_text("old-replica")
    assert store.lease_holder("old", "alice") == "old-replica"
    assert store.lease_holder("old", "bob") is None
    store.want("old", "alice")
    assert (store.directory / "old.wanted").exists() and store.wanted() == {SessionKey("old", "alice")}


def test_a_previous_versions_expired_lease_holds_nothing(store):
    """An old lease not renewed for the expiry time is from a replica that is gone."""
    stored(store, "old", "alice")
    (store.directory / "old.lease").write_text("old-replica")
    stale = time.time() - 60
    os.utime(store.directory / "old.lease", (stale, stale))
    assert store.lease_holder("old", "alice") is None


def test_checkpoints_are_per_owner(store):
    """Alice's checkpoint of an id is not Bob's: found and removed apart."""
    stored(store, "same", "alice")
    assert store.holds("same", "alice") and not store.holds("same", "bob")
    assert store.describe("same", "bob") is None
    store.remove("same", "bob")
    assert store.holds("same", "alice") and [key for key, _ in store.index()] == [SessionKey("same", "alice")]
