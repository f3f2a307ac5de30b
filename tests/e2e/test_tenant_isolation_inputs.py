"""What one tenant sends can't cost another: unauthenticated and failed calls free what they received,
tensors are checked against the session before they are expanded, and imported optimizer state is
checked before a session keeps it. Each attack is made by one tenant (or none) on a real server in
this process, whose memory is measured; the other tenant's session stays as its local model says."""

import contextlib
import functools
import gc
import tracemalloc

import grpc
import numpy as np
import pytest
import torch

import rnnbuilder as rb
from client import Client, InvalidArgumentError
from client.__main__ import health
from rnnbuilder import nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import tensors
from server import Limits, ServerConfig
from tests.server_fixture import running_server

NET = rb.Sequential(nn.Linear(4), snn.LIF())
AUTH = """
[tenants.alice]
token = "alice-secret-token"

[tenants.bob]
token = "bob-secret-token"
"""
ALICE = (("authorization", "Bearer alice-secret-token"),)
CALLS, CALL_MB = 10, 48
"""Ten calls of 48 MiB each: 480 MiB sent."""
BOMB_ELEMENTS = 1 << 25
"""A bit-packed float64 tensor of 4 MiB that expands to 256 MiB."""


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "auth.toml"
    path.write_text(AUTH)
    # Inputs of 48 MiB are within the work limit, so that they are decoded before they fail; a
    # snapshot within the session limits holds far fewer elements than a bomb.
    limits = Limits(max_timesteps_times_batch=1 << 23, max_parameters_per_session=100_000)
    with running_server(ServerConfig(device="cpu", auth_file=str(path), limits=limits)) as (address, _):
        yield address


@pytest.fixture
def stub(address):
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(address, options) as channel:
        yield pb_grpc.SimulatorServiceStub(channel)


@pytest.fixture
def alice(address):
    with Client(address, token="alice-secret-token") as client:
        yield client


@pytest.fixture
def bobs_session(address):
    """Bob's session, checked after the attack: it runs as its local model does, and the server serves."""
    with Client(address, token="bob-secret-token") as bob:
        session = bob.create_session(NET, input_shape=(3,))
        yield session
        x = np.random.default_rng(0).random((5, 1, 3), dtype=np.float32)
        expected, _ = session.to_local()(torch.from_numpy(x))
        np.testing.assert_array_equal(session.run(x), expected.detach().numpy())
        assert health(address, "", 3.0) == "SERVING"
        session.close()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@contextlib.contextmanager
def collector_off():
    """What a failed call keeps in reference cycles stays until the garbage collector runs: not meanwhile."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def large_tensors() -> int:
    """Torch tensors of a million elements or more alive in this process (the server's included)."""
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor) and o.numel() >= 1_000_000)


