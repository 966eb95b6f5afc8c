"""ReadAheadWindow on a plain in-memory store: memory bounds, spill, refill, FIFO order."""

from __future__ import annotations

from memory_store import MemoryStore

from kestrelpy.payload import LARGE_ITEM
from kestrelpy.queues.window import CacheBudget, ReadAheadWindow
from kestrelpy.storage.layout import StoredItem

QID = 7


def new_window(
    store: MemoryStore,
    max_items: int = 4,
    budget: CacheBudget | None = None,
    max_bytes: int = 1 << 30,
    **ids: int,
) -> ReadAheadWindow:
    return ReadAheadWindow(store, QID, budget or CacheBudget(1 << 30), max_items, max_bytes, **ids)


def put(window: ReadAheadWindow, store: MemoryStore, data: bytes, qid: int = QID) -> StoredItem:
    """What Queue.put does for an item that waits: next id, store, window."""
    item_id = window.next_id
    window.next_id = item_id + 1
    item = StoredItem(item_id, 0, 0, 0, data)
    store.put(qid, item_id, 0, 0, 0, data)
    window.push(item, spill=True)
    return item


def skip_id(window: ReadAheadWindow) -> int:
    """What Queue.put does for an item handed straight to a reader: an id, nothing stored."""
    window.next_id += 1
    return window.next_id - 1


def drain(window: ReadAheadWindow) -> list[bytes]:
    found = []
    while (item := window.pop()) is not None:
        found.append(bytes(item.data))
    return found


def payloads(count: int) -> list[bytes]:
    return [b"item-%03d" % i for i in range(count)]


def test_keeps_the_oldest_in_memory_and_reads_the_rest_back_in_order() -> None:
    store, budget = MemoryStore(), CacheBudget(1 << 30)
    window = new_window(store, max_items=4, budget=budget)
    for data in payloads(10):
        put(window, store, data)
    assert (len(window), window.mem_bytes, budget.used) == (4, 32, 32)
    assert store.reads == 0
    assert drain(window) == payloads(10)
    assert (len(window), window.mem_bytes, budget.used) == (0, 0, 0)
    assert store.reads == 2  # two refills of four, then two; the last read found the end
    assert window.first() is None


def test_a_window_never_holds_more_than_its_items_while_draining() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=3)
    for data in payloads(20):
        put(window, store, data)
    taken = []
    while (item := window.pop()) is not None:
        taken.append(bytes(item.data))
        assert len(window) <= 3
    assert taken == payloads(20)


def test_the_byte_budget_is_shared_by_every_window() -> None:
    store, budget = MemoryStore(), CacheBudget(10)
    first = new_window(store, max_items=100, budget=budget)
    second = ReadAheadWindow(store, QID + 1, budget, 100, 1 << 30)
    for data in (b"aaaa", b"bbbb"):
        put(first, store, data)
    put(second, store, b"cccc", QID + 1)
    assert budget.used == 8  # the second window's item did not fit: it waits on disk
    assert (len(first), len(second)) == (2, 0)
    assert drain(second) == [b"cccc"]
    assert drain(first) == [b"aaaa", b"bbbb"]
    assert budget.used == 0


def test_max_memory_size_bounds_one_queue_and_a_reload_may_change_it() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=100, max_bytes=20)  # payloads are 8 bytes each
    for data in payloads(5):
        put(window, store, data)
    assert (len(window), window.mem_bytes) == (2, 16)
    assert window.pop() is not None and window.pop() is not None
    assert (len(window), window.mem_bytes) == (0, 0)
    assert window.first() is not None  # a refill reads until 20 bytes are reached
    assert (len(window), window.mem_bytes) == (3, 24)  # (as the budget: the last may cross)
    window.max_bytes = 1  # smaller than any item: still one at a time, never stuck
    assert drain(window) == payloads(5)[2:]


def test_a_large_item_waits_in_memory_only_when_next_in_line() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=10)
    put(window, store, b"small")
    put(window, store, b"L" * (LARGE_ITEM + 1))
    assert len(window) == 1  # the large one waits on disk behind the small one
    assert window.pop() is not None
    large = window.pop()
    assert large is not None and len(large.data) == LARGE_ITEM + 1

    put(window, store, b"L" * (LARGE_ITEM + 1))  # nothing ahead of it: kept in memory
    assert len(window) == 1
    put(window, store, b"L" * LARGE_ITEM)  # not above the threshold: small
    assert len(window) == 2


