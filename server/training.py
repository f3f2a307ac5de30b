"""Training on the server: losses, optimizers and surrogate-gradient BPTT, with the values a
training call takes (``TrainingOptions``, ``Dataset``) and reports (``Scores``, ``BatchProgress``,
``EpochSummary``). Knows nothing of gRPC.

Shapes: a batch is x (time, batch, *input_shape) with targets as the loss needs them (see
``LOSSES``); a dataset is x (samples, time, *input_shape) with targets (samples, ...).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import rnnbuilder as rb

from .errors import InvalidRequest

__all__ = [
    "Loss",
    "LOSSES",
    "OptimizerConfig",
    "OPTIMIZERS",
    "TrainingOptions",
    "Dataset",
    "Scores",
    "BatchProgress",
    "EpochSummary",
    "Progress",
    "OptimizerSnapshot",
    "Training",
    "BatchResult",
    "Totals",
    "loss_names",
]


@dataclass(frozen=True)
class Loss:
    """A training objective on outputs (time, batch, *output_shape).

    ``reduce`` turns the outputs into what is compared with the targets; ``classes`` losses take
    integer labels and report accuracy; ``per_step`` losses take targets with a time dim.
    """

    name: str
    reduce: Callable[[torch.Tensor], torch.Tensor]
    classes: bool
    per_step: bool
    description: str

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prediction = self.reduce(out)
        if self.classes:
            return F.cross_entropy(prediction.reshape(-1, prediction.shape[-1]), y.reshape(-1))
        return F.mse_loss(prediction, y)

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(right, total) predictions; (0, 0) for losses without classes."""
        if not self.classes:
            return 0, 0
        prediction = self.reduce(out)
        right = (prediction.reshape(-1, prediction.shape[-1]).argmax(-1) == y.reshape(-1)).sum()
        return int(right), y.numel()

    def check_targets(self, y: torch.Tensor, length: int, batch: int, out_shape: tuple[int, ...]) -> torch.Tensor:
        """``y`` as this loss needs it (labels as int64), or InvalidRequest naming what's wrong."""
        lead = (length, batch) if self.per_step else (batch,)
        if self.classes:
            if len(out_shape) != 1:
                raise InvalidRequest(
                    f"loss {self.name!r} needs a flat output (classes,), the network gives {out_shape}"
                )
            want = lead
            if tuple(y.shape) != want:
                raise InvalidRequest(
                    f"loss {self.name!r} takes labels of shape {want} ({self.description}), got {tuple(y.shape)}"
                )
            if y.is_floating_point() and not bool((y == y.round()).all()):
                raise InvalidRequest(f"loss {self.name!r} takes integer class labels, got fractional values")
            labels = y.long()
            bad = labels[(labels < 0) | (labels >= out_shape[0])]
            if bad.numel():
                classes = out_shape[0]
                raise InvalidRequest(
                    f"label {int(bad[0])} is out of range: the network has {classes} classes (0..{classes - 1})"
                )
            return labels
        want = (*lead, *out_shape)
        if tuple(y.shape) != want:
            raise InvalidRequest(
                f"loss {self.name!r} takes targets of shape {want} ({self.description}), got {tuple(y.shape)}"
            )
        if not bool(torch.isfinite(y).all()):
            raise InvalidRequest("targets contain NaN or infinity")
        return y.float()


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("ce_count", lambda out: out.sum(0), True, False, "cross-entropy on output spike counts; labels (batch,)"),
        Loss("ce_sum", lambda out: out.sum(0), True, False, "cross-entropy on the summed output; labels (batch,)"),
        Loss("ce_last", lambda out: out[-1], True, False, "cross-entropy on the last step's output; labels (batch,)"),
        Loss("ce_per_step", lambda out: out, True, True, "cross-entropy at every step; labels (time, batch)"),
        Loss("mse_rate", lambda out: out.mean(0), False, False, "MSE of firing rates; targets (batch, *output)"),
        Loss("mse", lambda out: out, False, True, "MSE of raw outputs; targets (time, batch, *output)"),
    )
}

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def loss_names() -> list[str]:
    return sorted(LOSSES)


def get_loss(name: str) -> Loss:
    try:
        return LOSSES[name]
    except KeyError:
        raise InvalidRequest(f"unknown loss {name!r}; valid losses: {', '.join(loss_names())}") from None


@dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer and its hyperparameters; ``momentum`` is SGD's."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise InvalidRequest(f"unknown optimizer {self.name!r}; valid optimizers: {', '.join(sorted(OPTIMIZERS))}")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise InvalidRequest(
                    f"optimizer {name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}"
                )

    def build(self, parameters) -> torch.optim.Optimizer:
        extra = {"momentum": self.momentum} if self.name == "sgd" else {}
        return OPTIMIZERS[self.name](parameters, lr=self.lr, weight_decay=self.weight_decay, **extra)


