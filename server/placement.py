"""Where a call's work runs: right here on the event loop, or in its tenant's turn on a scheduler
slot, a long call one turn per batch. Knows nothing of gRPC.

``here_or_in_turn`` holds the one rule for what may run on the event loop; ``run_soon`` applies it
to a simulation, from the session's timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

from .scheduler import FairScheduler
from .session import Session

__all__ = ["Placement", "WouldBlock", "RUN_HERE_SECONDS"]

log = logging.getLogger("rnnsim.placement")

RUN_HERE_SECONDS = 0.002
"""A simulation expected to take no longer (from its session's latest, ``Timing.bound``) runs on
the event loop when a slot is free and nobody waits: two thread hand-offs (0.3-0.5 ms) are a large
part of such a call. The loop answers every tenant's calls and the health checks, so it is held no
longer than this; what a call costs is known only from running it (a network's work isn't in the
size of its tensors), so a session's first simulation always goes to a slot."""


class WouldBlock(Exception):
    """A call asked not to wait would have to: its session is busy or evicted, or memory must be
    made; it should run where waiting is fine (a scheduler slot)."""


class Placement:
    """Runs calls' work on the ``scheduler``'s slots, fairly across tenants."""

    def __init__(self, scheduler: FairScheduler):
        self.scheduler = scheduler

    async def in_turn(self, tenant: str, fn: Callable, *args) -> Any:
        """``fn(*args)`` in the tenant's turn on a scheduler slot, so the event loop keeps serving.
        A call cancelled (or past its deadline) before its turn comes never runs."""
        return await asyncio.wrap_future(self.scheduler.submit(tenant, functools.partial(fn, *args)))

    async def run_soon(self, tenant: str, session: Session, entry_steps: int, run: Callable) -> Any:
        """``run(wait=..., wanted=...)``, a simulation of ``entry_steps`` timesteps x batch entries:
        right here on the event loop if it is known to be short (``RUN_HERE_SECONDS``) and a slot
        is free (``wait=False``: it never waits, WouldBlock instead), else in the tenant's turn on a
        slot. ``wanted()`` turns false if the call goes away meanwhile, so that its result isn't kept."""
        wanted = threading.Event()
        wanted.set()
        short = session.timing is not None and session.timing.bound(entry_steps) <= RUN_HERE_SECONDS
        try:
            return await self.here_or_in_turn(
                tenant,
                short,
                functools.partial(run, wait=False, wanted=wanted.is_set),
                functools.partial(run, wanted=wanted.is_set),
            )
        except asyncio.CancelledError:
            wanted.clear()
            raise

    async def here_or_in_turn(self, tenant: str, short: bool, here: Callable[[], Any], later: Callable[[], Any]) -> Any:
        """``here()`` on the event loop if the work is ``short`` and a slot is free (WouldBlock from
        it, or no free slot: not here after all), else ``later()`` in the tenant's turn on a slot."""
        if short:
            try:
                ran, result = self.scheduler.run_here(tenant, here)
                if ran:
                    return result
            except WouldBlock:
                pass
        return await self.in_turn(tenant, later)

    async def in_turns(self, tenant: str, steps: Generator[Callable[[], Any], Any, Any]) -> Any:
        """What ``steps`` returns, each job it yields run in the tenant's turn and its result sent
        back (a long call, as ``operations.fit``): one turn per batch, like any other call. Once
        the caller goes (cancelled, or past its deadline), no job after the one running starts."""
        turns = 0
        with contextlib.closing(steps):
            result = None
            while True:
                try:
                    job = steps.send(result)
                except StopIteration as done:
                    return done.value
                try:
                    result = await self.in_turn(tenant, job)
                except asyncio.CancelledError:
                    log.info("a call of %s stopped after %d turns: its caller went away", tenant, turns)
                    raise
                turns += 1

    async def reported(self, tenant: str, steps: Callable[..., Generator]) -> AsyncIterator:
        """What ``steps(report=...)`` reports, as it reports it; its jobs run as in ``in_turns``,
        and stop once the caller stops listening."""
        events: asyncio.Queue = asyncio.Queue()
        done = asyncio.get_running_loop().create_task(self.in_turns(tenant, steps(report=events.put_nowait)))
        done.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            await done
        finally:
            done.cancel()

    def close(self) -> None:
        """Let queued calls finish, then stop the slots."""
        self.scheduler.close()
