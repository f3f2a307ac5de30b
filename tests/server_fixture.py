"""A real server on 127.0.0.1 (port 0), run by an event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

from server import ServerConfig, create_server


@contextmanager
def running_server(config: ServerConfig | None = None):
    """Yield ``(address, server)``; the server stops gracefully on exit."""
    loop = asyncio.new_event_loop()
    started: dict = {}
    ready = threading.Event()

    async def start():
        server, port = create_server("127.0.0.1:0", config or ServerConfig(device="cpu", workers=4))
        await server.start()
        started.update(server=server, port=port)

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the test server did not start")
    try:
        yield f"127.0.0.1:{started['port']}", started["server"]
    finally:
        asyncio.run_coroutine_threadsafe(started["server"].stop(1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
