"""Checkpoints: every session's snapshot in a folder, one file per session, written atomically.

The session manager writes them periodically, when it evicts a session and on graceful
shutdown, and reads them when a session it doesn't hold is asked for, so sessions survive
restarts (exactly, after SIGTERM), crashes (from the last checkpoint) and, with a folder shared by
replicas, the loss of a replica.

Replicas sharing the folder coordinate through two more files per session. ``<id>.lease`` names
the replica that holds the session in memory; the holder renews it (its modification time) every
``LEASE_RENEW_S``, and one not renewed for ``LEASE_EXPIRES_S`` is from a replica that died.
``<id>.wanted`` asks the holder to write the session's checkpoint and let go of it, so that the
replica that now gets its calls continues from its latest state rather than an older one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from rnnbuilder_sim.v1 import simulator_pb2 as pb

from .convert import snapshot_from_message, snapshot_to_message
from .session import SESSION_ID
from .snapshot import Snapshot

__all__ = ["CheckpointStore", "LEASE_RENEW_S", "LEASE_EXPIRES_S"]

log = logging.getLogger("rnnsim.checkpoints")
_SUFFIX = ".snapshot"
_LEASE = ".lease"
_WANTED = ".wanted"
LEASE_RENEW_S = 1.0
"""How often a replica renews its leases and looks for sessions others want."""
LEASE_EXPIRES_S = 10.0
"""A lease not renewed for this long is from a replica that died: others may take the session."""


class CheckpointStore:
    """``<session id>.<owner, hex>.snapshot`` files of serialized ``SessionSnapshot`` messages."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._unreadable: dict[Path, int | None] = {}
        """Checkpoints that couldn't be described, by their modification time then."""

    def write(self, session_id: str, owner: str, snapshot: Snapshot) -> None:
        """Replace the session's checkpoint, atomically."""
        _replace(self._path(session_id, owner), snapshot_to_message(snapshot).SerializeToString())

    def read(self, session_id: str, owner: str | None) -> tuple[str, Snapshot] | None:
        """``(owner, snapshot)`` of the session's checkpoint (only ``owner``'s, if given), or None
        if there is none or it can't be read (logged: a corrupt checkpoint is never fatal)."""
        for path in self._paths(session_id, owner):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                return _owner(path), snapshot_from_message(pb.SessionSnapshot.FromString(data))
            except Exception as error:  # a corrupt checkpoint must never stop the server
                log.warning("skipping unreadable checkpoint %s: %s", path, error)
        return None

    def describe(self, session_id: str, owner: str | None) -> tuple[str, Snapshot, int, int] | None:
        """``(owner, snapshot, tensor bytes, modification time in ns)`` like ``read``, but without
        reading the tensors: the snapshot's parameters, state, optimizer, carried state and
        generator are empty, and the bytes their tensors take (about: their serialized size) come
        instead. Listing stored sessions stays cheap however large they are."""
        for path in self._paths(session_id, owner):
            modified = None
            try:
                with path.open("rb") as file:
                    modified = os.fstat(file.fileno()).st_mtime_ns
                    if self._unreadable.get(path) == modified:  # logged already; every listing asks again
                        continue
                    message, tensor_bytes = skim(file)
                return _owner(path), snapshot_from_message(message), tensor_bytes, modified
            except FileNotFoundError:
                continue
            except Exception as error:  # a corrupt checkpoint must never stop the server
                log.warning("skipping unreadable checkpoint %s: %s", path, error)
                self._unreadable[path] = modified
        return None

    def index(self) -> list[tuple[str, str, int]]:
        """``(session id, owner, modification time in ns)`` of every checkpoint file, by name."""
        found = []
        with os.scandir(self.directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not entry.name.endswith(_SUFFIX):
                    continue
                try:
                    found.append((entry.name.split(".")[0], _owner(Path(entry.path)), entry.stat().st_mtime_ns))
                except FileNotFoundError:  # removed since the listing: the session was closed
                    continue
                except ValueError as error:
                    log.warning("skipping checkpoint %s: %s", entry.path, error)
        return found

    def holds(self, session_id: str) -> bool:
        """Whether the session has a checkpoint, whoever owns it."""
        return bool(self._paths(session_id, None))

    def remove(self, session_id: str) -> None:
        """Delete the session's checkpoint, lease and requests."""
        for path in self._paths(session_id, None):
            path.unlink(missing_ok=True)
        if SESSION_ID.fullmatch(session_id):
            for suffix in (_LEASE, _WANTED):
                (self.directory / f"{session_id}{suffix}").unlink(missing_ok=True)

    def lease_holder(self, session_id: str) -> str | None:
        """The replica holding the session in memory (an unexpired lease), or None."""
        path = self._lease(session_id)
        try:
            fresh = time.time() - path.stat().st_mtime < LEASE_EXPIRES_S
            return path.read_text() if fresh else None
        except (FileNotFoundError, ValueError):
            return None

    def take_lease(self, session_id: str, holder: str) -> None:
        """Record that ``holder`` has the session in memory (atomically: others read it any time)."""
        _replace(self._lease(session_id), holder.encode())
        (self.directory / f"{session_id}{_WANTED}").unlink(missing_ok=True)

    def renew_leases(self, session_ids: list[str], holder: str) -> tuple[list[str], list[str]]:
        """Renew ``holder``'s leases of ``session_ids``. Returns the ids whose lease another replica
        has taken meanwhile (after ours expired), which ``holder`` must let go of unwritten, and
        those with no lease, which ``holder`` takes again for the sessions it still has (one
        closed meanwhile has none, and must not get it back)."""
        lost, missing = [], []
        for session_id in session_ids:
            path = self._lease(session_id)
            try:
                if path.read_text() != holder:
                    lost.append(session_id)
                    continue
                path.touch()
            except FileNotFoundError:
                missing.append(session_id)
        return lost, missing

    def drop_lease(self, session_id: str, holder: str) -> None:
        """Let go of the session (its checkpoint written): another replica may load it now."""
        path = self._lease(session_id)
        try:
            if path.read_text() == holder:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def want(self, session_id: str) -> None:
        """Ask the session's holder to write its checkpoint and let go of it."""
        (self.directory / f"{session_id}{_WANTED}").touch()

    def wanted(self) -> set[str]:
        """The ids of sessions some replica has asked for."""
        return {path.name[: -len(_WANTED)] for path in self.directory.glob(f"*{_WANTED}")}

    def _lease(self, session_id: str) -> Path:
        return self.directory / f"{session_id}{_LEASE}"

    def _paths(self, session_id: str, owner: str | None) -> list[Path]:
        """The session's checkpoint files: ``owner``'s, or anyone's."""
        if not SESSION_ID.fullmatch(session_id):
            return []
        if owner is not None:
            return [self._path(session_id, owner)]
        return sorted(self.directory.glob(f"{session_id}.*{_SUFFIX}"))

    def _path(self, session_id: str, owner: str) -> Path:
        return self.directory / f"{session_id}.{owner.encode().hex()}{_SUFFIX}"


_TENSOR_FIELDS = frozenset(
    pb.SessionSnapshot.DESCRIPTOR.fields_by_name[name].number
    for name in ("parameters", "state", "optimizer", "carried_state")
)
_SKIMMED_FIELDS = _TENSOR_FIELDS | {pb.SessionSnapshot.RANDOM_STATE_FIELD_NUMBER}
_LENGTH_DELIMITED, _FIXED = 2, {1: 8, 5: 4}


def skim(file: BinaryIO) -> tuple[pb.SessionSnapshot, int]:
    """A serialized ``SessionSnapshot`` from ``file`` without its tensor fields, which are skipped
    on disk (seek, not read), and the bytes those fields take. It walks the message's top-level
    fields in protobuf's wire format: (tag, value) pairs, where a tensor field's value is its
    length, then that many bytes."""
    size = os.fstat(file.fileno()).st_size
    kept = bytearray()
    skipped = 0
    while (start := file.tell()) < size:
        tag = _varint(file)
        field, wire = tag >> 3, tag & 7
        if wire == _LENGTH_DELIMITED:
            length = _varint(file)
            file.seek(length, os.SEEK_CUR)
            if field in _SKIMMED_FIELDS:
                skipped += length if field in _TENSOR_FIELDS else 0
                continue
        elif wire == 0:
            _varint(file)
        elif wire in _FIXED:
            file.seek(_FIXED[wire], os.SEEK_CUR)
        else:
            raise ValueError(f"unexpected wire type {wire} at byte {start}")
        end = file.tell()
        if end > size:
            raise ValueError(f"truncated at byte {start}")
        file.seek(start)
        kept += file.read(end - start)
    if file.tell() != size:
        raise ValueError("truncated: a field runs past the end of the file")
    return pb.SessionSnapshot.FromString(bytes(kept)), skipped


def _varint(file: BinaryIO) -> int:
    value = shift = 0
    while shift < 64:
        byte = file.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a temporary file, flushed to disk, then renamed over the old one,
    so that a reader (another replica, or the next start) never sees half of it."""
    # Unique per thread too: a lease can be renewed and taken at the same moment in one process.
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _owner(path: Path) -> str:
    parts = path.name[: -len(_SUFFIX)].split(".")
    if len(parts) != 2:
        raise ValueError("not named <session id>.<owner hex>.snapshot")
    return bytes.fromhex(parts[1]).decode()
