"""Where a call's work runs: right here on the event loop, in its tenant's turn on a scheduler slot,
or on a loop thread whose batches each take a turn. Knows nothing of gRPC.

``run_soon`` holds the one rule for what may run on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import torch

from .scheduler import FairScheduler
from .session import Session

__all__ = ["Placement", "WouldBlock", "RUN_HERE_ELEMENTS"]

RUN_HERE_ELEMENTS = 1 << 16
"""A simulation this small (timesteps x batch x elements per batch entry) runs on the event loop
when a slot is free and nobody waits: two thread hand-offs (0.3-0.5 ms) cost more than it does,
and the loop is held no longer than such a call takes."""


class WouldBlock(Exception):
    """A call asked not to wait would have to: its session is busy or evicted, or memory must be
    made; it should run where waiting is fine (a scheduler slot)."""


class Placement:
    """Runs calls' work on the ``scheduler``'s slots, fairly across tenants, and training and
    evaluation loops on ``loops`` (threads that wait between batches; each batch takes a turn)."""

    def __init__(self, scheduler: FairScheduler, loops: Executor):
        self.scheduler = scheduler
        self.loops = loops

    async def in_turn(self, tenant: str, fn: Callable, *args) -> Any:
        """``fn(*args)`` in the tenant's turn on a scheduler slot, so the event loop keeps serving.
        A call cancelled (or past its deadline) before its turn comes never runs."""
        return await asyncio.wrap_future(self.scheduler.submit(tenant, functools.partial(fn, *args)))

    async def run_soon(self, tenant: str, session: Session, x: torch.Tensor, run: Callable) -> Any:
        """``run(wait=..., wanted=...)`` on ``x``: right here on the event loop if the simulation is
        small and a slot is free (``wait=False``: it never waits, WouldBlock instead), else in the
        tenant's turn on a slot. ``wanted()`` turns false if the call goes away meanwhile, so that
        its result isn't kept."""
        wanted = threading.Event()
        wanted.set()
        elements = x.shape[0] * x.shape[1] * session.entry_elements if x.dim() >= 2 else 0
        if elements <= RUN_HERE_ELEMENTS:
            try:
                ran, result = self.scheduler.run_here(tenant, functools.partial(run, wait=False, wanted=wanted.is_set))
                if ran:
                    return result
            except WouldBlock:
                pass
        try:
            return await self.in_turn(tenant, functools.partial(run, wanted=wanted.is_set))
        except asyncio.CancelledError:
            wanted.clear()
            raise

    async def in_turns(self, tenant: str, loop: Callable, **kwargs) -> Any:
        """``loop(..., schedule=...)`` on a loop thread, each of its batches in the tenant's turn."""
        fn = functools.partial(loop, schedule=functools.partial(self.scheduler.call, tenant), **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.loops, fn)

    async def reported(self, tenant: str, loop: Callable) -> AsyncIterator:
        """What ``loop(report=..., cancelled=..., schedule=...)`` reports, as it reports it; it runs
        as in ``in_turns``, and stops at its next batch boundary once the caller stops listening."""
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        running = asyncio.get_running_loop()
        report = functools.partial(running.call_soon_threadsafe, events.put_nowait)
        done = running.create_task(self.in_turns(tenant, loop, report=report, cancelled=cancel.is_set))
        done.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            await done
        finally:
            cancel.set()

    def close(self) -> None:
        """Let the loops and queued calls finish, then stop the threads."""
        self.loops.shutdown(wait=True)
        self.scheduler.close()
