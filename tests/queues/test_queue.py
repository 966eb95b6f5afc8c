"""Queue semantics over a real LMDB store: read-ahead window, expiry, limits, fanout.

Tests drive :class:`~kestrelpy.queues.collection.QueueCollection` and
:class:`~kestrelpy.queues.queue.Queue` directly with explicit millisecond times, so
expiry needs no wall clock. The store commits when the harness clock turns
(``settle``); items can therefore be read both before and after they are committed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_CONFIG, Harness
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from kestrelpy.queues.queue import Queue

MakeHarness = Callable[..., Harness]
NOW = 1_700_000_000_000  # unix ms


def conf(read_ahead_items: int = 4, extra: str = "") -> str:
    return DEFAULT_CONFIG + f"read_ahead_items = {read_ahead_items}\n" + extra


def put_all(h: Harness, name: str, payloads: list[bytes], now: int = NOW) -> None:
    for payload in payloads:
        assert h.collection.put(name, 0, 0, payload, now)


def take_all(queue: Queue, now: int = NOW, window: int | None = None) -> list[bytes]:
    found = []
    while (item := queue.take(now)) is not None:
        found.append(item.data)
        if window is not None:
            assert queue.mem_items <= window
    return found


def payloads(count: int) -> list[bytes]:
    return [b"item-%03d" % i for i in range(count)]


# ------------------------------------------------------------------- read-ahead window


@pytest.mark.parametrize("committed", [False, True])
def test_window_bounds_memory_and_keeps_order(kp: MakeHarness, committed: bool) -> None:
    h = kp(conf(read_ahead_items=4))
    put_all(h, "q", payloads(100))
    queue = h.collection.get("q")
    assert queue is not None
    if committed:
        h.settle()
        assert [r.items for r in h.store.load_queues() if r.name == "q"] == [100]
    assert queue.items == 100
    assert queue.mem_items == 4
    assert queue.bytes == 100 * 8
    assert take_all(queue, window=4) == payloads(100)
    assert queue.items == queue.bytes == queue.mem_items == queue.mem_bytes == 0
    h.run_until_idle()  # removals alone may wait a little for a write to ride along
    assert [r.items for r in h.store.load_queues() if r.name == "q"] == [0]


def test_window_across_partial_commits(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=4))
    put_all(h, "q", payloads(100)[:37])
    h.settle()  # 0..36 on disk
    put_all(h, "q", payloads(100)[37:61])  # 37..60 staged
    queue = h.collection.get("q")
    assert queue is not None
    first = [queue.take(NOW).data for _ in range(10)]  # type: ignore[union-attr]
    h.settle()
    put_all(h, "q", payloads(100)[61:])  # 61..99 staged after a commit
    assert queue.mem_items <= 4
    assert first + take_all(queue, window=4) == payloads(100)


def test_window_interleaved_puts_and_takes(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=4))
    queue = h.collection.get_or_create("q")
    expected = payloads(200)
    taken: list[bytes] = []
    for index, payload in enumerate(expected):
        assert h.collection.put("q", 0, 0, payload, NOW)
        if index % 3 == 0:
            taken.append(queue.take(NOW).data)  # type: ignore[union-attr]
        if index % 7 == 0:
            h.settle()
        assert queue.mem_items <= 4
    taken += take_all(queue, window=4)
    assert taken == expected


def test_window_after_restart(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=4))
    put_all(h, "q", payloads(100))
    h.restart()
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.items == 100
    assert queue.mem_items <= 4
    assert take_all(queue, window=4) == payloads(100)


def test_window_with_zero_byte_budget_still_delivers(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=4, extra="read_ahead_size = 0\n"))
    put_all(h, "q", payloads(20))
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.mem_items == 0
    assert take_all(queue) == payloads(20)


def test_open_and_abort_with_a_small_window(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=2))
    put_all(h, "q", payloads(10))
    queue = h.collection.get("q")
    assert queue is not None
    opened = [queue.open(NOW) for _ in range(5)]
    assert [item.data for item in opened if item] == payloads(10)[:5]
    assert queue.items == 5 and queue.open_transactions == 5
    for item in reversed(opened):  # newest first: they end up in opening order
        assert item is not None
        queue.abort_open(item, NOW)
    assert queue.canceled_transactions == 5
    assert queue.items == 10
    assert take_all(queue) == payloads(10)


def test_peek_does_not_remove(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=1))
    put_all(h, "q", payloads(3))
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.peek(NOW).data == queue.peek(NOW).data == b"item-000"  # type: ignore[union-attr]
    assert queue.items == 3
    assert take_all(queue) == payloads(3)
    assert queue.peek(NOW) is None


# ------------------------------------------------------------------------------ expiry


def test_expired_items_are_never_returned(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=4))
    for index, payload in enumerate(payloads(40)):
        exptime = 10 if index % 2 else 0  # odd items expire 10 s after NOW
        assert h.collection.put("q", 0, exptime, payload, NOW)
    h.settle()
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.take(NOW + 9_999).data == b"item-000"  # type: ignore[union-attr]
    assert queue.take(NOW + 9_999).data == b"item-001"  # type: ignore[union-attr]
    later = NOW + 10_000
    assert take_all(queue, later) == payloads(40)[2::2]
    assert queue.expired_items == 19
    assert queue.items == 0


def test_expiry_on_open_and_peek(kp: MakeHarness) -> None:
    h = kp()
    h.collection.put("q", 0, 1, b"short", NOW)
    h.collection.put("q", 0, 0, b"long", NOW)
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.peek(NOW + 1_000).data == b"long"  # type: ignore[union-attr]
    assert queue.open(NOW + 1_000).data == b"long"  # type: ignore[union-attr]
    assert queue.expired_items == 1


def test_negative_and_absolute_exptime(kp: MakeHarness) -> None:
    h = kp()
    h.collection.put("q", 0, -1, b"already", NOW)
    h.collection.put("q", 0, NOW // 1000 + 5, b"absolute", NOW)  # >= 1,000,000: unix s
    h.collection.put("q", 0, 999_999, b"relative", NOW)  # < 1,000,000: relative s
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.take(NOW).data == b"absolute"  # type: ignore[union-attr]
    assert queue.expired_items == 1
    assert queue.peek(NOW + 5_000).data == b"relative"  # type: ignore[union-attr]
    assert queue.peek(NOW + 999_999_000) is None


def test_max_age(kp: MakeHarness) -> None:
    h = kp(conf(extra='[queues."q"]\nmax_age = "2s"\n'))
    h.collection.put("q", 0, 0, b"a", NOW)
    h.collection.put("q", 0, 1, b"b", NOW + 500)  # its own expiry is earlier: NOW + 1500
    h.collection.put("q", 0, 0, b"c", NOW + 1_000)
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.peek(NOW + 1_999).data == b"a"  # type: ignore[union-attr]
    assert take_all(queue, NOW + 2_000) == [b"c"]
    assert queue.expired_items == 2


def test_expire_sweep_and_expire_to_queue(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=2, extra='[queues."q"]\nexpire_to_queue = "dead"\n'))
    for payload in payloads(5):
        h.collection.put("q", 0, 1, payload, NOW)
    h.collection.put("q", 0, 0, b"fresh", NOW)
    assert h.collection.flush_all_expired(NOW + 999) == 0
    assert h.collection.flush_expired("q", NOW + 1_000) == 5
    assert h.collection.flush_expired("missing", NOW) == 0
    assert h.collection.get("missing") is None
    dead = h.collection.get("dead")
    assert dead is not None
    assert take_all(dead, NOW + 10**9) == payloads(5)  # moved without expiry
    assert take_all(h.collection.get("q")) == [b"fresh"]  # type: ignore[arg-type]


def test_max_expire_sweep(kp: MakeHarness) -> None:
    h = kp(conf(extra="[defaults]\nmax_expire_sweep = 2\n"))
    for payload in payloads(5):
        h.collection.put("q", 0, 1, payload, NOW)
    assert h.collection.flush_expired("q", NOW + 1_000) == 2
    assert h.collection.flush_all_expired(NOW + 1_000) == 2
    assert h.collection.get("q").items == 1  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ limits


def test_max_items_refuses(kp: MakeHarness) -> None:
    h = kp(conf(extra='[queues."q"]\nmax_items = 3\n'))
    assert [h.collection.put("q", 0, 0, p, NOW) for p in payloads(5)] == [True] * 3 + [False] * 2
    queue = h.collection.get("q")
    assert queue is not None
    assert (queue.items, queue.discarded, queue.total_items) == (3, 0, 3)
    queue.take(NOW)
    assert h.collection.put("q", 0, 0, b"again", NOW)
    assert take_all(queue) == [*payloads(3)[1:], b"again"]


def test_max_size_refuses(kp: MakeHarness) -> None:
    h = kp(conf(extra='[queues."q"]\nmax_size = 10\n'))
    assert h.collection.put("q", 0, 0, b"1234", NOW)
    assert h.collection.put("q", 0, 0, b"123456", NOW)  # exactly 10 bytes
    assert not h.collection.put("q", 0, 0, b"1", NOW)
    assert h.collection.get("q").bytes == 10  # type: ignore[union-attr]


def test_max_item_size(kp: MakeHarness) -> None:
    h = kp(conf(extra='[queues."q"]\nmax_item_size = 3\n'))
    assert h.collection.put("q", 0, 0, b"123", NOW)
    assert not h.collection.put("q", 0, 0, b"1234", NOW)


def test_discard_old_when_full_by_count(kp: MakeHarness) -> None:
    h = kp(conf(4, '[queues."q"]\nmax_items = 10\ndiscard_old_when_full = true\n'))
    put_all(h, "q", payloads(25))
    queue = h.collection.get("q")
    assert queue is not None
    assert (queue.items, queue.discarded) == (10, 15)
    h.restart()
    assert take_all(h.collection.get("q")) == payloads(25)[15:]  # type: ignore[arg-type]


def test_discard_old_when_full_by_size(kp: MakeHarness) -> None:
    h = kp(conf(2, '[queues."q"]\nmax_size = 10\ndiscard_old_when_full = true\n'))
    for payload in (b"aaaa", b"bbbb", b"cc", b"dddddd"):
        assert h.collection.put("q", 0, 0, payload, NOW)
    queue = h.collection.get("q")
    assert queue is not None
    assert (queue.discarded, queue.bytes) == (2, 8)
    assert take_all(queue) == [b"cc", b"dddddd"]


def test_item_that_can_never_fit_discards_nothing(kp: MakeHarness) -> None:
    # A refused set must not have emptied the queue on its way to NOT_STORED.
    h = kp(conf(2, '[queues."q"]\nmax_size = 10\ndiscard_old_when_full = true\n'))
    put_all(h, "q", [b"aaaa", b"bbbb"])
    assert not h.collection.put("q", 0, 0, b"x" * 11, NOW)
    queue = h.collection.get("q")
    assert queue is not None
    assert (queue.items, queue.discarded) == (2, 0)
    assert take_all(queue) == [b"aaaa", b"bbbb"]


# ------------------------------------------------------------------------------- flush


def test_flush(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=4))
    put_all(h, "q", payloads(5))
    h.settle()
    put_all(h, "q", payloads(10)[5:])  # some committed, some staged
    h.collection.flush("q")
    queue = h.collection.get("q")
    assert queue is not None
    assert (queue.items, queue.bytes, queue.mem_items, queue.total_flushes) == (0, 0, 0, 1)
    assert queue.take(NOW) is None
    put_all(h, "q", [b"after"])
    h.restart()
    assert take_all(h.collection.get("q")) == [b"after"]  # type: ignore[arg-type]


def test_flush_keeps_open_items(kp: MakeHarness) -> None:
    # Queue.flush: "Remove every waiting item (open items are untouched)". An open item is
    # still owed to its reader: aborted, it is back; after a restart, it is redelivered.
    h = kp()
    put_all(h, "q", [b"open", b"waiting"])
    h.settle()
    queue = h.collection.get("q")
    assert queue is not None
    held = queue.open(NOW)
    assert held is not None
    h.collection.flush("q")
    h.settle()
    assert queue.open_transactions == 1
    h.restart()
    assert take_all(h.collection.get("q")) == [b"open"]  # type: ignore[arg-type]


def test_flush_then_abort_survives_restart(kp: MakeHarness) -> None:
    h = kp()
    put_all(h, "q", [b"open"])
    queue = h.collection.get("q")
    assert queue is not None
    held = queue.open(NOW)
    assert held is not None
    h.collection.flush("q")
    queue.abort_open(held, NOW)
    assert queue.items == 1
    h.restart()
    assert h.collection.get("q").items == 1  # type: ignore[union-attr]
    assert take_all(h.collection.get("q")) == [b"open"]  # type: ignore[arg-type]


def test_flush_all(kp: MakeHarness) -> None:
    h = kp()
    put_all(h, "a", [b"1"])
    put_all(h, "b", [b"2"])
    h.collection.flush_all()
    h.restart()
    assert [(q.name, q.items) for q in h.collection.queues()] == [("a", 0), ("b", 0)]


# ------------------------------------------------------------------------------ fanout


def test_fanout_to_existing_children(kp: MakeHarness) -> None:
    h = kp()
    put_all(h, "p", [b"before"])  # no children yet: no back-fill later
    h.collection.get_or_create("p+a")
    h.collection.get_or_create("p+b")
    assert h.collection.children_of("p") == ["p+a", "p+b"]
    put_all(h, "p", [b"x", b"y"])
    assert take_all(h.collection.get("p+a")) == [b"x", b"y"]  # type: ignore[arg-type]
    assert take_all(h.collection.get("p")) == [b"before", b"x", b"y"]  # type: ignore[arg-type]
    assert take_all(h.collection.get("p+b")) == [b"x", b"y"]  # type: ignore[arg-type]


def test_fanout_children_come_back_after_restart(kp: MakeHarness) -> None:
    h = kp()
    h.collection.get_or_create("p+a")
    h.restart()
    put_all(h, "p", [b"x"])
    assert take_all(h.collection.get("p+a")) == [b"x"]  # type: ignore[arg-type]


def test_deleted_child_no_longer_receives(kp: MakeHarness) -> None:
    h = kp()
    h.collection.get_or_create("p+a")
    h.collection.get_or_create("p+b")
    h.collection.delete("p+a")
    put_all(h, "p", [b"x"])
    assert h.collection.children_of("p") == ["p+b"]
    assert h.collection.get("p+a") is None


def test_fanout_only_parent_keeps_nothing(kp: MakeHarness) -> None:
    h = kp(conf(extra='[queues."p"]\nfanout_only = true\n'))
    h.collection.get_or_create("p+a")
    assert h.collection.put("p", 0, 0, b"x", NOW)
    assert h.collection.get("p").items == 0  # type: ignore[union-attr]
    assert take_all(h.collection.get("p+a")) == [b"x"]  # type: ignore[arg-type]


def test_alias_puts_to_every_destination(kp: MakeHarness) -> None:
    h = kp(conf(extra='[aliases."al"]\ndestination_queues = ["x", "y"]\n'))
    assert h.collection.put("al", 0, 0, b"m", NOW)
    assert h.collection.get("al") is None
    assert take_all(h.collection.get("x")) == [b"m"]  # type: ignore[arg-type]
    assert take_all(h.collection.get("y")) == [b"m"]  # type: ignore[arg-type]
    assert (h.collection.alias_put_items["al"], h.collection.alias_put_bytes["al"]) == (1, 1)


def test_delete_drops_items_and_a_new_queue_starts_empty(kp: MakeHarness) -> None:
    h = kp(conf(read_ahead_items=2))
    put_all(h, "q", payloads(10))
    h.settle()
    h.collection.delete("q")
    assert h.collection.get("q") is None
    put_all(h, "q", [b"new"])
    h.restart()
    assert take_all(h.collection.get("q")) == [b"new"]  # type: ignore[arg-type]


def test_max_queue_age_deletes_only_empty_old_queues(kp: MakeHarness) -> None:
    h = kp(conf(extra='[defaults]\nmax_queue_age = "10s"\n'))
    for name in ("empty", "busy", "held"):
        h.collection.get_or_create(name)
    put_all(h, "busy", [b"x"])
    put_all(h, "held", [b"y"])
    held = h.collection.get("held")
    assert held is not None and held.open(NOW) is not None
    created_ms = h.collection.get("empty").create_time * 1000  # type: ignore[union-attr]
    assert h.collection.delete_aged_out_queues(created_ms + 9_000) == []
    assert h.collection.names() == ["busy", "empty", "held"]
    h.collection.delete_aged_out_queues(created_ms + 10_000)
    assert h.collection.names() == ["busy", "held"]
    h.restart()
    assert h.collection.names() == ["busy", "held"]


# ------------------------------------------------------------------------ state machine


class QueueMachine(RuleBasedStateMachine):
    """A queue against a list model across open/close/abort/peek/flush/expiry/restart.

    Model: ``waiting`` (in delivery order) and ``opened`` entries ``(seq, data, flags,
    expiry_ms)``; ``seq`` is the put order, which is also store-key order, so after a
    restart every stored entry (waiting or open) comes back sorted by ``seq``.
    """

    opened_items = Bundle("opened_items")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="kp-machine-"))
        self.h = Harness(self.root, conf(read_ahead_items=3))
        self.now = NOW
        self.seq = 0
        self.waiting: list[tuple[int, bytes, int, int]] = []
        self.opened: dict[int, tuple[tuple[int, bytes, int, int], Any]] = {}
        self.generation = 0  # bumped by restart: handles from before are stale

    def teardown(self) -> None:
        self.h.close_all()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def queue(self) -> Queue:
        return self.h.collection.get_or_create("q")

    def _drop_expired_head(self) -> None:
        while self.waiting and self.waiting[0][3] and self.waiting[0][3] <= self.now:
            self.waiting.pop(0)

    def _check(self, item: Any, entry: tuple[int, bytes, int, int] | None) -> None:
        if entry is None:
            assert item is None
        else:
            assert item is not None
            assert (item.data, item.flags) == (entry[1], entry[2])

    @rule(flags=st.integers(0, 2**31 - 1), exptime=st.sampled_from([0, 0, 0, 1, 3]))
    def put(self, flags: int, exptime: int) -> None:
        data = b"m%d" % self.seq
        assert self.h.collection.put("q", flags, exptime, data, self.now)
        expiry = self.now + exptime * 1000 if exptime else 0
        self.waiting.append((self.seq, data, flags, expiry))
        self.seq += 1

    @rule()
    def take(self) -> None:
        item = self.queue.take(self.now)
        self._drop_expired_head()
        self._check(item, self.waiting.pop(0) if self.waiting else None)

    @rule()
    def peek(self) -> None:
        item = self.queue.peek(self.now)
        self._drop_expired_head()
        self._check(item, self.waiting[0] if self.waiting else None)

    @rule(target=opened_items)
    def open(self) -> Any:
        item = self.queue.open(self.now)
        self._drop_expired_head()
        entry = self.waiting.pop(0) if self.waiting else None
        self._check(item, entry)
        if entry is None:
            return None
        self.opened[entry[0]] = (entry, item)
        return (self.generation, entry[0])

    @rule(handle=consumes(opened_items))
    def close(self, handle: tuple[int, int] | None) -> None:
        if handle is None or handle[0] != self.generation:
            return
        _entry, item = self.opened.pop(handle[1])
        self.queue.close_open(item)

    @rule(handle=consumes(opened_items))
    def abort(self, handle: tuple[int, int] | None) -> None:
        if handle is None or handle[0] != self.generation:
            return
        entry, item = self.opened.pop(handle[1])
        self.queue.abort_open(item, self.now)
        self.waiting.insert(0, entry)

    @rule()
    def flush(self) -> None:
        self.h.collection.flush("q")
        self.waiting.clear()

    @rule(ms=st.integers(0, 2_500))
    def advance_time(self, ms: int) -> None:
        self.now += ms

    @rule()
    def end_turn(self) -> None:
        self.h.settle()

    @rule()
    def commit_everything(self) -> None:
        self.h.run_until_idle()

    @precondition(lambda self: self.seq > 0)
    @rule()
    def restart(self) -> None:
        self.h.restart()
        self.waiting = sorted(self.waiting + [entry for entry, _ in self.opened.values()])
        self.opened.clear()
        self.generation += 1

    @invariant()
    def counters_match(self) -> None:
        queue = self.h.collection.get("q")
        if queue is None:
            assert not self.waiting and not self.opened
            return
        assert queue.items == len(self.waiting)
        assert queue.bytes == sum(len(entry[1]) for entry in self.waiting)
        assert queue.open_transactions == len(self.opened)
        assert 0 <= queue.mem_items <= queue.items


class QueueMachineFlushingOnlyWhenNothingIsOpen(QueueMachine):
    """The same machine with ``flush`` only while no item is open.

    ``test_flush_keeps_open_items`` pins flush-with-open-items on its own; this variant
    keeps every other interaction covered whatever the state of that one.
    """

    @precondition(lambda self: not self.opened)
    @rule()
    def flush(self) -> None:
        super().flush()


MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
QueueMachine.TestCase.settings = MACHINE_SETTINGS
QueueMachineFlushingOnlyWhenNothingIsOpen.TestCase.settings = MACHINE_SETTINGS
TestQueueMachine = QueueMachine.TestCase
TestQueueMachineFlushingOnlyWhenNothingIsOpen = QueueMachineFlushingOnlyWhenNothingIsOpen.TestCase
