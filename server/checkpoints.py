"""Checkpoints: every session's snapshot in a folder, one file per session, written atomically.

The session manager writes them periodically, when it evicts a session and on graceful
shutdown, and reads them when a session it doesn't hold is asked for, so sessions survive
restarts (exactly, after SIGTERM), crashes (from the last checkpoint) and, with a folder shared by
replicas, the loss of a replica.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from rnnbuilder_sim.v1 import simulator_pb2 as pb

from . import snapshots
from .sessions import SESSION_ID

__all__ = ["CheckpointStore", "MOVING_EXPIRES_S"]

log = logging.getLogger("rnnsim.checkpoints")
_SUFFIX = ".snapshot"
_MOVING = ".moving"
MOVING_EXPIRES_S = 120.0
"""A hand-over mark older than this is from a replica that died mid-way, and is ignored."""


class CheckpointStore:
    """``<session id>.<owner, hex>.snapshot`` files of serialized ``SessionSnapshot`` messages."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, session_id: str, owner: str, snapshot: dict) -> None:
        """Replace the session's checkpoint: a temporary file, flushed, then renamed over the old one."""
        path = self._path(session_id, owner)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            file.write(snapshots.to_message(snapshot).SerializeToString())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def read(self, session_id: str, owner: str | None) -> tuple[str, dict] | None:
        """``(owner, snapshot)`` of the session's checkpoint (only ``owner``'s, if given), or None
        if there is none or it can't be read (logged: a corrupt checkpoint is never fatal)."""
        if not SESSION_ID.fullmatch(session_id):
            return None
        if owner is not None:
            paths = [self._path(session_id, owner)]
        else:
            paths = sorted(self.directory.glob(f"{session_id}.*{_SUFFIX}"))
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                return _owner(path), snapshots.from_message(pb.SessionSnapshot.FromString(data))
            except Exception as error:  # a corrupt checkpoint must never stop the server
                log.warning("skipping unreadable checkpoint %s: %s", path, error)
        return None

    def index(self) -> list[tuple[str, str]]:
        """``(session id, owner)`` of every checkpoint file, by name."""
        found = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                found.append((path.name.split(".")[0], _owner(path)))
            except ValueError as error:
                log.warning("skipping checkpoint %s: %s", path, error)
        return found

    def holds(self, session_id: str) -> bool:
        """Whether the session has a checkpoint, whoever owns it."""
        return bool(SESSION_ID.fullmatch(session_id)) and any(self.directory.glob(f"{session_id}.*{_SUFFIX}"))

    def remove(self, session_id: str) -> None:
        """Delete the session's checkpoint."""
        if SESSION_ID.fullmatch(session_id):
            for path in self.directory.glob(f"{session_id}.*{_SUFFIX}"):
                path.unlink(missing_ok=True)

    def mark_moving(self, session_id: str) -> None:
        """Mark the session as being handed over: other replicas wait for its checkpoint."""
        (self.directory / f"{session_id}{_MOVING}").touch()

    def unmark_moving(self, session_id: str) -> None:
        (self.directory / f"{session_id}{_MOVING}").unlink(missing_ok=True)

    def moving(self, session_id: str) -> bool:
        """Whether a replica is handing the session over (a recent mark)."""
        try:
            age = time.time() - (self.directory / f"{session_id}{_MOVING}").stat().st_mtime
        except (FileNotFoundError, ValueError):
            return False
        return age < MOVING_EXPIRES_S

    def _path(self, session_id: str, owner: str) -> Path:
        return self.directory / f"{session_id}.{owner.encode().hex()}{_SUFFIX}"


def _owner(path: Path) -> str:
    parts = path.name[: -len(_SUFFIX)].split(".")
    if len(parts) != 2:
        raise ValueError("not named <session id>.<owner hex>.snapshot")
    return bytes.fromhex(parts[1]).decode()
