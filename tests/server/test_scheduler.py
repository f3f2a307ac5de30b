"""The scheduler: fair across tenants by slot time, cancellable while queued, errors passed on."""

import contextlib
import threading
import time

import pytest

from server.scheduler import FairScheduler


def blocked(scheduler: FairScheduler) -> threading.Event:
    """Occupy the scheduler's only slot until the returned event is set."""
    release, started = threading.Event(), threading.Event()
    scheduler.submit("blocker", lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    return release


def run_order(policy: str, jobs: list[str]) -> list[str]:
    """The order in which one slot runs ``jobs`` (tenant names, 20 ms each), all queued behind a busy slot."""
    scheduler = FairScheduler(1, policy)
    order: list[str] = []
    release = blocked(scheduler)
    futures = [scheduler.submit(t, lambda t=t: (time.sleep(0.02), order.append(t))) for t in jobs]
    release.set()
    for future in futures:
        future.result(10)
    scheduler.close()
    return order


def test_a_tenant_with_one_call_goes_before_another_tenants_backlog():
    """Fair: a call of a tenant with nothing queued runs next, not after another tenant's backlog."""
    order = run_order("fair", ["trainer"] * 5 + ["streamer"])
    assert order.index("streamer") <= 1


def test_fifo_runs_in_arrival_order():
    """The FIFO baseline runs the same jobs in arrival order."""
    assert run_order("fifo", ["trainer"] * 5 + ["streamer"]) == ["trainer"] * 5 + ["streamer"]


def test_busy_tenants_alternate():
    """Two tenants with backlogs of equal jobs take turns: neither gets two jobs ahead."""
    order = run_order("fair", ["a"] * 4 + ["b"] * 4)
    assert all(abs(order[:n].count("a") - order[:n].count("b")) <= 1 for n in range(len(order) + 1))


def test_idle_time_is_not_banked():
    """A tenant back from idle starts level with the busy ones, instead of running alone until it catches up."""
    scheduler = FairScheduler(1)
    scheduler.submit("a", lambda: time.sleep(0.2)).result(10)  # a has had 0.2 s, b nothing
    order: list[str] = []
    release = blocked(scheduler)
    futures = [scheduler.submit(t, lambda t=t: (time.sleep(0.01), order.append(t))) for t in ["a", "a", "b", "b"]]
    release.set()
    for future in futures:
        future.result(10)
    scheduler.close()
    assert order[:2] != ["b", "b"]


def test_a_cancelled_job_never_runs():
    """A job cancelled while it waits for a slot is dropped."""
    scheduler = FairScheduler(1)
    ran = threading.Event()
    release = blocked(scheduler)
    future = scheduler.submit("a", ran.set)
    assert future.cancel()
    release.set()
    scheduler.submit("a", lambda: None).result(10)
    scheduler.close()
    assert not ran.is_set() and scheduler.queued() == {}


def test_errors_reach_the_caller():
    """An exception in a job is raised by its future; the slot goes on."""
    scheduler = FairScheduler(1)
    with pytest.raises(ZeroDivisionError):
        scheduler.submit("a", lambda: 1 / 0).result(10)
    assert scheduler.submit("a", lambda: 42).result(10) == 42
    scheduler.close()


def test_slot_time_is_counted_per_tenant():
    """Each tenant's slot time is what its jobs took."""
    scheduler = FairScheduler(2)
    scheduler.submit("a", lambda: time.sleep(0.1)).result(10)
    scheduler.submit("b", lambda: None).result(10)
    seconds = scheduler.device_seconds()
    scheduler.close()
    assert seconds["a"] >= 0.1 > seconds["b"]


def test_unknown_policy_lists_the_valid_ones():
    """An unknown policy is refused with the choices."""
    with pytest.raises(ValueError, match="fair, fifo"):
        FairScheduler(1, "random")


@contextlib.contextmanager
def backlog(scheduler: FairScheduler, tenant: str, jobs: int):
    """``jobs`` long jobs of ``tenant`` submitted; they end when the block does, then the scheduler closes."""
    release = threading.Event()
    futures = [scheduler.submit(tenant, lambda: release.wait(10)) for _ in range(jobs)]
    time.sleep(0.1)
    try:
        yield
    finally:
        release.set()
        for future in futures:
            future.result(10)
        scheduler.close()


def test_a_tenant_holds_only_its_share_of_slots_while_another_is_active():
    """With 2 slots and 2 active tenants, a backlog of long jobs keeps one slot, so the other's calls find one free."""
    scheduler = FairScheduler(2)
    scheduler.submit("streamer", lambda: None).result(10)  # the streamer is active now
    with backlog(scheduler, "trainer", 3):
        assert scheduler.running() == {"trainer": 1}
        started = time.perf_counter()
        scheduler.submit("streamer", lambda: None).result(10)
        assert time.perf_counter() - started < 0.5


def test_alone_a_tenant_uses_every_slot():
    """A tenant with no one else active runs as many jobs at once as there are slots."""
    scheduler = FairScheduler(3)
    with backlog(scheduler, "trainer", 3):
        assert scheduler.running() == {"trainer": 3}


def test_a_small_call_runs_on_the_callers_thread_when_a_slot_is_free():
    """run_here runs the job on the calling thread, as the tenant's slot time, when nothing waits."""
    scheduler = FairScheduler(2)
    ran, thread = scheduler.run_here("a", threading.current_thread)
    scheduler.close()
    assert ran and thread is threading.current_thread() and "a" in scheduler.device_seconds()


def test_a_small_call_does_not_jump_the_queue():
    """run_here declines (running nothing) while jobs wait for a slot."""
    scheduler = FairScheduler(1)
    release = blocked(scheduler)
    waiting = scheduler.submit("b", lambda: None)
    ran, result = scheduler.run_here("a", lambda: "ran")
    release.set()
    waiting.result(10)
    scheduler.close()
    assert (ran, result) == (False, None)
