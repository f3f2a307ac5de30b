"""The session manager and the operations on a held session, without gRPC: a fake store in memory
stands in for the checkpoint folder, and each test drives the manager directly."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

import pytest
import torch

import rnnbuilder as rb
from rnnbuilder import nn, snn, spec
from server import Limits, SessionManager
from server import operations as ops
from server.errors import LimitExceeded, SessionExists, SessionExpired, SessionMoving, SessionNotFound
from server.memory import MB, Quota
from server.placement import Placement, WouldBlock
from server.scheduler import FairScheduler
from server.session import SessionKey
from server.snapshot import Snapshot
from server.training import BatchProgress, Dataset, EpochSummary, OptimizerConfig, Scores, TrainingOptions
from tests.helpers import recurrent_net

CPU = torch.device("cpu")


class FakeStore:
    """A ``SessionStore`` in memory: snapshots, leases and what was asked for, by session (id and owner)."""

    def __init__(self):
        self.snapshots: dict[SessionKey, Snapshot] = {}
        self.modified: dict[SessionKey, int] = {}
        self.leases: dict[SessionKey, str] = {}
        self.asked: set[SessionKey] = set()
        self.writes = 0
        self.used = {}
        self.tombstones = {}

    def write(self, session_id: str, owner: str, snapshot: Snapshot) -> None:
        self.snapshots[SessionKey(session_id, owner)] = snapshot
        self.writes += 1
        self.modified[SessionKey(session_id, owner)] = self.writes

    def read(self, session_id: str, owner: str) -> Snapshot | None:
        return self.snapshots.get(SessionKey(session_id, owner))

    def describe(self, session_id: str, owner: str) -> tuple[Snapshot, int, int] | None:
        snapshot = self.read(session_id, owner)
        if snapshot is None:
            return None
        return snapshot, sum(t.numel() * t.element_size() for t in snapshot.parameters.values()), 0

    def index(self) -> list[tuple[SessionKey, int]]:
        return [(key, self.modified.get(key, 0)) for key in sorted(self.snapshots)]

    def holds(self, session_id: str, owner: str) -> bool:
        return SessionKey(session_id, owner) in self.snapshots

    def lease_holder(self, session_id: str, owner: str) -> str | None:
        return self.leases.get(SessionKey(session_id, owner))

    def take_lease(self, session_id: str, owner: str, holder: str) -> None:
        self.leases[SessionKey(session_id, owner)] = holder
        self.asked.discard(SessionKey(session_id, owner))

    def renew_leases(self, keys: list[SessionKey], holder: str) -> tuple[list[SessionKey], list[SessionKey]]:
        lost = [key for key in keys if self.leases.get(key) not in (None, holder)]
        missing = [key for key in keys if key not in self.leases]
        return lost, missing

    def drop_lease(self, session_id: str, owner: str, holder: str) -> None:
        if self.leases.get(SessionKey(session_id, owner)) == holder:
            del self.leases[SessionKey(session_id, owner)]

    def want(self, session_id: str, owner: str) -> None:
        self.asked.add(SessionKey(session_id, owner))

    def wanted(self) -> set[SessionKey]:
        return set(self.asked)

    def remove(self, session_id: str, owner: str) -> None:
        self.snapshots.pop(SessionKey(session_id, owner), None)
        self.leases.pop(SessionKey(session_id, owner), None)
        self.used.pop(SessionKey(session_id, owner), None)

    used: dict[SessionKey, float]
    tombstones: dict[SessionKey, float]

    def mark_used(self, session_id: str, owner: str, when: float) -> None:
        self.used[SessionKey(session_id, owner)] = when

    def last_used(self) -> dict[SessionKey, float]:
        return {key: self.used.get(key, 0.0) for key in self.snapshots}

    def mark_expired(self, session_id: str, owner: str) -> None:
        self.tombstones[SessionKey(session_id, owner)] = time.time()

    def expired(self, session_id: str, owner: str, within_s: float) -> bool:
        return time.time() - self.tombstones.get(SessionKey(session_id, owner), -math.inf) < within_s

    def clear_expired(self, session_id: str, owner: str) -> None:
        self.tombstones.pop(SessionKey(session_id, owner), None)

    def prune_marks(self, expired_kept_s: float) -> None:
        pass


def manager(store: FakeStore | None = None, holder: str = "here", **settings) -> SessionManager:
    return SessionManager(CPU, Limits(), store=store, holder=holder, **settings)


def create(m: SessionManager, owner: str = "default", session_id: str | None = None, seed: int = 1):
    return m.create(spec.to_spec(recurrent_net()), (3,), 2, seed, owner, session_id)


def inputs(timesteps: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(timesteps, 2, 3, generator=torch.Generator().manual_seed(seed)) * 2


def classifier() -> dict:
    return spec.to_spec(rb.Sequential(nn.Linear(8), snn.LIF(), nn.Linear(3)))


def test_a_new_session_is_registered_checkpointed_and_leased():
    """create registers the session for its owner, writes its checkpoint and takes its lease."""
    store = FakeStore()
    m = manager(store)
    s = create(m, "alice")
    assert m.get(s.id, "alice") is s and m.list("alice") == [s]
    assert (s.id, "alice") in store.snapshots and store.leases[s.id, "alice"] == "here"
    assert not s.dirty


def test_other_owners_and_unknown_ids_are_not_found():
    m = manager()
    s = create(m, "alice")
    with pytest.raises(SessionNotFound):
        m.get(s.id, "bob")
    with pytest.raises(SessionNotFound):
        m.get("nope")
    assert m.list("bob") == []


def test_a_taken_id_is_refused():
    m = manager()
    create(m, session_id="mine")
    with pytest.raises(SessionExists):
        create(m, session_id="mine")


def test_ids_are_per_owner():
    """The same id in two owners is two sessions, each found, stored and closed on its own."""
    store = FakeStore()
    m = manager(store)
    mine, theirs = create(m, "alice", "same", seed=1), create(m, "bob", "same", seed=2)
    assert m.get("same", "alice") is mine and m.get("same", "bob") is theirs
    m.delete(theirs)
    assert m.get("same", "alice") is mine and set(store.snapshots) == {("same", "alice")}


def test_another_owners_id_held_elsewhere_is_not_found_and_not_asked_for():
    """Naming another owner's session that another replica holds asks nothing of that replica."""
    store = FakeStore()
    create(manager(store, holder="there"), "alice", "same")
    with pytest.raises(SessionNotFound):
        manager(store).get("same", "bob")
    assert store.wanted() == set()


