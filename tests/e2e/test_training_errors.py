"""Bad training requests: each gets its status code and a message that names the problem, and the
session is exactly as it was afterwards (its whole snapshot: parameters, streaming state, optimizer
state, random generator, carried state, timestep count) and goes on working.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import rnnbuilder as rb
from client import Client, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import tensors as wire_tensors
from server import Limits, ServerConfig
from tests.server_fixture import running_server

T, B, FEATURES, CLASSES = 10, 4, 6, 3
LOSSES = ["ce_count", "ce_last", "ce_per_step", "ce_sum", "mse", "mse_rate"]
OPTIMIZERS = ["adam", "adamw", "sgd"]


def network():
    return rb.Sequential(nn.Linear(12), snn.LIF(), nn.Linear(CLASSES), snn.LIF())


def inputs(timesteps: int = T, batch: int = B, seed: int = 0) -> np.ndarray:
    """Input spikes (time, batch, features)."""
    return (np.random.default_rng(seed).random((timesteps, batch, FEATURES)) < 0.4).astype(np.float32)


def labels(batch: int = B, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CLASSES, batch)


def samples(count: int = 12, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A dataset: inputs (samples, time, features) and labels (samples,)."""
    return np.ascontiguousarray(inputs(batch=count, seed=seed).transpose(1, 0, 2)), labels(count, seed + 1)


def snapshot(s) -> pb.SessionSnapshot:
    return pb.SessionSnapshot.FromString(s.save())


@pytest.fixture
def session(client):
    """A session that has trained (optimizer state), started a carried stream and streamed input."""
    s = client.create_session(network(), input_shape=(FEATURES,), batch_size=B, seed=0)
    s.train_step(inputs(seed=10), labels(seed=11), lr=1e-2)
    s.train_step(inputs(seed=12), labels(seed=13), lr=1e-2, carry="start")
    s.run(inputs(seed=14))
    yield s
    s.close()


@contextlib.contextmanager
def rejected(s, error=InvalidArgumentError, words=()):
    """The block raises ``error`` whose message has each of ``words``; the session is unchanged and works."""
    before = snapshot(s)
    with pytest.raises(error) as info:
        yield info
    for word in words:
        assert word in info.value.message
    assert snapshot(s) == before
    assert s.run(inputs(seed=20)).shape == (T, B, CLASSES)
    assert np.isfinite(s.train_step(inputs(seed=21), labels(seed=22), lr=1e-2)["loss"])


# --- train_step ----------------------------------------------------------------------------------


def with_value(array: np.ndarray, value) -> np.ndarray:
    array = array.astype(np.float64 if isinstance(value, float) else array.dtype, copy=True)
    array.flat[3] = value
    return array


BAD_TRAIN_STEPS = {
    "negative_label": (dict(y=with_value(labels(), -1)), ["label -1", "out of range", f"{CLASSES} classes"]),
    "label_too_large": (dict(y=with_value(labels(), CLASSES)), [f"label {CLASSES}", "out of range"]),
    "fewer_labels_than_samples": (dict(y=labels(B - 1)), [f"({B},)", f"({B - 1},)"]),
    "more_labels_than_samples": (dict(y=labels(B + 1)), [f"({B},)", f"({B + 1},)"]),
    "fractional_labels": (dict(y=labels().astype(np.float32) + 0.5), ["integer", "fractional"]),
    "nan_input": (dict(x=with_value(inputs(), np.nan).astype(np.float32)), ["NaN"]),
    "inf_input": (dict(x=with_value(inputs(), np.inf).astype(np.float32)), ["infinity"]),
    "unknown_loss": (dict(loss="hinge"), ["'hinge'", *LOSSES]),
    "unknown_optimizer": (dict(optimizer="rmsprop"), ["'rmsprop'", *OPTIMIZERS]),
    "mse_target_without_time": (
        dict(loss="mse", y=np.zeros((B, CLASSES), np.float32)),
        [f"({T}, {B}, {CLASSES})", f"({B}, {CLASSES})"],
    ),
    "mse_rate_target_with_time": (
        dict(loss="mse_rate", y=np.zeros((T, B, CLASSES), np.float32)),
        [f"({B}, {CLASSES})", f"({T}, {B}, {CLASSES})"],
    ),
    "nan_target": (dict(loss="mse_rate", y=with_value(np.zeros((B, CLASSES), np.float32), np.nan)), ["NaN"]),
    "per_step_labels_without_time": (dict(loss="ce_per_step"), [f"({T}, {B})"]),
    "zero_lr": (dict(lr=0.0), ["lr", "> 0"]),
    "negative_lr": (dict(lr=-1e-3), ["lr", "> 0"]),
    "nan_lr": (dict(lr=float("nan")), ["lr"]),
    "negative_weight_decay": (dict(weight_decay=-0.1), ["weight_decay"]),
    "negative_momentum": (dict(optimizer="sgd", momentum=-0.5), ["momentum"]),
    "negative_grad_clip_norm": (dict(grad_clip_norm=-1.0), ["grad_clip_norm"]),
    "wrong_feature_count": (dict(x=np.zeros((T, B, FEATURES + 1), np.float32)), ["input must have shape", "7)"]),
    "no_time_dim": (dict(x=np.zeros((B, FEATURES), np.float32)), ["input must have shape"]),
    "no_timesteps": (dict(x=np.zeros((0, B, FEATURES), np.float32)), ["empty"]),
}


