"""Both clients behind one face, so that one test body checks a behaviour of both.

``connect(address)`` gives a ``client.Client`` (param ``sync``) or a ``client.aio.AsyncClient``
(param ``async``) used through ``Blocking``: each awaitable is run to its end on an event loop of a
thread of its own, and each async iterator is read as an iterator. The test bodies then call both
the same way; what differs between the clients is only how they wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from client import Client
from client.aio import AsyncClient, AsyncSession

KINDS = ["sync", "async"]


class Blocking:
    """An ``AsyncClient`` or ``AsyncSession`` used as the blocking one is: its awaitables are run
    on ``loop`` (in another thread) until done, its async iterators read one item at a time, and
    the sessions it returns are ``Blocking`` too."""

    def __init__(self, target, loop: asyncio.AbstractEventLoop):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        return self._blocking(value) if callable(value) and not isinstance(value, type) else value

    def __setattr__(self, name: str, value) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _blocking(self, method: Callable) -> Callable:
        def call(*args, **kwargs):
            result = method(*args, **kwargs)
            if isinstance(result, AsyncIterator):
                return self._iterate(result)
            return self._wrap(self._wait(result) if asyncio.iscoroutine(result) else result)

        return call

    def _wait(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, iterator: AsyncIterator) -> Iterator:
        async def next_item():
            return await anext(iterator)

        while True:
            try:
                item = self._wait(next_item())
            except StopAsyncIteration:
                return
            yield self._wrap(item)

    def _wrap(self, value):
        if isinstance(value, AsyncSession):
            return Blocking(value, self._loop)
        if isinstance(value, list) and value and isinstance(value[0], AsyncSession):
            return [Blocking(v, self._loop) for v in value]
        return value


@pytest.fixture(scope="session")
def loop_thread():
    """An event loop running in a thread of its own, for the async client's calls."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="async-client-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(params=KINDS)
def connect(request, loop_thread):
    """``connect(address, **options)``: a client of the param's kind, closed after the test."""
    opened = []

    def connect_(address: str, **options):
        if request.param == "sync":
            opened.append(Client(address, **options))
        else:
            opened.append(Blocking(AsyncClient(address, **options), loop_thread))
        return opened[-1]

    yield connect_
    for c in opened:
        c.close()


@pytest.fixture
def client(connect, server_address):
    """A client of each kind, connected to the module's server."""
    return connect(server_address)
