"""Checkpoints: every session's snapshot in a folder, one file per session, written atomically.

The session manager writes them periodically, when it evicts a session and on graceful
shutdown, and reads them when a session it doesn't hold is asked for, so sessions survive
restarts (exactly, after SIGTERM), crashes (from the last checkpoint) and, with a folder shared by
replicas, the loss of a replica.

Replicas sharing the folder coordinate through two more files per session. ``.lease`` names the
replica that holds the session in memory; the holder renews it (its modification time) every
``LEASE_RENEW_S``, and one not renewed for ``LEASE_EXPIRES_S`` is from a replica that died.
``.wanted`` asks the holder to write the session's checkpoint and let go of it, so that the
replica that now gets its calls continues from its latest state rather than an older one.

Two more record expiry (``--session-ttl``): ``.used``, whose modification time is the session's last
use (written at most once per expiry round, never per call), and ``.expired``, a tombstone left
for ``EXPIRED_KEPT_S`` where an expired session was, so that every replica, and a restarted one,
answers its id with SESSION_EXPIRED rather than SESSION_NOT_FOUND.

Every file is named ``<session id>.<owner, hex>.<kind>``: ids are per owner, so one tenant's
session never collides with, reveals or moves another's of the same id. Anything else in the
folder, or anything that isn't a regular file (a link, a FIFO), is skipped and logged; nothing is
ever opened in a way that could wait.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import IO, BinaryIO

from rnnbuilder_sim.v1 import simulator_pb2 as pb

from .convert import snapshot_from_message, snapshot_to_message
from .session import SESSION_ID, SessionKey
from .snapshot import Snapshot

__all__ = ["CheckpointStore", "LEASE_RENEW_S", "LEASE_EXPIRES_S", "EXPIRED_KEPT_S"]

log = logging.getLogger("rnnsim.checkpoints")
_SUFFIX = ".snapshot"
_LEASE = ".lease"
_WANTED = ".wanted"
_USED = ".used"
_EXPIRED = ".expired"
LEASE_RENEW_S = 1.0
"""How often a replica renews its leases and looks for sessions others want."""
LEASE_EXPIRES_S = 10.0
"""A lease not renewed for this long is from a replica that died: others may take the session."""
EXPIRED_KEPT_S = 86400.0
"""How long an expired session's id answers SESSION_EXPIRED (then SESSION_NOT_FOUND)."""
_ORPHAN_USED_S = 60.0
"""A use record older than this without a checkpoint is left over from a closed session."""