@dataclass(frozen=True)
class TrainingOptions:
    """How a step trains: the loss by name, the optimizer, and the gradient norm to clip to (0: none)."""

    loss: str = "ce_count"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    clip_norm: float = 0.0

    @property
    def objective(self) -> Loss:
        """The loss itself; InvalidRequest if no loss has this name."""
        return get_loss(self.loss)


@dataclass(frozen=True)
class Dataset:
    """Sequences to train or evaluate on: inputs (samples, time, *input_shape), targets (samples, ...)."""

    inputs: torch.Tensor
    targets: torch.Tensor


@dataclass(frozen=True)
class Scores:
    """How a batch, an epoch or an evaluation went; ``accuracy`` only for class losses."""

    loss: float
    grad_norm: float = 0.0
    accuracy: float | None = None


@dataclass(frozen=True)
class BatchProgress:
    """Reported after each training batch: batch ``batch`` of ``batches`` in epoch ``epoch``."""

    epoch: int
    batch: int
    batches: int
    scores: Scores


@dataclass(frozen=True)
class EpochSummary:
    """Reported after each epoch: its scores, those on the validation set if there is one, and its speed."""

    epoch: int
    scores: Scores
    samples_per_second: float
    validation: Scores | None = None


Progress = BatchProgress | EpochSummary
"""What a training run reports as it goes."""


@dataclass(frozen=True)
class OptimizerSnapshot:
    """An optimizer's config and its state tensors by name (``"<param index>.<key>"``)."""

    config: OptimizerConfig
    tensors: dict[str, torch.Tensor]


# Dropout draws from torch's global generator: a batch swaps the session's generator state in and
# out under this lock, so sessions training in parallel threads stay reproducible.
GLOBAL_RNG = threading.Lock()
"""Held while torch's global random generator is seeded and drawn from: threads share it."""


@dataclass
class BatchResult:
    loss: float
    grad_norm: float
    right: int
    total: int

    def scores(self) -> Scores:
        return Scores(self.loss, self.grad_norm, self.right / self.total if self.total else None)


@dataclass
class Totals:
    """Batch results summed over an epoch or an evaluation: loss weighted by samples, the largest
    gradient norm."""

    loss: float = 0.0
    samples: int = 0
    right: int = 0
    total: int = 0
    grad_norm: float = 0.0

    def add(self, result: BatchResult, samples: int) -> None:
        self.loss += result.loss * samples
        self.samples += samples
        self.right += result.right
        self.total += result.total
        self.grad_norm = max(self.grad_norm, result.grad_norm)

    def scores(self) -> Scores:
        return BatchResult(self.loss / self.samples, self.grad_norm, self.right, self.total).scores()


@dataclass
class Training:
    """A session's training state: its optimizer, its random generator, and a carried state for
    truncated BPTT over a stream."""

    seed: int
    config: OptimizerConfig | None = None
    optimizer: torch.optim.Optimizer | None = None
    rng: torch.Generator = field(default_factory=torch.Generator)
    carried: object = None

    def __post_init__(self):
        self.rng.manual_seed(self.seed)

    def optimizer_for(self, model: torch.nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
        """The session's optimizer for ``config``: kept (state and all) while its type stays, with
        learning rate and decay updated; a new one when the type changes."""
        if self.optimizer is None or self.config is None or self.config.name != config.name:
            self.optimizer = config.build(model.parameters())
        else:
            for group in self.optimizer.param_groups:
                group.update(lr=config.lr, weight_decay=config.weight_decay)
                if config.name == "sgd":
                    group["momentum"] = config.momentum
        self.config = config
        return self.optimizer

    @contextlib.contextmanager
    def random(self, model: torch.nn.Module, device: torch.device):
        """Run with torch's global generator seeded from the session's, if the model draws from it."""
        if not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules()):
            yield
            return
        devices = [device] if device.type == "cuda" else []
        with GLOBAL_RNG, torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.rng)))
            yield


def train_batch(
    model: rb.Model,
    training: Training,
    x: torch.Tensor,
    y: torch.Tensor,
    options: TrainingOptions,
    state,
) -> tuple[BatchResult, object]:
    """One optimizer step on x (time, batch, ...) from ``state`` (None: fresh); returns the result
    and the final state (still attached to the graph: ``detached`` it to keep it)."""
    loss, clip_norm = options.objective, options.clip_norm
    optimizer = training.optimizer_for(model, options.optimizer)
    model.train()
    try:
        with training.random(model, x.device):
            out, final = model(x, state)
            value = loss(out, y)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            gradients = [p.grad for p in model.parameters() if p.grad is not None]
            if clip_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            else:
                norm = (
                    torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients]))
                    if gradients
                    else torch.zeros(())
                )
            optimizer.step()
    finally:
        model.eval()
    right, total = loss.correct(out.detach(), y)
    return BatchResult(float(value.detach()), float(norm), right, total), final


