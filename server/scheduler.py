"""One scheduler for all work on the device, fair across tenants. Knows nothing of gRPC.

Jobs wait in one queue per tenant; ``slots`` threads run them. When a slot frees, it takes the
oldest job of the tenant that has had the least device time so far (start-time fair queuing:
a tenant that was idle starts level with the busiest, not with a credit for its idle time). A
long training run is many small jobs, one per batch, so another tenant's streaming step waits at
most for one batch to finish, however much the trainer queues.
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

POLICIES = ("fair", "fifo")
"""``fair``: across tenants by device time; ``fifo``: in arrival order (the baseline it is measured against)."""


@dataclass
class _Tenant:
    queue: deque = field(default_factory=deque)
    device_seconds: float = 0.0
    running: int = 0


class FairScheduler:
    """Runs ``submit``-ted callables on ``slots`` threads, fairly across tenants."""

    def __init__(self, slots: int, policy: str = "fair", name: str = "rnnsim-slot"):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
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
            self._work.notify()
        return future

    def call(self, tenant: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` run in turn, from a thread that may wait for it (a training loop's batches)."""
        return self.submit(tenant, fn).result()

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
                if busy:
                    if self.policy == "fair":
                        tenant = min(busy, key=lambda t: (t.device_seconds, t.queue[0][0]))
                    else:
                        tenant = min(busy, key=lambda t: t.queue[0][0])
                    _, fn, future = tenant.queue.popleft()
                    tenant.running += 1
                    return tenant, fn, future
                if self._closed:
                    return None
                self._work.wait()

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            tenant, fn, future = job
            started = time.perf_counter()
            if not future.set_running_or_notify_cancel():
                with self._work:
                    tenant.running -= 1
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
