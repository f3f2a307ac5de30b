"""One scheduler for all work on the device, fair across tenants. Knows nothing of gRPC.

Jobs wait in one queue per tenant; ``slots`` threads run them. When a slot frees, it takes the
oldest job of the tenant that has had the least device time so far (start-time fair queuing:
a tenant that was idle starts level with the busiest, not with a credit for its idle time).

While several tenants are active (a job queued or running, or one submitted in the last
``ACTIVE_WINDOW_S``), each may hold at most its share of the slots, ``slots // active`` (at least
one): a tenant that streams one step after another finds a slot free for each step, instead of
waiting behind another tenant's long calls. A long training run is many small jobs, one per batch.
Alone, a tenant may use every slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FairScheduler", "POLICIES"]

log = logging.getLogger("rnnsim.scheduler")

ACTIVE_WINDOW_S = 1.0
"""How long after its last call a tenant still counts as active, holding its share of the slots."""

POLICIES = ("fair", "fifo")
"""``fair``: across tenants by device time, with shares of the slots; ``fifo``: in arrival order, no
shares (the baseline it is measured against)."""


@dataclass
class _Tenant:
    queue: deque = field(default_factory=deque)
    device_seconds: float = 0.0
    running: int = 0
    last_submit: float = 0.0


class FairScheduler:
    """Runs ``submit``-ted callables on ``slots`` threads, fairly across tenants."""

    def __init__(self, slots: int, policy: str = "fair", name: str = "rnnsim-slot"):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.slots = slots
        self._tenants: dict[str, _Tenant] = {}
        self._arrivals = 0
        self._work = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(slots)]
        for thread in self._threads:
            thread.start()

    def submit(self, tenant: str, fn: Callable[[], Any]) -> Future:
        """Queue ``fn()`` for ``tenant``; the future has its result. Cancelling it before it starts
        drops the job (this is how a cancelled call or a passed deadline frees its place)."""
        future: Future = Future()
        with self._work:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            queue = self._tenants.setdefault(tenant, _Tenant())
            if not queue.queue:  # back from idle: level with the least-served busy tenant, no banked credit
                busy = [t.device_seconds for t in self._tenants.values() if t.queue]
                if busy:
                    queue.device_seconds = max(queue.device_seconds, min(busy))
            self._arrivals += 1
            queue.queue.append((self._arrivals, fn, future))
            queue.last_submit = time.monotonic()
            self._work.notify()
        return future

    def run_here(self, tenant: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, fn())`` run on the calling thread, counted as the tenant's slot time, if a slot
        is free, nothing waits and the tenant is within its share; else ``(False, None)`` and
        nothing runs. For calls too small to be worth two thread hand-offs."""
        with self._work:
            tenant_state = self._tenants.setdefault(tenant, _Tenant())
            running = sum(t.running for t in self._tenants.values())
            if self._closed or running >= self.slots or any(t.queue for t in self._tenants.values()):
                return False, None
            if self.policy == "fair" and tenant_state.running >= self._share():
                return False, None
            tenant_state.running += 1
            tenant_state.last_submit = time.monotonic()
        started = time.perf_counter()
        try:
            return True, fn()
        finally:
            with self._work:
                tenant_state.device_seconds += time.perf_counter() - started
                tenant_state.running -= 1
                self._wake_waiting()

    def queued(self) -> dict[str, int]:
        """Jobs waiting, by tenant (those with none are left out)."""
        with self._work:
            return {name: len(t.queue) for name, t in self._tenants.items() if t.queue}

    def running(self) -> dict[str, int]:
        """Jobs on a slot now, by tenant (those with none are left out)."""
        with self._work:
            return {name: t.running for name, t in self._tenants.items() if t.running}

    def device_seconds(self) -> dict[str, float]:
        """Seconds of slot time each tenant has had."""
        with self._work:
            return {name: t.device_seconds for name, t in self._tenants.items()}

    def close(self) -> None:
        """Let queued jobs finish, then stop the slots."""
        with self._work:
            self._closed = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join()

    def _next(self) -> tuple[_Tenant, Callable, Future] | None:
        with self._work:
            while True:
                busy = [t for t in self._tenants.values() if t.queue]
                if self.policy == "fair":
                    share = self._share()
                    ready = [t for t in busy if t.running < share]
                    if ready:
                        tenant = min(ready, key=lambda t: (t.device_seconds, t.queue[0][0]))
                        return self._start(tenant)
                elif busy:
                    return self._start(min(busy, key=lambda t: t.queue[0][0]))
                if self._closed and not busy:
                    return None
                # a tenant at its share waits for a slot of its own, or for the others to go quiet
                self._work.wait(ACTIVE_WINDOW_S if busy else None)

    def _share(self) -> int:
        """Slots each active tenant may hold now."""
        recent = time.monotonic() - ACTIVE_WINDOW_S
        active = sum(1 for t in self._tenants.values() if t.queue or t.running or t.last_submit > recent)
        return max(1, self.slots // max(active, 1))

    def _wake_waiting(self) -> None:
        """(Lock held.) A slot freed up: wake the slots if jobs wait (a tenant at its share may go
        on now); waking idle slots for nothing costs every call a few thread switches."""
        if any(t.queue for t in self._tenants.values()):
            self._work.notify_all()

    @staticmethod
    def _start(tenant: _Tenant) -> tuple[_Tenant, Callable, Future]:
        _, fn, future = tenant.queue.popleft()
        tenant.running += 1
        return tenant, fn, future

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            tenant, fn, future = job
            started = time.perf_counter()
            if not future.set_running_or_notify_cancel():
                with self._work:
                    tenant.running -= 1
                    self._wake_waiting()
                continue
            try:
                result = fn()
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
            else:
                future.set_result(result)
            finally:
                with self._work:
                    tenant.device_seconds += time.perf_counter() - started
                    tenant.running -= 1
                    self._wake_waiting()
            # A slot waits here for its next job: it mustn't keep this one's inputs and result alive.
            job = fn = future = result = None