def detached(state):
    """``state`` cut from the autograd graph: the start of the next chunk of truncated BPTT."""
    return rb.replace_leaves(state, {name: t.detach() for name, t in rb.named_leaves(state).items()})


def evaluate_batch(model: rb.Model, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> BatchResult:
    """Loss and accuracy of x (time, batch, ...) from a fresh state, in eval mode, without gradients."""
    with torch.no_grad():
        out, _ = model(x)
        right, total = loss.correct(out, y)
        return BatchResult(float(loss(out, y)), 0.0, right, total)


def train_chunks(
    model: rb.Model,
    training: Training,
    x: torch.Tensor,
    y: torch.Tensor,
    options: TrainingOptions,
    tbptt_steps: int,
) -> BatchResult:
    """Train on one batch from a fresh state: one step over all of time, or with ``tbptt_steps`` > 0
    one step per chunk of that many timesteps, the state carried and detached between chunks."""
    if tbptt_steps <= 0 or tbptt_steps >= x.shape[0]:
        return train_batch(model, training, x, y, options, None)[0]
    state, results = None, []
    per_step = options.objective.per_step
    for start in range(0, x.shape[0], tbptt_steps):
        chunk_y = y[start : start + tbptt_steps] if per_step else y
        result, state = train_batch(model, training, x[start : start + tbptt_steps], chunk_y, options, state)
        state = detached(state)
        results.append(result)
    return BatchResult(
        sum(r.loss for r in results) / len(results),
        max(r.grad_norm for r in results),
        sum(r.right for r in results),
        sum(r.total for r in results),
    )


def optimizer_snapshot(training: Training) -> OptimizerSnapshot | None:
    """The optimizer's config and state tensors, or None if the session has no optimizer yet."""
    if training.optimizer is None:
        return None
    tensors = {}
    for index, values in training.optimizer.state_dict()["state"].items():
        for key, value in values.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return OptimizerSnapshot(training.config, tensors)


_OPTIMIZER_STATE = {"adam": ("step", "exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}
"""The state each optimizer keeps per parameter (AdamW's is Adam's); ``step`` is a count, the others
have the parameter's shape."""

_NONNEGATIVE = ("step", "exp_avg_sq")
"""Adam takes the square root of ``exp_avg_sq`` and divides by a correction that a negative step
count makes zero: below zero, each step would turn the parameters into NaN."""


def restore_optimizer(training: Training, model: rb.Model, snapshot: OptimizerSnapshot) -> None:
    """Rebuild the optimizer from ``optimizer_snapshot``'s output, checked first as parameters are
    (InvalidRequest says what doesn't fit): a state the optimizer can't step with would fail every
    later training step of the session."""
    optimizer = training.optimizer_for(model, snapshot.config)
    parameters = list(model.parameters())
    keys = _OPTIMIZER_STATE["adam" if snapshot.config.name == "adamw" else snapshot.config.name]
    state: dict[int, dict] = {}
    for name, value in snapshot.tensors.items():
        index, _, key = name.partition(".")
        if not index.isdigit() or key not in keys or int(index) >= len(parameters):
            raise InvalidRequest(
                f"optimizer tensor {name!r} should be named '<parameter index>.<key>', with an index below "
                f"{len(parameters)} and a key of {snapshot.config.name}'s: {', '.join(keys)}"
            )
        shape = () if key == "step" else tuple(parameters[int(index)].shape)
        if tuple(value.shape) != shape:
            raise InvalidRequest(f"optimizer tensor {name!r} must have shape {shape}, got {tuple(value.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InvalidRequest(f"optimizer tensor {name!r} contains NaN or infinity")
        if key in _NONNEGATIVE and bool((value < 0).any()):
            raise InvalidRequest(f"optimizer tensor {name!r} must not be negative")
        # The step count is a float32 scalar in torch's own state; the rest take the parameter's dtype.
        state.setdefault(int(index), {})[key] = value.float() if key == "step" else value
    partial = sorted(index for index, values in state.items() if len(values) != len(keys))
    if partial:
        raise InvalidRequest(f"the optimizer state of parameters {partial} is incomplete: each needs {', '.join(keys)}")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise InvalidRequest(f"the optimizer state doesn't fit this network: {e}") from None
