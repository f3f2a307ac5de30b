"""A session's snapshot: everything needed to recreate it exactly, taken from a resident session
and put back into one. What ExportSession sends, ImportSession takes and a checkpoint holds.
Knows nothing of gRPC (``convert`` turns it into a message and back)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import torch

import rnnbuilder as rb

from .errors import InvalidRequest
from .session import Session
from .training import OptimizerSnapshot, optimizer_snapshot, restore_optimizer

__all__ = ["Snapshot", "take", "restore", "assign_parameters", "assign_state", "finite", "on_cpu"]


@dataclass(frozen=True)
class Snapshot:
    """A session's description, sizes, timestep count and tensors, on the CPU.

    From a checkpoint that was only described (not read), the tensor fields are empty.
    """

    description: dict
    input_shape: tuple[int, ...]
    batch_size: int
    seed: int
    timesteps: int
    parameters: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    optimizer: OptimizerSnapshot | None
    rng: torch.Tensor | None
    """The session's random generator state."""
    carried: dict[str, torch.Tensor] | None
    """The state truncated BPTT carries from one TrainStep to the next, if any."""
    carried_batch: int
    create_time: dt.datetime | None


def take(session: Session) -> Snapshot:
    """(Resident, lock held.) The session's snapshot: parameters, state, optimizer state, random
    generator, carried training state and timestep count."""
    training = session.training
    return Snapshot(
        description=session.description,
        input_shape=session.input_shape,
        batch_size=session.batch_size,
        seed=session.seed,
        timesteps=session.timesteps,
        parameters=on_cpu(session.model.state_dict()),
        state=on_cpu(rb.named_leaves(session.state)),
        optimizer=optimizer_snapshot(training),
        rng=training.rng.get_state(),
        carried=None if training.carried is None else on_cpu(rb.named_leaves(training.carried)),
        carried_batch=0 if training.carried is None else session.model.batch_size_of(training.carried),
        create_time=session.create_time,
    )


def restore(session: Session, snapshot: Snapshot, max_batch_size: int) -> None:
    """(Resident, lock held, its network built as the snapshot describes.) Put ``take``'s output
    back, checked first: InvalidRequest says what doesn't fit."""
    assign_parameters(session, snapshot.parameters)
    assign_state(session, snapshot.state)
    training = session.training
    if snapshot.optimizer is not None:
        restore_optimizer(training, session.model, snapshot.optimizer)
    if snapshot.rng is not None:
        try:
            training.rng.set_state(snapshot.rng.to(torch.uint8))
        except RuntimeError as e:
            raise InvalidRequest(f"the random generator state is malformed: {e}") from None
    if snapshot.carried is not None:
        carried_batch = snapshot.carried_batch
        if not 1 <= carried_batch <= max_batch_size:
            raise InvalidRequest(
                f"carried_batch_size must be 1 to {max_batch_size} with a carried state, got {carried_batch}"
            )
        template = session.model.get_initial_state(carried_batch)
        training.carried = rb.replace_leaves(template, snapshot.carried)
    session.timesteps = snapshot.timesteps
    session.measure()


def assign_state(session: Session, tensors: dict[str, torch.Tensor]) -> None:
    """(Resident, lock held.) Replace the state by ``tensors``, named as ``rb.named_leaves`` names them."""
    _check_finite(tensors, "state")
    session.state = rb.replace_leaves(session.model.get_initial_state(session.batch_size), tensors)


def assign_parameters(session: Session, tensors: dict[str, torch.Tensor]) -> None:
    """(Resident, lock held.) Replace the named parameters and buffers; the others keep their values."""
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


def on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of ``tensors`` on the CPU, cut from the graph: safe to keep while the session goes on."""
    return {name: t.detach().cpu().clone() for name, t in tensors.items()}


def finite(tensor: torch.Tensor) -> bool:
    # Inputs arrive on the CPU: numpy checks them several times faster than torch, with no device sync.
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64, torch.float16):
        return bool(np.isfinite(tensor.numpy()).all())
    return bool(torch.isfinite(tensor).all())


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not finite(tensor):
            raise InvalidRequest(f"{what} {name!r} contains NaN or infinity")