def test_a_call_finds_its_session_once(monkeypatch):
    """Operations work on the session they are given: they never look it up again."""
    m = manager(FakeStore())
    s = create(m)
    monkeypatch.setattr(m, "get", lambda *args, **kwargs: pytest.fail("looked up again"))
    first = ops.run(m, s, inputs(4), [])
    ops.train_step(m, s, inputs(4), torch.tensor([0, 1]), TrainingOptions(loss="ce_count"))
    assert ops.run(m, s, inputs(4), []).first_timestep == first.first_timestep + 4
    assert ops.get_state(m, s).keys() == ops.export(m, s).state.keys()


def test_run_moves_the_state_on_like_the_local_model():
    """Two calls continue each other exactly as one local run of the same seed does."""
    m = manager()
    s = create(m, seed=3)
    x = inputs(10)
    first, rest = ops.run(m, s, x[:4], []), ops.run(m, s, x[4:], [])
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        local = recurrent_net().make_model((3,))
        expected, _ = local(x)
    assert (first.first_timestep, rest.first_timestep, s.timesteps) == (0, 4, 10)
    assert torch.equal(torch.cat([first.output, rest.output]), expected)


def test_an_evicted_session_comes_back_exactly_on_its_next_call():
    store = FakeStore()
    m = manager(store)
    s, twin = create(m, seed=2), create(m, seed=2)
    x = inputs(8)
    ops.run(m, s, x[:3], []), ops.run(m, twin, x[:3], [])
    assert m.evict_idle(0) == 2 and not s.resident and m.evictions["idle"] == 2
    assert s.key not in store.leases
    assert torch.equal(ops.run(m, s, x[3:], []).output, ops.run(m, twin, x[3:], []).output)
    assert m.restores == 2 and s.resident and store.leases[s.key] == "here"


