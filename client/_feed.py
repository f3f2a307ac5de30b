"""The requests of a stream that can be resumed: chunks sent but not yet answered are sent again on
the next attempt, in order, before any new chunk is read. ``ChunkFeed`` for ``Client``'s streams,
``AsyncChunkFeed`` for ``AsyncClient``'s; they keep their requests alike (``_Ledger``) and differ in
how they wait for the caller's next chunk."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

__all__ = ["ChunkFeed", "AsyncChunkFeed"]

_END = object()
_NONE_KEPT = object()


class _Ledger:
    """The requests made from the chunks (``make(chunk)`` gives ``(request, timesteps)``) and not
    yet answered, counted over every attempt."""

    def __init__(self, make: Callable[[Any], tuple[Any, int]]):
        self._make = make
        self._unanswered: deque[tuple[Any, int]] = deque()
        self._answered = 0  # how many requests have been answered, ever
        self._made = 0  # how many requests have been made, ever: _answered + len(_unanswered)
        self._attempt = 0
        self._lock = threading.Lock()  # the deque and the counters

    def _start(self) -> tuple[int, int]:
        """A new attempt's number and the position (over all attempts) of its first request."""
        with self._lock:
            return self._attempt, self._answered

    def _add(self, chunk, attempt: int):
        """The request made of a new chunk, kept until answered; None if ``attempt`` is over."""
        item = self._make(chunk)
        with self._lock:
            self._unanswered.append(item)
            self._made += 1
            return item[0] if attempt == self._attempt else None

    def _kept(self, attempt: int, position: int):
        with self._lock:
            if attempt != self._attempt:
                return None
            index = position - self._answered
            return self._unanswered[index][0] if index < len(self._unanswered) else _NONE_KEPT

    def answered(self) -> int:
        """The oldest unanswered request got its reply; returns its timesteps."""
        with self._lock:
            self._answered += 1
            return self._unanswered.popleft()[1]

    def restart(self) -> None:
        """End the current attempt: the next ``requests()`` starts with the unanswered requests."""
        with self._lock:
            self._attempt += 1


class ChunkFeed(_Ledger):
    """Turns ``chunks`` into requests for one stream attempt after another.

    gRPC reads each attempt's ``requests()`` on a thread of its own, which may still be waiting
    for the caller's next chunk when the attempt fails; a chunk it gets then is kept for the next
    attempt, so none is lost or sent twice.
    """

    def __init__(self, chunks: Iterable, make: Callable[[Any], tuple[Any, int]]):
        super().__init__(make)
        self._chunks = iter(chunks)
        self._reading = threading.Lock()  # one reader of the chunks at a time; only it changes _made

    def requests(self) -> Iterator:
        """This attempt's requests: the unanswered ones again, then new ones."""
        attempt, position = self._start()
        while (request := self._next(attempt, position)) is not None:
            position += 1
            yield request

    def _next(self, attempt: int, position: int):
        """The request at ``position`` (counted over all attempts): kept, or made from the next
        chunk; None at the end of the chunks or of the attempt."""
        reading = self._reading
        if not reading.acquire(blocking=False):  # another attempt's reader waits for a chunk
            request = self._kept(attempt, position)  # what is kept needs no chunk: no waiting for it
            if request is not _NONE_KEPT:
                return request
            reading.acquire()
        try:
            if position < self._made:  # kept, by another attempt's reader maybe
                return self._kept(attempt, position)
            if attempt != self._attempt:  # read without the lock: checked again under it below
                return None
            chunk = next(self._chunks, _END)
            return None if chunk is _END else self._add(chunk, attempt)
        finally:
            reading.release()


class AsyncChunkFeed(_Ledger):
    """``ChunkFeed`` for grpc.aio: ``chunks`` is an iterable or an async iterable.

    grpc.aio reads each attempt's ``requests()`` in a task that it cancels when the attempt fails;
    the read of the caller's next chunk goes on regardless (shielded), and the chunk it gives is
    kept for the next attempt.
    """

    def __init__(self, chunks: Iterable | AsyncIterable, make: Callable[[Any], tuple[Any, int]]):
        super().__init__(make)
        self._chunks = aiter(chunks) if isinstance(chunks, AsyncIterable) else _async(chunks)
        self._reading: asyncio.Task | None = None  # the read of the next chunk, whichever attempt awaits it

    async def requests(self) -> AsyncIterator:
        """This attempt's requests: the unanswered ones again, then new ones."""
        attempt, position = self._start()
        while (request := await self._next(attempt, position)) is not None:
            position += 1
            yield request

    async def _next(self, attempt: int, position: int):
        """The request at ``position`` (counted over all attempts): kept, or made from the next
        chunk; None at the end of the chunks or of the attempt."""
        while position >= self._made:
            if attempt != self._attempt:
                return None
            if self._reading is None:
                self._reading = asyncio.ensure_future(anext(self._chunks, _END))
            reading = self._reading
            chunk = await asyncio.shield(reading)
            if chunk is _END:
                return None
            if self._reading is reading:  # the first attempt to wake up takes the chunk in
                self._reading = None
                self._add(chunk, attempt)
        request = self._kept(attempt, position)
        return None if request is _NONE_KEPT else request


async def _async(chunks: Iterable) -> AsyncIterator:
    for chunk in chunks:
        yield chunk