@pytest.mark.parametrize("case", BAD_TRAIN_STEPS)
def test_bad_train_step_is_rejected(session, case):
    """A bad train_step gets INVALID_ARGUMENT naming the problem and leaves the session as it was."""
    changes, words = BAD_TRAIN_STEPS[case]
    call = dict(x=inputs(seed=30), y=labels(seed=31), lr=1e-2) | changes
    with rejected(session, words=words):
        session.train_step(call.pop("x"), call.pop("y"), **call)


def test_continue_with_another_batch_size_is_rejected(session):
    """carry='continue' with a batch size other than the stream's start gets INVALID_ARGUMENT."""
    with rejected(session, words=["carry='continue'", "batch size"]):
        session.train_step(inputs(batch=B + 2), labels(B + 2), lr=1e-2, carry="continue")


# --- fit -----------------------------------------------------------------------------------------

X, Y = samples()
BAD_FITS = {
    "more_labels_than_samples": (dict(y=np.concatenate([Y, Y[:1]])), ["sample and target counts differ", "12"]),
    "fewer_labels_than_samples": (dict(y=Y[:-1]), ["sample and target counts differ", "12"]),
    "negative_label": (dict(y=with_value(Y, -1)), ["label -1", "out of range"]),
    "label_too_large": (dict(y=with_value(Y, CLASSES)), [f"label {CLASSES}", "out of range"]),
    "fractional_labels": (dict(y=Y.astype(np.float32) + 0.25), ["fractional"]),
    "nan_input": (dict(x=with_value(X, np.nan).astype(np.float32)), ["NaN"]),
    "inf_input": (dict(x=with_value(X, -np.inf).astype(np.float32)), ["infinity"]),
    "unknown_loss": (dict(loss="nll"), ["'nll'", *LOSSES]),
    "unknown_optimizer": (dict(optimizer="lbfgs"), ["'lbfgs'", *OPTIMIZERS]),
    "per_step_labels_too_long": (
        dict(loss="ce_per_step", y=np.zeros((12, T + 1), np.int64)),
        [f"({T}, 12)", f"({T + 1}, 12)"],
    ),
    "zero_lr": (dict(lr=0.0), ["lr", "> 0"]),
    "negative_lr": (dict(lr=-0.5), ["lr", "> 0"]),
    "zero_epochs": (dict(epochs=0), ["epochs"]),
    "negative_epochs": (dict(epochs=-2), ["epochs"]),
    "zero_batch_size": (dict(batch_size=0), ["batch_size"]),
    "negative_tbptt_steps": (dict(tbptt_steps=-5), ["tbptt_steps"]),
    "wrong_feature_count": (dict(x=np.zeros((12, T, FEATURES + 2), np.float32)), ["(samples, time, 6)"]),
    "no_time_dim": (dict(x=np.zeros((12, FEATURES), np.float32)), ["(samples, time, 6)"]),
    "validation_label_out_of_range": (
        dict(validation=(X[:4], with_value(Y[:4], CLASSES + 4))),
        [f"label {CLASSES + 4}", "out of range"],
    ),
    "validation_counts_differ": (dict(validation=(X[:4], Y[:3])), ["sample and target counts differ"]),
    "validation_nan": (dict(validation=(with_value(X[:4], np.nan).astype(np.float32), Y[:4])), ["NaN"]),
}


