"""What calls do with a session once they have found it: simulate, train, evaluate, export it, and
read or replace its state and parameters. Knows nothing of gRPC.

Each function takes the ``SessionManager`` and the session its caller found, checks the request,
then works while ``manager.held`` has the session locked and loaded, with memory reserved for
the call. A call that fails leaves its session as it was.

Long calls (``fit``, ``evaluate``) are generators of jobs, one per batch: each job yielded is run
by the caller (in the tenant's turn, see ``server.placement``), which sends its result back, and
what the generator returns is the call's result. A caller that goes away stops asking for more.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import rnnbuilder as rb
from rnnbuilder.encode import Encoder
from rnnbuilder_sim.wire.names import session_name

from .config import Limits
from .errors import CallCancelled, InvalidRequest, LimitExceeded
from .memory import work_bytes
from .session import Session, Timing
from .snapshot import Snapshot, assign_parameters, assign_state, finite, on_cpu, take
from .training import (
    BatchProgress,
    BatchResult,
    Dataset,
    EpochSummary,
    Loss,
    Progress,
    Scores,
    Totals,
    TrainingOptions,
    detached,
    evaluate_batch,
    get_loss,
    train_batch,
    train_chunks,
)

if TYPE_CHECKING:
    from .manager import SessionManager

__all__ = [
    "Simulation",
    "CARRIES",
    "run",
    "train_step",
    "fit",
    "evaluate",
    "export",
    "reset",
    "get_state",
    "set_state",
    "get_parameters",
    "set_parameters",
    "input_fits",
    "encoded_input_fits",
    "targets_fit",
    "dataset_fits",
    "checked_input",
    "checked_reply",
]

log = logging.getLogger("rnnsim.sessions")

TIMED_EVERY = 16
"""A session's single-timestep simulations are timed once in this many timesteps (and every
longer one): enough to follow a change of cost, without a clock read per message."""

CARRIES = ("none", "start", "continue")
"""What a TrainStep does with the state it ends in; see ``train_step``."""


@dataclass(frozen=True)
class Simulation:
    """What ``run`` gives back."""

    output: torch.Tensor
    """(time, batch, *output_shape), on the host."""
    recordings: dict[str, torch.Tensor]
    """By layer name, on the host."""
    first_timestep: int
    """The session's timestep count before the call."""
    batch: int = 1
    """How many sessions' calls ran as one computation with it (1: alone; see ``server.batching``)."""


