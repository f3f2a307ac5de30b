"""Sessions: built networks with their state on the server's device. Knows nothing of gRPC.

Every method is thread-safe. Calls to one session run one at a time; calls to different
sessions run in parallel. A call that fails leaves its session as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from dataclasses import dataclass, field

import torch

import rnnbuilder as rb
from rnnbuilder import spec

from .config import Limits
from .errors import InvalidRequest, LimitExceeded, SessionNotFound

__all__ = ["Session", "SessionManager"]

log = logging.getLogger("rnnsim.sessions")


@dataclass
class Session:
    """One simulation: the model with its parameters, and the state between calls."""

    id: str
    description: dict
    input_shape: tuple[int, ...]
    batch_size: int
    seed: int
    model: rb.Model
    state: object
    create_time: dt.datetime
    timesteps: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.model.out_shape

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def recordable_layers(self) -> list[str]:
        return self.model.record_names()


class SessionManager:
    """Creates, runs and deletes sessions on one device, within ``limits``."""

    def __init__(self, device: torch.device, limits: Limits, registry: spec.Registry | None = None):
        self.device = device
        self.limits = limits
        self.registry = registry or spec.default_registry
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, description: dict, input_shape, batch_size: int, seed: int) -> Session:
        """Build the described network for ``input_shape`` and open a session for ``batch_size`` sequences."""
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d <= 0 for d in input_shape):
            raise InvalidRequest(
                f"input_shape must be one or more positive sizes, such as [64], got {list(input_shape)}"
            )
        if batch_size <= 0:
            raise InvalidRequest(f"batch_size must be positive, got {batch_size}")
        if batch_size > self.limits.max_batch_size:
            raise LimitExceeded("max_batch_size", batch_size, self.limits.max_batch_size, "batch size")
        factory = spec.from_spec(description, self.registry)
        with torch.device("meta"):  # count before allocating anything
            planned = factory.make_model(input_shape)
            size = sum(t.numel() for t in planned.state_dict().values())
            state_size = sum(t.numel() for t in rb.named_leaves(planned.get_initial_state(batch_size)).values())
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory.make_model(input_shape)
        model = model.to(self.device).eval()
        session = Session(
            id=secrets.token_hex(8),
            description=spec.to_spec(factory, self.registry),
            input_shape=input_shape,
            batch_size=batch_size,
            seed=seed,
            model=model,
            state=model.get_initial_state(batch_size),
            create_time=dt.datetime.now(dt.UTC),
        )
        with self._lock:
            if len(self._sessions) >= self.limits.max_sessions:
                raise LimitExceeded("max_sessions", len(self._sessions) + 1, self.limits.max_sessions, "open sessions")
            self._sessions[session.id] = session
        log.info("session %s created: %s, input %s, batch %d", session.id, _summary(factory), input_shape, batch_size)
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            try:
                return self._sessions[session_id]
            except KeyError:
                raise SessionNotFound(f"sessions/{session_id}") from None

    def list(self) -> list[Session]:
        """All sessions, oldest first."""
        with self._lock:
            return sorted(self._sessions.values(), key=lambda s: s.create_time)

    def delete(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFound(f"sessions/{session_id}")
        log.info("session %s deleted", session_id)

    def run(
        self, session_id: str, x: torch.Tensor, record: list[str], bitpacked: bool = False
    ) -> tuple[torch.Tensor, dict, int]:
        """Simulate x (time, batch, *input_shape) from the session's state, which then moves on.

        Returns the output (time, batch, *output_shape), the recordings by name and the session's
        timestep count before this call. ``bitpacked``: the reply will carry binary values as bits,
        which counts for the reply's size limit. A call that fails leaves the state as it was.
        """
        session = self.get(session_id)
        expected = (session.batch_size, *session.input_shape)
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise rb.ShapeError(f"input must have shape (time, {shape}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InvalidRequest("input has no timesteps; send at least one")
        work = x.shape[0] * session.batch_size
        if work > self.limits.max_timesteps_times_batch:
            raise LimitExceeded(
                "max_timesteps_times_batch", work, self.limits.max_timesteps_times_batch, "timesteps x batch"
            )
        x = x.to(device=self.device, dtype=torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise InvalidRequest("input contains NaN or infinity")
        with session.lock, torch.no_grad():
            if record:
                out, state, recordings = session.model.record(x, record, session.state)
            else:
                (out, state), recordings = session.model(x, session.state), {}
            reply = sum(_wire_bytes(t, bitpacked) for t in (out, *recordings.values()))
            if reply > self.limits.max_message_bytes:
                raise LimitExceeded(
                    "max_message_bytes", reply, self.limits.max_message_bytes, "reply bytes (send fewer timesteps)"
                )
            first = session.timesteps
            session.state, session.timesteps = state, first + x.shape[0]
        return out, recordings, first

    def reset(self, session_id: str, batch_indices: list[int]) -> None:
        """Restart the state of ``batch_indices`` (all when empty)."""
        session = self.get(session_id)
        with session.lock:
            if batch_indices:
                session.state = session.model.reset_state(session.state, batch_indices)
            else:
                session.state = session.model.get_initial_state(session.batch_size)
        log.info("session %s reset %s", session_id, batch_indices or "all")

    def get_state(self, session_id: str) -> dict[str, torch.Tensor]:
        session = self.get(session_id)
        with session.lock:
            return {name: t.detach().cpu().clone() for name, t in rb.named_leaves(session.state).items()}

    def set_state(self, session_id: str, tensors: dict[str, torch.Tensor]) -> None:
        session = self.get(session_id)
        with session.lock:
            _check_finite(tensors, "state")
            session.state = rb.replace_leaves(session.model.get_initial_state(session.batch_size), tensors)

    def get_parameters(self, session_id: str) -> dict[str, torch.Tensor]:
        session = self.get(session_id)
        with session.lock:
            return {name: t.detach().cpu().clone() for name, t in session.model.state_dict().items()}

    def set_parameters(self, session_id: str, tensors: dict[str, torch.Tensor]) -> None:
        """Replace the named parameters and buffers; the others keep their values."""
        session = self.get(session_id)
        with session.lock:
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
        log.info("session %s parameters set: %d tensors", session_id, len(tensors))


def _wire_bytes(tensor: torch.Tensor, bitpacked: bool) -> int:
    """What ``tensor`` takes in a reply: a bit per element if it goes bit-packed, else its raw size."""
    if bitpacked and bool(((tensor == 0) | (tensor == 1)).all()):
        return (tensor.numel() + 7) // 8
    return tensor.numel() * 4


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidRequest(f"{what} {name!r} contains NaN or infinity")


def _summary(factory) -> str:
    text = repr(factory)
    return text if len(text) <= 120 else text[:117] + "..."
