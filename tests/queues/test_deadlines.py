"""Deadlines: one reactor timer serves every blocked read's timeout."""

from __future__ import annotations

from twisted.internet.task import Clock

from kestrelpy.queues.deadlines import Deadlines


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
