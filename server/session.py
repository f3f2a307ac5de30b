"""What a session is, and where sessions go when they leave memory. Knows nothing of gRPC."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import rnnbuilder as rb

from .memory import held_bytes
from .training import Training

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["Session", "SessionKey", "SessionStore", "Timing", "SESSION_ID"]

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a session id may be: safe in file names, URLs and metadata."""


class SessionKey(NamedTuple):
    """What tells sessions apart: ids are per owner, so that one tenant's ids never collide with,
    nor reveal, another's (in memory, checkpoint files and leases alike)."""

    id: str
    owner: str


@dataclass(frozen=True)
class Timing:
    """How long a simulation of a session took: ``seconds`` for ``entry_steps`` (timesteps x batch)."""

    seconds: float
    entry_steps: int

    def bound(self, entry_steps: int) -> float:
        """Seconds a simulation of ``entry_steps`` takes at most, if a call's cost is a fixed part
        (per call, per layer) plus a part that grows with its size: no more than this one for a
        smaller call, and in proportion for a larger one."""
        return self.seconds * max(1.0, entry_steps / self.entry_steps)


@dataclass(eq=False)
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
    timing: Timing | None = None
    """Its latest simulation's, to tell how long the next will take; None until one has run."""
    bytes: int = 0
    """Device bytes it holds while resident (measured), or will hold when loaded (from its checkpoint)."""
    last_used: float = field(default_factory=time.monotonic)
    used_at: float = field(default_factory=time.time)
    """When a call last named it (seconds since the epoch), for expiry; 0: not since this replica
    registered it from its checkpoint (the store's record of its last use tells)."""
    use_recorded: float = 0.0
    """The ``used_at`` last recorded in the store (``SessionManager.record_use``)."""
    dirty: bool = True
    """Changed since its last checkpoint."""
    described: int = 0
    """The modification time (ns) of the checkpoint it was last described from, if unloaded."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    cohort: tuple | None = None
    """What sessions it can be batched with have in common (``server.batching``); None until asked."""
    _stepper: tuple | None = field(default=None, repr=False)
    """(model, its stepper): taken once per model, as a session loaded again has a new one."""

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.id, self.owner)

    @property
    def resident(self) -> bool:
        return self.model is not None

    def measure(self) -> None:
        """(Resident.) Count the bytes it holds now: parameters, state, optimizer, carried state."""
        self.bytes = held_bytes(self.model, self.state, self.training.optimizer, self.training.carried)

    def step_function(self):
        """(Resident.) One timestep of the model, ``(x_t, state) -> (y_t, state)``: its
        ``stepper()``, looked up once for each model the session has."""
        model = self.model
        if self._stepper is None or self._stepper[0] is not model:
            self._stepper = (model, model.stepper())
        return self._stepper[1]

    def unload(self) -> None:
        """Let go of what a checkpoint holds: the model, its state and the training state."""
        self.model = self.state = self.training = self._stepper = None


class SessionStore(Protocol):
    """Where sessions go when they leave memory: a checkpoint folder (see ``server.checkpoints``).
    Everything in it is per ``(session id, owner)``: the same id of two owners is two sessions."""

    def write(self, session_id: str, owner: str, snapshot: Snapshot) -> None: ...
    def read(self, session_id: str, owner: str) -> Snapshot | None: ...
    def describe(self, session_id: str, owner: str) -> tuple[Snapshot, int, int] | None: ...
    def index(self) -> list[tuple[SessionKey, int]]: ...
    def holds(self, session_id: str, owner: str) -> bool: ...
    def lease_holder(self, session_id: str, owner: str) -> str | None: ...
    def take_lease(self, session_id: str, owner: str, holder: str) -> None: ...
    def renew_leases(self, keys: list[SessionKey], holder: str) -> tuple[list[SessionKey], list[SessionKey]]: ...
    def drop_lease(self, session_id: str, owner: str, holder: str) -> None: ...
    def want(self, session_id: str, owner: str) -> None: ...
    def wanted(self) -> set[SessionKey]: ...
    def remove(self, session_id: str, owner: str) -> None: ...
    def mark_used(self, session_id: str, owner: str, when: float) -> None: ...
    def last_used(self) -> dict[SessionKey, float]: ...
    def mark_expired(self, session_id: str, owner: str) -> None: ...
    def expired(self, session_id: str, owner: str, within_s: float) -> bool: ...
    def clear_expired(self, session_id: str, owner: str) -> None: ...
    def prune_marks(self, expired_kept_s: float) -> None: ...