@pytest.mark.parametrize("case", BAD_FITS)
def test_bad_fit_is_rejected_before_any_training(session, case):
    """A bad fit gets INVALID_ARGUMENT naming the problem before a single batch trains."""
    changes, words = BAD_FITS[case]
    call = dict(x=X, y=Y, epochs=2, batch_size=4, lr=1e-2) | changes
    batches = []
    with rejected(session, words=words):
        session.fit(call.pop("x"), call.pop("y"), on_batch=batches.append, **call)
    assert batches == []


# --- evaluate ------------------------------------------------------------------------------------

BAD_EVALUATIONS = {
    "unknown_loss": (dict(loss="hinge"), ["'hinge'", *LOSSES]),
    "label_too_large": (dict(y=with_value(Y, CLASSES)), [f"label {CLASSES}", "out of range"]),
    "counts_differ": (dict(y=Y[:5]), ["sample and target counts differ"]),
    "nan_input": (dict(x=with_value(X, np.nan).astype(np.float32)), ["NaN"]),
    "negative_batch_size": (dict(batch_size=-1), ["batch_size"]),
    "mse_target_shape": (dict(loss="mse", y=np.zeros((12, CLASSES), np.float32)), [f"({T}, 12, {CLASSES})"]),
}


@pytest.mark.parametrize("case", BAD_EVALUATIONS)
def test_bad_evaluate_is_rejected(session, case):
    """A bad evaluate gets INVALID_ARGUMENT naming the problem and leaves the session as it was."""
    changes, words = BAD_EVALUATIONS[case]
    call = dict(x=X, y=Y) | changes
    with rejected(session, words=words):
        session.evaluate(call.pop("x"), call.pop("y"), **call)


# --- unknown sessions ----------------------------------------------------------------------------

CALLS_ON_SESSIONS = {
    "train_step": lambda s: s.train_step(inputs(), labels()),
    "fit": lambda s: s.fit(X, Y, epochs=1, batch_size=4),
    "evaluate": lambda s: s.evaluate(X, Y),
    "save": lambda s: s.save(),
}


@pytest.mark.parametrize("call", CALLS_ON_SESSIONS)
def test_training_calls_on_an_unknown_session_get_not_found(client, call):
    """train_step, fit, evaluate and save on a deleted session get NOT_FOUND naming the session."""
    s = client.create_session(network(), input_shape=(FEATURES,), batch_size=B, seed=0)
    s.close()
    with pytest.raises(NotFoundError) as info:
        CALLS_ON_SESSIONS[call](s)
    assert s.id in info.value.message


# --- restore -------------------------------------------------------------------------------------


@pytest.mark.parametrize("blob", [b"not a snapshot", b"\xff" * 16], ids=["text", "garbage"])
def test_restoring_bytes_that_are_no_snapshot_raises_value_error(client, blob):
    """Client.restore of bytes that don't parse as a snapshot raises ValueError, creating nothing."""
    count = len(client.list_sessions())
    with pytest.raises(ValueError, match="not a saved session"):
        client.restore(blob)
    assert len(client.list_sessions()) == count


def test_restoring_a_truncated_snapshot_raises_value_error(session, client):
    """A snapshot cut short raises ValueError."""
    blob = session.save()
    with pytest.raises(ValueError, match="not a saved session"):
        client.restore(blob[:-7])


def _tensor(array: np.ndarray) -> pb.Tensor:
    return wire_tensors.encode(array)


def _replace(named, name: str, array: np.ndarray) -> None:
    for item in named:
        if item.name == name:
            item.tensor.CopyFrom(_tensor(array))
            return
    raise KeyError(name)


def _first_parameter(message: pb.SessionSnapshot) -> str:
    return message.parameters[0].name


