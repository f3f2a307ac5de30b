"""``AsyncClient`` and ``AsyncSession``: the client for asyncio, over grpc.aio.

The same calls as ``Client`` and ``Session``, with the same arguments, results, retries, stream
resumption and errors, each awaited. It runs in whichever event loop awaits it, a notebook's too
(no loop patching), and many sessions may be driven at once with ``asyncio.gather``:

>>> import asyncio
>>> from client.aio import AsyncClient
>>> async def main(net, xs):                                            # doctest: +SKIP
...     async with AsyncClient("127.0.0.1:50051") as c:
...         sessions = await asyncio.gather(*(c.create_session(net, (64,), batch_size=8, seed=i) for i in range(4)))
...         return await asyncio.gather(*(s.run(x) for s, x in zip(sessions, xs)))
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable

import grpc

from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

from . import _convert as convert
from ._calls import Call, ClientCalls, SessionCalls
from ._feed import AsyncChunkFeed
from ._retry import Resumption
from ._routing import channel_options, server_id
from .errors import translated

__all__ = ["AsyncClient", "AsyncSession"]

_ONE_REPLY = (grpc.aio.UnaryUnaryMultiCallable, grpc.aio.StreamUnaryMultiCallable)


class AsyncSession(SessionCalls):
    """``Session`` for asyncio: every method returns an awaitable of what ``Session``'s returns
    (``await s.run(x)``), but ``stream`` and ``stream_record``, which are async iterators
    (``async for y in s.stream(chunks)``) of chunks from an iterable or an async iterable."""

    async def _stream(
        self, chunks: Iterable | AsyncIterable, layers: list[str], bitpacked: bool, reading
    ) -> AsyncIterator:
        feed = AsyncChunkFeed(chunks, convert.simulate_request(self.name, layers, bitpacked, self.exact))
        resumption = Resumption(self, feed)
        while True:
            try:
                replies, self.server_id = await self._client._routed("Simulate", feed.requests(), self.id)
                async for reply in replies:
                    yield reading(resumption.answered(reply))
                return
            except grpc.RpcError as error:  # grpc.aio's AioRpcError is one
                resumption.cut_off(error)
            resumption.resumable(await self.refresh())  # refresh waits (retrying) until the session is served again

    async def _train(self, request, training: convert.Training) -> list[dict[str, float]]:
        with translated():
            replies, self.server_id = await self._client._routed("Train", request, self.id)
            try:
                async for reply in replies:
                    if not training.take(reply):
                        break
            finally:
                replies.cancel()  # stops the server's training, when it was not over (a task cancelled, too)
                training.close()
        return training.history


class AsyncClient(ClientCalls):
    """``Client`` for asyncio: the same arguments; every method returns an awaitable of what
    ``Client``'s returns, and sessions are ``AsyncSession``s. ``async with AsyncClient(...) as c``
    closes it at the end; ``await c.close()`` does too.

    The connection opens at the first call, in the event loop that awaits it; use a client in that
    loop only.
    """

    _session_type = AsyncSession

    def _connect(self, tls: grpc.ChannelCredentials | None) -> None:
        self._tls = tls
        self._channel: grpc.aio.Channel | None = None

    def _opened(self) -> pb_grpc.SimulatorServiceStub:
        """The stub of the channel, opened at the first call (in the running loop: grpc.aio's
        channels belong to the loop they are made in)."""
        if self._channel is None:
            options = channel_options()
            if self._tls is None:
                self._channel = grpc.aio.insecure_channel(self.address, options)
            else:
                self._channel = grpc.aio.secure_channel(self.address, self._tls, options)
            self._stub = pb_grpc.SimulatorServiceStub(self._channel)
        return self._stub

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; the server keeps the sessions."""
        if self._channel is not None:
            await self._channel.close()

    async def _routed(self, name: str, request, session_id: str | None):
        """The reply (or the stream of replies) of ``name`` and the id of the replica that answered;
        ``session_id`` goes in ``SESSION_HEADER``."""
        method = getattr(self._opened(), name)
        call = method(request, metadata=self._route.metadata(session_id))
        reply = await call if isinstance(method, _ONE_REPLY) else call
        return reply, server_id(await call.initial_metadata())

    async def _do(self, call: Call):
        with translated():
            reply, replica = await self._routed(call.method, call.request, call.session_id)
        return call.convert(reply, replica)

    async def _list(self) -> list[AsyncSession]:
        sessions, token = [], ""
        while True:
            page, token = await self._do(self._page(token))
            sessions += page
            if not token:
                return sessions
