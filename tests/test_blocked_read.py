"""BlockedRead on a real queue and the server's Deadlines, on a Clock: each wait ends once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import Harness

from kestrelpy.blocked_read import BlockedRead
from kestrelpy.queues.queue import OPEN, TAKE, Item

MakeHarness = Callable[..., Harness]
NOW = 1_700_000_000_000


class Reports:
    """A ReadOwner that records how each wait ended."""

    def __init__(self, h: Harness) -> None:
        self.events: list[tuple[str, Any]] = []
        self.wait = BlockedRead(h.ctx.deadlines, self)

    def item(self, item: Item) -> None:
        self.events.append(("item", item.data))

    def read_timed_out(self, queue: Any, was_monitor: bool) -> None:
        self.events.append(("timeout", (queue.name, was_monitor)))

    def read_queue_deleted(self) -> None:
        self.events.append(("gone", None))


def test_an_item_ends_the_wait_without_a_timeout(kp: MakeHarness) -> None:
    h = kp()
    r = Reports(h)
    queue = h.collection.get_or_create("q")
    r.wait.begin(queue, TAKE, r.item, 500, key=b"q/t=500")
    assert r.wait.waiter is not None and queue.waiters == 1
    h.collection.put("q", 0, 0, b"x", NOW)
    r.wait.end()  # what the session does on delivery
    h.clock.advance(1.0)
    assert r.events == [("item", b"x")]
    assert r.wait.waiter is None and queue.waiters == 0


def test_the_timeout_is_reported_once_and_frees_the_queue(kp: MakeHarness) -> None:
    h = kp()
    r = Reports(h)
    queue = h.collection.get_or_create("q")
    r.wait.begin(queue, TAKE, r.item, 500)
    h.clock.advance(0.499)
    assert r.events == []
    h.clock.advance(0.001)
    assert r.events == [("timeout", ("q", False))]
    assert queue.waiters == 0
    h.collection.put("q", 0, 0, b"x", NOW)  # nobody waits any more: it is queued
    assert queue.items == 1 and r.events == [("timeout", ("q", False))]


def test_a_deleted_queue_ends_the_wait_empty(kp: MakeHarness) -> None:
    h = kp()
    r = Reports(h)
    r.wait.begin(h.collection.get_or_create("q"), TAKE, r.item, 500)
    for waiter in h.collection.delete("q"):
        waiter.on_queue_deleted()
    h.clock.advance(1.0)
    assert r.events == [("gone", None)]


def test_end_before_anything_happens_reports_nothing(kp: MakeHarness) -> None:
    h = kp()
    r = Reports(h)
    queue = h.collection.get_or_create("q")
    r.wait.begin(queue, TAKE, r.item, 500)
    r.wait.end()
    h.clock.advance(1.0)
    h.collection.put("q", 0, 0, b"x", NOW)
    assert r.events == [] and queue.items == 1


def test_a_monitor_waits_again_under_the_same_deadline(kp: MakeHarness) -> None:
    h = kp()
    r = Reports(h)
    queue = h.collection.get_or_create("q")
    r.wait.begin(queue, OPEN, r.item, 1000, monitor_left=2)
    h.clock.advance(0.6)
    h.collection.put("q", 0, 0, b"a", NOW)
    r.wait.monitor_left -= 1
    r.wait.wait_again(OPEN, r.item)
    h.clock.advance(0.4)  # the first deadline, not a fresh second
    assert r.events == [("item", b"a"), ("timeout", ("q", True))]
    assert queue.waiters == 0
