"""Training through the service (issue 4), end to end: a real server on 127.0.0.1, the real client.

Remote equals local: the optimizer steps a session takes through ``train_step`` leave the same
parameters as the same steps done with plain torch on ``Session.to_local()``. ``fit`` learns the
digits dataset, can be cancelled at a batch boundary, and continues after save/restore exactly as
if it had never stopped.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnnbuilder as rb
from client import Client, SimulatorError
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import tensors as wire_tensors

T, B, FEATURES, CLASSES = 15, 8, 12, 5


@pytest.fixture(autouse=True)
def close_sessions(client):
    """Delete every session a test made: the module's server holds at most 64 at once."""
    yield
    for s in client.list_sessions():
        s.close()


def spiking_net():
    """Spiking output: for spike-count and rate losses."""
    return rb.Sequential(nn.Linear(24), snn.LIF(), nn.Linear(CLASSES), snn.LIF())


def readout_net():
    """A non-spiking linear readout on a spiking hidden layer: for summed, last-step and raw losses."""
    return rb.Sequential(nn.Linear(24), snn.LIF(), nn.Linear(CLASSES))


def spikes(seed: int, shape, p: float = 0.4) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float32)


def labels(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CLASSES, shape)


def batch(seed: int, timesteps: int = T, batch_size: int = B) -> np.ndarray:
    """Input spikes (time, batch, features)."""
    return spikes(seed, (timesteps, batch_size, FEATURES))


def dataset(seed: int, samples: int, timesteps: int = T) -> tuple[np.ndarray, np.ndarray]:
    """Input spikes (samples, time, features) and class labels (samples,)."""
    return spikes(seed, (samples, timesteps, FEATURES)), labels(seed + 1000, samples)


