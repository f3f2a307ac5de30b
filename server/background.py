"""Servers on an event loop in a background thread: for tests, benchmarks and in-process demos."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .app import create_server
from .config import ServerConfig

__all__ = ["in_background", "listening_address", "running_server"]


@contextmanager
def in_background(
    start: Callable[[], Awaitable[tuple[Any, int]]], name: str = "server", address: str = "127.0.0.1:0"
) -> Iterator[tuple[str, Any]]:
    """Run ``await start() -> (server, port)`` on a new event loop in a daemon thread.

    Yields ``(where to reach it, server)``: ``address`` with the port ``start`` bound (a
    ``unix:/path`` address as it is); on exit the server gets ``stop(1.0)`` and the thread ends.
    """
    loop = asyncio.new_event_loop()
    started: dict = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["server"], started["port"] = loop.run_until_complete(start())
        except BaseException as error:  # reported to the caller below
            started["error"] = error
        finally:
            ready.set()
        if "error" not in started:
            loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not ready.wait(60) or "error" in started:
        raise RuntimeError(f"the {name} did not start") from started.get("error")
    try:
        yield listening_address(address, started["port"]), started["server"]
    finally:
        asyncio.run_coroutine_threadsafe(started["server"].stop(1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


@contextmanager
def running_server(config: ServerConfig | None = None, address: str = "127.0.0.1:0") -> Iterator[tuple[str, Any]]:
    """A simulation server in this process on ``address`` (by default 127.0.0.1 and a free port; or
    ``unix:/path``, a Unix domain socket); yields ``(address, server)``."""

    async def start():
        server, port = create_server(address, config or ServerConfig(device="cpu", workers=4))
        await server.start()
        return server, port

    with in_background(start, "simulation server", address) as running:
        yield running


def listening_address(address: str, port: int) -> str:
    """Where a server asked to listen on ``address`` is reached, once it bound ``port``: a Unix
    domain socket (``unix:/path``) as it is, else the host with the bound port (0 picks a free one).

    >>> listening_address("127.0.0.1:0", 40123), listening_address("unix:/tmp/sim.sock", 1)
    ('127.0.0.1:40123', 'unix:/tmp/sim.sock')
    """
    if address.startswith("unix:"):
        return address
    return f"{address.rsplit(':', 1)[0]}:{port}"
