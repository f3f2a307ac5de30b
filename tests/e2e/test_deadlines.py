"""Deadlines and cancellation: a call cut short leaves its session whole.

A Run whose deadline is too short for its work fails with DEADLINE_EXCEEDED; the server goes on
serving, and the session either ran the whole input or none of it (its timestep count is 0 or the
input's length, and its state is the local model's after exactly that much). A Simulate stream the
client cancels leaves the session after a whole number of chunks, equal to the local model after
those chunks, and the session keeps simulating.

The server may finish the work it had started after the client has given up, so the session is read
once it is quiet (its timestep count stable), and atomically (``ExportSession``: count and state
under the session's lock).
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import Client
from client.__main__ import health
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import tensors
from tests.helpers import quiet_snapshot

IN_SHAPE, B = (16,), 8
LONG = 4000  # timesteps of a Run that takes most of a second on a CPU: far past its 0.1 s deadline
K = 3  # timesteps per stream chunk


def recurrent(hidden: int = 256):
    """A recurrent network (a placeholder cycle), simulated one timestep after another."""
    n = rb.Network()
    n.hidden = rb.Placeholder()
    n.hidden = n.input.stack(n.hidden).apply(nn.Linear(hidden), snn.LIF())
    n.output = n.hidden.apply(nn.Linear(10), snn.LIF())
    return n


def spiky_input(seed: int, timesteps: int) -> np.ndarray:
    return np.random.default_rng(seed).random((timesteps, B, *IN_SHAPE), dtype=np.float32) * 4


def raw(array: np.ndarray) -> pb.Tensor:
    return tensors.encode(array)


def local_state(model: rb.Model, chunks) -> tuple[dict[str, np.ndarray], object]:
    """The local model's state (by name, and as it is) after ``chunks``, run one after another."""
    state = None
    with torch.no_grad():
        for chunk in chunks:
            _, state = model(torch.from_numpy(np.ascontiguousarray(chunk)), state)
        if state is None:
            state = model.get_initial_state(B)
    return {k: v.detach().numpy() for k, v in rb.named_leaves(state).items()}, state


def assert_state_is(snapshot: pb.SessionSnapshot, want: dict[str, np.ndarray]) -> None:
    got = {item.name: tensors.decode(item.tensor) for item in snapshot.state}
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), f"state {name} differs from the local model's"


def assert_continues(session, model: rb.Model, state, seed: int) -> None:
    """The session's next run (its output and hidden spikes) equals the local model's from ``state``."""
    x = spiky_input(seed, 12)
    with torch.no_grad():
        out, _, recorded = model.record(torch.from_numpy(x), ["hidden"], state)
    remote = session.record(x, ["hidden"])
    assert np.array_equal(remote.output, out.numpy())
    assert np.array_equal(remote["hidden"], recorded["hidden"].numpy())
    assert remote["hidden"].sum() > 0


# A Run past its deadline


@pytest.fixture
def timed_out(client, stub):
    """A session of the recurrent network, a long input, and the error of a Run of it with a 0.1 s deadline."""
    session = client.create_session(recurrent(), IN_SHAPE, batch_size=B, seed=4)
    x = spiky_input(seed=1, timesteps=LONG)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Run(pb.RunRequest(name=session.name, input=raw(x)), timeout=0.1)
    yield session, x, caught.value, time.monotonic() - started
    session.close()


def test_run_past_its_deadline_is_deadline_exceeded(timed_out):
    """A Run far longer than its deadline fails with DEADLINE_EXCEEDED, about when the deadline passes."""
    _, _, error, waited = timed_out
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert waited < 5.0, "the client waited for the work, not for its deadline"


def test_session_after_a_deadline_ran_all_or_nothing(timed_out):
    """After the deadline the session ran the whole input or none of it, and its state says the same."""
    session, x, _, _ = timed_out
    snapshot = quiet_snapshot(session)
    assert snapshot.timesteps_simulated in (0, LONG)
    want, _ = local_state(session.to_local(), [x] if snapshot.timesteps_simulated else [])
    assert_state_is(snapshot, want)


def test_a_run_cut_off_by_its_deadline_is_not_kept(timed_out):
    """A Run whose deadline passes while it computes leaves the session as it was: its result is dropped."""
    session, _, _, _ = timed_out
    assert quiet_snapshot(session).timesteps_simulated == 0


def test_session_after_a_deadline_keeps_simulating(timed_out):
    """After the deadline the session runs on from where it is, as the local model does."""
    session, x, _, _ = timed_out
    snapshot = quiet_snapshot(session)
    model = session.to_local()
    _, state = local_state(model, [x] if snapshot.timesteps_simulated else [])
    assert_continues(session, model, state, seed=2)


def test_server_serves_after_a_deadline(timed_out, server_address, client):
    """After a deadline the server is SERVING and other sessions run."""
    assert health(server_address, "", 10.0) == "SERVING"
    other = client.create_session(recurrent(32), IN_SHAPE, batch_size=B)
    assert other.run(spiky_input(seed=3, timesteps=4)).shape == (4, B, 10)
    other.close()


# A Simulate stream the client cancels


@pytest.fixture
def cancelled(client, stub):
    """A session, the chunks a raw Simulate stream offered it, and the replies read before ``cancel()``."""
    session = client.create_session(recurrent(), IN_SHAPE, batch_size=B, seed=6)
    chunks = [spiky_input(seed=100 + i, timesteps=K) for i in range(2000)]
    stop = threading.Event()

    def requests():
        for chunk in chunks:
            if stop.is_set():
                return
            yield pb.SimulateRequest(name=session.name, input=raw(chunk))

    call = stub.Simulate(requests(), timeout=60)
    replies = [next(call) for _ in range(5)]
    call.cancel()
    stop.set()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    yield session, chunks, replies
    session.close()


def test_cancelled_stream_leaves_whole_chunks(cancelled):
    """A cancelled stream leaves the session after a whole number of chunks, at least those answered."""
    session, _, replies = cancelled
    assert [r.first_timestep for r in replies] == [i * K for i in range(5)]
    done = quiet_snapshot(session).timesteps_simulated
    assert done % K == 0 and done >= 5 * K, done


def test_cancelled_stream_state_equals_the_local_model(cancelled):
    """The session's state after a cancelled stream is the local model's after the same chunks."""
    session, chunks, replies = cancelled
    snapshot = quiet_snapshot(session)
    model = session.to_local()
    want, _ = local_state(model, chunks[: snapshot.timesteps_simulated // K])
    assert_state_is(snapshot, want)
    first = tensors.decode(replies[0].output)
    with torch.no_grad():
        assert np.array_equal(first, model(torch.from_numpy(chunks[0]))[0].numpy())


def test_cancelled_stream_session_keeps_simulating(cancelled):
    """After a cancelled stream the session runs on from where it is, as the local model does."""
    session, chunks, _ = cancelled
    snapshot = quiet_snapshot(session)
    model = session.to_local()
    _, state = local_state(model, chunks[: snapshot.timesteps_simulated // K])
    assert_continues(session, model, state, seed=7)


def test_server_serves_after_a_cancelled_stream(cancelled, server_address):
    """After a cancelled stream the server is SERVING and a new stream on the same session runs."""
    session, _, _ = cancelled
    assert health(server_address, "", 10.0) == "SERVING"
    with Client(server_address) as c:
        outputs = list(c.get_session(session.id).stream([spiky_input(seed=8, timesteps=K)] * 2))
    assert [o.shape for o in outputs] == [(K, B, 10)] * 2