def numpy_parameters(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def assert_parameters_close(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=atol, err_msg=name)


def assert_parameters_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def largest_change(before: dict, after: dict) -> float:
    return max(float(np.abs(after[k].astype(np.float64) - before[k]).max()) for k in before)


def parameters_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def detached(state):
    return rb.replace_leaves(state, {k: v.detach() for k, v in rb.named_leaves(state).items()})


def local_optimizer(model, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0):
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    assert name == "sgd"
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


# Each loss written out from its definition, on outputs (time, batch, classes).
LOCAL_LOSSES = {
    "ce_count": lambda out, y: F.cross_entropy(out.sum(0), y),
    "ce_sum": lambda out, y: F.cross_entropy(out.sum(0), y),
    "ce_last": lambda out, y: F.cross_entropy(out[-1], y),
    "ce_per_step": lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
    "mse_rate": lambda out, y: F.mse_loss(out.mean(0), y),
    "mse": lambda out, y: F.mse_loss(out, y),
}
LOCAL_PREDICTIONS = {
    "ce_count": lambda out: out.sum(0),
    "ce_sum": lambda out: out.sum(0),
    "ce_last": lambda out: out[-1],
    "ce_per_step": lambda out: out,
}
LOSS_NETS = {
    "ce_count": spiking_net,
    "ce_sum": readout_net,
    "ce_last": readout_net,
    "ce_per_step": readout_net,
    "mse_rate": spiking_net,
    "mse": readout_net,
}


def targets_for(loss: str, seed: int, timesteps: int = T, batch_size: int = B) -> np.ndarray:
    """Targets shaped as ``loss`` takes them for one batch."""
    rng = np.random.default_rng(seed)
    if loss == "ce_per_step":
        return rng.integers(0, CLASSES, (timesteps, batch_size))
    if loss == "mse_rate":
        return rng.random((batch_size, CLASSES), dtype=np.float32)
    if loss == "mse":
        return rng.standard_normal((timesteps, batch_size, CLASSES), dtype=np.float32)
    return rng.integers(0, CLASSES, batch_size)


# --- 1. remote equals local ----------------------------------------------------------------------

TRAINING_CASES = {
    "adam-ce_count": dict(net=spiking_net, loss="ce_count", optimizer="adam", lr=1e-2),
    "sgd_momentum_decay-ce_last": dict(
        net=readout_net, loss="ce_last", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2
    ),
    "sgd_momentum_decay-mse_rate": dict(
        net=spiking_net, loss="mse_rate", optimizer="sgd", lr=0.5, momentum=0.8, weight_decay=1e-3
    ),
    "adamw-ce_sum": dict(net=readout_net, loss="ce_sum", optimizer="adamw", lr=1e-2, weight_decay=0.1),
    "adam_clipped-ce_count": dict(net=spiking_net, loss="ce_count", optimizer="adam", lr=1e-2, grad_clip_norm=0.05),
}


@pytest.mark.parametrize("case", TRAINING_CASES)
def test_five_train_steps_equal_plain_torch(client, case):
    """Five train_step calls leave the parameters that five plain-torch steps on to_local() leave."""
    config = dict(TRAINING_CASES[case])
    net, loss = config.pop("net"), config.pop("loss")
    name, lr = config["optimizer"], config["lr"]
    clip = config.get("grad_clip_norm", 0.0)
    s = client.create_session(net(), input_shape=(FEATURES,), batch_size=B, seed=1)
    model = s.to_local()
    before = numpy_parameters(model)
    optimizer = local_optimizer(
        model, name, lr, weight_decay=config.get("weight_decay", 0.0), momentum=config.get("momentum", 0.0)
    )
    for step in range(5):
        x, y = batch(step), targets_for(loss, 100 + step)
        reported = s.train_step(x, y, loss=loss, **config)
        model.train()
        out, _ = model(torch.from_numpy(x))
        value = LOCAL_LOSSES[loss](out, torch.from_numpy(y))
        optimizer.zero_grad()
        value.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        if clip:
            assert float(norm) > clip  # the clipping does something
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        assert reported["loss"] == pytest.approx(value.item(), abs=1e-5)
        assert reported["grad_norm"] == pytest.approx(float(norm), rel=1e-4, abs=1e-6)
    remote = s.parameters()
    assert largest_change(before, remote) > 1e-3
    assert_parameters_close(remote, numpy_parameters(model), atol=1e-5)


# --- 2. it learns a real dataset -----------------------------------------------------------------


def test_learns_the_digits_dataset(client):
    """fit through the service reaches >= 90% test accuracy on rate-coded sklearn digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = digits.data / 16.0  # (1797, 64) in [0, 1]
    rng = np.random.default_rng(0)
    x = (rng.random((len(pixels), 25, 64)) < pixels[:, None, :]).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    net = rb.Sequential(nn.Linear(128), snn.LIF(), nn.Linear(10), snn.LIF())
    s = client.create_session(net, input_shape=(64,), batch_size=64, seed=0)
    history = s.fit(x_train, y_train, epochs=15, batch_size=64, loss="ce_count", optimizer="adam", lr=2e-3)
    assert len(history) == 15
    assert s.evaluate(x_test, y_test)["accuracy"] >= 0.90


def test_fit_reports_validation_metrics_of_each_epoch(client):
    """fit's validation metrics for the last epoch are what evaluate gives on the trained session."""
    x, y = dataset(110, 24)
    x_val, y_val = dataset(111, 10)
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=2)
    history = s.fit(x, y, epochs=2, batch_size=8, lr=1e-2, validation=(x_val, y_val))
    assert [h["epoch"] for h in history] == [0, 1]
    assert {"loss", "accuracy", "grad_norm", "val_loss", "val_accuracy", "samples_per_second"} <= history[-1].keys()
    evaluated = s.evaluate(x_val, y_val)
    assert history[-1]["val_loss"] == pytest.approx(evaluated["loss"], abs=1e-6)
    assert history[-1]["val_accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-9)


def test_fit_progress_bar_counts_every_batch(client, capsys):
    """progress=True draws a bar on stderr that reaches epochs x batches, with a line per epoch."""
    x, y = dataset(112, 20)
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=2)
    s.fit(x, y, epochs=2, batch_size=8, lr=1e-2, progress=True)
    captured = capsys.readouterr()
    assert "6/6" in captured.err  # 2 epochs x ceil(20 / 8) batches
    assert "epoch 0, loss" in captured.out + captured.err
    assert "epoch 1, loss" in captured.out + captured.err


