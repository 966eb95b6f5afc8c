"""The ItemStore contract, run over the in-memory test store and the server's real store.

The queues' unit tests trust ``MemoryStore`` to behave as the real store does where the
queues can tell; this suite holds both to the contract in
:mod:`kestrelpy.queues.item_store`. ``commit`` ends the real store's reactor turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import Harness
from memory_store import MemoryStore

from kestrelpy.queues.item_store import ItemStore


@dataclass
class Subject:
    store: ItemStore
    commit: Callable[[], None]


@pytest.fixture(params=["memory", "server"])
def subject(request: pytest.FixtureRequest, kp: Callable[..., Harness]) -> Subject:
    if request.param == "memory":
        return Subject(MemoryStore(), lambda: None)
    harness = kp()
    return Subject(harness.store, harness.run_until_idle)


def fill(store: ItemStore, queue_id: int, payloads: list[bytes], first_id: int = 0) -> None:
    for offset, data in enumerate(payloads):
        store.put(queue_id, first_id + offset, 3, 0, 1_000 + offset, data)


def read(
    store: ItemStore, queue_id: int, from_id: int = 0, end_id: int = 100, **limits: int
) -> list[tuple[int, bytes]]:
    found = store.read_items(
        queue_id, from_id, end_id, limits.get("max_items", 100), limits.get("max_bytes", 1 << 20)
    )
    return [(item.item_id, bytes(item.data)) for item in found]


@pytest.mark.parametrize("committed", [False, True])
def test_read_items_sees_puts_in_id_order(subject: Subject, committed: bool) -> None:
    store = subject.store
    qid = store.create_queue("q", 0)
    fill(store, qid, [b"a", b"b", b"c"])
    if committed:
        subject.commit()
    found = store.read_items(qid, 0, 3, 10, 1 << 20)
    assert [(i.item_id, i.flags, i.added_ms, bytes(i.data)) for i in found] == [
        (0, 3, 1_000, b"a"),
        (1, 3, 1_001, b"b"),
        (2, 3, 1_002, b"c"),
    ]


def test_read_items_keeps_to_its_range_and_limits(subject: Subject) -> None:
    store = subject.store
    qid = store.create_queue("q", 0)
    fill(store, qid, [b"aaaa", b"bbbb", b"cccc", b"dddd"])
    assert read(store, qid, 1, 3) == [(1, b"bbbb"), (2, b"cccc")]
    assert read(store, qid, max_items=1) == [(0, b"aaaa")]
    assert read(store, qid, max_bytes=5) == [(0, b"aaaa"), (1, b"bbbb")]  # may overshoot
    assert read(store, qid, max_bytes=1) == [(0, b"aaaa")]  # at least one


def test_ids_that_were_never_put_are_skipped(subject: Subject) -> None:
    store = subject.store
    qid = store.create_queue("q", 0)
    fill(store, qid, [b"a"], first_id=0)
    fill(store, qid, [b"d"], first_id=3)
    subject.commit()
    fill(store, qid, [b"f"], first_id=5)
    assert read(store, qid) == [(0, b"a"), (3, b"d"), (5, b"f")]


@pytest.mark.parametrize("committed", [False, True])
def test_delete_and_truncate_remove_items(subject: Subject, committed: bool) -> None:
    store = subject.store
    qid = store.create_queue("q", 0)
    fill(store, qid, [b"a", b"b", b"c", b"d", b"e"])
    if committed:
        subject.commit()
    store.delete(qid, 0, 1)
    store.truncate(qid, 2, 4)
    subject.commit()  # a removal may show in read_items only once committed
    assert read(store, qid) == [(1, b"b"), (4, b"e")]


def test_queues_are_apart_and_their_ids_never_reused(subject: Subject) -> None:
    store = subject.store
    first, second = store.create_queue("a", 10), store.create_queue("b", 20)
    fill(store, first, [b"1"])
    fill(store, second, [b"2"])
    assert (read(store, first), read(store, second)) == ([(0, b"1")], [(0, b"2")])
    store.drop_queue("a", first)
    assert read(store, first) == []
    again = store.create_queue("a", 30)
    assert again not in (first, second)
    assert read(store, again) == []


def test_load_queues_reports_what_was_committed(subject: Subject) -> None:
    store = subject.store
    qid = store.create_queue("q", 1_700_000_000)
    fill(store, qid, [b"aa", b"bbb", b"c"])
    store.delete(qid, 0, 2)
    subject.commit()
    records = [r for r in store.load_queues() if r.name == "q"]
    assert [
        (r.queue_id, r.create_time, r.head_id, r.tail_id, r.items, r.payload_bytes) for r in records
    ] == [(qid, 1_700_000_000, 1, 3, 2, 4)]
