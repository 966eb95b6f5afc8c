"""Deadlines: one reactor timer serves every blocked read's timeout."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pytest import MonkeyPatch
from twisted.internet.task import Clock

from kestrelpy.queues.deadlines import Deadline, Deadlines


def test_fires_in_order_of_due_time_across_lanes() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    deadlines.add(300, lambda: fired.append("300"))
    deadlines.add(100, lambda: fired.append("100"))
    deadlines.add(300, lambda: fired.append("300b"))
    clock.advance(0.099)
    assert fired == []
    clock.advance(0.001)
    assert fired == ["100"]
    clock.advance(0.2)
    assert fired == ["100", "300", "300b"]
    assert deadlines.pending() == 0
    assert clock.getDelayedCalls() == []  # idle: no timer left behind


def test_cancelled_entries_never_fire_and_are_dropped() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[int] = []
    first = deadlines.add(50, lambda: fired.append(1))
    deadlines.add(50, lambda: fired.append(2))
    first.cancel()
    assert not first.active()
    clock.advance(0.05)
    assert fired == [2]
    assert deadlines.pending() == 0


def test_only_one_reactor_timer_for_many_waits() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    entries = [deadlines.add(250, lambda: None) for _ in range(1000)]
    assert len(clock.getDelayedCalls()) == 1
    for entry in entries:
        entry.cancel()
    clock.advance(0.25)
    assert clock.getDelayedCalls() == []
    assert deadlines.pending() == 0


def test_a_sooner_deadline_rearms_the_timer() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    deadlines.add(1000, lambda: fired.append("slow"))
    deadlines.add(10, lambda: fired.append("fast"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.01)
    assert fired == ["fast"]
    clock.advance(0.99)
    assert fired == ["fast", "slow"]


def test_cancelled_long_waits_do_not_accumulate() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    for _ in range(5000):
        deadlines.add(2**31 - 1, lambda: None).cancel()
    assert deadlines.pending() < 2100  # compacted as they pile up, not kept for 24 days
    live = deadlines.add(2**31 - 1, lambda: None)
    assert live.active()


def test_a_timeout_looks_only_at_the_lanes_that_are_due(monkeypatch: MonkeyPatch) -> None:
    """Issue 18, finding 7: 10,000 readers waiting each a different time cost 12 s of CPU,
    because every timeout walked every lane. Counted here as lane heads looked at."""
    looked = 0
    real_active = Deadline.active

    def counted_active(self: Deadline) -> bool:
        nonlocal looked
        looked += 1
        return real_active(self)

    monkeypatch.setattr(Deadline, "active", counted_active)
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[int] = []
    for wait_ms in range(1, 2001):
        deadlines.add(wait_ms, lambda wait_ms=wait_ms: fired.append(wait_ms))
    for _ in range(2001):
        clock.advance(0.001)
    assert fired == list(range(1, 2001))
    assert looked <= 4 * 2000  # a pass over every lane per timeout: about 2,000,000


@given(
    st.lists(
        st.tuples(st.integers(1, 50), st.booleans(), st.integers(0, 30)),
        min_size=1,
        max_size=60,
    )
)
def test_fires_each_live_entry_once_in_due_order(steps: list[tuple[int, bool, int]]) -> None:
    """Entries added with waits in any mix, some cancelled, time moving in between:
    exactly the live ones fire, each once, in order of due time."""
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[int] = []
    due: dict[int, float] = {}
    for index, (wait_ms, cancel, advance_ms) in enumerate(steps):
        entry = deadlines.add(wait_ms, lambda index=index: fired.append(index))
        if cancel:
            entry.cancel()
        else:
            due[index] = clock.seconds() + wait_ms / 1000.0
        clock.advance(advance_ms / 1000.0)
    clock.advance(1.0)
    assert sorted(fired) == sorted(due)
    assert [due[index] for index in fired] == sorted(due.values())
    assert deadlines.pending() == 0
    assert clock.getDelayedCalls() == []
