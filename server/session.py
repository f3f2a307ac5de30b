"""What a session is, and where sessions go when they leave memory. Knows nothing of gRPC."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import rnnbuilder as rb

from .memory import held_bytes
from .training import Training

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["Session", "SessionStore", "SESSION_ID"]

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a session id may be: safe in file names, URLs and metadata."""


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

    def measure(self) -> None:
        """(Resident.) Count the bytes it holds now: parameters, state, optimizer, carried state."""
        self.bytes = held_bytes(self.model, self.state, self.training.optimizer, self.training.carried)

    def unload(self) -> None:
        """Let go of what a checkpoint holds: the model, its state and the training state."""
        self.model = self.state = self.training = None


class SessionStore(Protocol):
    """Where sessions go when they leave memory: a checkpoint folder (see ``server.checkpoints``)."""

    def write(self, session_id: str, owner: str, snapshot: Snapshot) -> None: ...
    def read(self, session_id: str, owner: str | None) -> tuple[str, Snapshot] | None: ...
    def describe(self, session_id: str, owner: str | None) -> tuple[str, Snapshot, int, int] | None: ...
    def index(self) -> list[tuple[str, str, int]]: ...
    def holds(self, session_id: str) -> bool: ...
    def lease_holder(self, session_id: str) -> str | None: ...
    def take_lease(self, session_id: str, holder: str) -> None: ...
    def renew_leases(self, session_ids: list[str], holder: str) -> tuple[list[str], list[str]]: ...
    def drop_lease(self, session_id: str, holder: str) -> None: ...
    def want(self, session_id: str) -> None: ...
    def wanted(self) -> set[str]: ...
    def remove(self, session_id: str) -> None: ...