# --- 3. cancellation -----------------------------------------------------------------------------

CANCEL_SAMPLES, CANCEL_BATCH, CANCEL_EPOCHS = 32, 4, 100  # 8 batches an epoch, 800 in all
CANCEL_CONFIG = dict(loss="ce_count", optimizer="adam", lr=1e-2)


def cancel_net():
    return rb.Sequential(nn.Linear(96), snn.LIF(), nn.Linear(CLASSES), snn.LIF())


def cancel_data():
    return dataset(7, CANCEL_SAMPLES, timesteps=40)


def settled_parameters(s) -> dict:
    """The session's parameters once training has stopped changing them."""
    previous = s.parameters()
    for _ in range(50):
        time.sleep(0.1)
        current = s.parameters()
        if parameters_equal(previous, current):
            return current
        previous = current
    raise AssertionError("the parameters still change: training did not stop")


def batches_done(client, parameters: dict, x: np.ndarray, y: np.ndarray, at_least: int) -> int:
    """How many batches (in order, unshuffled) a fresh session must train to reach ``parameters``;
    -1 if none of the first CANCEL_EPOCHS epochs' worth does."""
    reference = client.create_session(cancel_net(), input_shape=(FEATURES,), batch_size=CANCEL_BATCH, seed=3)
    per_epoch = CANCEL_SAMPLES // CANCEL_BATCH
    try:
        for done in range(1, CANCEL_EPOCHS * per_epoch + 1):
            start = (done - 1) % per_epoch * CANCEL_BATCH
            chunk = slice(start, start + CANCEL_BATCH)
            reference.train_step(np.ascontiguousarray(x[chunk].transpose(1, 0, 2)), y[chunk], **CANCEL_CONFIG)
            if done >= at_least and parameters_equal(reference.parameters(), parameters):
                return done
        return -1
    finally:
        reference.close()


def test_cancel_from_on_batch_stops_at_a_batch_boundary(client):
    """on_batch returning False ends fit early with the epochs done so far, and the server stops
    after a whole number of batches, no fewer than were reported."""
    x, y = cancel_data()
    s = client.create_session(cancel_net(), input_shape=(FEATURES,), batch_size=CANCEL_BATCH, seed=3)
    seen = []

    def on_batch(progress):
        seen.append((progress["epoch"], progress["batch"]))
        return len(seen) < 11  # stop after epoch 1, batch 2

    history = s.fit(
        x, y, epochs=CANCEL_EPOCHS, batch_size=CANCEL_BATCH, shuffle=False, on_batch=on_batch, **CANCEL_CONFIG
    )
    assert seen[-1] == (1, 2)
    assert [h["epoch"] for h in history] == [0]
    done = batches_done(client, settled_parameters(s), x, y, at_least=len(seen))
    assert len(seen) <= done < CANCEL_EPOCHS * CANCEL_SAMPLES // CANCEL_BATCH


def test_session_works_after_a_cancelled_fit(client):
    """After a cancelled fit, run, evaluate, train_step and a full fit all work on the session."""
    x, y = cancel_data()
    s = client.create_session(cancel_net(), input_shape=(FEATURES,), batch_size=CANCEL_BATCH, seed=3)
    s.fit(x, y, epochs=CANCEL_EPOCHS, batch_size=CANCEL_BATCH, on_batch=lambda p: p["batch"] < 2, **CANCEL_CONFIG)
    settled = settled_parameters(s)
    inputs = np.ascontiguousarray(x[:CANCEL_BATCH].transpose(1, 0, 2))
    assert s.run(inputs).shape == (40, CANCEL_BATCH, CLASSES)
    assert 0 <= s.evaluate(x, y)["accuracy"] <= 1
    assert np.isfinite(s.train_step(inputs, y[:CANCEL_BATCH], **CANCEL_CONFIG)["loss"])
    history = s.fit(x, y, epochs=2, batch_size=CANCEL_BATCH, **CANCEL_CONFIG)
    assert [h["epoch"] for h in history] == [0, 1]
    assert largest_change(settled, s.parameters()) > 0


