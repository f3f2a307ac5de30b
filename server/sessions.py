"""Sessions: built networks with their state on the server's device. Knows nothing of gRPC.

Every method is thread-safe. Calls to one session run one at a time; calls to different
sessions run in parallel. A call that fails leaves its session as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import rnnbuilder as rb
from rnnbuilder import spec

from .config import Limits
from .errors import InvalidRequest, LimitExceeded, SessionNotFound
from .training import (
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
    training: Training
    owner: str = "default"
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

    def create(
        self,
        description: dict,
        input_shape,
        batch_size: int,
        seed: int,
        owner: str = "default",
        owner_max_sessions: int | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Build the described network for ``input_shape`` and open a session for ``batch_size``
        sequences, owned by ``owner``, who may hold at most ``owner_max_sessions`` (None: no own limit).
        ``session_id`` is for restoring checkpoints; new sessions get a random one."""
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
        self._check_room(owner, owner_max_sessions)  # before allocating; again when inserting: others may be faster
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory.make_model(input_shape)
        model = model.to(self.device).eval()
        session = Session(
            id=session_id or secrets.token_hex(8),
            description=spec.to_spec(factory, self.registry),
            input_shape=input_shape,
            batch_size=batch_size,
            seed=seed,
            model=model,
            state=model.get_initial_state(batch_size),
            create_time=dt.datetime.now(dt.UTC),
            training=Training(seed),
            owner=owner,
        )
        with self._lock:
            self._check_room(owner, owner_max_sessions)
            if session.id in self._sessions:
                raise InvalidRequest(f"session {session.id} exists already")
            self._sessions[session.id] = session
        log.info("session %s created: %s, input %s, batch %d", session.id, _summary(factory), input_shape, batch_size)
        return session

    def _check_room(self, owner: str, owner_max_sessions: int | None) -> None:
        if len(self._sessions) >= self.limits.max_sessions:
            raise LimitExceeded("max_sessions", len(self._sessions) + 1, self.limits.max_sessions, "open sessions")
        owned = sum(s.owner == owner for s in self._sessions.values())
        if owner_max_sessions is not None and owned >= owner_max_sessions:
            raise LimitExceeded("tenant max_sessions", owned + 1, owner_max_sessions, f"sessions of {owner}")

    def memory_bytes(self, session: Session) -> int:
        """The bytes a session's parameters, buffers and state take."""
        tensors = [*session.model.state_dict().values(), *rb.named_leaves(session.state).values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def get(self, session_id: str, owner: str | None = None) -> Session:
        """The session; ``owner``, if given, must own it: others get SessionNotFound, so that a
        session's existence doesn't leak to other tenants."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or (owner is not None and session.owner != owner):
            raise SessionNotFound(f"sessions/{session_id}")
        return session

    def list(self, owner: str | None = None) -> list[Session]:
        """The sessions (of ``owner``, if given), oldest first."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if owner is None or s.owner == owner]
        return sorted(sessions, key=lambda s: s.create_time)

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
        x = self._checked_input(session, x, batch=session.batch_size)
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
        with session.lock:
            carried = session.training.carried if carry == "continue" else None
            if carried is not None and session.model.batch_size_of(carried) not in (0, x.shape[1]):
                raise InvalidRequest("carry='continue' needs the batch size of the chunk that started the stream")
            result, final = train_batch(session.model, session.training, x, y, objective, optimizer, clip_norm, carried)
            if carry != "none":
                session.training.carried = detached(final)
        return result

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
    ) -> list[dict]:
        """Train on a dataset x (samples, time, *input_shape), targets (samples, ...), for ``epochs``.

        Each batch starts from a fresh state; the order is shuffled by the session's generator.
        ``report`` gets a dict after every batch (``kind="batch"``) and epoch (``kind="epoch"``).
        Stops at the next batch boundary once ``cancelled()``; returns the per-epoch history.
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
        for epoch in range(epochs):
            started, totals = time.perf_counter(), Totals()
            with session.lock:
                order = (
                    torch.randperm(x.shape[1], generator=session.training.rng) if shuffle else torch.arange(x.shape[1])
                )
            for batch, index in enumerate(order.to(self.device).split(batch_size)):
                if cancelled():
                    log.info("session %s training cancelled at epoch %d, batch %d", session_id, epoch, batch)
                    return history
                with session.lock:
                    result = train_chunks(
                        session.model,
                        session.training,
                        x[:, index],
                        y[:, index] if objective.per_step else y[index],
                        objective,
                        optimizer,
                        clip_norm,
                        tbptt_steps,
                    )
                totals.add(result, len(index))
                report({"kind": "batch", "epoch": epoch, "batch": batch, "batches": batches, **result.metrics()})
            summary = {
                "epoch": epoch,
                **totals.metrics(),
                "samples_per_second": x.shape[1] / (time.perf_counter() - started),
            }
            if validation is not None:
                summary.update(
                    {f"val_{k}": v for k, v in self._evaluate(session, *validation, objective, batch_size).items()}
                )
            history.append(summary)
            report({"kind": "epoch", **summary})
            log.info("session %s epoch %d: %s", session_id, epoch, summary)
        return history

    def evaluate(self, session_id: str, x: torch.Tensor, y: torch.Tensor, loss: str, batch_size: int) -> dict:
        """Loss (and accuracy, for class losses) on x (samples, time, ...), in eval mode."""
        session = self.get(session_id)
        objective = get_loss(loss)
        if batch_size < 1:
            raise InvalidRequest(f"batch_size must be at least 1, got {batch_size}")
        return self._evaluate(session, *self._dataset(session, x, y, objective, batch_size), objective, batch_size)

    def _evaluate(self, session: Session, x, y, objective, batch_size: int) -> dict:
        totals = Totals()
        for index in torch.arange(x.shape[1], device=self.device).split(batch_size):
            with session.lock:
                result = evaluate_batch(
                    session.model, x[:, index], y[:, index] if objective.per_step else y[index], objective
                )
            totals.add(result, len(index))
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
        session = self.get(session_id)
        with session.lock:
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
            }

    def import_(
        self,
        snapshot: dict,
        owner: str = "default",
        owner_max_sessions: int | None = None,
        session_id: str | None = None,
    ) -> Session:
        """A new session of ``owner`` (under ``session_id``, if given), exactly as ``export`` described one."""
        session = self.create(
            snapshot["description"],
            snapshot["input_shape"],
            snapshot["batch_size"],
            snapshot["seed"],
            owner,
            owner_max_sessions,
            session_id,
        )
        try:
            self.set_parameters(session.id, snapshot["parameters"])
            self.set_state(session.id, snapshot["state"])
            with session.lock:
                training = session.training
                if snapshot["optimizer"] is not None:
                    restore_optimizer(training, session.model, snapshot["optimizer"])
                if snapshot["rng"] is not None:
                    try:
                        training.rng.set_state(snapshot["rng"].to(torch.uint8))
                    except RuntimeError as e:
                        raise InvalidRequest(f"the random generator state is malformed: {e}") from None
                if snapshot["carried"] is not None:
                    template = session.model.get_initial_state(snapshot["carried_batch"])
                    training.carried = rb.replace_leaves(template, snapshot["carried"])
                session.timesteps = snapshot["timesteps"]
        except Exception:
            self.delete(session.id)
            raise
        log.info("session %s restored from a snapshot", session.id)
        return session

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
            return _cpu(rb.named_leaves(session.state))

    def set_state(self, session_id: str, tensors: dict[str, torch.Tensor]) -> None:
        session = self.get(session_id)
        with session.lock:
            _check_finite(tensors, "state")
            session.state = rb.replace_leaves(session.model.get_initial_state(session.batch_size), tensors)

    def get_parameters(self, session_id: str) -> dict[str, torch.Tensor]:
        session = self.get(session_id)
        with session.lock:
            return _cpu(session.model.state_dict())

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


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().clone() for name, t in tensors.items()}


def _wire_bytes(tensor: torch.Tensor, bitpacked: bool) -> int:
    """What ``tensor`` takes in a reply: a bit per element if it goes bit-packed, else its raw size."""
    if bitpacked and bool(((tensor == 0) | (tensor == 1)).all()):
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
