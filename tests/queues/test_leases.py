"""``open_transaction_timeout`` at the queue level, on explicit millisecond times.

Kestrel 2.4.7: an open item whose lease ran out is given back lazily, by the next
transactional read on its queue, which then reads. ``Holder`` plays the connections that
hold open items (in the server, a session's open reads).
"""

from __future__ import annotations

from memory_store import MemoryStore, new_queue

from kestrelpy.queues.leases import Leases
from kestrelpy.queues.queue import OPEN, Item, Queue

NOW = 1_700_000_000_000  # unix ms
TIMEOUT = 1_000  # ms


class Holder:
    """Connections holding open items; asked to give one back, it aborts it if it holds it."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.held: dict[int, Item] = {}
        self.asked: list[bytes] = []  # payloads it was asked to give back, in order
        self.now = NOW

    def open(self, now_ms: int) -> bytes | None:
        self.now = now_ms
        item = self.queue.open(now_ms)
        if item is None:
            return None
        self.held[item.item_id] = item
        self.queue.lease(item, now_ms, self.give_back)
        return bytes(item.data)

    def close(self, data: bytes) -> None:
        item_id = next(i for i, item in self.held.items() if item.data == data)
        self.queue.close_open(self.held.pop(item_id))

    def give_back(self, item_id: int) -> bool:
        item = self.held.pop(item_id, None)
        if item is None:
            self.asked.append(b"(gone)")
            return False
        self.asked.append(bytes(item.data))
        self.queue.abort_open(item, self.now)
        return True


def queue_with(*payloads: bytes, timeout: int | None = TIMEOUT) -> tuple[Queue, Holder]:
    queue = new_queue(MemoryStore(), open_transaction_timeout=timeout)
    for data in payloads:
        assert queue.put(0, 0, data, NOW)
    return queue, Holder(queue)


def test_a_lease_expires_only_after_its_timeout() -> None:
    queue, holder = queue_with(b"a", b"b")
    assert holder.open(NOW) == b"a"
    assert holder.open(NOW + TIMEOUT - 1) == b"b"
    assert holder.asked == []
    assert holder.open(NOW + TIMEOUT - 1) is None
    assert holder.open(NOW + TIMEOUT) == b"a"  # given back, then read again at once
    assert holder.asked == [b"a"]
    assert (queue.open_transactions, queue.canceled_transactions, queue.items) == (2, 1, 0)


def test_the_next_open_read_first_gives_back_the_oldest_expired_item() -> None:
    queue, holder = queue_with(b"a", b"b", b"c")
    assert holder.open(NOW) == b"a"
    assert holder.open(NOW + 10) == b"b"
    later = NOW + 10 * TIMEOUT  # both leases ran out
    assert holder.open(later) == b"a"  # a, the oldest, went back to the head
    assert holder.asked == [b"a"]
    assert holder.open(later) == b"b"
    assert holder.asked == [b"a", b"b"]
    assert holder.open(later) == b"c"
    assert queue.canceled_transactions == 2


def test_a_lease_whose_holder_no_longer_holds_the_item_is_skipped() -> None:
    queue, holder = queue_with(b"a", b"b")
    assert holder.open(NOW) == b"a"
    assert holder.open(NOW) == b"b"
    holder.close(b"a")
    assert holder.open(NOW + TIMEOUT) == b"b"
    assert holder.asked == [b"(gone)", b"b"]
    assert queue.canceled_transactions == 1


def test_expire_leases_stops_after_the_first_item_given_back() -> None:
    queue, holder = queue_with(b"a", b"b", b"c")
    for _ in range(3):
        holder.open(NOW)
    holder.close(b"a")
    queue.expire_leases(NOW + TIMEOUT)
    assert holder.asked == [b"(gone)", b"b"]  # c's lease is due too, but waits its turn
    assert queue.items == 1
    queue.expire_leases(NOW + TIMEOUT)
    assert holder.asked == [b"(gone)", b"b", b"c"]
    queue.expire_leases(NOW + TIMEOUT)
    assert len(holder.asked) == 3
    assert queue.items == 2


def test_a_plain_take_gives_nothing_back() -> None:
    queue, holder = queue_with(b"a", b"b")
    assert holder.open(NOW) == b"a"
    taken = queue.take(NOW + 10 * TIMEOUT)
    assert taken is not None and taken.data == b"b"
    assert holder.asked == []
    assert queue.open_transactions == 1


def test_without_a_timeout_an_open_item_is_held_for_ever() -> None:
    queue, holder = queue_with(b"a", b"b", timeout=None)
    assert holder.open(NOW) == b"a"
    assert holder.open(NOW + 10**9) == b"b"
    assert holder.asked == []
    assert queue.open_transactions == 2


def test_a_given_back_item_taken_by_a_blocked_open_read_is_leased_again() -> None:
    queue, holder = queue_with(b"a")
    assert holder.open(NOW) == b"a"
    second = Holder(queue)
    later = NOW + TIMEOUT

    def deliver(item: Item) -> None:  # what a session does with an item handed to it
        second.held[item.item_id] = item
        queue.lease(item, later, second.give_back)

    queue.add_waiter(OPEN, deliver, lambda: None)
    queue.expire_leases(later)
    assert holder.asked == [b"a"] and list(second.held) == [0]
    assert second.open(later + TIMEOUT) is not None  # its own lease ran out in turn
    assert second.asked == [b"a"]


# ------------------------------------------------------------- Leases on their own


def test_next_due_is_the_oldest_lease_held() -> None:
    leases = Leases()
    idle = leases.next_due_ms
    assert idle > NOW * 1000
    leases.add(NOW + 5, 1, lambda item_id: True)
    leases.add(NOW + 9, 2, lambda item_id: True)
    assert leases.next_due_ms == NOW + 5
    leases.expire(NOW + 4)
    assert leases.next_due_ms == NOW + 5
    leases.expire(NOW + 5)
    assert leases.next_due_ms == NOW + 9
    leases.expire(NOW + 9)
    assert leases.next_due_ms == idle


def test_leases_not_due_are_not_asked() -> None:
    leases = Leases()
    asked: list[int] = []

    def give_back(item_id: int) -> bool:
        asked.append(item_id)
        return True

    leases.add(NOW + 5, 1, give_back)
    leases.expire(NOW + 4)
    assert asked == []
    leases.expire(NOW + 5)
    assert asked == [1]