def test_closing_the_connection_stops_training(client, server_address):
    """Closing the client's channel from another thread mid-fit fails that fit and stops the
    server's training at a batch boundary; the session stays usable."""
    x, y = cancel_data()
    s_id = client.create_session(cancel_net(), input_shape=(FEATURES,), batch_size=CANCEL_BATCH, seed=3).id
    other = Client(server_address)
    closer = []

    def on_batch(progress):
        if not closer:
            closer.append(threading.Thread(target=other.close))
            closer[0].start()
        return True

    with pytest.raises(SimulatorError):
        other.get_session(s_id).fit(
            x, y, epochs=CANCEL_EPOCHS, batch_size=CANCEL_BATCH, shuffle=False, on_batch=on_batch, **CANCEL_CONFIG
        )
    closer[0].join()
    s = client.get_session(s_id)
    done = batches_done(client, settled_parameters(s), x, y, at_least=1)
    assert 1 <= done < CANCEL_EPOCHS * CANCEL_SAMPLES // CANCEL_BATCH
    assert np.isfinite(s.evaluate(x, y)["loss"])


# --- 4. save and restore -------------------------------------------------------------------------

SAVE_CONFIGS = {
    "adam": dict(optimizer="adam", lr=1e-2),
    "sgd_momentum": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adamw": dict(optimizer="adamw", lr=1e-2, weight_decay=0.05),
}


@pytest.mark.parametrize("optimizer", SAVE_CONFIGS)
def test_fit_continues_after_save_and_restore_as_if_uninterrupted(client, optimizer):
    """1 epoch, save, restore, 1 more epoch (shuffled) equals 2 epochs in one fit and 1 + 1 epochs."""
    x, y = dataset(11, 40)
    config = dict(loss="ce_count", batch_size=8, shuffle=True, **SAVE_CONFIGS[optimizer])

    def session():
        return client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=5)

    first = session()
    first.fit(x, y, epochs=1, **config)
    restored = client.restore(first.save())
    restored.fit(x, y, epochs=1, **config)

    in_one = session()
    in_one.fit(x, y, epochs=2, **config)
    in_two = session()
    in_two.fit(x, y, epochs=1, **config)
    in_two.fit(x, y, epochs=1, **config)

    unshuffled = session()
    unshuffled.fit(x, y, epochs=2, **(config | dict(shuffle=False)))

    expected = in_one.parameters()
    assert largest_change(unshuffled.parameters(), expected) > 1e-5  # the order matters
    assert_parameters_equal(in_two.parameters(), expected)
    assert_parameters_equal(restored.parameters(), expected)


def test_restore_gives_identical_parameters_state_timesteps_and_outputs(client):
    """A restored session has the saved parameters, state and timestep count, and runs identically."""
    x, y = dataset(12, 16)
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=6)
    s.fit(x, y, epochs=1, batch_size=8, lr=1e-2)
    s.run(batch(13) * 3)  # a non-trivial streaming state
    restored = client.restore(s.save())
    assert restored.id != s.id
    assert_parameters_equal(restored.parameters(), s.parameters())
    state = s.get_state()
    assert any(np.abs(v).sum() > 0 for v in state.values())
    assert_parameters_equal(restored.get_state(), state)
    assert restored.timesteps_simulated == s.refresh().timesteps_simulated == T
    np.testing.assert_array_equal(restored.run(batch(14)), s.run(batch(14)))