def run(
    manager: SessionManager,
    session: Session,
    x: torch.Tensor,
    record: list[str],
    bitpacked: bool = False,
    wait: bool = True,
    wanted: Callable[[], bool] = lambda: True,
    encoder: Encoder | None = None,
) -> Simulation:
    """Simulate x (time, batch, *input_shape) from the session's state, which then moves on.

    ``bitpacked``: the reply will carry binary values as bits, which counts for the reply's size
    limit. Without ``wait``: WouldBlock rather than wait for anything (see ``manager.held``). If
    ``wanted()`` is false once the result is ready (its caller went away), CallCancelled and the
    state stays.

    ``encoder``: x is the analog data it takes (see ``encoded_input_fits``), and what runs are the
    spikes it makes of them, drawn by the session's random generator, which moves on
    with the state (a failed call leaves both as they were).
    """
    if encoder is None:
        x = checked_input(manager, session, x, batch=session.batch_size)
        shape = tuple(x.shape)
    else:
        encoded_input_fits(manager.limits, session, encoder, tuple(x.shape))
        if x.is_floating_point() and not finite(x):
            raise InvalidRequest("input contains NaN or infinity; the encoder takes finite analog data")
        shape = encoder.encoded_shape(tuple(x.shape))
    work = work_bytes(session.entry_elements, shape[0], shape[1], training=False)
    limit = manager.limits.max_message_bytes
    # A CPU's work is the thread's CPU time: on a busy server the wall time also counts the waits
    # for a core, and would send calls off the loop just when hand-offs cost the most. A device's
    # work is the wall time the thread waits for it. Reading a thread's CPU clock is a system call
    # (0.7 us here, against 0.05 for perf_counter), so single timesteps are timed now and then.
    timed = session.timing is None or session.timesteps % TIMED_EVERY == 0 or shape[0] > 1
    clock = time.thread_time if manager.device.type == "cpu" else time.perf_counter
    with manager.held(session, work, wait=wait), torch.no_grad():
        started = clock() if timed else 0.0  # the spikes' drawing counts in the call's time
        if encoder is not None:
            # A copy draws; it becomes the session's generator only with the new state, below.
            generator = torch.Generator().set_state(session.training.rng.get_state())
            x = _spikes(encoder, x, generator).to(manager.device)
        if record:
            out, state, recordings = session.model.record(x, record, session.state)
        elif x.shape[0] == 1:  # a stream's timestep: the stepper skips the whole-sequence bookkeeping
            y, state = session.step_function()(x[0], session.state)
            out, recordings = y.unsqueeze(0), {}
        else:
            (out, state), recordings = session.model(x, session.state), {}
        # On the host here, so that neither the event loop (which encodes the reply) waits for the
        # device, nor the timing misses the device's work.
        out, recordings = out.cpu(), {name: t.cpu() for name, t in recordings.items()}
        if timed:
            session.timing = Timing(clock() - started, x.shape[0] * x.shape[1])
        checked_reply((out, *recordings.values()), bitpacked, limit)
        if not wanted():
            raise CallCancelled(f"the call on {session_name(session.id)} was cancelled; its state is unchanged")
        first = session.timesteps
        session.state, session.timesteps = state, first + x.shape[0]
        if encoder is not None:
            session.training.rng.set_state(generator.get_state())
    return Simulation(out, recordings, first)


