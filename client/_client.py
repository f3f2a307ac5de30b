"""``Client`` and ``Session``: the Python face of the simulation service, over blocking gRPC.

What they do is ``_calls``' (shared with ``client.aio``); here is only how: each call waits for
its reply, and streams are iterators.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

from . import _convert as convert
from ._calls import Call, ClientCalls, SessionCalls
from ._convert import Recording, ServerInfo
from ._feed import ChunkFeed
from ._retry import Resumption
from ._routing import channel_options, server_id
from .errors import translated

__all__ = ["Client", "Session", "ServerInfo", "Recording"]


class Session(SessionCalls):
    """A network simulated on the server; its parameters and state live there between calls.

    Arrays in: numpy arrays or torch tensors, (time, batch, *input_shape). Arrays out: numpy.
    """

    def _stream(self, chunks: Iterable, layers: list[str], bitpacked: bool, reading) -> Iterator:
        feed = ChunkFeed(chunks, convert.simulate_request(self.name, layers, bitpacked, self.exact))
        resumption = Resumption(self, feed)
        while True:
            try:
                replies, self.server_id = self._client._routed("Simulate", feed.requests(), self.id)
                for reply in replies:
                    yield reading(resumption.answered(reply))
                return
            except grpc.RpcError as error:
                resumption.cut_off(error)
            resumption.resumable(self.refresh())  # refresh waits (retrying) until the session is served again

    def _train(self, request, training: convert.Training) -> list[dict[str, float]]:
        with translated():
            replies, self.server_id = self._client._routed("Train", request, self.id)
            try:
                for reply in replies:
                    if not training.take(reply):
                        break
            finally:
                replies.cancel()  # stops the server's training, when it was not over
                training.close()
        return training.history


class Client(ClientCalls):
    """A connection to a simulation server.

    ``token`` is sent as a bearer token. ``tls``: ``None`` or ``False`` for plain TCP, ``True`` for
    TLS with the system's roots, or the path (or PEM bytes) of a root certificate;
    ``client_cert`` and ``client_key`` (PEM paths) for mutual TLS.

    A call the server answered without doing anything (UNAVAILABLE: a replica shutting down hands
    its sessions over; CANCELLED: a stopping server refuses new calls) is retried by gRPC itself, up
    to 5 tries within about 4 s (``RETRY_POLICY``).
    """

    _session_type = Session

    def _connect(self, tls: grpc.ChannelCredentials | None) -> None:
        if tls is None:
            self._channel = grpc.insecure_channel(self.address, channel_options())
        else:
            self._channel = grpc.secure_channel(self.address, tls, channel_options())
        self._stub = pb_grpc.SimulatorServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the server keeps the sessions."""
        self._channel.close()

    def _routed(self, name: str, request, session_id: str | None):
        """The reply (or the stream of replies) of ``name`` and the id of the replica that answered;
        ``session_id`` goes in ``SESSION_HEADER``."""
        method = getattr(self._stub, name)
        metadata = self._route.metadata(session_id)
        if hasattr(method, "with_call"):  # one reply
            reply, call = method.with_call(request, metadata=metadata)
        else:  # a stream of replies is itself the call; the server sends its headers first
            reply = call = method(request, metadata=metadata)
        return reply, server_id(call.initial_metadata())

    def _do(self, call: Call):
        with translated():
            reply, replica = self._routed(call.method, call.request, call.session_id)
        return call.convert(reply, replica)

    def _list(self) -> list[Session]:
        sessions, token = [], ""
        while True:
            page, token = self._do(self._page(token))
            sessions += page
            if not token:
                return sessions
