"""The requests ``Session.step`` and ``Session.stream`` send and the replies they read, without a
server: a stand-in client answers each request at once."""

import numpy as np
import pytest
import torch

from client import Client, Recording, Session
from rnnbuilder_sim.v1 import simulator_pb2 as pb
from rnnbuilder_sim.wire import tensors

SPIKES = np.array([[[1.0, 0.0, 1.0, 1.0]]], dtype=np.float32)  # (time, batch, neurons)


class Answering(Client):
    """A client whose calls answer every request with SPIKES (and a recorded layer if asked for one)."""

    def _connect(self, tls):
        self.requests = []

    def _routed(self, name, request, session_id):
        if name == "Simulate":
            return (self._reply(pb.SimulateResponse, r) for r in request), "replica"
        return self._reply(pb.RunResponse, request), "replica"

    def _reply(self, kind, request):
        self.requests.append(type(request).FromString(request.SerializeToString()))  # as the server reads it
        packed = request.output_encoding == pb.TENSOR_ENCODING_BITPACKED
        recorded = request.record_layers
        recordings = [pb.NamedTensor(name=name, tensor=tensors.encode(SPIKES, packed)) for name in recorded]
        reply = kind(output=tensors.encode(SPIKES, packed), recordings=recordings)
        return kind.FromString(reply.SerializeToString())


@pytest.fixture
def session() -> Session:
    session = Session.__new__(Session)
    session._client, session.server_id = Answering("nowhere"), ""
    session.name, session.id, session.timesteps_simulated, session.exact = "sessions/abc", "abc", 0, False
    return session


@pytest.mark.parametrize("bitpacked", [False, True], ids=["raw", "bitpacked"])
def test_step_sends_one_timestep_and_returns_its_output(session, bitpacked):
    """step sends x_t with a time dimension of 1, asks for the chosen encoding, and returns (batch, ...)."""
    x_t = np.array([[0.0, 1.0]], dtype=np.float64)
    out = session.step(x_t, bitpacked=bitpacked)
    (request,) = session._client.requests
    assert request.name == "sessions/abc" and not request.record_layers
    assert request.output_encoding == (pb.TENSOR_ENCODING_BITPACKED if bitpacked else pb.TENSOR_ENCODING_RAW)
    assert request.input == tensors.encode(x_t[None].astype(np.float32), bitpacked)
    assert out.dtype == np.float32 and out.tolist() == SPIKES[0].tolist()


def test_step_accepts_torch_tensors(session):
    """A torch x_t is sent as its values."""
    session.step(torch.tensor([[0.5, 1.0]]))
    assert tensors.decode(session._client.requests[0].input).tolist() == [[[0.5, 1.0]]]


@pytest.mark.parametrize("bitpacked", [False, True], ids=["raw", "bitpacked"])
def test_stream_sends_each_chunk_and_yields_each_output(session, bitpacked):
    """stream sends one request per chunk, in order, and yields the outputs as numpy arrays."""
    chunks = [np.full((2, 1, 2), i, dtype=np.float32) for i in range(3)]
    outputs = list(session.stream(iter(chunks), bitpacked=bitpacked))
    assert [type(out) for out in outputs] == [np.ndarray] * 3
    assert all(out.tolist() == SPIKES.tolist() for out in outputs)
    sent = session._client.requests
    assert [tensors.decode(r.input).tolist() for r in sent] == [c.tolist() for c in chunks]
    assert all(r.name == "sessions/abc" and not r.record_layers for r in sent)
    assert {r.output_encoding for r in sent} == {pb.TENSOR_ENCODING_BITPACKED if bitpacked else pb.TENSOR_ENCODING_RAW}


def test_stream_counts_the_timesteps_answered(session):
    """After each reply, timesteps_simulated is the reply's first timestep plus its chunk's timesteps."""
    for _ in session.stream(np.zeros((2, 1, 1, 2), dtype=np.float32)):
        pass
    assert session.timesteps_simulated == 1


def test_stream_record_asks_for_the_layers_and_yields_recordings(session):
    """stream_record sends record_layers and yields Recordings with the output and each layer."""
    (recording,) = session.stream_record([np.zeros((1, 1, 2), dtype=np.float32)], ["hidden"])
    assert list(session._client.requests[0].record_layers) == ["hidden"]
    assert isinstance(recording, Recording) and recording.output.tolist() == SPIKES.tolist()
    assert recording["hidden"].tolist() == SPIKES.tolist()


def test_exact_session_marks_its_requests_exact(session):
    """A handle with exact=True asks for every step and stream chunk not to be batched."""
    session.exact = True
    session.step(np.zeros((1, 2), dtype=np.float32))
    list(session.stream([np.zeros((1, 1, 2), dtype=np.float32)]))
    assert [r.exact for r in session._client.requests] == [True, True]
