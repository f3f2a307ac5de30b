"""Sessions: built networks with their state on the server's device. Knows nothing of gRPC.

Every method is thread-safe. Calls to one session run one at a time; calls to different
sessions run in parallel. A call that fails leaves its session as it was.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

import rnnbuilder as rb
from rnnbuilder import spec
from rnnbuilder_sim.wire.names import session_name

from .config import Limits
from .errors import (
    CallCancelled,
    InvalidRequest,
    LimitExceeded,
    SessionExists,
    SessionMoving,
    SessionNotFound,
    is_out_of_memory,
)
from .memory import MB, MemoryLedger, Quota, held_bytes, work_bytes
from .training import (
    GLOBAL_RNG,
    BatchResult,
    OptimizerConfig,
    Totals,
    Training,
    detached,
    evaluate_batch,
    get_loss,
    optimizer_snapshot,
    restore_optimizer,
    train_batch,
    train_chunks,
)

__all__ = ["Session", "SessionManager", "SessionStore", "SESSION_ID", "WouldBlock"]

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a session id may be: safe in file names, URLs and metadata."""

log = logging.getLogger("rnnsim.sessions")


class WouldBlock(Exception):
    """A call asked not to wait would have to: its session is busy or evicted, or memory must be
    made; it should run where waiting is fine (a scheduler slot)."""


class SessionStore(Protocol):
    """Where sessions go when they leave memory: a checkpoint folder (see ``server.checkpoints``)."""

    def write(self, session_id: str, owner: str, snapshot: dict) -> None: ...
    def read(self, session_id: str, owner: str | None) -> tuple[str, dict] | None: ...
    def describe(self, session_id: str, owner: str | None) -> tuple[str, dict, int, int] | None: ...
    def index(self) -> list[tuple[str, str, int]]: ...
    def holds(self, session_id: str) -> bool: ...
    def lease_holder(self, session_id: str) -> str | None: ...
    def take_lease(self, session_id: str, holder: str) -> None: ...
    def renew_leases(self, session_ids: list[str], holder: str) -> tuple[list[str], list[str]]: ...
    def drop_lease(self, session_id: str, holder: str) -> None: ...
    def want(self, session_id: str) -> None: ...
    def wanted(self) -> set[str]: ...
    def remove(self, session_id: str) -> None: ...


