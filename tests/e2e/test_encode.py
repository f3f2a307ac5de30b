"""RunRequest.encoder: the server draws the input spikes from analog data with the session's random
generator, so that they are those ``rnnbuilder.encode`` draws from ``torch.Generator().manual_seed(seed)``
(a new session's generator is seeded so), and every later call, as on a local generator, continues
the stream; a saved and restored session continues it too. Bad encoders and data: INVALID_ARGUMENT."""

import re

import grpc
import numpy as np
import pytest
import torch

from rnnbuilder import Sequential, encode, nn, snn
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc
from rnnbuilder_sim.wire import networks, tensors

BATCH, FEATURES = 3, 6


@pytest.fixture
def open_session(client):
    """``open_session(factory, seed)``: a session of input (FEATURES,) and batch BATCH, closed after the test."""
    sessions = []

    def open_(factory=None, seed=7):
        factory = factory if factory is not None else Sequential(nn.Identity())
        session = client.create_session(factory, input_shape=(FEATURES,), batch_size=BATCH, seed=seed)
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        session.close()


def run(stub, session, data, encoder, message=None) -> torch.Tensor:
    """The output of a Run of ``data`` encoded by ``encoder`` (or the raw Factory ``message``)."""
    request = pb.RunRequest(name=session.name, input=tensors.encode(np.asarray(data, dtype=np.float32)))
    request.encoder.CopyFrom(message if message is not None else networks.encoder_to_message(encoder))
    return tensors.decode_torch(stub.Run(request).output)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


DATA = torch.rand(BATCH, FEATURES, generator=seeded(0))


def test_spikes_are_those_the_library_draws_from_the_session_seed(stub, open_session):
    """A new session's spikes are encode.rate's from a generator seeded with the session's seed,
    and later calls go on drawing as that generator does."""
    session, encoder, local = open_session(seed=11), encode.Rate(num_steps=40, gain=0.8), seeded(11)
    for _ in range(2):
        assert torch.equal(run(stub, session, DATA, encoder), encoder(DATA, generator=local))


def test_same_seed_and_input_give_the_same_spikes(stub, open_session):
    """Two sessions of the same seed draw the same spikes; another seed draws others."""
    encoder = encode.Rate(num_steps=50, poisson=True)
    first, second, other = open_session(seed=3), open_session(seed=3), open_session(seed=4)
    spikes = run(stub, first, DATA, encoder)
    assert torch.equal(spikes, run(stub, second, DATA, encoder))
    assert not torch.equal(spikes, run(stub, other, DATA, encoder))


def test_output_equals_the_local_model_on_the_library_spikes(stub, open_session):
    """The network's output on the server equals the local model's on encode's spikes."""
    session = open_session(Sequential(nn.Linear(16), snn.LIF(tau=4)), seed=5)
    encoder = encode.Rate(num_steps=30)
    output = run(stub, session, DATA, encoder)
    with torch.no_grad():
        local, _ = session.to_local()(encoder(DATA, generator=seeded(5)))
    assert torch.equal(output, local)


@pytest.mark.parametrize(
    "encoder, data",
    [
        (encode.Latency(num_steps=12, normalize=True), DATA),
        (encode.Delta(threshold=0.3, off_spike=True), torch.randn(15, BATCH, FEATURES, generator=seeded(1))),
        (encode.Rate(time_var_input=True, first_spike_time=2), torch.rand(9, BATCH, FEATURES, generator=seeded(2))),
    ],
    ids=["latency", "delta", "rate-time-varying"],
)
def test_each_encoder_type_runs_on_the_server(stub, open_session, encoder, data):
    """Latency, Delta and time-varying Rate give encode's spikes, of the data's or num_steps' length."""
    assert torch.equal(run(stub, open_session(), data, encoder), encoder(data, generator=seeded(7)))


