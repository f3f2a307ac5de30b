"""The session manager: which sessions there are, where each is (in device memory or only in its
checkpoint), and which replica holds it. Knows nothing of gRPC.

Every method is thread-safe. Calls to one session run one at a time (``held``); calls to
different sessions run in parallel. What a call does with its session is in ``operations``.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from rnnbuilder import spec
from rnnbuilder_sim.wire.names import session_name

from .checkpoints import EXPIRED_KEPT_S
from .config import Limits
from .errors import LimitExceeded, SessionExists, SessionExpired, SessionMoving, SessionNotFound
from .memory import MB, MemoryLedger, Quota, work_bytes
from .placement import WouldBlock
from .planning import build, checked_request, network_errors, plan, summary
from .session import SESSION_ID, Session, SessionKey, SessionStore
from .snapshot import Snapshot, restore, take

__all__ = ["SessionManager"]

log = logging.getLogger("rnnsim.sessions")
EXPIRED_REMEMBERED = 10_000
"""Expired sessions remembered in memory (for SESSION_EXPIRED) at most; the store's tombstones last longer."""


class SessionManager:
    """Creates, finds, holds, evicts and deletes sessions on one device, within ``limits`` and
    memory budgets.

    With a ``store``, sessions can leave memory (``evict_idle``, or to make room under a budget)
    and come back on their next call; sessions the store has but memory hasn't (after a restart,
    or written by another replica sharing the folder) are loaded on demand. ``holder`` names this
    replica in the store's leases: a session another replica holds is asked for and waited for
    (SessionMoving) rather than loaded from an older checkpoint; ``tend_leases`` does the rest.

    With a ``session_ttl_s`` (or a tenant's ``Quota.session_ttl_s``), sessions no call has named for
    that long are deleted by ``expire`` (their ids then answer SessionExpired).
    """

    def __init__(
        self,
        device: torch.device,
        limits: Limits,
        registry: spec.Registry | None = None,
        store: SessionStore | None = None,
        quotas: Mapping[str, Quota] | None = None,
        memory_budget_bytes: int | None = None,
        holder: str = "local",
        describable: Callable[[dict], None] | None = None,
        shared_store: bool = False,
        session_ttl_s: float = 0.0,
    ):
        self.device = device
        self.describable = describable
        """Raises InvalidRequest for a description that can't be sent or stored (the wire's limits);
        None: no such limits (a manager used without a server)."""
        self.holder = holder
        self.shared_store = shared_store and store is not None
        """Other processes of this server share the store: its sessions count for the limits too."""
        self.limits = limits
        self.registry = registry or spec.default_registry
        self.store = store
        self.quotas = dict(quotas or {})
        self.ledger = MemoryLedger(memory_budget_bytes)
        self.evictions: Counter[str] = Counter()
        """Sessions evicted, by reason (``idle``, ``memory``)."""
        self.restores = 0
        """Evicted or stored sessions loaded back into memory."""
        self.checkpoint_failures = 0
        """Checkpoints that couldn't be written (logged; the session stays in memory, the others go on)."""
        self.closing = False
        """Shutting down: sessions are being handed over to their checkpoints, calls are refused."""
        self.session_ttl_s = session_ttl_s
        """Seconds a session may go unused before it expires, for tenants without their own; 0: never."""
        self.expiries: Counter[str] = Counter()
        """Sessions expired, by tenant."""
        self._expired: OrderedDict[SessionKey, float] = OrderedDict()
        """Recently expired sessions, oldest first, with when they expired (seconds since the epoch)."""
        self._sessions: dict[SessionKey, Session] = {}
        """By id and owner: tenants' ids are their own (one's id never collides with nor reveals another's)."""
        self._lock = threading.Lock()

    # -- making and closing sessions --------------------------------------------------------------

    def create(
        self,
        description: dict,
        input_shape,
        batch_size: int,
        seed: int,
        owner: str = "default",
        session_id: str | None = None,
    ) -> Session:
        """Build the described network for ``input_shape`` and open a session for ``batch_size``
        sequences, owned by ``owner``, under ``session_id`` or a random id. With a checkpoint
        folder the session is written there at once: it survives a crash from the start, and
        replicas sharing the folder list it."""
        session = self._create(description, input_shape, batch_size, seed, owner, session_id)
        self._save(session)
        return session

    def import_(self, snapshot: Snapshot, owner: str = "default", session_id: str | None = None) -> Session:
        """A new session of ``owner`` (under ``session_id``, if given), exactly as ``snapshot`` describes one."""
        session = self._create(
            snapshot.description, snapshot.input_shape, snapshot.batch_size, snapshot.seed, owner, session_id
        )
        try:
            with self.held(session):
                restore(session, snapshot, self.limits.max_batch_size)
        except Exception:
            self.delete(session)
            raise
        self._save(session)
        log.info(
            "session %s imported from a snapshot",
            session.id,
            extra={"event": "session_imported", "session": session.id, "tenant": owner},
        )
        return session

    def _create(self, description, input_shape, batch_size, seed, owner, session_id) -> Session:
        input_shape = checked_request(input_shape, batch_size, session_id, self.limits)
        if session_id and self._exists(session_id, owner):
            raise SessionExists(session_id)
        if self.closing:
            raise SessionMoving(session_id or "new", "can't be made here: this replica is shutting down")
        factory = spec.from_spec(description, self.registry)
        session_id = session_id or secrets.token_hex(8)
        session = plan(factory, input_shape, batch_size, seed, owner, session_id, self.limits, self.registry)
        if self.describable is not None:
            self.describable(session.description)  # else it could be made but never listed or stored
        self._check_room(owner, everywhere=True)  # before allocating; again when inserting: others may be faster
        # The trial step's activations too: a huge input must be refused before it is allocated.
        need = session.bytes + work_bytes(session.entry_elements, 1, 1, training=False)
        with self._reserved(session, need, evict=True):
            with network_errors(input_shape), torch.no_grad():
                build(factory, session, self.device)
                session.model(torch.zeros(1, 1, *input_shape, device=self.device))  # fails now, not at its first Run
            session.measure()
            with self._lock:
                self._check_room(owner)
                if session.key in self._sessions:
                    raise SessionExists(session.id)
                self._sessions[session.key] = session
            if self.store is not None:
                self.store.take_lease(session.id, owner, self.holder)
                self.store.clear_expired(session.id, owner)
            with self._lock:
                self._expired.pop(session.key, None)
        log.info(
            "session %s created: %s, input %s, batch %d",
            session.id,
            summary(factory),
            input_shape,
            batch_size,
            extra={"event": "session_created", "session": session.id, "tenant": owner},
        )
        return session

    def _check_room(self, owner: str, everywhere: bool = False) -> None:
        """LimitExceeded if ``owner`` or the server has as many sessions as allowed: those here, and
        with ``everywhere`` and a ``shared_store``, those of the other processes too (from the store)."""
        keys = set(self._sessions)
        if everywhere and self.shared_store:
            keys.update(key for key, _ in self.store.index())
        if len(keys) >= self.limits.max_sessions:
            raise LimitExceeded("max_sessions", len(keys) + 1, self.limits.max_sessions, "open sessions")
        owned = sum(key.owner == owner for key in keys)
        limit = self._quota(owner).max_sessions
        if limit is not None and owned >= limit:
            raise LimitExceeded("tenant max_sessions", owned + 1, limit, f"sessions of {owner}")

    def _exists(self, session_id: str, owner: str) -> bool:
        """``owner`` has a session of this id, here or in the store (other owners' don't count)."""
        with self._lock:
            if SessionKey(session_id, owner) in self._sessions:
                return True
        return self.store is not None and self.store.holds(session_id, owner)

    def delete(self, session: Session) -> None:
        """Close the session and remove its checkpoint; a call running on it finishes first."""
        if not self._forget(session):
            raise SessionNotFound(session_name(session.id))
        with session.lock:
            session.unload()
            if self.store is not None:
                self.store.remove(session.id, session.owner)
        log.info(
            "session %s deleted",
            session.id,
            extra={"event": "session_deleted", "session": session.id, "tenant": session.owner},
        )

    # -- finding sessions -------------------------------------------------------------------------

    def get(self, session_id: str, owner: str = "default", discover: bool = True) -> Session:
        """``owner``'s session of this id, resident or not, or SessionNotFound: another owner's of
        the same id is another session, never found, asked for or moved. With ``discover``, a
        session only the store has is registered here (and loaded by the first call that needs it)."""
        with self._lock:
            session = self._sessions.get(SessionKey(session_id, owner))
        if session is None and discover and self.store is not None:
            session = self._discover(session_id, owner)
        if session is None:
            raise self._gone(session_id, owner, look_in_store=discover)
        session.used_at = time.time()  # any call keeps its session alive
        return session

    def _gone(self, session_id: str, owner: str, look_in_store: bool = True) -> SessionNotFound:
        """The error for a session that isn't (any more): SessionExpired if it expired lately, here
        or (``look_in_store``: its tombstone, which another replica may have left) in the store."""
        name = session_name(session_id)
        with self._lock:
            expired = self._expired.get(SessionKey(session_id, owner))
        if expired is not None and time.time() - expired < EXPIRED_KEPT_S:
            return SessionExpired(name)
        stored = look_in_store and self.store is not None and SESSION_ID.fullmatch(session_id)
        if stored and self.store.expired(session_id, owner, EXPIRED_KEPT_S):
            return SessionExpired(name)
        return SessionNotFound(name)

    def list(self, owner: str | None = None) -> list[Session]:
        """The sessions (of ``owner``, if given), resident or not, oldest first."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if owner is None or s.owner == owner]
        return sorted(sessions, key=lambda s: s.create_time)

    def _discover(self, session_id: str, owner: str) -> Session | None:
        if not SESSION_ID.fullmatch(session_id):
            return None
        self._check_free(session_id, owner)
        return self._register(session_id, owner)

    def _register(self, session_id: str, owner: str) -> Session | None:
        """The session, registered from its checkpoint (not loaded) unless known; None if not stored."""
        found = self.store.describe(session_id, owner)
        if found is None:
            return None
        session = self._stub(session_id, owner, *found)
        with self._lock:
            return self._sessions.setdefault(session.key, session)

    def _stub(self, session_id: str, owner: str, snapshot: Snapshot, nbytes: int, modified: int) -> Session:
        """An evicted session for a stored snapshot (without its tensors, which take ``nbytes``):
        described, sized, not loaded."""
        factory = spec.from_spec(snapshot.description, self.registry)
        shape, batch_size, seed = snapshot.input_shape, snapshot.batch_size, snapshot.seed
        session = plan(factory, shape, batch_size, seed, owner, session_id, self.limits, self.registry)
        session.dirty = False
        session.used_at = 0.0  # the store knows when it was last used: see ``expire``
        session.create_time = snapshot.create_time or session.create_time
        _describe(session, snapshot, nbytes, modified)
        return session

    def register_stored(self, owner: str | None = None) -> int:
        """Bring this replica's sessions (``owner``'s, if given) in line with the checkpoint folder:
        register the stored ones it doesn't know, not loaded, and forget unloaded ones whose
        checkpoint is gone (closed on another replica). After a restart, sessions list and answer
        as before, each loaded on its first call; with replicas sharing the folder, every replica
        lists them all. Unreadable checkpoints are logged and skipped. Returns how many sessions
        the folder holds that are registered here.

        Unlike a call's lookup, this never asks another replica to hand a session over."""
        with self._lock:  # before reading the folder: a session evicted meanwhile is on disk by then
            unloaded = [s for s in self._sessions.values() if not s.resident and owner in (None, s.owner)]
        stored = {key: modified for key, modified in self.store.index() if owner in (None, key.owner)}
        with self._lock:
            for session in unloaded:
                if session.key not in stored and not session.resident and not session.lock.locked():
                    self._sessions.pop(session.key, None)
            known = dict(self._sessions)
        registered = 0
        for key, modified in stored.items():
            try:
                session = known.get(key)
                if session is None:
                    registered += self._register(*key) is not None
                    continue
                registered += 1
                if not session.resident and session.described != modified:
                    self._redescribe(session)
            except Exception as error:  # a checkpoint this server can't rebuild is skipped, never fatal
                log.warning("skipping stored session %s: %s", key.id, error)
        return registered

    def _redescribe(self, session: Session) -> None:
        """Update an unloaded session from its newer checkpoint (written by another replica), unless
        a call has it."""
        if not session.lock.acquire(blocking=False):
            return
        try:
            found = None if session.resident else self.store.describe(session.id, session.owner)
            if found is not None:
                _describe(session, *found)
        finally:
            session.lock.release()

    def _forget(self, session: Session) -> bool:
        """Unregister the session; False if it wasn't registered (any more)."""
        with self._lock:
            if self._sessions.get(session.key) is not session:
                return False
            del self._sessions[session.key]
            return True

    # -- holding a session for a call: residency and memory ---------------------------------------

    @contextmanager
    def held(self, session: Session, work: int = 0, changes: bool = True, wait: bool = True) -> Iterator[None]:
        """While the block runs, the session is the call's: locked and loaded, with ``work`` bytes
        reserved; ``changes``: the call changes what a checkpoint holds. Refused (LimitExceeded)
        over a memory budget. Without ``wait``, WouldBlock instead of waiting for the lock, a load
        or an eviction."""
        if not session.lock.acquire(blocking=wait):
            raise WouldBlock(session.id)
        try:
            if not self.registered(session):  # deleted (or expired) while this call waited
                raise self._gone(session.id, session.owner)
            if self.closing:
                raise SessionMoving(session.id, "is leaving this replica, which is shutting down")
            if not session.resident:
                if not wait:
                    raise WouldBlock(session.id)
                with self._reserved(session, session.bytes, evict=True):
                    self._load(session)
            with self._reserved(session, work, evict=wait):
                session.last_used = time.monotonic()
                session.used_at = time.time()
                yield
                session.dirty |= changes
        finally:
            session.lock.release()

    def registered(self, session: Session) -> bool:
        """Still this manager's: a call that waited may find its session deleted or forgotten."""
        return self._sessions.get(session.key) is session

    def resident_bytes(self, owner: str | None = None) -> int:
        """Bytes the resident sessions (of ``owner``, if given) hold on the device."""
        return self._held_bytes(owner)[0 if owner is not None else 1]

    def _held_bytes(self, owner: str | None) -> tuple[int, int]:
        """Bytes the resident sessions hold: ``owner``'s, and everyone's, in one pass."""
        owned = total = 0
        with self._lock:
            for s in self._sessions.values():
                if s.resident:
                    total += s.bytes
                    owned += s.bytes if s.owner == owner else 0
        return owned, total

    def _quota(self, owner: str) -> Quota:
        return self.quotas.get(owner, Quota())

    @contextmanager
    def _reserved(self, session: Session, need: int, evict: bool) -> Iterator[None]:
        """``need`` bytes reserved for ``session``'s owner while the block runs. Over a budget,
        idle sessions are evicted first (the owner's, for the owner's budget; without ``evict``,
        WouldBlock); if that isn't enough, LimitExceeded gives the numbers."""
        owner, budget = session.owner, self._quota(session.owner).max_memory_mb
        budget = None if budget is None else budget * MB
        while True:
            broken = self.ledger.try_reserve(owner, need, budget, functools.partial(self._held_bytes, owner))
            if broken is None:
                break
            scope, total, allowed = broken
            if not evict:
                raise WouldBlock(session.id)
            if not (self._evict_for(total - allowed, owner if scope == "tenant" else None, session)):
                what = f"device memory of {owner}" if scope == "tenant" else "device memory of the server"
                raise LimitExceeded(
                    f"{scope} max_memory_mb",
                    math.ceil(total / MB),
                    allowed // MB,
                    f"{what} in MB, this call needing {math.ceil(need / MB)} MB; close or shrink sessions,"
                    " or send fewer timesteps x batch",
                )
        try:
            yield
        finally:
            self.ledger.release(owner, need)

    def _evict_for(self, shortfall: int, owner: str | None, keep: Session) -> bool:
        """Evict least recently used idle sessions (of ``owner``, if given) until ``shortfall``
        bytes are free; False if nothing could be evicted."""
        with self._lock:
            candidates = [
                s for s in self._sessions.values() if s.resident and s is not keep and owner in (None, s.owner)
            ]
        freed = 0
        for victim in sorted(candidates, key=lambda s: s.last_used):
            if freed >= shortfall:
                break
            size = victim.bytes
            if self._evict(victim, "memory"):
                freed += size
        return freed > 0

    def evict_idle(self, idle_s: float) -> int:
        """Evict the sessions unused for ``idle_s`` seconds; returns how many."""
        cutoff = time.monotonic() - idle_s
        with self._lock:
            idle = [s for s in self._sessions.values() if s.resident and s.last_used < cutoff]
        return sum(self._evict(s, "idle") for s in idle)

    def _evict(self, session: Session, reason: str) -> bool:
        """Checkpoint the session (if changed) and free its device memory; False if it is busy,
        gone, or there is no store to keep it."""
        if self.store is None or not session.lock.acquire(blocking=False):
            return False
        try:
            if not self._release(session):
                return False
            self.evictions[reason] += 1
        finally:
            session.lock.release()
        log.info(
            "session %s evicted (%s)",
            session.id,
            reason,
            extra={"event": "session_evicted", "session": session.id, "tenant": session.owner, "reason": reason},
        )
        return True

    def _load(self, session: Session) -> None:
        """Bring an evicted session back from its checkpoint (the session's lock is held)."""
        self._check_free(session.id, session.owner)
        self.store.take_lease(session.id, session.owner, self.holder)
        snapshot = self.store.read(session.id, session.owner)
        if snapshot is None:
            self.store.drop_lease(session.id, session.owner, self.holder)
            self._forget(session)
            raise self._gone(session.id, session.owner)
        build(spec.from_spec(snapshot.description, self.registry), session, self.device)
        try:
            restore(session, snapshot, self.limits.max_batch_size)
        except Exception:
            session.unload()
            self.store.drop_lease(session.id, session.owner, self.holder)
            raise
        session.dirty = False
        self.restores += 1
        log.info(
            "session %s loaded from its checkpoint",
            session.id,
            extra={"event": "session_restored", "session": session.id, "tenant": session.owner},
        )

    # -- expiry -----------------------------------------------------------------------------------

    def ttl(self, owner: str) -> float:
        """Seconds ``owner``'s sessions may go unused before they expire; 0: never."""
        own = self._quota(owner).session_ttl_s
        return self.session_ttl_s if own is None else own

    def shortest_ttl(self) -> float:
        """The shortest time-to-live of any tenant (0: sessions never expire here)."""
        ttls = [self.session_ttl_s] + [q.session_ttl_s for q in self.quotas.values() if q.session_ttl_s is not None]
        return min((t for t in ttls if t > 0), default=0.0)

    def record_use(self) -> int:
        """Record in the store when each session used since its last record was last used, so that
        a restarted server and replicas sharing the folder know; returns how many were recorded.
        Run once per expiry round: a busy or streaming session costs one small write a round."""
        if self.store is None:
            return 0
        recorded = 0
        for session in self.list():
            used = session.used_at
            if used <= session.use_recorded:
                continue
            try:
                self.store.mark_used(session.id, session.owner, used)
            except OSError as error:
                log.warning("could not record the use of session %s: %s", session.id, error)
                continue
            session.use_recorded = used
            recorded += 1
        return recorded  # a record of a session closed meanwhile is pruned with the tombstones

    def expire(self) -> int:
        """Delete the sessions (checkpoint, lease and all) that no call has named for longer than
        their owner's time-to-live; returns how many. A busy session, or one another replica holds
        (which expires it itself), is left for a later round. Their ids answer SessionExpired for
        ``EXPIRED_KEPT_S`` (here, and through tombstones in the store on every replica)."""
        self.record_use()
        now = time.time()
        stored = self.store.last_used() if self.store is not None else {}
        with self._lock:
            registered = dict(self._sessions)
            while self._expired and now - next(iter(self._expired.values())) > EXPIRED_KEPT_S:
                self._expired.popitem(last=False)
        expired = 0
        for key in set(registered) | set(stored):
            ttl = self.ttl(key.owner)
            session = registered.get(key)
            last = max(stored.get(key, 0.0), session.used_at if session is not None else 0.0)
            if ttl > 0 and now - last >= ttl:
                try:
                    expired += self._expire(key, session, now - ttl)
                except OSError as error:
                    log.warning("could not expire session %s: %s", key.id, error)
        if self.store is not None:
            self.store.prune_marks(EXPIRED_KEPT_S)
        return expired

    def _expire(self, key: SessionKey, session: Session | None, cutoff: float) -> bool:
        """Delete an unused session: ``session`` if registered here (unless a call has it or named it
        since ``cutoff``), else only its files; False if it was left."""
        if self.store is not None and self.store.lease_holder(*key) not in (None, self.holder):
            return False
        if session is None:
            with self._lock:
                if key in self._sessions:  # registered since: the next round sees it
                    return False
            self._remember_expired(key)
            self.store.remove(*key)
        else:
            if not session.lock.acquire(blocking=False):
                return False
            try:
                if session.used_at >= cutoff or not self._forget(session):
                    return False
                self._remember_expired(key)
                session.unload()
                if self.store is not None:
                    self.store.remove(*key)
            finally:
                session.lock.release()
        self.expiries[key.owner] += 1
        log.info(
            "session %s expired: unused for %s s",
            key.id,
            f"{self.ttl(key.owner):g}",
            extra={"event": "session_expired", "session": key.id, "tenant": key.owner},
        )
        return True

    def _remember_expired(self, key: SessionKey) -> None:
        """Answer SessionExpired for ``key`` from now on (for ``EXPIRED_KEPT_S``): the tombstone goes
        into the store before the files are removed, so that no replica finds neither."""
        with self._lock:
            self._expired[key] = time.time()
            self._expired.move_to_end(key)
            while len(self._expired) > EXPIRED_REMEMBERED:
                self._expired.popitem(last=False)
        if self.store is not None:
            self.store.mark_expired(*key)

    # -- replicas: leases, hand-over and checkpoints ----------------------------------------------

    def _check_free(self, session_id: str, owner: str) -> None:
        """SessionMoving if another replica holds ``owner``'s session; that one is asked to let go of
        it (leases are per owner: naming another tenant's id never moves that tenant's session)."""
        holder = self.store.lease_holder(session_id, owner)
        if holder is not None and holder != self.holder:
            self.store.want(session_id, owner)
            raise SessionMoving(session_id, f"is held by replica {holder!r}, which has been asked to hand it over")

    def begin_hand_over(self) -> None:
        """Start shutting down: calls are refused (SessionMoving, which clients retry, reaching
        another replica once this one stops listening). The leases stay until each session's
        checkpoint is written, so replicas sharing the store wait for it."""
        self.closing = True

    def hand_over(self, grace_s: float) -> int:
        """Checkpoint and free every resident session: idle ones at once, busy ones when their
        call ends (within ``grace_s``); each is unmarked once its checkpoint is written. Returns
        how many were handed over; the rest wait for ``end_hand_over``."""
        deadline, handed = time.monotonic() + grace_s, 0
        for wait in (False, True):  # the idle ones first, so that they are not held up by busy ones
            for session in self.list():
                timeout = max(0.0, deadline - time.monotonic()) if wait else 0.0
                if session.resident and session.lock.acquire(timeout=timeout):
                    try:
                        handed += self._release(session)
                    finally:
                        session.lock.release()
        return handed

    def end_hand_over(self) -> int:
        """Checkpoint what ``hand_over`` couldn't (calls cut off at the end of the grace); returns
        how many were written now."""
        written = 0
        for session in self.list():
            with session.lock:
                written += self._release(session)
        return written

    def _release(self, session: Session) -> bool:
        """(Lock held.) Checkpoint a resident session if changed, free it and drop its lease;
        False if it isn't resident or is gone."""
        if not self._held_here(session):
            return False
        if session.dirty and not self._write(session):
            return False
        session.unload()
        self.store.drop_lease(session.id, session.owner, self.holder)
        return True

    def _held_here(self, session: Session) -> bool:
        """(Lock held.) In memory here and not closed: a call that waited for the lock may find it
        evicted, handed over or deleted meanwhile."""
        return session.resident and self.registered(session)

    def _write(self, session: Session) -> bool:
        """(Lock held.) ``_checkpoint``, and True. A checkpoint that fails (a full disk, a session that
        can't be stored) is logged and counted, and False: the session stays in memory, and whoever
        writes many goes on with the others."""
        try:
            self._checkpoint(session)
        except Exception:
            self.checkpoint_failures += 1
            log.exception(
                "checkpoint of session %s failed; it stays in memory",
                session.id,
                extra={"event": "checkpoint_failed", "session": session.id, "tenant": session.owner},
            )
            return False
        return True

    def _checkpoint(self, session: Session) -> None:
        """(Lock held.) Write the session's checkpoint; it is clean until it changes."""
        self.store.write(session.id, session.owner, take(session))
        session.dirty = False

    def _save(self, session: Session) -> None:
        """Write a new session's checkpoint, if there is a folder and it is still open and here. A
        session that can't be written isn't kept: the call fails and leaves nothing behind."""
        if self.store is None:
            return
        try:
            with session.lock:
                if self._held_here(session):
                    self._checkpoint(session)
        except BaseException:
            self.delete(session)
            raise

    def tend_leases(self) -> int:
        """Renew this replica's leases; let go of sessions other replicas want (checkpoint written)
        and of those another replica took after our lease expired (unwritten: theirs is newer).
        Returns how many sessions were let go of."""
        resident = [s for s in self.list() if s.resident]
        lost, missing = map(set, self.store.renew_leases([s.key for s in resident], self.holder))
        wanted = self.store.wanted()
        released = 0
        for session in resident:
            if session.key in missing and session.lock.acquire(timeout=0):  # busy: next round
                try:
                    if self._held_here(session):
                        self.store.take_lease(session.id, session.owner, self.holder)
                finally:
                    session.lock.release()
            if session.key in lost:
                if not session.lock.acquire(timeout=0):  # busy: dropped next round; renewals never wait
                    continue
                try:
                    session.unload()
                    session.dirty = False
                finally:
                    session.lock.release()
                log.warning("session %s was taken over by another replica; dropped this copy", session.id)
                released += 1
            elif session.key in wanted and session.lock.acquire(timeout=0):
                try:
                    if self._release(session):
                        released += 1
                        log.info(
                            "session %s handed over to the replica that asked for it",
                            session.id,
                            extra={"event": "session_handed_over", "session": session.id, "tenant": session.owner},
                        )
                finally:
                    session.lock.release()
        return released

    def checkpoint_all(self) -> int:
        """Write the checkpoint of every resident session changed since its last one; returns how many."""
        written = 0
        for session in self.list():
            with session.lock:
                if session.dirty and self._held_here(session):
                    written += self._write(session)
        return written


def _describe(session: Session, snapshot: Snapshot, nbytes: int, modified: int) -> None:
    """What an unloaded session shows of its checkpoint: timesteps and size."""
    session.timesteps, session.bytes, session.described = snapshot.timesteps, nbytes, modified