def failed_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def test_unauthenticated_calls_cost_only_the_bytes_received(stub, bobs_session):
    """Ten 48 MiB Run calls without a token leave the server's memory where it was."""
    x = np.ones(((CALL_MB << 20) // 12, 1, 3), np.float32)
    request = pb.RunRequest(name=bobs_session.name, input=tensors.encode(x))
    call = functools.partial(failed_code, functools.partial(stub.Run, request))
    assert call() == grpc.StatusCode.UNAUTHENTICATED  # the first call's buffers are the baseline's
    with collector_off():
        before = rss_mb()
        codes = {call() for _ in range(CALLS)}
        grown = rss_mb() - before
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}
    assert grown < CALLS * CALL_MB / 2, f"{grown:.0f} MB kept after {CALLS * CALL_MB} MiB sent"


def test_failed_calls_free_what_they_decoded(alice, stub, bobs_session):
    """Ten 48 MiB Run calls that fail once decoded (a NaN in the input) leave no decoded tensor behind."""
    session = alice.create_session(NET, input_shape=(3,))
    x = np.ones(((CALL_MB << 20) // 12, 1, 3), np.float32)
    x[-1] = np.nan
    request = pb.RunRequest(name=session.name, input=tensors.encode(x))
    call = functools.partial(failed_code, functools.partial(stub.Run, request, metadata=ALICE))
    assert call() == grpc.StatusCode.INVALID_ARGUMENT  # the first call's buffers are the baseline's
    with collector_off():
        before = rss_mb()
        codes = {call() for _ in range(CALLS)}
        grown, kept = rss_mb() - before, large_tensors()
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert kept == 0
    assert grown < CALLS * CALL_MB / 2, f"{grown:.0f} MB kept after {CALLS * CALL_MB} MiB sent"
    session.close()


def bomb() -> pb.Tensor:
    return pb.Tensor(
        dtype=pb.DATA_TYPE_FLOAT64,
        shape=[BOMB_ELEMENTS],
        data=b"\xff" * (BOMB_ELEMENTS // 8),
        encoding=pb.TENSOR_ENCODING_BITPACKED,
    )


def bombed_snapshot(session) -> pb.SessionSnapshot:
    snapshot = pb.SessionSnapshot.FromString(session.save())
    snapshot.parameters[0].tensor.CopyFrom(bomb())
    return snapshot


TRAINING = pb.TrainingConfig(optimizer=pb.OptimizerConfig(name="adam", learning_rate=1e-3))
BOMBS = {
    "Run": lambda stub, s: stub.Run(pb.RunRequest(name=s.name, input=bomb()), metadata=ALICE),
    "Simulate": lambda stub, s: list(
        stub.Simulate(iter([pb.SimulateRequest(name=s.name, input=bomb())]), metadata=ALICE)
    ),
    "SetState": lambda stub, s: stub.SetState(
        pb.SetStateRequest(name=s.name, tensors=[pb.NamedTensor(name=next(iter(s.get_state())), tensor=bomb())]),
        metadata=ALICE,
    ),
    "SetParameters": lambda stub, s: stub.SetParameters(
        pb.SetParametersRequest(
            name=s.name, parameters=[pb.NamedTensor(name=next(iter(s.parameters())), tensor=bomb())]
        ),
        metadata=ALICE,
    ),
    "TrainStep": lambda stub, s: stub.TrainStep(
        pb.TrainStepRequest(name=s.name, input=bomb(), targets=tensors.encode(np.zeros(1)), config=TRAINING),
        metadata=ALICE,
    ),
    "Train": lambda stub, s: list(
        stub.Train(
            pb.TrainRequest(
                name=s.name, inputs=bomb(), targets=tensors.encode(np.zeros(1)), epochs=1, batch_size=1, config=TRAINING
            ),
            metadata=ALICE,
        )
    ),
    "Evaluate": lambda stub, s: stub.Evaluate(
        pb.EvaluateRequest(name=s.name, inputs=bomb(), targets=tensors.encode(np.zeros(1))), metadata=ALICE
    ),
    "ImportSession": lambda stub, s: stub.ImportSession(
        pb.ImportSessionRequest(snapshot=bombed_snapshot(s)), metadata=ALICE
    ),
}


@pytest.mark.parametrize("method", BOMBS)
def test_bitpacked_tensor_that_cant_fit_is_refused_before_it_is_expanded(method, alice, stub, bobs_session):
    """A 4 MiB bit-packed float64 tensor of a shape the session can't take is INVALID_ARGUMENT, unexpanded."""
    session = alice.create_session(NET, input_shape=(3,))
    tracemalloc.start()  # numpy's arrays count, whichever thread makes them
    try:
        code = failed_code(lambda: BOMBS[method](stub, session))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated for a 4 MiB message"
    session.close()


def trained(alice):
    """One of alice's sessions after a training step: Adam has its moments."""
    session = alice.create_session(NET, input_shape=(3,))
    session.train_step(np.ones((4, 2, 3), np.float32), np.array([0, 1]))
    return session


CORRUPTIONS = {
    "0-dimensional moment": ("exp_avg", lambda value: np.float32(0.5)),
    "NaN in a moment": ("exp_avg_sq", lambda value: np.full_like(value, np.nan)),
    "negative squared moment": ("exp_avg_sq", lambda value: -np.ones_like(value)),
    "infinite step count": ("step", lambda value: np.float32(np.inf)),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_imported_optimizer_state_that_cant_step_is_refused(corruption, alice, bobs_session):
    """Imported Adam state of the wrong shape, or that Adam can't step with, is INVALID_ARGUMENT; no session is left."""
    session = trained(alice)
    snapshot = pb.SessionSnapshot.FromString(session.save())
    key, corrupt = CORRUPTIONS[corruption]
    item = next(t for t in snapshot.optimizer.tensors if t.name.endswith(f".{key}"))
    item.tensor.CopyFrom(tensors.encode(corrupt(tensors.decode(item.tensor))))
    with pytest.raises(InvalidArgumentError, match=item.name):
        alice.restore(snapshot.SerializeToString())
    assert [s.id for s in alice.list_sessions()] == [session.id]
    session.close()
