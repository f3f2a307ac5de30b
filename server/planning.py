"""Planning a session: what a network would hold, counted on the meta device and checked against
the server's limits before anything is allocated; then building it. Knows nothing of gRPC."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import rnnbuilder as rb
from rnnbuilder import spec

from .config import Limits
from .errors import InvalidRequest, LimitExceeded, SessionExists, SessionMoving, is_out_of_memory
from .memory import activation_elements, held_bytes
from .session import SESSION_ID, Session
from .training import GLOBAL_RNG, Training

__all__ = ["checked_request", "plan", "build", "network_errors", "summary", "warm_up"]


def checked_request(input_shape, batch_size: int, session_id: str | None, limits: Limits) -> tuple[int, ...]:
    """The input shape as a tuple, once the shape, batch size and the id asked for are valid."""
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d <= 0 for d in input_shape):
        raise InvalidRequest(f"input_shape must be one or more positive sizes, such as [64], got {list(input_shape)}")
    if batch_size <= 0:
        raise InvalidRequest(f"batch_size must be positive, got {batch_size}")
    if batch_size > limits.max_batch_size:
        raise LimitExceeded("max_batch_size", batch_size, limits.max_batch_size, "batch size")
    if session_id and not SESSION_ID.fullmatch(session_id):
        raise InvalidRequest(f"a session id is 1 to 64 letters, digits, '-' or '_', got {session_id!r}")
    return input_shape


def plan(
    factory,
    input_shape: tuple[int, ...],
    batch_size: int,
    seed: int,
    owner: str,
    session_id: str,
    limits: Limits,
    registry: spec.Registry,
) -> Session:
    """The session ``factory`` would make, with nothing allocated: sizes are counted on the
    meta device and checked against the limits."""
    with network_errors(input_shape), torch.device("meta"):
        planned = factory.make_model(input_shape)
        size = sum(t.numel() for t in planned.state_dict().values())
        initial = planned.get_initial_state(batch_size)
        state_size = sum(t.numel() for t in rb.named_leaves(initial).values())
        held = held_bytes(planned, initial)
        activations = activation_elements(planned, initial, batch_size)
    if size > limits.max_parameters_per_session:
        raise LimitExceeded(
            "max_parameters_per_session", size, limits.max_parameters_per_session, "parameters and buffers"
        )
    if state_size > limits.max_state_elements_per_session:
        raise LimitExceeded(
            "max_state_elements_per_session",
            state_size,
            limits.max_state_elements_per_session,
            "state elements (neurons x batch); use a smaller batch or network",
        )
    return Session(
        id=session_id,
        description=spec.to_spec(factory, registry),
        input_shape=input_shape,
        batch_size=batch_size,
        seed=seed,
        owner=owner,
        create_time=dt.datetime.now(dt.UTC),
        output_shape=planned.out_shape,
        parameter_count=sum(p.numel() for p in planned.parameters()),
        recordable_layers=planned.record_names(),
        entry_elements=activations,
        bytes=held,
    )


def warm_up() -> None:
    """Plan a small network once. A process's first plan imports torch's meta-device machinery,
    which took 1.9 s here: done at start-up, before the server says it serves, no client waits
    for it in its first CreateSession."""
    from rnnbuilder import nn, snn

    plan(rb.Sequential(nn.Linear(2), snn.LIF()), (2,), 1, 0, "", "warm-up", Limits(), spec.default_registry)


def build(factory, session: Session, device: torch.device) -> None:
    """Make the session's model (its parameters drawn from its seed), state and training state."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # the global generator is shared by threads
        torch.manual_seed(session.seed)
        model = factory.make_model(session.input_shape)
    session.model = model.to(device).eval()
    session.state = session.model.get_initial_state(session.batch_size)
    session.training = Training(session.seed)


@contextmanager
def network_errors(input_shape: tuple[int, ...]) -> Iterator[None]:
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


def summary(factory) -> str:
    """The network in a log line's worth of characters."""
    text = repr(factory)
    return text if len(text) <= 120 else text[:117] + "..."