@dataclass
class Session:
    """One simulation: the model with its parameters, and the state between calls.

    ``model``, ``state`` and ``training`` are None while the session is evicted: its checkpoint
    holds them, and the next call that needs them loads it. The rest is always here.
    """

    id: str
    description: dict
    input_shape: tuple[int, ...]
    batch_size: int
    seed: int
    owner: str
    create_time: dt.datetime
    output_shape: tuple[int, ...]
    parameter_count: int
    recordable_layers: list[str]
    entry_elements: int
    """Input, state and output elements per batch entry: the scale of a call's activations."""
    model: rb.Model | None = None
    state: object = None
    training: Training | None = None
    timesteps: int = 0
    bytes: int = 0
    """Device bytes it holds while resident (measured), or will hold when loaded (from its checkpoint)."""
    last_used: float = field(default_factory=time.monotonic)
    dirty: bool = True
    """Changed since its last checkpoint."""
    described: int = 0
    """The modification time (ns) of the checkpoint it was last described from, if unloaded."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def resident(self) -> bool:
        return self.model is not None


class SessionManager:
    """Creates, runs, evicts and deletes sessions on one device, within ``limits`` and memory budgets.

    With a ``store``, sessions can leave memory (``evict_idle``, or to make room under a budget)
    and come back on their next call; sessions the store has but memory hasn't (after a restart,
    or written by another replica sharing the folder) are loaded on demand. ``holder`` names this
    replica in the store's leases: a session another replica holds is asked for and waited for
    (SessionMoving) rather than loaded from an older checkpoint; ``tend_leases`` does the rest.
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
    ):
        self.device = device
        self.holder = holder
        self.limits = limits
        self.registry = registry or spec.default_registry
        self.store = store
        self.quotas = dict(quotas or {})
        self.ledger = MemoryLedger(memory_budget_bytes)
        self.evictions: Counter[str] = Counter()
        """Sessions evicted, by reason (``idle``, ``memory``)."""
        self.restores = 0
        """Evicted or stored sessions loaded back into memory."""
        self.closing = False
        """Shutting down: sessions are being handed over to their checkpoints, calls are refused."""
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

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

    def _create(self, description, input_shape, batch_size, seed, owner, session_id) -> Session:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d <= 0 for d in input_shape):
            raise InvalidRequest(
                f"input_shape must be one or more positive sizes, such as [64], got {list(input_shape)}"
            )
        if batch_size <= 0:
            raise InvalidRequest(f"batch_size must be positive, got {batch_size}")
        if batch_size > self.limits.max_batch_size:
            raise LimitExceeded("max_batch_size", batch_size, self.limits.max_batch_size, "batch size")
        if session_id and not SESSION_ID.fullmatch(session_id):
            raise InvalidRequest(f"a session id is 1 to 64 letters, digits, '-' or '_', got {session_id!r}")
        if session_id and self._exists(session_id):
            raise SessionExists(session_id)
        if self.closing:
            raise SessionMoving(session_id or "new", "can't be made here: this replica is shutting down")
        factory = spec.from_spec(description, self.registry)
        session = self._plan(factory, input_shape, batch_size, seed, owner, session_id or secrets.token_hex(8))
        self._check_room(owner)  # before allocating; again when inserting: others may be faster
        with self._reserved(session, session.bytes, evict=True):
            with _network_errors(input_shape), torch.no_grad():
                self._build(factory, session)
                session.model(torch.zeros(1, 1, *input_shape, device=self.device))  # fails now, not at its first Run
            session.bytes = held_bytes(session.model, session.state)
            with self._lock:
                self._check_room(owner)
                if session.id in self._sessions:
                    raise SessionExists(session.id)
                self._sessions[session.id] = session
            if self.store is not None:
                self.store.take_lease(session.id, self.holder)
        log.info(
            "session %s created: %s, input %s, batch %d",
            session.id,
            _summary(factory),
            input_shape,
            batch_size,
            extra={"event": "session_created", "session": session.id, "tenant": owner},
        )
        return session

    def _build(self, factory, session: Session) -> None:
        """Make the session's model (its parameters drawn from its seed), state and training state."""
        with GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # the global generator is shared by threads
            torch.manual_seed(session.seed)
            model = factory.make_model(session.input_shape)
        session.model = model.to(self.device).eval()
        session.state = session.model.get_initial_state(session.batch_size)
        session.training = Training(session.seed)

    def _plan(
        self, factory, input_shape: tuple[int, ...], batch_size: int, seed: int, owner: str, session_id: str
    ) -> Session:
        """The session ``factory`` would make, with nothing allocated: sizes are counted on the
        meta device and checked against the limits."""
        with _network_errors(input_shape), torch.device("meta"):
            planned = factory.make_model(input_shape)
            size = sum(t.numel() for t in planned.state_dict().values())
            initial = planned.get_initial_state(batch_size)
            state_size = sum(t.numel() for t in rb.named_leaves(initial).values())
            held = held_bytes(planned, initial)
        if size > self.limits.max_parameters_per_session:
            raise LimitExceeded(
                "max_parameters_per_session", size, self.limits.max_parameters_per_session, "parameters and buffers"
            )
        if state_size > self.limits.max_state_elements_per_session:
            raise LimitExceeded(
                "max_state_elements_per_session",
                state_size,
                self.limits.max_state_elements_per_session,
                "state elements (neurons x batch); use a smaller batch or network",
            )
        return Session(
            id=session_id,
            description=spec.to_spec(factory, self.registry),
            input_shape=input_shape,
            batch_size=batch_size,
            seed=seed,
            owner=owner,
            create_time=dt.datetime.now(dt.UTC),
            output_shape=planned.out_shape,
            parameter_count=sum(p.numel() for p in planned.parameters()),
            recordable_layers=planned.record_names(),
            entry_elements=state_size // batch_size + math.prod(input_shape) + math.prod(planned.out_shape),
            bytes=held,
        )

    def _check_room(self, owner: str) -> None:
        if len(self._sessions) >= self.limits.max_sessions:
            raise LimitExceeded("max_sessions", len(self._sessions) + 1, self.limits.max_sessions, "open sessions")
        owned = sum(s.owner == owner for s in self._sessions.values())
        limit = self._quota(owner).max_sessions
        if limit is not None and owned >= limit:
            raise LimitExceeded("tenant max_sessions", owned + 1, limit, f"sessions of {owner}")

    def _exists(self, session_id: str) -> bool:
        """Known here or in the store, whoever owns it."""
        with self._lock:
            if session_id in self._sessions:
                return True
        return self.store is not None and self.store.holds(session_id)

    def _quota(self, owner: str) -> Quota:
        return self.quotas.get(owner, Quota())

    def resident_bytes(self, owner: str | None = None) -> int:
        """Bytes the resident sessions (of ``owner``, if given) hold on the device."""
        return self._held(owner)[0 if owner is not None else 1]

    def _held(self, owner: str | None) -> tuple[int, int]:
        """Bytes the resident sessions hold: ``owner``'s, and everyone's, in one pass."""
        owned = total = 0
        with self._lock:
            for s in self._sessions.values():
                if s.resident:
                    total += s.bytes
                    owned += s.bytes if s.owner == owner else 0
        return owned, total

    def get(self, session_id: str, owner: str | None = None, discover: bool = True) -> Session:
        """The session, resident or not; ``owner``, if given, must own it: others get
        SessionNotFound, so that a session's existence doesn't leak to other tenants. With
        ``discover``, a session only the store has is registered here (and loaded by the first
        call that needs it)."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None and discover and self.store is not None:
            session = self._discover(session_id, owner)
        if session is None or (owner is not None and session.owner != owner):
            raise SessionNotFound(session_name(session_id))
        return session

    def _discover(self, session_id: str, owner: str | None) -> Session | None:
        if not SESSION_ID.fullmatch(session_id):
            return None
        self._check_free(session_id)
        return self._register(session_id, owner)

    def _register(self, session_id: str, owner: str | None) -> Session | None:
        """The session, registered from its checkpoint (not loaded) unless known; None if not stored."""
        found = self.store.describe(session_id, owner)
        if found is None:
            return None
        session = self._stub(session_id, *found)
        with self._lock:
            return self._sessions.setdefault(session_id, session)

    def _stub(self, session_id: str, owner: str, snapshot: dict, nbytes: int, modified: int) -> Session:
        """An evicted session for a stored snapshot (without its tensors, which take ``nbytes``):
        described, sized, not loaded."""
        factory = spec.from_spec(snapshot["description"], self.registry)
        session = self._plan(
            factory, tuple(snapshot["input_shape"]), snapshot["batch_size"], snapshot["seed"], owner, session_id
        )
        session.dirty = False
        session.create_time = snapshot["create_time"] or session.create_time
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
        stored = [(i, o, modified) for i, o, modified in self.store.index() if owner in (None, o)]
        ids = {session_id for session_id, _, _ in stored}
        with self._lock:
            for session in unloaded:
                if session.id not in ids and not session.resident and not session.lock.locked():
                    self._sessions.pop(session.id, None)
            known = dict(self._sessions)
        registered = 0
        for session_id, session_owner, modified in stored:
            try:
                session = known.get(session_id)
                if session is None:
                    registered += self._register(session_id, session_owner) is not None
                    continue
                registered += session.owner == session_owner
                if not session.resident and session.described != modified:
                    self._redescribe(session)
            except Exception as error:  # a checkpoint this server can't rebuild is skipped, never fatal
                log.warning("skipping stored session %s: %s", session_id, error)
        return registered

    def _redescribe(self, session: Session) -> None:
        """Update an unloaded session from its newer checkpoint (written by another replica), unless
        a call has it."""
        if not session.lock.acquire(blocking=False):
            return
        try:
            found = None if session.resident else self.store.describe(session.id, session.owner)
            if found is not None:
                _describe(session, *found[1:])
        finally:
            session.lock.release()

    def list(self, owner: str | None = None) -> list[Session]:
        """The sessions (of ``owner``, if given), resident or not, oldest first."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if owner is None or s.owner == owner]
        return sorted(sessions, key=lambda s: s.create_time)

    def delete(self, session_id: str) -> None:
        """Close the session and remove its checkpoint; a call running on it finishes first."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFound(session_name(session_id))
        with session.lock:
            session.model = session.state = session.training = None
            if self.store is not None:
                self.store.remove(session_id)
        log.info("session %s deleted", session_id, extra={"event": "session_deleted", "session": session_id})

    @contextmanager
    def _using(self, session_id: str, work: int = 0, changes: bool = True, wait: bool = True) -> Iterator[Session]:
        """The session, locked and loaded, with ``work`` bytes reserved for the call; ``changes``:
        the call changes what a checkpoint holds. Refused (LimitExceeded) over a memory budget.
        Without ``wait``, WouldBlock instead of waiting for the lock, a load or an eviction."""
        session = self.get(session_id)
        if not session.lock.acquire(blocking=wait):
            raise WouldBlock(session_id)
        try:
            if session_id not in self._sessions:  # deleted while this call waited
                raise SessionNotFound(session_name(session_id))
            if self.closing:
                raise SessionMoving(session_id, "is leaving this replica, which is shutting down")
            if not session.resident:
                if not wait:
                    raise WouldBlock(session_id)
                with self._reserved(session, session.bytes, evict=True):
                    self._load(session)
            with self._reserved(session, work, evict=wait):
                session.last_used = time.monotonic()
                yield session
                session.dirty |= changes
        finally:
            session.lock.release()

    @contextmanager
    def _reserved(self, session: Session, need: int, evict: bool) -> Iterator[None]:
        """``need`` bytes reserved for ``session``'s owner while the block runs. Over a budget,
        idle sessions are evicted first (the owner's, for the owner's budget; without ``evict``,
        WouldBlock); if that isn't enough, LimitExceeded gives the numbers."""
        owner, budget = session.owner, self._quota(session.owner).max_memory_mb
        budget = None if budget is None else budget * MB
        while True:
            broken = self.ledger.try_reserve(owner, need, budget, functools.partial(self._held, owner))
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

    def _check_free(self, session_id: str) -> None:
        """SessionMoving if another replica holds the session; that one is asked to let go of it."""
        holder = self.store.lease_holder(session_id)
        if holder is not None and holder != self.holder:
            self.store.want(session_id)
            raise SessionMoving(session_id, f"is held by replica {holder!r}, which has been asked to hand it over")

    def _load(self, session: Session) -> None:
        """Bring an evicted session back from its checkpoint (the session's lock is held)."""
        self._check_free(session.id)
        self.store.take_lease(session.id, self.holder)
        found = self.store.read(session.id, session.owner)
        if found is None:
            self.store.drop_lease(session.id, self.holder)
            with self._lock:
                self._sessions.pop(session.id, None)
            raise SessionNotFound(session_name(session.id))
        snapshot = found[1]
        self._build(spec.from_spec(snapshot["description"], self.registry), session)
        try:
            self._apply(session, snapshot)
        except Exception:
            session.model = session.state = session.training = None
            self.store.drop_lease(session.id, self.holder)
            raise
        session.dirty = False
        self.restores += 1
        log.info(
            "session %s loaded from its checkpoint",
            session.id,
            extra={"event": "session_restored", "session": session.id, "tenant": session.owner},
        )

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
        if session.dirty:
            self._write(session)
        session.model = session.state = session.training = None
        self.store.drop_lease(session.id, self.holder)
        return True

    def _held_here(self, session: Session) -> bool:
        """(Lock held.) In memory here and not closed: a call that waited for the lock may find it
        evicted, handed over or deleted meanwhile."""
        return session.resident and session.id in self._sessions

    def _write(self, session: Session) -> None:
        """(Lock held.) Write the resident session's checkpoint; it is clean until it changes."""
        self.store.write(session.id, session.owner, self._export(session))
        session.dirty = False

    def _save(self, session: Session) -> None:
        """Write a new session's checkpoint, if there is a folder and it is still open and here."""
        if self.store is not None:
            with session.lock:
                if self._held_here(session):
                    self._write(session)

    def tend_leases(self) -> int:
        """Renew this replica's leases; let go of sessions other replicas want (checkpoint written)
        and of those another replica took after our lease expired (unwritten: theirs is newer).
        Returns how many sessions were let go of."""
        resident = [s for s in self.list() if s.resident]
        lost, missing = map(set, self.store.renew_leases([s.id for s in resident], self.holder))
        wanted = self.store.wanted()
        released = 0
        for session in resident:
            if session.id in missing and session.lock.acquire(timeout=0):  # busy: next round
                try:
                    if self._held_here(session):
                        self.store.take_lease(session.id, self.holder)
                finally:
                    session.lock.release()
            if session.id in lost:
                if not session.lock.acquire(timeout=0):  # busy: dropped next round; renewals never wait
                    continue
                try:
                    session.model = session.state = session.training = None
                    session.dirty = False
                finally:
                    session.lock.release()
                log.warning("session %s was taken over by another replica; dropped this copy", session.id)
                released += 1
            elif session.id in wanted and session.lock.acquire(timeout=0):
                try:
                    if self._release(session):
                        released += 1
                        log.info(
                            "session %s handed over to the replica that asked for it",
                            session.id,
                            extra={"event": "session_handed_over", "session": session.id},
                        )
                finally:
                    session.lock.release()
        return released

    def checkpoint_all(self) -> int:
        """Write the checkpoint of every resident session changed since its last one; returns how many."""
        written = 0
        for session in self.list():
            try:
                with session.lock:
                    if session.dirty and self._held_here(session):
                        self._write(session)
                        written += 1
            except Exception:  # a full disk: the others still get written
                log.exception("checkpoint of session %s failed", session.id)
        return written

    def run(
        self,
        session_id: str,
        x: torch.Tensor,
        record: list[str],
        bitpacked: bool = False,
        wait: bool = True,
        wanted: Callable[[], bool] = lambda: True,
    ) -> tuple[torch.Tensor, dict, int]:
        """Simulate x (time, batch, *input_shape) from the session's state, which then moves on.

        Returns the output (time, batch, *output_shape), the recordings by name and the session's
        timestep count before this call. ``bitpacked``: the reply will carry binary values as bits,
        which counts for the reply's size limit. A call that fails leaves the state as it was.
        Without ``wait``: WouldBlock rather than wait for anything (see ``_using``). If ``wanted()``
        is false once the result is ready (its caller went away), CallCancelled and the state stays.
        """
        session = self.get(session_id)
        x = self._checked_input(session, x, batch=session.batch_size)
        work = work_bytes(session.entry_elements, x.shape[0], x.shape[1], training=False)
        with self._using(session_id, work, wait=wait) as session, torch.no_grad():
            if record:
                out, state, recordings = session.model.record(x, record, session.state)
            else:
                (out, state), recordings = session.model(x, session.state), {}
            replied = (out, *recordings.values())
            reply = sum(t.numel() * 4 for t in replied)
            if bitpacked and reply > self.limits.max_message_bytes:
                # The 0/1 check is a pass over the reply, and encoding makes it again: only when it decides.
                reply = sum(_packed_bytes(t) for t in replied)
            if reply > self.limits.max_message_bytes:
                raise LimitExceeded(
                    "max_message_bytes", reply, self.limits.max_message_bytes, "reply bytes (send fewer timesteps)"
                )
            if not wanted():
                raise CallCancelled(f"the call on {session_name(session_id)} was cancelled; its state is unchanged")
            first = session.timesteps
            session.state, session.timesteps = state, first + x.shape[0]
        return out, recordings, first

    def train_step(
        self,
        session_id: str,
        x: torch.Tensor,
        y: torch.Tensor,
        loss: str,
        optimizer: OptimizerConfig,
        clip_norm: float = 0.0,
        carry: str = "none",
    ) -> BatchResult:
        """One optimizer step on x (time, batch, *input_shape) with targets ``y``.

        ``carry``: ``"none"`` starts from a fresh state; ``"start"`` too, and keeps the final state
        (detached) for the next ``"continue"`` step: truncated BPTT over a stream of chunks. The
        streaming state of ``run`` and ``Simulate`` is never touched.
        """
        if carry not in ("none", "start", "continue"):
            raise InvalidRequest(f"carry must be 'none', 'start' or 'continue', got {carry!r}")
        session = self.get(session_id)
        objective = get_loss(loss)
        x = self._checked_input(session, x)
        y = objective.check_targets(y.to(self.device), x.shape[0], x.shape[1], session.output_shape)
        with self._using(session_id, self._training_work(session, x.shape[0], x.shape[1])) as session:
            carried = session.training.carried if carry == "continue" else None
            if carried is not None and session.model.batch_size_of(carried) not in (0, x.shape[1]):
                raise InvalidRequest("carry='continue' needs the batch size of the chunk that started the stream")
            result, final = train_batch(session.model, session.training, x, y, objective, optimizer, clip_norm, carried)
            if carry != "none":
                session.training.carried = detached(final)
            self._measure(session)
        return result

    def _training_work(self, session: Session, timesteps: int, batch: int) -> int:
        """Activations and gradients, plus room for an optimizer's moments if there is none yet."""
        moments = 0 if session.resident and session.training.optimizer is not None else 2 * 4 * session.parameter_count
        return work_bytes(session.entry_elements, timesteps, batch, training=True) + moments

    def _measure(self, session: Session) -> None:
        session.bytes = held_bytes(session.model, session.state, session.training.optimizer, session.training.carried)

    def fit(
        self,
        session_id: str,
        x: torch.Tensor,
        y: torch.Tensor,
        loss: str,
        optimizer: OptimizerConfig,
        epochs: int,
        batch_size: int,
        clip_norm: float = 0.0,
        shuffle: bool = True,
        validation: tuple[torch.Tensor, torch.Tensor] | None = None,
        tbptt_steps: int = 0,
        report: Callable[[dict], None] = lambda progress: None,
        cancelled: Callable[[], bool] = lambda: False,
        schedule: Callable[[Callable], object] = lambda job: job(),
    ) -> list[dict]:
        """Train on a dataset x (samples, time, *input_shape), targets (samples, ...), for ``epochs``.

        Each batch starts from a fresh state; the order is shuffled by the session's generator.
        ``report`` gets a dict after every batch (``kind="batch"``) and epoch (``kind="epoch"``).
        Stops at the next batch boundary once ``cancelled()``; returns the per-epoch history.
        ``schedule(job)`` runs each batch's ``job()`` and returns its result: a scheduler's turn.
        """
        session = self.get(session_id)
        objective = get_loss(loss)
        if epochs < 1 or batch_size < 1:
            raise InvalidRequest(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
        if tbptt_steps < 0:
            raise InvalidRequest(f"tbptt_steps must be 0 (whole sequences) or positive, got {tbptt_steps}")
        x, y = self._dataset(session, x, y, objective, batch_size)
        if validation is not None:
            validation = self._dataset(session, *validation, objective, batch_size)
        history: list[dict] = []
        batches = math.ceil(x.shape[1] / batch_size)
        steps = min(tbptt_steps or x.shape[0], x.shape[0])

        def train(index: torch.Tensor) -> BatchResult:
            with self._using(session_id, self._training_work(session, steps, len(index))) as held:
                result = train_chunks(
                    held.model,
                    held.training,
                    x[:, index],
                    y[:, index] if objective.per_step else y[index],
                    objective,
                    optimizer,
                    clip_norm,
                    tbptt_steps,
                )
                self._measure(held)
                return result

        for epoch in range(epochs):
            started, totals = time.perf_counter(), Totals()
            with self._using(session_id, changes=shuffle) as held:
                order = torch.randperm(x.shape[1], generator=held.training.rng) if shuffle else torch.arange(x.shape[1])
            for batch, index in enumerate(order.to(self.device).split(batch_size)):
                if cancelled():
                    log.info("session %s training cancelled at epoch %d, batch %d", session_id, epoch, batch)
                    return history
                result = schedule(functools.partial(train, index))
                totals.add(result, len(index))
                report({"kind": "batch", "epoch": epoch, "batch": batch, "batches": batches, **result.metrics()})
            summary = {
                "epoch": epoch,
                **totals.metrics(),
                "samples_per_second": x.shape[1] / (time.perf_counter() - started),
            }
            if validation is not None:
                metrics = self._evaluate(session_id, *validation, objective, batch_size, schedule)
                summary.update({f"val_{k}": v for k, v in metrics.items()})
            history.append(summary)
            report({"kind": "epoch", **summary})
            log.info(
                "session %s epoch %d: %s",
                session_id,
                epoch,
                summary,
                extra={"event": "epoch", "session": session_id, "tenant": session.owner},
            )
        return history

    def evaluate(
        self,
        session_id: str,
        x: torch.Tensor,
        y: torch.Tensor,
        loss: str,
        batch_size: int,
        schedule: Callable[[Callable], object] = lambda job: job(),
    ) -> dict:
        """Loss (and accuracy, for class losses) on x (samples, time, ...), in eval mode;
        ``schedule`` as in ``fit``."""
        session = self.get(session_id)
        objective = get_loss(loss)
        if batch_size < 1:
            raise InvalidRequest(f"batch_size must be at least 1, got {batch_size}")
        x, y = self._dataset(session, x, y, objective, batch_size)
        return self._evaluate(session_id, x, y, objective, batch_size, schedule)

    def _evaluate(self, session_id: str, x, y, objective, batch_size: int, schedule) -> dict:
        totals = Totals()

        def evaluate(index: torch.Tensor) -> BatchResult:
            work = work_bytes(self.get(session_id).entry_elements, x.shape[0], len(index), training=False)
            with self._using(session_id, work, changes=False) as held:
                return evaluate_batch(
                    held.model, x[:, index], y[:, index] if objective.per_step else y[index], objective
                )

        for index in torch.arange(x.shape[1], device=self.device).split(batch_size):
            totals.add(schedule(functools.partial(evaluate, index)), len(index))
        metrics = totals.metrics()
        metrics.pop("grad_norm")
        return metrics

    def _dataset(self, session: Session, x: torch.Tensor, y: torch.Tensor, objective, batch_size: int):
        """x (samples, time, ...) -> (time, samples, ...) on the device, y checked for the loss."""
        if x.dim() != len(session.input_shape) + 2 or tuple(x.shape[2:]) != session.input_shape:
            want = ", ".join(map(str, session.input_shape))
            raise rb.ShapeError(f"inputs must have shape (samples, time, {want}), got {tuple(x.shape)}")
        if y.dim() < 1 or x.shape[0] != y.shape[0]:
            raise InvalidRequest(
                f"sample and target counts differ: {x.shape[0]} input sequences, targets {tuple(y.shape)}"
            )
        x = self._checked_input(session, x.transpose(0, 1), rows=batch_size)
        if objective.per_step:
            y = y.transpose(0, 1)
        return x, objective.check_targets(y.to(self.device), x.shape[0], x.shape[1], session.output_shape)

    def _checked_input(self, session: Session, x: torch.Tensor, batch: int | None = None, rows: int | None = None):
        """x (time, batch, *input_shape) on the device as float32, or an error that says what's wrong.

        ``batch``: the batch size x must have, if fixed; ``rows``: how many sequences run at once
        (for the work limit), if not all of x's.
        """
        if (
            x.dim() != len(session.input_shape) + 2
            or tuple(x.shape[2:]) != session.input_shape
            or (batch is not None and x.shape[1] != batch)
        ):
            want = ", ".join(map(str, (batch if batch is not None else "batch", *session.input_shape)))
            raise rb.ShapeError(f"input must have shape (time, {want}), got {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise InvalidRequest("input is empty; send at least one timestep and one sequence")
        work = x.shape[0] * min(rows or x.shape[1], x.shape[1])
        if work > self.limits.max_timesteps_times_batch:
            raise LimitExceeded(
                "max_timesteps_times_batch", work, self.limits.max_timesteps_times_batch, "timesteps x batch"
            )
        if x.is_floating_point() and not _finite(x):
            raise InvalidRequest("input contains NaN or infinity")
        return x.to(device=self.device, dtype=torch.float32)

    def export(self, session_id: str) -> dict:
        """Everything needed to recreate the session exactly: description, parameters, state,
        optimizer state, random generator, carried training state and timestep count."""
        with self._using(session_id, changes=False) as session:
            return self._export(session)

    def _export(self, session: Session) -> dict:
        training = session.training
        return {
            "description": session.description,
            "input_shape": session.input_shape,
            "batch_size": session.batch_size,
            "seed": session.seed,
            "timesteps": session.timesteps,
            "parameters": _cpu(session.model.state_dict()),
            "state": _cpu(rb.named_leaves(session.state)),
            "optimizer": optimizer_snapshot(training),
            "rng": training.rng.get_state(),
            "carried": None if training.carried is None else _cpu(rb.named_leaves(training.carried)),
            "carried_batch": 0 if training.carried is None else session.model.batch_size_of(training.carried),
            "create_time": session.create_time,
        }

    def import_(self, snapshot: dict, owner: str = "default", session_id: str | None = None) -> Session:
        """A new session of ``owner`` (under ``session_id``, if given), exactly as ``export`` described one."""
        session = self._create(
            snapshot["description"],
            snapshot["input_shape"],
            snapshot["batch_size"],
            snapshot["seed"],
            owner,
            session_id,
        )
        try:
            with self._using(session.id) as held:
                self._apply(held, snapshot)
        except Exception:
            self.delete(session.id)
            raise
        self._save(session)
        log.info("session %s imported from a snapshot", session.id, extra={"event": "session_imported"})
        return session

    def _apply(self, session: Session, snapshot: dict) -> None:
        """Load ``export``'s output into a resident session (its lock held), checked first."""
        self._assign_parameters(session, snapshot["parameters"])
        self._assign_state(session, snapshot["state"])
        training = session.training
        if snapshot["optimizer"] is not None:
            restore_optimizer(training, session.model, snapshot["optimizer"])
        if snapshot["rng"] is not None:
            try:
                training.rng.set_state(snapshot["rng"].to(torch.uint8))
            except RuntimeError as e:
                raise InvalidRequest(f"the random generator state is malformed: {e}") from None
        if snapshot["carried"] is not None:
            carried_batch = snapshot["carried_batch"]
            if not 1 <= carried_batch <= self.limits.max_batch_size:
                raise InvalidRequest(
                    f"carried_batch_size must be 1 to {self.limits.max_batch_size} with a carried state,"
                    f" got {carried_batch}"
                )
            template = session.model.get_initial_state(carried_batch)
            training.carried = rb.replace_leaves(template, snapshot["carried"])
        session.timesteps = snapshot["timesteps"]
        self._measure(session)

    def reset(self, session_id: str, batch_indices: list[int]) -> None:
        """Restart the state of ``batch_indices`` (all when empty)."""
        with self._using(session_id) as session:
            if batch_indices:
                session.state = session.model.reset_state(session.state, batch_indices)
            else:
                session.state = session.model.get_initial_state(session.batch_size)
        log.info("session %s reset %s", session_id, batch_indices or "all")

    def get_state(self, session_id: str) -> dict[str, torch.Tensor]:
        with self._using(session_id, changes=False) as session:
            return _cpu(rb.named_leaves(session.state))

    def set_state(self, session_id: str, tensors: dict[str, torch.Tensor]) -> None:
        with self._using(session_id) as session:
            self._assign_state(session, tensors)

    def _assign_state(self, session: Session, tensors: dict[str, torch.Tensor]) -> None:
        _check_finite(tensors, "state")
        session.state = rb.replace_leaves(session.model.get_initial_state(session.batch_size), tensors)

    def get_parameters(self, session_id: str) -> dict[str, torch.Tensor]:
        with self._using(session_id, changes=False) as session:
            return _cpu(session.model.state_dict())

    def set_parameters(self, session_id: str, tensors: dict[str, torch.Tensor]) -> None:
        """Replace the named parameters and buffers; the others keep their values."""
        with self._using(session_id) as session:
            self._assign_parameters(session, tensors)
        log.info("session %s parameters set: %d tensors", session_id, len(tensors))

    def _assign_parameters(self, session: Session, tensors: dict[str, torch.Tensor]) -> None:
        current = session.model.state_dict()
        unknown = sorted(tensors.keys() - current.keys())
        if unknown:
            raise InvalidRequest(f"unknown parameters {unknown}; this session has {sorted(current)}")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(current[name].shape):
                raise rb.ShapeError(
                    f"parameter {name!r} must have shape {tuple(current[name].shape)}, got {tuple(tensor.shape)}"
                )
        _check_finite(tensors, "parameter")
        with torch.no_grad():
            for name, tensor in tensors.items():
                current[name].copy_(tensor)


@contextmanager
def _network_errors(input_shape: tuple[int, ...]) -> Iterator[None]:
    """Errors from building or running a user's network are the request's fault: InvalidRequest
    saying what failed (our own errors, and running out of memory, pass unchanged)."""
    try:
        yield
    except (rb.RnnbuilderError, InvalidRequest, LimitExceeded, SessionExists, SessionMoving):
        raise
    except Exception as error:
        if is_out_of_memory(error):
            raise
        raise InvalidRequest(
            f"the network can't run on inputs of shape {list(input_shape)}: {type(error).__name__}: {error}"
        ) from error


def _describe(session: Session, snapshot: dict, nbytes: int, modified: int) -> None:
    """What an unloaded session shows of its checkpoint: timesteps and size."""
    session.timesteps, session.bytes, session.described = snapshot["timesteps"], nbytes, modified


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().clone() for name, t in tensors.items()}


def _packed_bytes(tensor: torch.Tensor) -> int:
    """What ``tensor`` takes in a bit-packed reply: a bit per element if it is all 0/1, else its raw size."""
    if bool(((tensor == 0) | (tensor == 1)).all()):
        return (tensor.numel() + 7) // 8
    return tensor.numel() * 4


def _finite(tensor: torch.Tensor) -> bool:
    # Inputs arrive on the CPU: numpy checks them several times faster than torch, with no device sync.
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64, torch.float16):
        return bool(np.isfinite(tensor.numpy()).all())
    return bool(torch.isfinite(tensor).all())


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not _finite(tensor):
            raise InvalidRequest(f"{what} {name!r} contains NaN or infinity")


def _summary(factory) -> str:
    text = repr(factory)
    return text if len(text) <= 120 else text[:117] + "..."
