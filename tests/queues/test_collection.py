"""QueueCollection on plain objects: an in-memory store and a Clock for its one clock read."""

from __future__ import annotations

import pytest
from memory_store import MemoryStore
from twisted.internet.task import Clock

from kestrelpy.config import Config, QueueConfig, ServerConfig
from kestrelpy.errors import TooManyQueuesError
from kestrelpy.queues.collection import QueueCollection
from kestrelpy.stats import ServerStats

NOW = 1_700_000_000_000  # unix ms


def new_collection(store: MemoryStore, clock: Clock) -> QueueCollection:
    config = Config(server=ServerConfig(read_ahead_items=2), defaults=QueueConfig())
    return QueueCollection(store, config, ServerStats(clock.seconds()), clock)


def test_a_new_queue_is_created_at_the_clock_time() -> None:
    clock, store = Clock(), MemoryStore()
    clock.advance(1_700_000_123.75)
    collection = new_collection(store, clock)
    queue = collection.get_or_create("q")
    assert queue.create_time == 1_700_000_123
    assert store.queues["q"] == (queue.queue_id, 1_700_000_123)


def test_stored_queues_come_back_with_their_items() -> None:
    clock, store = Clock(), MemoryStore()
    first = new_collection(store, clock)
    for data in (b"a", b"b", b"c"):
        assert first.put("q", 0, 0, data, NOW)
    second = new_collection(store, clock)
    queue = second.get("q")
    assert queue is not None and (queue.items, queue.bytes) == (3, 3)
    assert [queue.take(NOW).data for _ in range(3)] == [b"a", b"b", b"c"]  # type: ignore[union-attr]


def test_a_failed_commit_uncounts_the_puts_still_waiting() -> None:
    clock, store = Clock(), MemoryStore()
    collection = new_collection(store, clock)
    for data in (b"a", b"bb", b"ccc", b"dddd"):  # read_ahead_items = 2: c, d on disk
        assert collection.put("q", 0, 0, data, NOW)
    queue = collection.get("q")
    assert queue is not None
    taken = queue.take(NOW)
    assert taken is not None and taken.data == b"a"
    qid = queue.queue_id
    store.fail_next_commit([(qid, 0, 1), (qid, 1, 2), (qid, 3, 4)])  # a had left already
    assert (queue.items, queue.bytes, queue.mem_items) == (1, 3, 0)
    remaining = queue.take(NOW)
    assert remaining is not None and remaining.data == b"ccc"
    assert queue.take(NOW) is None


def test_delete_hands_back_the_blocked_readers() -> None:
    clock, store = Clock(), MemoryStore()
    collection = new_collection(store, clock)
    queue = collection.get_or_create("q")
    ended: list[str] = []
    queue.add_waiter(0, lambda item: None, lambda: ended.append("r"))
    for waiter in collection.delete("q"):
        waiter.on_queue_deleted()
    assert ended == ["r"]
    assert collection.get("q") is None
    assert store.written("drop_queue") == [("q",)]


def capped_collection(store: MemoryStore, **server: int) -> QueueCollection:
    config = Config(
        server=ServerConfig(**server),  # type: ignore[arg-type]
        defaults=QueueConfig(),
        queue_overrides={"old": {"max_age": 1000, "expire_to_queue": "dead"}},
    )
    return QueueCollection(store, config, ServerStats(0), Clock())


def test_a_refused_queue_leaves_no_trace() -> None:
    store = MemoryStore()
    collection = capped_collection(store, max_queues=2, max_fanout_children=1)
    collection.get_or_create("a")
    collection.get_or_create("p+c1")
    with pytest.raises(TooManyQueuesError, match=r"^too many queues \(max_queues = 2\)$"):
        collection.put("b", 0, 0, b"x", NOW)
    assert collection.names() == ["a", "p+c1"] and sorted(store.queues) == ["a", "p+c1"]
    collection.delete("a")
    with pytest.raises(TooManyQueuesError, match="too many fanout children of 'p'"):
        collection.get_or_create("p+c2")
    assert collection.children_of("p") == ["p+c1"]
    assert collection.put("p", 0, 0, b"x", NOW)  # the parent is not a child: created


def test_an_expired_item_whose_target_cannot_be_made_is_dropped() -> None:
    store = MemoryStore()
    collection = capped_collection(store, max_queues=1)
    assert collection.put("old", 0, 0, b"x", NOW)
    queue = collection.get("old")
    assert queue is not None and queue.take(NOW + 2000) is None  # expired; "dead" refused
    assert collection.names() == ["old"]