def test_without_a_store_nothing_is_evicted():
    m = manager()
    create(m)
    assert m.evict_idle(0) == 0


def test_a_call_that_must_not_wait_would_block_on_a_busy_or_evicted_session():
    m = manager(FakeStore())
    s = create(m)
    with s.lock, pytest.raises(WouldBlock):
        ops.run(m, s, inputs(2), [], wait=False)
    m.evict_idle(0)
    with pytest.raises(WouldBlock):
        ops.run(m, s, inputs(2), [], wait=False)
    assert not s.resident


def test_a_session_deleted_while_a_call_waits_is_not_found():
    """The call holds the session it found; if that was closed meanwhile, the call gets NOT_FOUND."""
    store = FakeStore()
    m = manager(store)
    s = create(m)
    m.delete(s)
    assert s.key not in store.snapshots and not s.resident
    with pytest.raises(SessionNotFound):
        ops.run(m, s, inputs(2), [])
    with pytest.raises(SessionNotFound):
        m.delete(s)


def test_a_session_replaced_under_its_id_is_not_the_one_a_waiting_call_found():
    m = manager()
    s = create(m, session_id="same")
    m.delete(s)
    create(m, session_id="same")
    with pytest.raises(SessionNotFound):
        ops.get_state(m, s)


def test_a_memory_budget_evicts_the_least_recently_used_session_to_make_room():
    store = FakeStore()
    probe = create(manager())
    m = manager(store, memory_budget_bytes=probe.bytes + probe.bytes // 2)
    first = create(m)
    second = create(m)
    assert m.evictions["memory"] == 1 and not first.resident and second.resident
    ops.get_state(m, first)
    assert first.resident and not second.resident and m.restores == 1


def test_without_a_store_a_memory_budget_refuses_with_the_numbers():
    probe = create(manager())
    m = manager(memory_budget_bytes=probe.bytes + probe.bytes // 2)
    create(m)
    with pytest.raises(LimitExceeded) as caught:
        create(m)
    assert caught.value.limit == "server max_memory_mb"


def test_a_tenant_quota_limits_its_sessions():
    from server.memory import Quota

    m = manager(quotas={"alice": Quota(max_sessions=1)})
    create(m, "alice")
    with pytest.raises(LimitExceeded) as caught:
        create(m, "alice")
    assert caught.value.limit == "tenant max_sessions"
    create(m, "bob")


def test_a_stored_session_is_registered_unloaded_and_loaded_by_its_first_call():
    """Another replica's session: found in the store on lookup, loaded on its first call."""
    store = FakeStore()
    other = manager(store, holder="there")
    s = create(other, seed=5)
    ops.run(other, s, inputs(3), [])
    other.checkpoint_all()
    other.hand_over(0)
    m = manager(store)
    found = m.get(s.id)
    assert not found.resident and found.timesteps == 3
    assert ops.run(m, found, inputs(2), []).first_timestep == 3
    assert m.restores == 1 and store.leases[s.key] == "here"


def test_a_session_another_replica_holds_is_asked_for_not_loaded():
    store = FakeStore()
    s = create(manager(store, holder="there"))
    m = manager(store)
    with pytest.raises(SessionMoving):
        m.get(s.id)
    assert store.wanted() == {s.key}


def test_tending_leases_hands_a_wanted_session_over_with_its_latest_state():
    store = FakeStore()
    m = manager(store)
    s = create(m)
    ops.run(m, s, inputs(4), [])
    store.want(*s.key)
    assert m.tend_leases() == 1
    assert not s.resident and s.key not in store.leases
    assert store.snapshots[s.key].timesteps == 4


def test_a_session_taken_over_by_another_replica_is_dropped_unwritten():
    store = FakeStore()
    m = manager(store)
    s = create(m)
    ops.run(m, s, inputs(4), [])
    store.leases[s.key] = "there"
    assert m.tend_leases() == 1 and not s.resident
    assert store.snapshots[s.key].timesteps == 0 and m.checkpoint_all() == 0


def test_checkpoints_are_written_only_for_changed_sessions():
    store = FakeStore()
    m = manager(store)
    s = create(m)
    assert m.checkpoint_all() == 0
    ops.get_state(m, s)
    assert m.checkpoint_all() == 0
    ops.run(m, s, inputs(2), [])
    assert m.checkpoint_all() == 1 and store.snapshots[s.key].timesteps == 2


def test_a_replica_handing_over_refuses_calls_and_writes_every_session():
    store = FakeStore()
    m = manager(store)
    s = create(m)
    ops.run(m, s, inputs(2), [])
    m.begin_hand_over()
    with pytest.raises(SessionMoving):
        ops.run(m, s, inputs(2), [])
    with pytest.raises(SessionMoving):
        create(m)
    assert m.hand_over(0) == 1 and m.end_hand_over() == 0
    assert store.snapshots[s.key].timesteps == 2 and store.leases == {}


def test_register_stored_adds_new_checkpoints_and_forgets_closed_ones():
    store = FakeStore()
    other = manager(store, holder="there")
    kept, closed = create(other, "alice"), create(other, "alice")
    other.hand_over(0)
    m = manager(store)
    assert m.register_stored() == 2 and {s.id for s in m.list()} == {kept.id, closed.id}
    store.remove(*closed.key)
    assert m.register_stored("alice") == 1 and [s.id for s in m.list()] == [kept.id]


def test_export_and_import_make_an_exact_copy():
    m = manager()
    s = create(m, seed=7)
    ops.train_step(m, s, inputs(4), torch.tensor([1, 2]), TrainingOptions(optimizer=OptimizerConfig("sgd", 0.1)))
    ops.run(m, s, inputs(5), [])
    copy = m.import_(ops.export(m, s), "bob")
    assert copy.owner == "bob" and copy.timesteps == s.timesteps
    original, copied = ops.export(m, s), ops.export(m, copy)
    for name in ("parameters", "state"):
        mine, theirs = getattr(original, name), getattr(copied, name)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert copied.optimizer.config == OptimizerConfig("sgd", 0.1)
    x = inputs(3, seed=1)
    assert torch.equal(ops.run(m, s, x, []).output, ops.run(m, copy, x, []).output)


def test_a_snapshot_that_does_not_fit_leaves_no_session_behind():
    m = manager()
    s = create(m)
    snapshot = ops.export(m, s)
    broken = replace(snapshot, parameters={"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown parameters"):
        m.import_(broken)
    assert m.list() == [s]


def test_fit_reports_typed_progress_and_returns_the_epochs():
    m = manager()
    s = m.create(classifier(), (4,), 8, 0)
    generator = torch.Generator().manual_seed(0)
    data = Dataset(torch.rand(10, 5, 4, generator=generator), torch.randint(0, 3, (10,), generator=generator))
    reported = []
    fit = ops.fit(m, s, data, TrainingOptions(), epochs=2, batch_size=4, validation=data, report=reported.append)
    history = performed(fit)
    batches = [event for event in reported if isinstance(event, BatchProgress)]
    epochs = [event for event in reported if isinstance(event, EpochSummary)]
    assert [(b.epoch, b.batch, b.batches) for b in batches] == [(e, b, 3) for e in range(2) for b in range(3)]
    assert epochs == history and [e.epoch for e in history] == [0, 1]
    assert all(isinstance(e.validation, Scores) and e.validation.accuracy is not None for e in history)
    evaluated = performed(ops.evaluate(m, s, data, "ce_count", 4))
    assert evaluated.loss == pytest.approx(history[-1].validation.loss, abs=1e-6) and evaluated.grad_norm == 0.0


def performed(steps):
    """What a long call returns, its jobs run in turns as the server runs them."""
    placement = Placement(FairScheduler(1))
    try:
        return asyncio.run(placement.in_turns("tenant", steps))
    finally:
        placement.close()


def test_fit_trains_no_more_once_its_runner_stops_between_batches():
    """fit's jobs are one batch each: a caller that goes after the first batch costs one optimizer step."""
    m = manager()
    s = m.create(classifier(), (4,), 8, 0)
    data = Dataset(torch.rand(12, 5, 4), torch.randint(0, 3, (12,)))
    reported = []
    steps = ops.fit(m, s, data, TrainingOptions(), epochs=3, batch_size=4, report=reported.append)
    job = steps.send(None)
    while not reported:
        job = steps.send(job())
    steps.close()
    assert len(reported) == 1 and int(s.training.optimizer.state_dict()["state"][0]["step"]) == 1


def test_a_failed_call_leaves_the_session_as_it_was():
    m = manager(memory_budget_bytes=None)
    s = create(m)
    ops.run(m, s, inputs(3), [])
    before = ops.get_state(m, s)
    with pytest.raises(ValueError):
        ops.run(m, s, inputs(3)[:, :1], [])  # the wrong batch size
    with pytest.raises(ValueError):
        ops.set_state(m, s, {name: torch.full_like(t, float("nan")) for name, t in before.items()})
    after = ops.get_state(m, s)
    assert s.timesteps == 3 and all(torch.equal(before[k], after[k]) for k in before)


def test_the_reply_limit_is_checked_before_the_state_moves_on():
    m = SessionManager(CPU, Limits(max_message_bytes=40))
    s = create(m)
    with pytest.raises(LimitExceeded) as caught:
        ops.run(m, s, inputs(10), [])
    assert caught.value.limit == "max_message_bytes" and s.timesteps == 0


def test_memory_reserved_by_a_call_is_released_after_it():
    m = manager(memory_budget_bytes=64 * MB)
    s = create(m)
    ops.run(m, s, inputs(3), [])
    assert m.ledger.reserved() == 0


def test_a_session_unused_past_its_ttl_expires_and_its_id_says_so():
    """``expire`` deletes a session unused past the TTL, with its checkpoint; its id answers SessionExpired."""
    store = FakeStore()
    m = manager(store, session_ttl_s=60)
    s = create(m)
    s.used_at -= 61
    assert m.expire() == 1
    assert m.list() == [] and store.snapshots == {} and m.expiries["default"] == 1
    with pytest.raises(SessionExpired):
        m.get(s.id)


def test_a_session_used_within_its_ttl_is_kept_and_its_use_recorded():
    """A session a call named within the TTL stays, and its last use goes into the store."""
    store = FakeStore()
    m = manager(store, session_ttl_s=60)
    s = create(m)
    s.used_at -= 61
    m.get(s.id)
    assert m.expire() == 0
    assert store.used[s.key] == s.used_at


def test_a_busy_session_is_not_expired():
    """A session a call holds is left for a later round."""
    m = manager(FakeStore(), session_ttl_s=60)
    s = create(m)
    s.used_at -= 61
    with s.lock:
        assert m.expire() == 0
    assert m.expire() == 1


def test_a_tenant_ttl_overrides_the_servers():
    """A tenant's own TTL counts for its sessions; 0 keeps them forever."""
    m = manager(FakeStore(), session_ttl_s=60, quotas={"keeper": Quota(session_ttl_s=0)})
    kept, gone = create(m, "keeper"), create(m, "other")
    kept.used_at -= 1000
    gone.used_at -= 1000
    assert m.expire() == 1
    assert m.list() == [kept]


def test_a_stored_session_unused_past_its_ttl_expires_without_being_loaded():
    """A session only the store has (another replica's, or from before a restart) expires from its recorded use."""
    store = FakeStore()
    s = create(manager(store))
    store.leases.clear()
    store.used[s.key] = time.time() - 61
    m = manager(store, session_ttl_s=60)
    assert m.expire() == 1 and store.snapshots == {} and m.restores == 0
    with pytest.raises(SessionExpired):
        m.get(s.id)


def test_a_session_another_replica_holds_is_left_to_it():
    """A replica never expires a session another one holds: that one decides, knowing its last use."""
    store = FakeStore()
    s = create(manager(store, holder="there"))
    store.used[s.key] = time.time() - 61
    assert manager(store, session_ttl_s=60).expire() == 0
    assert s.key in store.snapshots


def test_a_new_session_may_take_an_expired_id():
    """Creating a session under an expired id makes a new session, found as any other."""
    m = manager(FakeStore(), session_ttl_s=60)
    s = create(m, session_id="reused")
    s.used_at -= 61
    m.expire()
    assert m.get(create(m, session_id="reused").id).id == "reused"
