"""Cross-session batching: single timesteps of sessions with the same network description, input
shape and batch size (on this server's one device and dtype), a cohort, that are ready at the same
moment run as one batched computation (``rnnbuilder.Stacked``), each session with its own
parameters and state. Knows nothing of gRPC.

A call waits for nothing that isn't already there: it joins its cohort's queue, and the queue is
run once the event loop has let the calls already received reach it (two loop turns), or after
the operator's window. A queue of one runs as the lone call it is. The stacked parameters are
kept between calls, and a member's slot is copied again only when its parameters changed
(training, SetParameters and loading all write its tensors, which bumps their versions) or its
model was replaced (evicted and loaded again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

import rnnbuilder as rb
from rnnbuilder_sim.wire.names import session_name

from .errors import CallCancelled
from .memory import work_bytes
from .operations import Simulation, checked_input, checked_reply
from .placement import RUN_HERE_SECONDS, Placement, WouldBlock
from .session import Session, Timing

__all__ = ["Batcher"]

log = logging.getLogger("rnnsim.batching")


@dataclass
class _Call:
    session: Session
    x: torch.Tensor
    tenant: str
    bitpacked: bool
    future: asyncio.Future


@dataclass
class _Cohort:
    sessions: list[Session] = field(default_factory=list)
    """Every session seen in the cohort; the stack's members are the resident ones among them."""
    members: list[Session] = field(default_factory=list)
    models: list[rb.Model] = field(default_factory=list)
    """The members' models when the stack was built: a member loaded again has a new one."""
    stacked: rb.Stacked | None = None
    tensors: list[list[torch.Tensor]] = field(default_factory=list)
    """Per member: its model's parameters and buffers."""
    versions: list[int] = field(default_factory=list)
    """Per member: its tensors' version when its slot was last copied."""
    waiting: list[_Call] = field(default_factory=list)
    timing: Timing | None = None
    """The latest batched step's, to tell whether the next may run on the event loop."""
    broken: bool = False
    """Its batched step failed once: its calls run alone."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """The stack is one: two batches of a cohort (of different sessions) may be ready at once."""


def _version(tensors: list[torch.Tensor]) -> int:
    """Grows whenever one of the tensors is written in place (an optimizer step, a copy into it)."""
    return sum(t._version for t in tensors)


class Batcher:
    """Gathers the single timesteps of a cohort's sessions that are ready together and runs them
    as one. ``run_alone(call)`` is how a call runs by itself (the placement's usual way)."""

    def __init__(self, manager, placement: Placement, window_us: int = 0):
        self.manager = manager
        self.placement = placement
        self.window_s = window_us / 1e6
        self._cohorts: dict[tuple, _Cohort] = {}
        self.batched_calls = 0
        """Calls that ran in a batch of two or more."""

    def release_departed(self) -> None:
        """Let go of what sessions that left (deleted, evicted) still hold in a stack: a cohort
        with such a member drops its stack (the next batch builds one of those present), and a
        cohort none of whose sessions is left is forgotten. For a periodic task: a stack is
        otherwise only rebuilt by its cohort's next batch. On the event loop, which alone changes a
        cohort's sessions and the cohorts; it never waits for a batch."""
        registered = self.manager.registered
        for key, cohort in list(self._cohorts.items()):
            if not cohort.lock.acquire(blocking=False):  # running a batch: see to it next round
                continue
            try:
                cohort.sessions = [s for s in cohort.sessions if registered(s)]
                if any(self._departed(m) for m in cohort.members):
                    cohort.members, cohort.models, cohort.stacked = [], [], None
                if not cohort.sessions and not cohort.waiting:
                    del self._cohorts[key]
            finally:
                cohort.lock.release()

    def _departed(self, member: Session) -> bool:
        """A stacked member that left: deleted, or evicted (its parameters no longer belong in a stack)."""
        return not (member.resident and self.manager.registered(member))

    def stacked_sessions(self) -> int:
        """How many sessions' parameters the stacks hold a copy of."""
        return sum(len(cohort.members) for cohort in list(self._cohorts.values()))

    def cohort_key(self, session: Session) -> tuple:
        return json.dumps(session.description, sort_keys=True), session.input_shape, session.batch_size

    async def run(
        self,
        tenant: str,
        session: Session,
        x: torch.Tensor,
        bitpacked: bool,
        run_alone: Callable[[], Awaitable[Simulation]],
    ) -> Simulation:
        """The call's simulation of one timestep ``x`` (1, batch, *input_shape): batched with its
        cohort's calls waiting at the same moment, or by ``run_alone()`` if there are none."""
        if session.cohort is None:
            session.cohort = self.cohort_key(session)
        cohort = self._cohorts.get(session.cohort)
        if cohort is None:
            cohort = self._cohorts[session.cohort] = _Cohort()
        if session not in cohort.sessions:
            cohort.sessions = [s for s in cohort.sessions if self.manager.registered(s)] + [session]
        if len(cohort.sessions) < 2 or cohort.broken:
            return await run_alone()
        checked_input(self.manager, session, x, batch=session.batch_size)  # bad input fails alone, before it waits
        loop = asyncio.get_running_loop()
        call = _Call(session, x, tenant, bitpacked, loop.create_future())
        cohort.waiting.append(call)
        if len(cohort.waiting) == 1:
            if self.window_s > 0:
                loop.call_later(self.window_s, self._start, cohort)
            else:  # two turns: a call whose message has arrived reaches its queue in one or two
                loop.call_soon(loop.call_soon, self._start, cohort)
        try:
            result = await call.future
        except asyncio.CancelledError:
            if not call.future.done():
                call.future.cancel()
            raise
        if result is None:  # not batched after all (busy, or alone): the usual way
            return await run_alone()
        return result

    def _start(self, cohort: _Cohort) -> None:
        calls, cohort.waiting = cohort.waiting, []
        calls = [c for c in calls if not c.future.done()]  # cancelled meanwhile
        batch, seen = [], set()
        for call in calls:
            if id(call.session) in seen:  # two streams of one session: the second runs after
                call.future.set_result(None)
            else:
                seen.add(id(call.session))
                batch.append(call)
        if len(batch) < 2:
            for call in batch:
                call.future.set_result(None)
            return
        asyncio.get_running_loop().create_task(self._run_batch(cohort, batch))

    async def _run_batch(self, cohort: _Cohort, calls: list[_Call]) -> None:
        tenant = calls[0].tenant
        # The loop would have run each of these calls alone if short: the batch may take as long.
        short = cohort.timing is not None and cohort.timing.bound(len(calls)) <= RUN_HERE_SECONDS * len(calls)
        step = functools.partial(self._step, cohort, calls)
        try:
            results = await self.placement.here_or_in_turn(tenant, short, step, step)
        except Exception as error:  # a network vmap can't batch: its calls run alone from now on
            log.warning("a cohort's batched step failed (%s); its calls run one by one", error, exc_info=True)
            cohort.broken = True
            results = [None] * len(calls)
        for call, result in zip(calls, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    def _step(self, cohort: _Cohort, calls: list[_Call]) -> list:
        """(On a slot or the loop.) One batched timestep of the calls whose sessions can be held at
        once without waiting; the others get None (they run alone) or their error."""
        manager = self.manager
        results: list = [None] * len(calls)
        with contextlib.ExitStack() as held:
            ready = []
            for i, call in enumerate(calls):
                work = work_bytes(call.session.entry_elements, 1, call.session.batch_size, training=False)
                try:
                    held.enter_context(manager.held(call.session, work, wait=False))
                except WouldBlock:
                    continue
                except Exception as error:  # deleted, moving, over a budget: as a lone call would be told
                    results[i] = error
                    continue
                ready.append(i)
            if len(ready) < 2:
                return results
            sessions = [calls[i].session for i in ready]
            clock = time.thread_time if manager.device.type == "cpu" else time.perf_counter  # as operations.run
            started = clock()
            with cohort.lock, torch.no_grad():
                slots = self._slots(cohort, sessions)
                x = torch.stack([calls[i].x[0] for i in ready]).to(device=manager.device, dtype=torch.float32)
                y, states = cohort.stacked.step(slots, x, [s.state for s in sessions])
                y = y.cpu()
            cohort.timing = Timing(clock() - started, len(ready))
            limit = manager.limits.max_message_bytes
            for k, i in enumerate(ready):
                call, session = calls[i], sessions[k]
                out = y[k].unsqueeze(0)
                try:
                    checked_reply((out,), call.bitpacked, limit)
                    if call.future.done():
                        raise CallCancelled(f"the call on {session_name(session.id)} was cancelled")
                except Exception as error:
                    results[i] = error
                    continue
                first = session.timesteps
                session.state, session.timesteps = states[k], first + 1
                results[i] = Simulation(out, {}, first, len(ready))
            self.batched_calls += len(ready)
        return results

    def _slots(self, cohort: _Cohort, sessions: list[Session]) -> list[int]:
        """The sessions' slots in the cohort's stack, rebuilt if one isn't in it or has a new model,
        and copied again where parameters changed."""
        members = cohort.members
        moved = (s not in members or s.model is not cohort.models[members.index(s)] for s in sessions)
        # A member gone (deleted, evicted) leaves the stack, which would hold its parameters on.
        if cohort.stacked is None or any(moved) or any(self._departed(m) for m in members):
            members = [s for s in cohort.sessions if not self._departed(s)]
            members += [s for s in sessions if s not in members]
            cohort.members, cohort.models = members, [s.model for s in members]
            cohort.stacked = rb.Stacked(cohort.models)
            cohort.tensors = [list(m.state_dict(keep_vars=True).values()) for m in cohort.models]
            cohort.versions = [_version(t) for t in cohort.tensors]
        slots = []
        for s in sessions:
            slot = members.index(s)
            version = _version(cohort.tensors[slot])
            if version != cohort.versions[slot]:
                cohort.stacked.refresh(slot, s.model)
                cohort.versions[slot] = version
            slots.append(slot)
        return slots
