"""A session whose checkpoint can't be written never stops the others from being written: at a
checkpoint round, at eviction and at shutdown (the session manager with a fake store, no gRPC)."""

from __future__ import annotations

import pytest

import rnnbuilder as rb
from rnnbuilder import spec
from server import convert
from server import operations as ops
from server.errors import InvalidRequest
from tests.server.test_manager import FakeStore, create, inputs, manager


class FailingStore(FakeStore):
    """A store whose writes of the sessions in ``failing`` raise, as a full disk or an unstorable session would."""

    def __init__(self):
        super().__init__()
        self.failing: set[str] = set()

    def write(self, session_id: str, *rest) -> None:
        if session_id in self.failing:
            raise OSError(28, "No space left on device")
        super().write(session_id, *rest)


def stepped_pair():
    """A manager with two sessions stepped since their checkpoint; the first one's writes fail."""
    store = FailingStore()
    m = manager(store)
    bad, good = create(m), create(m)
    for s in (bad, good):
        ops.run(m, s, inputs(3), [])
    store.failing.add(bad.id)
    return store, m, bad, good


def test_a_checkpoint_round_writes_the_others_and_counts_the_failure():
    """checkpoint_all writes every other changed session; the failure is counted, and its session stays in memory."""
    store, m, bad, good = stepped_pair()
    assert m.checkpoint_all() == 1
    assert store.snapshots[good.key].timesteps == 3
    assert m.checkpoint_failures == 1 and bad.resident and bad.dirty


def test_shutdown_hands_over_the_others_past_a_failing_session():
    """hand_over and end_hand_over write and free the other sessions; the failing one stays, counted."""
    store, m, bad, good = stepped_pair()
    m.begin_hand_over()
    assert m.hand_over(0) == 1 and m.end_hand_over() == 0
    assert store.snapshots[good.key].timesteps == 3 and not good.resident
    assert bad.resident and m.checkpoint_failures == 3  # each try counts: hand_over's two passes, end_hand_over


def test_eviction_keeps_a_session_whose_checkpoint_fails():
    """evict_idle frees the others; a session it can't write stays in memory with its state."""
    store, m, bad, good = stepped_pair()
    assert m.evict_idle(0) == 1
    assert not good.resident and bad.resident
    assert ops.run(m, bad, inputs(1), []).output.shape[0] == 1


def test_a_new_session_that_cannot_be_written_leaves_nothing_behind():
    """A creation whose first checkpoint fails raises, and no session remains in memory or the store."""
    store = FailingStore()
    m = manager(store)
    store.failing.add("doomed")
    with pytest.raises(OSError):
        create(m, session_id="doomed")
    assert m.list() == [] and store.snapshots == {}


def test_a_network_too_deep_to_describe_is_refused_before_it_is_built():
    """With the wire's check, a network whose description can't be listed or stored is refused; nothing is kept."""
    m = manager(FailingStore(), describable=convert.describable)
    factory = rb.snn.LIF()
    for _ in range(95):
        factory = rb.Sequential(factory)
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        m.create(spec.to_spec(factory), (3,), 1, 0)
    assert m.list() == []