def _spikes(encoder: Encoder, data: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The spikes (time, batch, *input_shape), float32 on the CPU, that ``encoder`` makes of the
    analog ``data`` as float32 on the CPU, its draws from ``generator``: what a client gets with
    ``encoder(data, generator)`` from a generator in the same state. The CPU, so that the spikes
    are the same on every device; the data's problems (values out of range) are InvalidRequest."""
    try:
        return encoder(data.to(device="cpu", dtype=torch.float32), generator=generator).to(torch.float32)
    except rb.ShapeError:
        raise
    except rb.RnnbuilderError as e:
        raise InvalidRequest(f"the encoder can't encode this input: {e}") from None


def train_step(
    manager: SessionManager,
    session: Session,
    x: torch.Tensor,
    y: torch.Tensor,
    options: TrainingOptions,
    carry: str = "none",
) -> BatchResult:
    """One optimizer step on x (time, batch, *input_shape) with targets ``y``.

    ``carry``: ``"none"`` starts from a fresh state; ``"start"`` too, and keeps the final state
    (detached) for the next ``"continue"`` step: truncated BPTT over a stream of chunks. The
    streaming state of ``run`` and ``Simulate`` is never touched.
    """
    if carry not in CARRIES:
        raise InvalidRequest(f"carry must be 'none', 'start' or 'continue', got {carry!r}")
    objective = options.objective
    x = checked_input(manager, session, x)
    y = objective.check_targets(y.to(manager.device), x.shape[0], x.shape[1], session.output_shape)
    with manager.held(session, _training_work(session, x.shape[0], x.shape[1])):
        carried = session.training.carried if carry == "continue" else None
        if carried is not None and session.model.batch_size_of(carried) not in (0, x.shape[1]):
            raise InvalidRequest("carry='continue' needs the batch size of the chunk that started the stream")
        result, final = train_batch(session.model, session.training, x, y, options, carried)
        if carry != "none":
            session.training.carried = detached(final)
        session.measure()
    return result


def fit(
    manager: SessionManager,
    session: Session,
    data: Dataset,
    options: TrainingOptions,
    epochs: int,
    batch_size: int,
    shuffle: bool = True,
    validation: Dataset | None = None,
    tbptt_steps: int = 0,
    report: Callable[[Progress], None] = lambda progress: None,
) -> Generator[Callable, object, list[EpochSummary]]:
    """Train on ``data`` for ``epochs``; returns the epochs' summaries. Its jobs (see above) take
    the dataset onto the device, then each epoch's order and each batch.

    Each batch starts from a fresh state; the order is shuffled by the session's generator.
    ``report`` gets a ``BatchProgress`` after every batch and an ``EpochSummary`` after every
    epoch.
    """
    objective = options.objective
    if epochs < 1 or batch_size < 1:
        raise InvalidRequest(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    if tbptt_steps < 0:
        raise InvalidRequest(f"tbptt_steps must be 0 (whole sequences) or positive, got {tbptt_steps}")
    x, y = yield functools.partial(_dataset, manager, session, data, objective, batch_size)
    held_out = None
    if validation is not None:
        held_out = yield functools.partial(_dataset, manager, session, validation, objective, batch_size)
    history: list[EpochSummary] = []
    batches = math.ceil(x.shape[1] / batch_size)
    steps = min(tbptt_steps or x.shape[0], x.shape[0])

    def train(index: torch.Tensor) -> BatchResult:
        with manager.held(session, _training_work(session, steps, len(index))):
            targets = _of(y, index, objective)
            result = train_chunks(session.model, session.training, x[:, index], targets, options, tbptt_steps)
            session.measure()
            return result

    for epoch in range(epochs):
        started, totals = time.perf_counter(), Totals()
        order = yield functools.partial(_batches, manager, session, x.shape[1], batch_size, shuffle)
        for batch, index in enumerate(order):
            result = yield functools.partial(train, index)
            totals.add(result, len(index))
            report(BatchProgress(epoch, batch, batches, result.scores()))
        samples_per_second = x.shape[1] / (time.perf_counter() - started)  # the validation doesn't count
        validated = None
        if held_out is not None:
            validated = yield from _evaluate(manager, session, *held_out, objective, batch_size)
        summary = EpochSummary(epoch, totals.scores(), samples_per_second, validated)
        history.append(summary)
        report(summary)
        log.info(
            "session %s epoch %d: %s",
            session.id,
            epoch,
            summary,
            extra={"event": "epoch", "session": session.id, "tenant": session.owner},
        )
    return history


def evaluate(
    manager: SessionManager,
    session: Session,
    data: Dataset,
    loss: str,
    batch_size: int,
) -> Generator[Callable, object, Scores]:
    """Loss (and accuracy, for class losses) on ``data``, in eval mode; its jobs as in ``fit``."""
    objective = get_loss(loss)
    if batch_size < 1:
        raise InvalidRequest(f"batch_size must be at least 1, got {batch_size}")
    x, y = yield functools.partial(_dataset, manager, session, data, objective, batch_size)
    return (yield from _evaluate(manager, session, x, y, objective, batch_size))


def export(manager: SessionManager, session: Session) -> Snapshot:
    """Everything needed to recreate the session exactly (``manager.import_`` does)."""
    with manager.held(session, changes=False):
        return take(session)


def reset(manager: SessionManager, session: Session, batch_indices: list[int]) -> None:
    """Restart the state of ``batch_indices`` (all when empty)."""
    with manager.held(session):
        if batch_indices:
            session.state = session.model.reset_state(session.state, batch_indices)
        else:
            session.state = session.model.get_initial_state(session.batch_size)
    log.info("session %s reset %s", session.id, batch_indices or "all")


def get_state(manager: SessionManager, session: Session) -> dict[str, torch.Tensor]:
    with manager.held(session, changes=False):
        return on_cpu(rb.named_leaves(session.state))


def set_state(manager: SessionManager, session: Session, tensors: dict[str, torch.Tensor]) -> None:
    with manager.held(session):
        assign_state(session, tensors)


def get_parameters(manager: SessionManager, session: Session) -> dict[str, torch.Tensor]:
    with manager.held(session, changes=False):
        return on_cpu(session.model.state_dict())


def set_parameters(manager: SessionManager, session: Session, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the named parameters and buffers; the others keep their values."""
    with manager.held(session):
        assign_parameters(session, tensors)
    log.info("session %s parameters set: %d tensors", session.id, len(tensors))


def input_fits(
    limits: Limits, session: Session, shape: tuple[int, ...], batch: int | None = None, rows: int | None = None
) -> None:
    """Raise unless an input of ``shape`` (time, batch, *input_shape) fits the session and the limits:
    checked on the shape alone, before the tensor is decoded, and again on the tensor.

    ``batch``: the batch size the input must have, if fixed; ``rows``: how many sequences run at once
    (for the work limit), if not all of its.
    """
    if (
        len(shape) != len(session.input_shape) + 2
        or tuple(shape[2:]) != session.input_shape
        or (batch is not None and shape[1] != batch)
    ):
        want = ", ".join(map(str, (batch if batch is not None else "batch", *session.input_shape)))
        raise rb.ShapeError(f"input must have shape (time, {want}), got {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidRequest("input is empty; send at least one timestep and one sequence")
    work = shape[0] * min(rows or shape[1], shape[1])
    if work > limits.max_timesteps_times_batch:
        raise LimitExceeded("max_timesteps_times_batch", work, limits.max_timesteps_times_batch, "timesteps x batch")


def encoded_input_fits(limits: Limits, session: Session, encoder: Encoder, shape: tuple[int, ...]) -> None:
    """Raise unless analog data of ``shape`` fits ``encoder`` and the session: (batch, *input_shape)
    for an encoder that adds the time axis, (time, batch, *input_shape) for one that keeps the
    data's (``Encoder.data_has_time``); the spikes it makes count for the limits, as an input."""
    tail = (session.batch_size, *session.input_shape)
    want = (("time",) if encoder.data_has_time else ()) + tail
    if len(shape) != len(want) or tuple(shape[len(want) - len(tail) :]) != tail:
        adds = "keeps the data's time axis" if encoder.data_has_time else "adds the time axis"
        raise rb.ShapeError(
            f"input for {type(encoder).__name__} must be analog data of shape ({', '.join(map(str, want))}) "
            f"(the encoder {adds}), got {shape}"
        )
    input_fits(limits, session, encoder.encoded_shape(shape), batch=session.batch_size)


def targets_fit(session: Session, timesteps: int, batch: int, shape: tuple[int, ...]) -> None:
    """Raise unless targets of ``shape`` could be what a loss takes for ``batch`` sequences of
    ``timesteps``: none takes more than an output per timestep and sequence. Checked before they
    are decoded; the loss checks their exact shape after."""
    most = timesteps * batch * math.prod(session.output_shape)
    if math.prod(shape) > most:
        raise InvalidRequest(
            f"targets of shape {shape} are larger than any loss takes for {batch} sequences of {timesteps} "
            f"timesteps with outputs {session.output_shape} ({most:,} elements at most)"
        )


def dataset_fits(
    limits: Limits, session: Session, batch_size: int, inputs: tuple[int, ...], targets: tuple[int, ...]
) -> None:
    """Raise unless a dataset of ``inputs`` (samples, time, *input_shape) and ``targets`` (samples, ...)
    shapes fits the session and the limits, run ``batch_size`` sequences at a time."""
    if len(inputs) != len(session.input_shape) + 2 or tuple(inputs[2:]) != session.input_shape:
        want = ", ".join(map(str, session.input_shape))
        raise rb.ShapeError(f"inputs must have shape (samples, time, {want}), got {inputs}")
    if len(targets) < 1 or inputs[0] != targets[0]:
        raise InvalidRequest(f"sample and target counts differ: {inputs[0]} input sequences, targets {targets}")
    input_fits(limits, session, (inputs[1], inputs[0], *inputs[2:]), rows=batch_size)
    targets_fit(session, inputs[1], inputs[0], targets)


def _evaluate(
    manager: SessionManager, session: Session, x, y, objective: Loss, batch_size: int
) -> Generator[Callable, object, Scores]:
    totals = Totals()

    def evaluate(index: torch.Tensor) -> BatchResult:
        work = work_bytes(session.entry_elements, x.shape[0], len(index), training=False)
        with manager.held(session, work, changes=False):
            return evaluate_batch(session.model, x[:, index], _of(y, index, objective), objective)

    for index in torch.arange(x.shape[1], device=manager.device).split(batch_size):
        totals.add((yield functools.partial(evaluate, index)), len(index))
    return totals.scores()


def _batches(manager: SessionManager, session: Session, samples: int, batch_size: int, shuffle: bool):
    """An epoch's batches of sample indices, on the device, shuffled by the session's generator."""
    with manager.held(session, changes=shuffle):
        order = torch.randperm(samples, generator=session.training.rng) if shuffle else torch.arange(samples)
    return order.to(manager.device).split(batch_size)


def _dataset(manager: SessionManager, session: Session, data: Dataset, objective: Loss, batch_size: int):
    """The inputs (samples, time, ...) as (time, samples, ...) on the device, the targets checked for the loss."""
    x, y = data.inputs, data.targets
    dataset_fits(manager.limits, session, batch_size, tuple(x.shape), tuple(y.shape))
    x = checked_input(manager, session, x.transpose(0, 1), rows=batch_size)
    if objective.per_step:
        y = y.transpose(0, 1)
    return x, objective.check_targets(y.to(manager.device), x.shape[0], x.shape[1], session.output_shape)


def _of(y: torch.Tensor, index: torch.Tensor, objective: Loss) -> torch.Tensor:
    """The targets of the sequences ``index``: per-step targets have time first."""
    return y[:, index] if objective.per_step else y[index]


def checked_input(
    manager: SessionManager, session: Session, x: torch.Tensor, batch: int | None = None, rows: int | None = None
) -> torch.Tensor:
    """x (time, batch, *input_shape) on the device as float32, or an error that says what's wrong;
    ``batch`` and ``rows`` as in ``input_fits``."""
    input_fits(manager.limits, session, tuple(x.shape), batch, rows)
    if x.is_floating_point() and not finite(x):
        raise InvalidRequest("input contains NaN or infinity")
    return x.to(device=manager.device, dtype=torch.float32)


def _training_work(session: Session, timesteps: int, batch: int) -> int:
    """Activations and gradients, plus room for an optimizer's moments if there is none yet."""
    moments = 0 if session.resident and session.training.optimizer is not None else 2 * 4 * session.parameter_count
    return work_bytes(session.entry_elements, timesteps, batch, training=True) + moments


def checked_reply(replied: tuple[torch.Tensor, ...], bitpacked: bool, limit: int) -> None:
    """Raise LimitExceeded unless a reply of ``replied`` (bit-packed where binary, if
    ``bitpacked``) keeps within ``limit`` bytes."""
    reply = sum(t.numel() * 4 for t in replied)
    if bitpacked and reply > limit:
        # The 0/1 check is a pass over the reply, and encoding makes it again: only when it decides.
        reply = sum(_packed_bytes(t) for t in replied)
    if reply > limit:
        raise LimitExceeded("max_message_bytes", reply, limit, "reply bytes (send fewer timesteps)")


def _packed_bytes(tensor: torch.Tensor) -> int:
    """What ``tensor`` takes in a bit-packed reply: a bit per element if it is all 0/1, else its raw size."""
    if bool(((tensor == 0) | (tensor == 1)).all()):
        return (tensor.numel() + 7) // 8
    return tensor.numel() * 4
