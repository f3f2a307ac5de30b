"""Checkpoints: every session's snapshot in a folder, one file per session, written atomically.

A server writes them periodically and on graceful shutdown, and restores them when it starts,
so sessions survive restarts (exactly, after SIGTERM) and crashes (from the last checkpoint).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from rnnbuilder_sim.v1 import simulator_pb2 as pb

from . import snapshots
from .sessions import SessionManager

__all__ = ["CheckpointStore", "checkpoint_all", "restore_all"]

log = logging.getLogger("rnnsim.checkpoints")
_SUFFIX = ".snapshot"


class CheckpointStore:
    """``<session id>.<owner, hex>.snapshot`` files of serialized ``SessionSnapshot`` messages."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, session_id: str, owner: str, message: pb.SessionSnapshot) -> None:
        """Replace the session's checkpoint: a temporary file, flushed, then renamed over the old one."""
        self.remove(session_id, keep_owner=owner)
        path = self.directory / f"{session_id}.{owner.encode().hex()}{_SUFFIX}"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(message.SerializeToString())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def remove(self, session_id: str, keep_owner: str | None = None) -> None:
        """Delete the session's checkpoint (except one of ``keep_owner``, which ``write`` replaces)."""
        for path in self.directory.glob(f"{session_id}.*{_SUFFIX}"):
            if keep_owner is None or path.name != f"{session_id}.{keep_owner.encode().hex()}{_SUFFIX}":
                path.unlink(missing_ok=True)

    def load(self) -> Iterator[tuple[str, str, pb.SessionSnapshot]]:
        """``(session id, owner, snapshot)`` of every readable checkpoint; unreadable ones are logged and skipped."""
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                session_id, owner_hex = path.name[: -len(_SUFFIX)].split(".")
                message = pb.SessionSnapshot.FromString(path.read_bytes())
                if not message.HasField("network"):
                    raise ValueError("no network in it")
                yield session_id, bytes.fromhex(owner_hex).decode(), message
            except Exception as error:  # a corrupt checkpoint must never stop the server
                log.warning("skipping unreadable checkpoint %s: %s", path, error)


def checkpoint_all(manager: SessionManager, store: CheckpointStore) -> int:
    """Write every session's checkpoint; returns how many."""
    written = 0
    for session in manager.list():
        try:
            store.write(session.id, session.owner, snapshots.to_message(manager.export(session.id)))
            written += 1
        except Exception:  # a session deleted meanwhile, a full disk: the others still get written
            log.exception("checkpoint of session %s failed", session.id)
    return written


def restore_all(manager: SessionManager, store: CheckpointStore) -> int:
    """Recreate the sessions of every readable checkpoint, under their ids; returns how many."""
    restored = 0
    for session_id, owner, message in store.load():
        try:
            manager.import_(snapshots.from_message(message), owner, session_id=session_id)
            restored += 1
        except Exception as error:  # a checkpoint this server can't rebuild is skipped, never fatal
            log.warning("skipping checkpoint of session %s: %s", session_id, error)
    return restored