def test_restored_session_is_independent(client):
    """Training the restored session leaves the original alone, and the other way round."""
    x, y = dataset(15, 16)
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=7)
    s.fit(x, y, epochs=1, batch_size=8, lr=1e-2)
    saved = s.parameters()
    restored = client.restore(s.save())
    restored.fit(x, y, epochs=2, batch_size=8, lr=1e-2)
    assert_parameters_equal(s.parameters(), saved)
    assert largest_change(saved, restored.parameters()) > 1e-4
    trained = restored.parameters()
    s.train_step(batch(16), labels(17, B), lr=1e-2)
    assert_parameters_equal(restored.parameters(), trained)


def test_carried_training_state_survives_save_and_restore(client):
    """A truncated-BPTT stream started before save continues the same way in the restored session."""
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=8)
    s.train_step(batch(20), labels(21, B), lr=1e-2, carry="start")
    restored = client.restore(s.save())
    for session in (s, restored):
        session.train_step(batch(22), labels(23, B), lr=1e-2, carry="continue")
    assert_parameters_equal(restored.parameters(), s.parameters())


# --- 5. truncated BPTT and the streaming state ---------------------------------------------------


def test_carry_continue_continues_from_the_carried_state(client):
    """carry='start' then 'continue' equals two local optimizer steps with the state carried and
    detached between the chunks (and differs from starting the second chunk fresh)."""
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=9)
    x1, x2, y = batch(30), batch(31), labels(32, B)
    carried_model, fresh_model = s.to_local(), s.to_local()
    s.train_step(x1, y, lr=1e-2, carry="start")
    s.train_step(x2, y, lr=1e-2, carry="continue")

    def local(model, carry: bool):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        state = None
        for x in (x1, x2):
            out, final = model(torch.from_numpy(x), state if carry else None)
            value = F.cross_entropy(out.sum(0), torch.from_numpy(y))
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            state = detached(final)
        return numpy_parameters(model)

    remote, carried, fresh = s.parameters(), local(carried_model, True), local(fresh_model, False)
    assert largest_change(fresh, carried) > 1e-4
    assert_parameters_close(remote, carried, atol=1e-5)


def test_training_leaves_the_streaming_state_alone(client):
    """train_step (every carry mode) and fit change neither the streaming state nor the timestep count."""
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=B, seed=10)
    s.run(batch(40) * 3)
    state = s.get_state()
    for carry in ("none", "start", "continue"):
        s.train_step(batch(41), labels(42, B), lr=1e-2, carry=carry)
    s.fit(*dataset(43, 16), epochs=1, batch_size=8, lr=1e-2, tbptt_steps=5)
    assert_parameters_equal(s.get_state(), state)
    assert s.refresh().timesteps_simulated == T


