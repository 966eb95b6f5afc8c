"""WaiterLine with plain callbacks, then a Queue handing items to its blocked readers."""

from __future__ import annotations

from memory_store import MemoryStore, new_queue

from kestrelpy.queues.queue import Queue
from kestrelpy.queues.waiters import OPEN, PEEK, TAKE, Waiter, WaiterLine
from kestrelpy.storage.layout import StoredItem

ITEM = StoredItem(0, 0, 0, 0, b"x")
NOW = 1_700_000_000_000


class Reader:
    """A blocked reader's callbacks, recording what happened to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[StoredItem] = []
        self.deleted = False

    def deliver(self, item: StoredItem) -> None:
        self.got.append(item)

    def on_queue_deleted(self) -> None:
        self.deleted = True


def join(line: WaiterLine, name: str, mode: int = TAKE) -> tuple[Waiter, Reader]:
    reader = Reader(name)
    return line.join(mode, reader.deliver, reader.on_queue_deleted), reader


def taker_name(line: WaiterLine, readers: dict[Waiter, Reader]) -> str | None:
    waiter = line.next_taker(ITEM)
    return None if waiter is None else readers[waiter].name


# ------------------------------------------------------------------------ the line


def test_readers_are_served_in_arrival_order() -> None:
    line = WaiterLine()
    readers = dict(join(line, name) for name in ("a", "b", "c"))
    assert line.count == 3
    assert [taker_name(line, readers) for _ in range(4)] == ["a", "b", "c", None]
    assert line.count == 0
    assert not any(waiter.active for waiter in readers)


def test_the_taker_is_returned_undelivered() -> None:
    line = WaiterLine()
    waiter, reader = join(line, "a", OPEN)
    assert line.next_taker(ITEM) is waiter
    assert reader.got == []  # the queue accounts for the item, then delivers


def test_peekers_ahead_are_shown_the_item_and_leave() -> None:
    line = WaiterLine()
    _peeker, peek_reader = join(line, "p", PEEK)
    taker, _reader = join(line, "t", OPEN)
    _late_peeker, late_reader = join(line, "late", PEEK)
    assert line.next_taker(ITEM) is taker
    assert peek_reader.got == [ITEM]
    assert late_reader.got == []  # behind the taker: still waiting
    assert line.count == 1


def test_only_peekers_means_nobody_takes_it() -> None:
    line = WaiterLine()
    peekers = [join(line, name, PEEK)[1] for name in ("p", "q")]
    assert line.next_taker(ITEM) is None
    assert [reader.got for reader in peekers] == [[ITEM], [ITEM]]
    assert line.count == 0


def test_a_reader_who_left_is_skipped_and_leaving_twice_is_harmless() -> None:
    line = WaiterLine()
    readers = dict(join(line, name) for name in ("a", "b"))
    first = next(iter(readers))
    line.leave(first)
    line.leave(first)
    assert line.count == 1
    assert taker_name(line, readers) == "b"
    assert line.count == 0


def test_leaving_after_being_served_changes_nothing() -> None:
    line = WaiterLine()
    served, _reader = join(line, "a")
    join(line, "b")
    assert line.next_taker(ITEM) is served
    line.leave(served)  # the timeout raced the delivery
    assert line.count == 1


def test_a_flood_of_leavers_keeps_the_order_of_those_still_waiting() -> None:
    line = WaiterLine()
    readers = dict(join(line, f"r{i:03d}") for i in range(300))
    for waiter, reader in readers.items():
        if int(reader.name[1:]) % 3:
            line.leave(waiter)  # compacts along the way
    assert line.count == 100
    served = [taker_name(line, readers) for _ in range(101)]
    assert served == [f"r{i:03d}" for i in range(0, 300, 3)] + [None]


def test_when_the_last_reader_leaves_the_line_is_empty() -> None:
    line = WaiterLine()
    readers = dict(join(line, name) for name in ("a", "b"))
    for waiter in readers:
        line.leave(waiter)
    assert line.count == 0
    _waiter, reader = join(line, "c")
    assert line.next_taker(ITEM) is not None and line.count == 0
    assert reader.got == []


def test_release_all_returns_the_readers_still_waiting_in_order() -> None:
    line = WaiterLine()
    readers = dict(join(line, name) for name in ("a", "b", "c"))
    gone = list(readers)[1]
    line.leave(gone)
    released = line.release_all()
    assert [readers[waiter].name for waiter in released] == ["a", "c"]
    assert not any(waiter.active for waiter in released)
    assert line.count == 0
    line.leave(released[0])  # a timeout after the release
    assert line.count == 0
    assert line.next_taker(ITEM) is None


# --------------------------------------------------------- a queue and its readers


def blocked(mode: int, *payloads: bytes) -> tuple[MemoryStore, Queue, Reader, Waiter]:
    """A queue holding ``payloads``, then one reader blocked on it in ``mode``."""
    store = MemoryStore()
    queue = new_queue(store)
    for data in payloads:
        assert queue.put(0, 0, data, NOW)
    reader = Reader("r")
    waiter = queue.add_waiter(mode, reader.deliver, reader.on_queue_deleted)
    return store, queue, reader, waiter


def test_a_put_handed_to_a_blocked_reader_is_never_stored() -> None:
    store, queue, reader, _waiter = blocked(TAKE)
    assert queue.waiters == 1
    assert queue.put(0, 0, b"x", NOW)
    assert [item.data for item in reader.got] == [b"x"]
    assert store.calls == []
    assert (queue.items, queue.waiters, queue.total_items) == (0, 0, 1)


def test_a_put_handed_to_a_blocked_open_read_is_stored_and_open() -> None:
    store, queue, reader, _waiter = blocked(OPEN)
    assert queue.put(0, 0, b"x", NOW)
    assert store.written("put") == [(1, 0)]
    assert (queue.items, queue.open_transactions, queue.transactions) == (0, 1, 1)
    queue.close_open(reader.got[0])
    assert store.written("delete") == [(1, 0)]
    assert queue.open_transactions == 0


def test_a_peeking_reader_sees_the_put_and_it_still_waits() -> None:
    store, queue, reader, _waiter = blocked(PEEK)
    assert queue.put(0, 0, b"x", NOW)
    assert [item.data for item in reader.got] == [b"x"]
    assert queue.items == 1
    assert store.written("put") == [(1, 0)]


def test_an_aborted_item_goes_to_a_blocked_reader_first() -> None:
    store = MemoryStore()
    queue = new_queue(store)
    assert queue.put(0, 0, b"x", NOW)
    opened = queue.open(NOW)
    assert opened is not None
    reader = Reader("r")
    queue.add_waiter(TAKE, reader.deliver, reader.on_queue_deleted)
    queue.abort_open(opened, NOW)
    assert reader.got == [opened]
    assert store.written("delete") == [(1, 0)]  # taken for good
    assert (queue.items, queue.open_transactions, queue.canceled_transactions) == (0, 0, 1)


def test_a_reader_who_left_gets_nothing() -> None:
    _store, queue, reader, waiter = blocked(TAKE)
    queue.remove_waiter(waiter)
    assert queue.put(0, 0, b"x", NOW)
    assert reader.got == []
    assert queue.items == 1


def test_release_waiters_hands_the_readers_to_the_caller() -> None:
    _store, queue, reader, waiter = blocked(TAKE)
    assert queue.release_waiters() == [waiter]
    assert queue.waiters == 0
    waiter.on_queue_deleted()
    assert reader.deleted