CORRUPTIONS = {
    "parameter_of_wrong_shape": (
        lambda m: _replace(m.parameters, _first_parameter(m), np.zeros((2, 2), np.float32)),
        lambda m: [_first_parameter(m), "shape"],
    ),
    "unknown_parameter": (
        lambda m: m.parameters.add(name="nope.weight", tensor=_tensor(np.zeros(3, np.float32))),
        lambda m: ["nope.weight"],
    ),
    "nan_parameter": (
        lambda m: _replace(m.parameters, _first_parameter(m), np.full((12, FEATURES), np.nan, np.float32)),
        lambda m: [_first_parameter(m), "NaN"],
    ),
    "state_of_wrong_shape": (
        lambda m: _replace(m.state, m.state[0].name, np.zeros((B + 1, 99), np.float32)),
        lambda m: [m.state[0].name],
    ),
    "no_network": (lambda m: m.ClearField("network"), lambda m: ["network"]),
    "zero_batch_size": (lambda m: setattr(m, "batch_size", 0), lambda m: ["batch_size"]),
    "unknown_optimizer": (lambda m: setattr(m.optimizer.config, "name", "rmsprop"), lambda m: ["'rmsprop'"]),
    "misnamed_optimizer_tensor": (
        lambda m: setattr(m.optimizer.tensors[0], "name", "exp_avg"),
        lambda m: ["'exp_avg'", "<parameter index>.<key>"],
    ),
    "optimizer_tensor_of_wrong_shape": (
        lambda m: _replace(m.optimizer.tensors, "0.exp_avg", np.zeros((2, 2), np.float32)),
        lambda m: ["optimizer"],
    ),
    "malformed_random_state": (
        lambda m: m.random_state.CopyFrom(_tensor(np.zeros(3, np.uint8))),
        lambda m: ["random generator"],
    ),
    "carried_state_of_wrong_shape": (
        lambda m: _replace(m.carried_state, m.carried_state[0].name, np.zeros((B, 99), np.float32)),
        lambda m: [m.carried_state[0].name],
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_restoring_a_malformed_snapshot_is_rejected(session, client, case):
    """A snapshot that parses but doesn't fit its network gets INVALID_ARGUMENT naming the part,
    and no session is left behind."""
    corrupt, words = CORRUPTIONS[case]
    message = snapshot(session)
    expected_words = words(message)
    corrupt(message)
    count = len(client.list_sessions())
    with pytest.raises(InvalidArgumentError) as info:
        client.restore(message.SerializeToString())
    for word in expected_words:
        assert word in info.value.message
    assert len(client.list_sessions()) == count


# --- limits --------------------------------------------------------------------------------------

WORK_LIMIT = 100  # timesteps x batch


@pytest.fixture(scope="module")
def limited_client():
    """A client of a server that allows at most WORK_LIMIT timesteps x batch per request."""
    config = ServerConfig(device="cpu", workers=2, limits=Limits(max_timesteps_times_batch=WORK_LIMIT))
    with running_server(config) as (address, _), Client(address) as c:
        yield c


@pytest.fixture
def limited_session(limited_client):
    s = limited_client.create_session(network(), input_shape=(FEATURES,), batch_size=B, seed=0)
    s.train_step(inputs(seed=10), labels(seed=11), lr=1e-2)
    return s


OVER_THE_LIMIT = {  # each runs 2 * WORK_LIMIT timesteps x batch at once (T=10 x 20 sequences)
    "train_step": lambda s, x, y: s.train_step(x.transpose(1, 0, 2), y),
    "fit": lambda s, x, y: s.fit(x, y, epochs=1, batch_size=20),
    "evaluate": lambda s, x, y: s.evaluate(x, y, batch_size=20),
}


@pytest.mark.parametrize("call", OVER_THE_LIMIT)
def test_training_over_the_work_limit_gets_resource_exhausted(limited_session, call):
    """A batch over max_timesteps_times_batch gets RESOURCE_EXHAUSTED with the numbers."""
    x, y = samples(20)
    with rejected(limited_session, ResourceExhaustedError, ["max_timesteps_times_batch"]) as info:
        OVER_THE_LIMIT[call](limited_session, x, y)
    assert info.value.metadata["requested"] == str(2 * WORK_LIMIT)
    assert info.value.metadata["allowed"] == str(WORK_LIMIT)


def test_fit_within_the_work_limit_counts_per_batch(limited_session):
    """fit on a dataset over the limit in all is accepted when each batch is within it."""
    x, y = samples(20)
    history = limited_session.fit(x, y, epochs=1, batch_size=B)
    assert len(history) == 1
    assert 0 <= limited_session.evaluate(x, y, batch_size=B)["accuracy"] <= 1