class CheckpointStore:
    """``<session id>.<owner, hex>.snapshot`` files of serialized ``SessionSnapshot`` messages."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._unreadable: dict[Path, int | None] = {}
        """Files that couldn't be read, by their modification time then (None: not a regular file)."""

    def write(self, session_id: str, owner: str, snapshot: Snapshot) -> None:
        """Replace the session's checkpoint, atomically."""
        _replace(self._path(session_id, owner, _SUFFIX), snapshot_to_message(snapshot).SerializeToString())

    def read(self, session_id: str, owner: str) -> Snapshot | None:
        """The session's snapshot, or None if there is none or it can't be read (logged: a corrupt
        checkpoint is never fatal)."""
        path = self._path(session_id, owner, _SUFFIX)
        try:
            data, _ = _read_regular(path)
            return snapshot_from_message(pb.SessionSnapshot.FromString(data))
        except FileNotFoundError:
            return None
        except Exception as error:  # a corrupt checkpoint must never stop the server
            self._skip(path, error)
            return None

    def describe(self, session_id: str, owner: str) -> tuple[Snapshot, int, int] | None:
        """``(snapshot, tensor bytes, modification time in ns)`` like ``read``, but without reading
        the tensors: the snapshot's parameters, state, optimizer, carried state and generator are
        empty, and the bytes their tensors take (about: their serialized size) come instead.
        Listing stored sessions stays cheap however large they are."""
        path = self._path(session_id, owner, _SUFFIX)
        modified = None
        try:
            with _open_regular(path) as file:
                modified = os.fstat(file.fileno()).st_mtime_ns
                if self._unreadable.get(path) == modified:  # logged already; every listing asks again
                    return None
                message, tensor_bytes = skim(file)
            return snapshot_from_message(message), tensor_bytes, modified
        except FileNotFoundError:
            return None
        except Exception as error:  # a corrupt checkpoint must never stop the server
            self._skip(path, error, modified)
            return None

    def index(self) -> list[tuple[SessionKey, int]]:
        """``(session, modification time in ns)`` of every checkpoint file, by name."""
        return [(key, info.st_mtime_ns) for key, info in self._files((_SUFFIX,)).get(_SUFFIX, [])]

    def holds(self, session_id: str, owner: str) -> bool:
        """Whether the folder has something by the name of the session's checkpoint."""
        return os.path.lexists(self._path(session_id, owner, _SUFFIX))

    def remove(self, session_id: str, owner: str) -> None:
        """Delete the session's checkpoint, lease, requests and use record."""
        for suffix in (_SUFFIX, _LEASE, _WANTED, _USED):
            self._path(session_id, owner, suffix).unlink(missing_ok=True)

    def lease_holder(self, session_id: str, owner: str) -> str | None:
        """The replica holding the session in memory (an unexpired lease), or None. During a rolling
        upgrade, replicas of the previous version hold sessions under ``<id>.lease``, named by id
        alone (ids were global then): such a lease counts for the owner whose checkpoint the id is."""
        holder = self._holder(self._path(session_id, owner, _LEASE))
        if holder is None and self.holds(session_id, owner):
            holder = self._holder(self._legacy(session_id, _LEASE))
        return holder

    def _holder(self, path: Path) -> str | None:
        try:
            holder, modified = _read_regular(path)
            return holder.decode() if time.time_ns() - modified < LEASE_EXPIRES_S * 1e9 else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            self._skip(path, error)
            return None

    def take_lease(self, session_id: str, owner: str, holder: str) -> None:
        """Record that ``holder`` has the session in memory (atomically: others read it any time)."""
        _replace(self._path(session_id, owner, _LEASE), holder.encode())
        self._path(session_id, owner, _WANTED).unlink(missing_ok=True)

    def renew_leases(self, keys: list[SessionKey], holder: str) -> tuple[list[SessionKey], list[SessionKey]]:
        """Renew ``holder``'s leases of the sessions ``keys`` name. Returns the sessions whose lease
        another replica has taken meanwhile (after ours expired), which ``holder`` must let go of
        unwritten, and those with no lease (or something else by its name), which ``holder`` takes
        again for the sessions it still has (one closed meanwhile has none, and must not get it back)."""
        lost, missing = [], []
        for key in keys:
            path = self._path(*key, _LEASE)
            try:
                if _read_regular(path)[0] != holder.encode():
                    lost.append(key)
                    continue
                path.touch()
            except (OSError, ValueError):  # FileNotFoundError, or not a lease: take_lease replaces it
                missing.append(key)
        return lost, missing

    def drop_lease(self, session_id: str, owner: str, holder: str) -> None:
        """Let go of the session (its checkpoint written): another replica may load it now."""
        path = self._path(session_id, owner, _LEASE)
        try:
            if _read_regular(path)[0] == holder.encode():
                path.unlink(missing_ok=True)
        except (OSError, ValueError):  # gone, or not a lease: nothing of ours to drop
            pass

    def want(self, session_id: str, owner: str) -> None:
        """Ask the session's holder to write its checkpoint and let go of it (as the previous
        version asks, too, if one of those holds it: see ``lease_holder``)."""
        _replace(self._path(session_id, owner, _WANTED), b"")
        if self._holder(self._path(session_id, owner, _LEASE)) is None and self.lease_holder(session_id, owner):
            _replace(self._legacy(session_id, _WANTED), b"")

    def wanted(self) -> set[SessionKey]:
        """The sessions some replica has asked for."""
        found = set()
        for path in self.directory.glob(f"*{_WANTED}"):
            try:
                found.add(_key(path.name, _WANTED))
            except ValueError as error:  # a request of an older version, <id>.wanted, names no owner
                self._skip(path, error)
        return found

    def mark_used(self, session_id: str, owner: str, when: float) -> None:
        """Record that the session was last used at ``when``, in seconds since the epoch (its
        ``.used`` file's modification time)."""
        _touch(self._path(session_id, owner, _USED), when)

    def last_used(self) -> dict[SessionKey, float]:
        """Every checkpointed session's last use, in seconds since the epoch: the later of its
        checkpoint's modification time (a checkpoint is written after calls that change the
        session) and its ``.used`` record's."""
        times = self._times()
        used = times.get(_USED, {})
        return {key: max(modified, used.get(key, 0.0)) for key, modified in times.get(_SUFFIX, {}).items()}

    def mark_expired(self, session_id: str, owner: str) -> None:
        """Leave the tombstone of an expired session (before its files are removed)."""
        _replace(self._path(session_id, owner, _EXPIRED), b"")

    def expired(self, session_id: str, owner: str, within_s: float) -> bool:
        """Whether the session expired within the last ``within_s`` seconds (its tombstone says so)."""
        try:
            info = os.lstat(self._path(session_id, owner, _EXPIRED))
        except (OSError, ValueError):
            return False
        return stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime < within_s

    def clear_expired(self, session_id: str, owner: str) -> None:
        """Remove the session's tombstone: a new session has its id."""
        self._path(session_id, owner, _EXPIRED).unlink(missing_ok=True)

    def prune_marks(self, expired_kept_s: float) -> None:
        """Remove tombstones older than ``expired_kept_s`` and use records left without a
        checkpoint (of sessions closed as they were recorded): the folder never fills with them."""
        times, now = self._times(), time.time()
        checkpoints = times.get(_SUFFIX, {})
        old = [(key, _EXPIRED) for key, t in times.get(_EXPIRED, {}).items() if now - t > expired_kept_s]
        old += [
            (key, _USED)
            for key, t in times.get(_USED, {}).items()
            if key not in checkpoints and now - t > _ORPHAN_USED_S
        ]
        for key, suffix in old:
            self._path(*key, suffix).unlink(missing_ok=True)

    def _times(self) -> dict[str, dict[SessionKey, float]]:
        """Modification times (seconds since the epoch) of the regular files in the folder named
        ``<session id>.<owner hex>.<kind>``, by kind (``.snapshot``, ``.used``, ``.expired``)."""
        found = self._files((_SUFFIX, _USED, _EXPIRED))
        return {suffix: {key: info.st_mtime for key, info in files} for suffix, files in found.items()}

    def _files(self, suffixes: tuple[str, ...]) -> dict[str, list[tuple[SessionKey, os.stat_result]]]:
        """The regular files named ``<session id>.<owner hex><suffix>``, by suffix, each in name
        order with its ``lstat``; anything else so named is skipped and logged once."""
        found: dict[str, list[tuple[SessionKey, os.stat_result]]] = {}
        with os.scandir(self.directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                suffix = next((s for s in suffixes if entry.name.endswith(s)), None)
                if suffix is None:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        raise ValueError("not a regular file")
                    found.setdefault(suffix, []).append((_key(entry.name, suffix), entry.stat(follow_symlinks=False)))
                except FileNotFoundError:  # removed since the listing: the session was closed
                    continue
                except (OSError, ValueError) as error:
                    self._skip(Path(entry.path), error)
        return found

    def _path(self, session_id: str, owner: str, suffix: str) -> Path:
        return self.directory / f"{_checked(session_id)}.{owner.encode().hex()}{suffix}"

    def _legacy(self, session_id: str, suffix: str) -> Path:
        """A lease or request of the previous version: ``<session id><suffix>``."""
        return self.directory / f"{_checked(session_id)}{suffix}"

    def _skip(self, path: Path, error: Exception, modified: int | None = None) -> None:
        """Log what can't be read, once per version of it: every listing meets it again."""
        if path not in self._unreadable or self._unreadable[path] != modified:
            log.warning("skipping unreadable checkpoint file %s: %s", path, error)
        self._unreadable[path] = modified


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


def _touch(path: Path, when: float) -> None:
    """Set ``path``'s modification time to ``when``, creating it empty if need be; never follows a
    link nor waits (a FIFO without a reader is an OSError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        os.utime(fd, (when, when))
    finally:
        os.close(fd)


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` open for reading if it is a regular file; OSError for anything else. Never follows a
    link (a loop, or a way out of the folder) and never waits: opening a FIFO for reading would
    wait for a writer, and reading it for data."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_regular(path: Path) -> tuple[bytes, int]:
    """The contents of the regular file ``path`` and its modification time in ns (see ``_open_regular``)."""
    with _open_regular(path) as file:
        return file.read(), os.fstat(file.fileno()).st_mtime_ns


def _checked(session_id: str) -> str:
    if not SESSION_ID.fullmatch(session_id):  # never a path outside the folder
        raise ValueError(f"not a session id: {session_id!r}")
    return session_id


def _key(name: str, suffix: str) -> SessionKey:
    """The session a file's name is of, ``<session id>.<owner hex><suffix>``."""
    parts = name[: -len(suffix)].split(".")
    if len(parts) != 2 or not SESSION_ID.fullmatch(parts[0]):
        raise ValueError(f"not named <session id>.<owner hex>{suffix}")
    return SessionKey(parts[0], bytes.fromhex(parts[1]).decode())