def test_a_memory_only_queue_keeps_everything_in_memory() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=2, budget=CacheBudget(0))
    for item_id, data in enumerate(payloads(5)):
        window.next_id = item_id + 1
        window.push(StoredItem(item_id, 0, 0, 0, data), spill=False)
    assert len(window) == 5
    assert drain(window) == payloads(5)
    assert store.reads == 0


def test_items_given_back_wait_ahead_of_all_others_in_their_order() -> None:
    store, budget = MemoryStore(), CacheBudget(1 << 30)
    window = new_window(store, max_items=2, budget=budget)
    for data in payloads(4):
        put(window, store, data)
    first, second = window.pop(), window.pop()
    assert first is not None and second is not None
    window.push_front([first, second])
    assert (len(window), budget.used) == (2, 16)
    assert drain(window) == payloads(4)


def test_a_refill_skips_ids_that_never_reached_the_store() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=1)
    put(window, store, b"a")  # in memory
    put(window, store, b"b")  # the window is full: on disk from here on
    skip_id(window)  # handed straight to a reader
    put(window, store, b"c")
    assert len(window) == 1
    assert drain(window) == [b"a", b"b", b"c"]
    reads = store.reads
    put(window, store, b"d")  # nothing left on disk: memory again
    assert len(window) == 1
    assert drain(window) == [b"d"]
    assert store.reads == reads


def test_a_refill_that_finds_nothing_ends_the_disk_range() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=1)
    put(window, store, b"a")
    spilled = put(window, store, b"b")
    store.delete(QID, spilled.item_id, 1)  # removed before it was read back
    assert drain(window) == [b"a"]
    reads = store.reads
    assert window.first() is None
    assert store.reads == reads  # the range is known to be empty: no more reads


def test_a_window_over_stored_items_reads_them_on_first_use() -> None:
    store = MemoryStore()
    for item_id in range(5, 9):
        store.put(QID, item_id, 0, 0, 0, b"%d" % item_id)
    window = new_window(store, head_id=5, tail_id=9)
    assert (len(window), window.next_id) == (0, 9)
    first = window.first()
    assert first is not None and first.item_id == 5
    assert drain(window) == [b"5", b"6", b"7", b"8"]


def test_drop_all_removes_memory_and_disk_items_from_the_store() -> None:
    store, budget = MemoryStore(), CacheBudget(1 << 30)
    window = new_window(store, max_items=2, budget=budget)
    for data in payloads(5):
        put(window, store, data)
    window.drop_all(from_store=True)
    assert store.written("delete") == [(QID, 0), (QID, 1)]
    assert store.written("truncate") == [(QID, 2, 5)]
    assert (len(window), budget.used, window.first()) == (0, 0, None)
    put(window, store, b"after")
    assert len(window) == 1


def test_drop_all_of_a_memory_only_queue_leaves_the_store_alone() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=2)
    window.next_id = 1
    window.push(StoredItem(0, 0, 0, 0, b"x"), spill=False)
    window.drop_all(from_store=False)
    assert store.calls == []
    assert window.pop() is None


def test_forget_gives_the_budget_back() -> None:
    store, budget = MemoryStore(), CacheBudget(1 << 30)
    window = new_window(store, budget=budget)
    put(window, store, b"abc")
    window.forget()
    assert (len(window), window.mem_bytes, budget.used) == (0, 0, 0)


def test_forget_items_counts_only_those_still_waiting() -> None:
    store, budget = MemoryStore(), CacheBudget(1 << 30)
    window = new_window(store, max_items=2, budget=budget)
    for data in payloads(5):  # 0 and 1 in memory, 2..4 on disk
        put(window, store, data)
    assert window.pop() is not None  # 0 left the window
    assert window.forget_items({0: 8, 1: 8, 3: 8}) == (2, 16)  # 1 in memory, 3 on disk
    assert (len(window), budget.used) == (0, 0)
    store.delete(QID, 3, 8)  # the store never had it
    assert drain(window) == [b"item-002", b"item-004"]


def test_peek_reads_past_memory_without_filling_the_window() -> None:
    store = MemoryStore()
    window = new_window(store, max_items=2)
    for data in payloads(5):
        put(window, store, data)
    assert len(window) == 2
    assert [bytes(item.data) for item in window.peek(4)] == payloads(4)
    assert [bytes(item.data) for item in window.peek(10)] == payloads(5)
    assert len(window) == 2  # what was read from the store for the look is not kept
    assert drain(window) == payloads(5)