def test_a_restored_session_draws_what_the_original_draws(stub, client, open_session):
    """A session saved after an encoded call and restored draws the same next spikes as the original."""
    session, encoder = open_session(seed=8), encode.Rate(num_steps=20)
    run(stub, session, DATA, encoder)
    restored = client.restore(session.save())
    try:
        assert torch.equal(run(stub, restored, DATA, encoder), run(stub, session, DATA, encoder))
    finally:
        restored.close()


def test_a_failed_encoded_call_draws_nothing(stub, open_session):
    """After a refused call the session's next spikes are still the seed's first."""
    session, encoder = open_session(seed=9), encode.Rate(num_steps=10)
    with pytest.raises(grpc.RpcError):
        run(stub, session, DATA + 1, encode.Latency(num_steps=5))  # values above 1: refused
    assert torch.equal(run(stub, session, DATA, encoder), encoder(DATA, generator=seeded(9)))


def described(type_: str, **args: pb.Value) -> pb.Factory:
    """A Factory message as any client may write it, arguments not checked."""
    message = pb.Factory(type=type_)
    for name, value in args.items():
        message.args[name].CopyFrom(value)
    return message


@pytest.mark.parametrize(
    "data, message, says",
    [
        (DATA, described("encode.Ratee"), "did you mean encode.Rate"),
        (DATA, described("nn.Linear"), "unknown encoder type"),
        (DATA, described("encode.Rate", num_steps=pb.Value(int_value=0)), "num_steps must be a positive integer"),
        (DATA, described("encode.Rate", num_steps=pb.Value(string_value="5")), "num_steps: expected integer"),
        (DATA[None], networks.encoder_to_message(encode.Rate(num_steps=5)), r"shape \(3, 6\)"),
        (DATA[:, :4], networks.encoder_to_message(encode.Latency(num_steps=5)), r"shape \(3, 6\)"),
        (DATA, networks.encoder_to_message(encode.Delta()), r"shape \(time, 3, 6\)"),
        (DATA.clone().fill_(float("nan")), networks.encoder_to_message(encode.Rate(num_steps=5)), "NaN"),
        (DATA * 2, networks.encoder_to_message(encode.Latency(num_steps=5)), r"\[0, 1\]"),
    ],
    ids=[
        "unknown",
        "factory",
        "bad-argument",
        "wrong-type",
        "rate-time-axis",
        "features",
        "delta-no-time",
        "nan",
        "range",
    ],
)
def test_bad_input_is_invalid_argument(stub, open_session, data, message, says):
    """Each bad encoder or input is INVALID_ARGUMENT with a message saying what to fix."""
    with pytest.raises(grpc.RpcError) as error:
        run(stub, open_session(), data, None, message)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(says, error.value.details())


def test_encoded_calls_are_never_batched():
    """On a batching server, concurrent encoded calls of batch-1 sessions still draw each session's own spikes."""
    from concurrent.futures import ThreadPoolExecutor

    from client import Client
    from server import ServerConfig
    from tests.server_fixture import running_server

    encoder, data = encode.Rate(num_steps=1), torch.rand(1, FEATURES, generator=seeded(3))
    with running_server(ServerConfig(device="cpu", workers=4, batching=True)) as (address, _), Client(address) as c:
        sessions = [c.create_session(Sequential(nn.Identity()), (FEATURES,), batch_size=1, seed=s) for s in range(4)]
        with grpc.insecure_channel(address) as channel, ThreadPoolExecutor(4) as pool:
            stub = pb_grpc.SimulatorServiceStub(channel)
            for _ in range(3):
                drawn = list(pool.map(lambda s: run(stub, s, data, encoder), sessions))
                assert all(spikes.shape == (1, 1, FEATURES) for spikes in drawn)
        generators = [seeded(s) for s in range(4)]
        for session, generator in zip(sessions, generators):  # the 4th draw of each, as its generator's
            for _ in range(3):
                encoder(data, generator=generator)
            with grpc.insecure_channel(address) as channel:
                spikes = run(pb_grpc.SimulatorServiceStub(channel), session, data, encoder)
            assert torch.equal(spikes, encoder(data, generator=generator))