def two_class_task(samples: int, timesteps: int = 20):
    """Class 0 fires on the first half of the inputs, class 1 on the second half."""
    rng = np.random.default_rng(50)
    y = rng.integers(0, 2, samples)
    rates = np.where((np.arange(FEATURES) < FEATURES // 2) == (y[:, None] == 0), 0.6, 0.05)
    x = (rng.random((samples, timesteps, FEATURES)) < rates[:, None, :]).astype(np.float32)
    return x, y


def test_fit_with_tbptt_learns(client):
    """fit(tbptt_steps=5) on a two-class task lowers the training loss."""
    x, y = two_class_task(64)
    net = rb.Sequential(nn.Linear(16), snn.LIF(), nn.Linear(2), snn.LIF())
    s = client.create_session(net, input_shape=(FEATURES,), batch_size=16, seed=11)
    history = s.fit(x, y, epochs=8, batch_size=16, lr=2e-2, tbptt_steps=5)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]


def test_fit_with_tbptt_takes_one_step_per_chunk(client):
    """fit(tbptt_steps=5) over T=20 takes 4 optimizer steps per batch (Adam's step count says so)."""
    x, y = two_class_task(32)
    s = client.create_session(spiking_net(), input_shape=(FEATURES,), batch_size=16, seed=12)
    s.fit(x, y, epochs=2, batch_size=16, lr=1e-2, tbptt_steps=5)
    snapshot = pb.SessionSnapshot.FromString(s.save())
    steps = {t.name: wire_tensors.decode(t.tensor) for t in snapshot.optimizer.tensors if t.name.endswith(".step")}
    # the weights get a gradient in every chunk; the initial membranes only in each batch's first chunk
    assert float(steps["0.step"]) == 2 * 2 * 4
    assert max(float(v) for v in steps.values()) == 2 * 2 * 4


# --- 6. losses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOCAL_LOSSES)
def test_train_step_reports_the_named_loss(client, loss):
    """train_step's loss is the named loss of the local model's output on the batch, before the step."""
    s = client.create_session(LOSS_NETS[loss](), input_shape=(FEATURES,), batch_size=B, seed=13)
    x, y = batch(60), targets_for(loss, 61)
    with torch.no_grad():
        out, _ = s.to_local()(torch.from_numpy(x))
        expected = float(LOCAL_LOSSES[loss](out, torch.from_numpy(y)))
    assert s.train_step(x, y, loss=loss, lr=1e-2)["loss"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("loss", LOCAL_LOSSES)
def test_accuracy_is_reported_for_class_losses_only(client, loss):
    """Class losses report the share of right argmax predictions; MSE losses report no accuracy."""
    s = client.create_session(LOSS_NETS[loss](), input_shape=(FEATURES,), batch_size=B, seed=14)
    x, y = batch(62, batch_size=40), targets_for(loss, 63, batch_size=40)
    with torch.no_grad():
        out, _ = s.to_local()(torch.from_numpy(x))
    reported = s.train_step(x, y, loss=loss, lr=1e-2)
    if loss not in LOCAL_PREDICTIONS:
        assert "accuracy" not in reported
        return
    prediction = LOCAL_PREDICTIONS[loss](out).argmax(-1).numpy()
    assert 0 < reported["accuracy"] < 1
    assert reported["accuracy"] == pytest.approx(float((prediction == y).mean()), abs=1e-9)


@pytest.mark.parametrize("loss", ["ce_count", "ce_per_step", "mse"])
def test_evaluate_reports_the_named_loss_on_a_dataset(client, loss):
    """evaluate on (samples, time, ...) inputs with (samples, ...) targets gives the local eval loss."""
    s = client.create_session(LOSS_NETS[loss](), input_shape=(FEATURES,), batch_size=B, seed=15)
    x = spikes(64, (20, T, FEATURES))
    y = targets_for(loss, 65, batch_size=20)
    if loss != "ce_count":  # per-step targets come (time, batch, ...) from targets_for
        y = np.ascontiguousarray(np.moveaxis(y, 0, 1))
    with torch.no_grad():
        out, _ = s.to_local()(torch.from_numpy(x.transpose(1, 0, 2).copy()))
        target = torch.from_numpy(np.moveaxis(y, 0, 1).copy() if loss != "ce_count" else y)
        expected = float(LOCAL_LOSSES[loss](out, target))
    assert s.evaluate(x, y, loss=loss, batch_size=7)["loss"] == pytest.approx(expected, abs=1e-5)


# --- 7. eval and train modes ---------------------------------------------------------------------


def normalized_dropout_net(p: float = 0.5):
    return rb.Sequential(nn.Linear(24), nn.BatchNorm1d(), nn.Dropout(p), snn.LIF(), nn.Linear(CLASSES))


def test_run_and_evaluate_are_deterministic_in_eval_mode(client):
    """With dropout and batch norm, evaluate repeats exactly and run equals the local eval-mode model."""
    s = client.create_session(normalized_dropout_net(), input_shape=(FEATURES,), batch_size=B, seed=16)
    s.train_step(batch(70), labels(71, B), loss="ce_sum", lr=1e-2)  # running stats no longer the defaults
    x, y = dataset(72, 24)
    assert s.evaluate(x, y, loss="ce_sum") == s.evaluate(x, y, loss="ce_sum")
    inputs = batch(73)
    first = s.run(inputs)
    s.reset()
    np.testing.assert_array_equal(s.run(inputs), first)
    with torch.no_grad():
        local, _ = s.to_local()(torch.from_numpy(inputs))
    np.testing.assert_allclose(first, local.numpy(), rtol=0, atol=1e-5)


def test_train_step_updates_batch_norm_running_statistics(client):
    """train_step runs in train mode: batch norm's running mean, variance and count move."""
    s = client.create_session(normalized_dropout_net(), input_shape=(FEATURES,), batch_size=B, seed=17)
    before = s.parameters()
    s.train_step(batch(74), labels(75, B), loss="ce_sum", lr=1e-2)
    after = s.parameters()
    (mean,) = [k for k in before if k.endswith("running_mean")]
    (var,) = [k for k in before if k.endswith("running_var")]
    (count,) = [k for k in before if k.endswith("num_batches_tracked")]
    assert np.abs(after[mean] - before[mean]).max() > 1e-4
    assert np.abs(after[var] - before[var]).max() > 1e-4
    assert int(after[count]) == int(before[count]) + 1


def test_dropout_is_active_in_training_only(client):
    """With dropout p=0.9, the training loss of a batch differs from its eval loss."""
    net = rb.Sequential(nn.Linear(24), nn.Dropout(0.9), snn.LIF(), nn.Linear(CLASSES))
    s = client.create_session(net, input_shape=(FEATURES,), batch_size=B, seed=18)
    x, y = batch(76), labels(77, B)
    eval_loss = s.evaluate(np.ascontiguousarray(x.transpose(1, 0, 2)), y, loss="ce_sum")["loss"]
    assert s.evaluate(np.ascontiguousarray(x.transpose(1, 0, 2)), y, loss="ce_sum")["loss"] == eval_loss
    train_loss = s.train_step(x, y, loss="ce_sum", lr=1e-2)["loss"]
    assert abs(train_loss - eval_loss) > 1e-3


def test_dropout_masks_follow_the_session_seed(client):
    """Two sessions with the same seed train identically through dropout."""
    net = rb.Sequential(nn.Linear(24), nn.Dropout(0.5), snn.LIF(), nn.Linear(CLASSES))
    sessions = [client.create_session(net, input_shape=(FEATURES,), batch_size=B, seed=19) for _ in range(2)]
    losses = [
        [s.train_step(batch(80 + i), labels(90 + i, B), loss="ce_sum")["loss"] for i in range(3)] for s in sessions
    ]
    assert losses[0] == losses[1]
    assert_parameters_equal(sessions[0].parameters(), sessions[1].parameters())


# --- 8. parameters round trip --------------------------------------------------------------------


def trained_session(client, seed: int):
    s = client.create_session(normalized_dropout_net(), input_shape=(FEATURES,), batch_size=B, seed=seed)
    s.fit(*dataset(100, 24), epochs=2, batch_size=8, loss="ce_sum", lr=1e-2)
    return s


def test_to_local_reproduces_run_after_training(client):
    """After fit, to_local() gives the outputs the session's run gives."""
    s = trained_session(client, 20)
    inputs = batch(101)
    out = s.run(inputs)
    with torch.no_grad():
        local, _ = s.to_local()(torch.from_numpy(inputs))
    np.testing.assert_allclose(out, local.numpy(), rtol=0, atol=1e-5)


def test_load_parameters_reproduces_a_trained_session(client):
    """Trained parameters loaded into a fresh session with another seed give identical outputs."""
    s = trained_session(client, 21)
    fresh = client.create_session(normalized_dropout_net(), input_shape=(FEATURES,), batch_size=B, seed=99)
    inputs = batch(102)
    assert not np.array_equal(fresh.run(inputs), s.run(inputs))
    fresh.reset()
    s.reset()
    fresh.load_parameters(s.parameters())
    assert_parameters_equal(fresh.parameters(), s.parameters())
    np.testing.assert_array_equal(fresh.run(inputs), s.run(inputs))
