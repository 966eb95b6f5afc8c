"""The store on a real LMDB environment in tmp_path: counters, reads, registry, durability.

Mostly through :class:`~kestrelpy.store.Store`, as the queues use it; the last section
commits batches into :class:`~kestrelpy.storage.lmdb_store.LmdbStorage` alone. When the
scheduler commits, and who it tells, is tested without LMDB in ``tests/commits``.

Under ``sync = "never"`` commits run inline when the clock runs the end-of-turn call
(``clock.advance(0)``). Under ``"always"`` a writer thread commits; its completion comes
back through ``callFromThread``, which :class:`ThreadClock` records for the test to run
on the test thread (the "reactor" here), or ``commit_now`` collects synchronously.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import ThreadClock, run_until_idle
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from kestrelpy.commits.batch import Batch
from kestrelpy.errors import CorruptItemError, KestrelpyError, StoreError
from kestrelpy.storage import lmdb_store
from kestrelpy.storage.layout import (
    FORMAT,
    FORMAT_KEY,
    HEADER,
    HEADER_V1,
    ITEM_KEY,
    QUEUE_RECORD,
    encode_item,
    upgrade_value,
)
from kestrelpy.storage.lmdb_store import LmdbStorage, QueueRecord, StoredItem, inspect_store
from kestrelpy.storage.shared_queues import SharedQueues
from kestrelpy.store import Store


def record_of(store: Store, name: str) -> QueueRecord:
    (record,) = [r for r in store.load_queues() if r.name == name]
    return record


def put_items(store: Store, qid: int, ids: range, size: int = 4, added_ms: int = 7) -> None:
    for item_id in ids:
        store.put(qid, item_id, item_id % 5, 0, added_ms, b"%0*d" % (size, item_id))


def committed_queue(store: Store, clock: Clock, ids: range) -> int:
    """Queue "q" with items ``ids`` put and committed; returns its id."""
    qid = store.create_queue("q", 0)
    put_items(store, qid, ids)
    clock.advance(0)
    return qid


def ids_of(items: list[StoredItem]) -> list[int]:
    return [item.item_id for item in items]


def reopen(store: Store, tmp_path: Path, clock: Clock) -> Store:
    store.close()
    return Store(tmp_path / "db", clock, sync="never")


# ---------------------------------------------------------------------- group commit


def test_many_puts_one_commit_listeners_in_order(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 100)
    heard: list[tuple[int, bool]] = []
    for item_id in range(50):
        store.put(qid, item_id, 0, 0, 1, b"x" * item_id)
        store.when_committed(lambda ok, n=item_id: heard.append((n, ok)))
    assert store.commits == 0
    assert heard == []
    (ticket,) = store.take_write_tickets()
    clock.advance(0)
    assert store.commits == 1
    assert heard == [(n, True) for n in range(50)]
    record = record_of(store, "q")
    assert (record.items, record.payload_bytes) == (50, sum(range(50)))
    store.put(qid, 50, 0, 0, 1, b"next")
    assert store.take_write_tickets() == (ticket + 1,)  # the next batch


def test_nothing_staged_nothing_scheduled(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    assert not store.has_pending_writes
    assert clock.getDelayedCalls() == []


def test_delete_of_a_pending_put_cancels_it(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    clock.advance(0)
    store.put(qid, 0, 0, 0, 0, b"gone")
    store.put(qid, 1, 0, 0, 0, b"kept")
    store.delete(qid, 0, 4)
    clock.advance(0)
    assert ids_of(store.read_items(qid, 0, 10, 100, 1 << 20)) == [1]
    record = record_of(store, "q")
    assert (record.items, record.payload_bytes, record.head_id, record.tail_id) == (1, 4, 1, 2)
    store.put(qid, 2, 0, 0, 0, b"x")
    store.delete(qid, 2, 1)
    assert not store.has_pending_writes  # nothing at all left to write


def test_delete_of_a_committed_item(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    qid = committed_queue(store, clock, range(3))
    store.delete(qid, 1, 4)
    assert store.has_pending_writes
    run_until_idle(clock)
    assert not store.has_pending_writes
    assert ids_of(store.read_items(qid, 0, 3, 100, 1 << 20)) == [0, 2]
    assert (record_of(store, "q").items, record_of(store, "q").payload_bytes) == (2, 8)


def test_a_removal_rides_along_with_the_next_write(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    # Nobody waits for a removal: it waits for a write's commit rather than costing its own.
    store = open_store()
    qid = committed_queue(store, clock, range(3))
    commits = store.commits
    store.delete(qid, 0, 4)
    clock.advance(0)
    assert store.commits == commits
    store.put(qid, 3, 0, 0, 0, b"0003")
    heard: list[bool] = []
    store.when_committed(heard.append)
    clock.advance(0)
    assert (store.commits, heard) == (commits + 1, [True])
    assert (record_of(store, "q").items, record_of(store, "q").head_id) == (3, 1)


def test_a_removal_alone_commits_soon(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    qid = committed_queue(store, clock, range(2))
    commits = store.commits
    store.delete(qid, 0, 4)
    run_until_idle(clock)
    assert store.commits == commits + 1
    assert clock.seconds() < 1.0  # a short, bounded delay on the store's clock
    assert record_of(store, "q").items == 1


def test_counters_exact_across_repeated_and_missing_deletes(
    open_store: Callable[..., Store],
    clock: ThreadClock,
) -> None:
    store = open_store()
    qid = committed_queue(store, clock, range(5))
    store.delete(qid, 0, 4)
    clock.advance(0)
    store.delete(qid, 0, 4)  # already gone
    store.delete(qid, 99, 4)  # never existed
    store.truncate(qid, 0, 2)  # 0 (gone) and 1
    store.delete(qid, 1, 4)  # also covered by the truncation, same batch
    clock.advance(0)
    record = record_of(store, "q")
    assert (record.items, record.payload_bytes, record.head_id, record.tail_id) == (3, 12, 2, 5)


def test_truncate(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    other = store.create_queue("r", 0)
    put_items(store, qid, range(10))
    put_items(store, other, range(3))
    clock.advance(0)
    put_items(store, qid, range(10, 15))  # staged
    store.truncate(qid, 0, 12)  # committed 0..9 and staged 10, 11
    # Staged puts below the cut are cancelled at once; those above it stay readable.
    assert store.read_items(qid, 10, 12, 100, 1 << 20) == []
    assert ids_of(store.read_items(qid, 10, 15, 100, 1 << 20)) == [12, 13, 14]
    clock.advance(0)
    assert ids_of(store.read_items(qid, 0, 15, 100, 1 << 20)) == [12, 13, 14]
    record = record_of(store, "q")
    assert (record.items, record.payload_bytes, record.head_id, record.tail_id) == (3, 12, 12, 15)
    assert record_of(store, "r").items == 3  # its neighbour is untouched
    assert ids_of(store.read_items(other, 0, 3, 100, 1 << 20)) == [0, 1, 2]


def test_truncate_everything(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    qid = committed_queue(store, clock, range(4))
    store.truncate(qid, 0, 4)
    clock.advance(0)
    record = record_of(store, "q")
    assert (record.items, record.payload_bytes, record.head_id, record.tail_id) == (0, 0, 0, 0)


# ------------------------------------------------------------------------- read_items


def test_read_items_merges_committed_and_staged(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = committed_queue(store, clock, range(5))
    put_items(store, qid, range(5, 10))
    items = store.read_items(qid, 0, 10, 100, 1 << 20)
    assert ids_of(items) == list(range(10))
    assert items[7] == StoredItem(7, 2, 0, 7, b"0007")
    assert ids_of(store.read_items(qid, 3, 10, 4, 1 << 20)) == [3, 4, 5, 6]  # across both
    assert ids_of(store.read_items(qid, 6, 8, 100, 1 << 20)) == [6, 7]  # end is exclusive
    assert ids_of(store.read_items(qid, 0, 10, 3, 1 << 20)) == [0, 1, 2]
    clock.advance(0)
    assert store.read_items(qid, 0, 10, 100, 1 << 20) == items


def test_read_items_stops_when_the_byte_budget_is_spent(
    open_store: Callable[..., Store],
    clock: ThreadClock,
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    put_items(store, qid, range(5), size=10)
    clock.advance(0)
    put_items(store, qid, range(5, 10), size=10)
    assert ids_of(store.read_items(qid, 0, 10, 100, 25)) == [0, 1, 2]
    assert ids_of(store.read_items(qid, 4, 10, 100, 15)) == [4, 5]
    assert ids_of(store.read_items(qid, 7, 10, 100, 1)) == [7]  # always makes progress


def test_read_items_stays_inside_its_queue(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    first = store.create_queue("a", 0)
    second = store.create_queue("b", 0)
    put_items(store, second, range(3))
    clock.advance(0)
    put_items(store, first, range(2))
    assert ids_of(store.read_items(first, 0, 2, 100, 1 << 20)) == [0, 1]
    assert store.read_items(first, 2, 2, 100, 1 << 20) == []
    assert all(item.data != b"0002" for item in store.read_items(first, 0, 5, 100, 1 << 20))


def test_read_items_skips_gaps(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    put_items(store, qid, range(6))
    store.delete(qid, 1, 4)
    clock.advance(0)
    store.delete(qid, 2, 4)  # staged delete of a committed item: still on disk
    store.delete(qid, 4, 4)
    run_until_idle(clock)
    put_items(store, qid, range(6, 9))
    store.delete(qid, 7, 4)
    assert ids_of(store.read_items(qid, 0, 9, 100, 1 << 20)) == [0, 3, 5, 6, 8]


# -------------------------------------------------------------------- queue registry


def test_load_queues_after_reopen(tmp_path: Path, clock: ThreadClock) -> None:
    store = Store(tmp_path / "db", clock, sync="never")
    a = store.create_queue("a", 111)
    empty = store.create_queue("empty", 222)
    c = store.create_queue("c+child", 333)
    put_items(store, a, range(10), size=3)
    put_items(store, c, range(4), size=2)
    clock.advance(0)
    for item_id in range(5):
        store.delete(a, item_id, 3)
    store = reopen(store, tmp_path, clock)
    try:
        records = {r.name: r for r in store.load_queues()}
        assert records == {
            "a": QueueRecord("a", a, 111, 5, 10, 5, 15),
            "empty": QueueRecord("empty", empty, 222, 0, 0, 0, 0),
            "c+child": QueueRecord("c+child", c, 333, 0, 4, 4, 8),
        }
        assert len({a, empty, c}) == 3
        assert store.create_queue("d", 0) not in (a, empty, c)  # next id persisted
    finally:
        store.close()


def test_drop_queue(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    qid = store.create_queue("q", 1)
    neighbour = store.create_queue("r", 1)
    put_items(store, qid, range(5))
    put_items(store, neighbour, range(2))
    clock.advance(0)
    put_items(store, qid, range(5, 8))  # staged puts are dropped with the queue
    store.drop_queue("q", qid)
    clock.advance(0)
    assert [r.name for r in store.load_queues()] == ["r"]
    assert store.read_items(qid, 0, 100, 100, 1 << 20) == []
    assert record_of(store, "r").items == 2
    again = store.create_queue("q", 2)
    assert again != qid
    clock.advance(0)
    assert record_of(store, "q") == QueueRecord("q", again, 2, 0, 0, 0, 0)


def test_create_then_drop_in_one_batch(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 1)
    put_items(store, qid, range(3))
    store.drop_queue("q", qid)
    clock.advance(0)
    assert store.load_queues() == []


def test_drop_and_recreate_in_one_batch(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    old = store.create_queue("q", 1)
    put_items(store, old, range(3))
    clock.advance(0)
    store.drop_queue("q", old)
    new = store.create_queue("q", 2)
    put_items(store, new, range(1))
    clock.advance(0)
    assert record_of(store, "q") == QueueRecord("q", new, 2, 0, 1, 1, 4)


def test_records(open_store: Callable[..., Store], clock: ThreadClock) -> None:
    store = open_store()
    assert store.get_record(b"status") is None
    store.set_record(b"status", b"readonly")
    assert store.get_record(b"status") == b"readonly"  # staged
    clock.advance(0)
    assert store.get_record(b"status") == b"readonly"  # committed
    store.set_record(b"status", None)
    assert store.get_record(b"status") is None
    clock.advance(0)
    assert store.get_record(b"status") is None


# -------------------------------------------------------------------- sync policies


def test_sync_always_writer_thread_with_commit_now(
    open_store: Callable[..., Store], tmp_path: Path, clock: ThreadClock
) -> None:
    store = open_store("always")
    qid = store.create_queue("q", 0)
    heard: list[bool] = []
    put_items(store, qid, range(3))
    store.when_committed(heard.append)
    store.commit_now()
    assert heard == [True]
    assert store.commits == 1
    assert record_of(store, "q").items == 3
    store.close()
    store = open_store("always")
    assert record_of(store, "q").items == 3


def test_sync_always_through_the_clock(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store("always")
    qid = store.create_queue("q", 0)
    heard: list[str] = []
    put_items(store, qid, range(3))
    store.when_committed(lambda ok: heard.append(f"A {ok}"))
    clock.advance(0)  # batch A goes to the writer thread
    put_items(store, qid, range(3, 5))  # batch B, staged while A is in flight
    store.when_committed(lambda ok: heard.append(f"B {ok}"))
    assert ids_of(store.read_items(qid, 0, 5, 100, 1 << 20)) == [0, 1, 2, 3, 4]
    clock.advance(0)  # B may not start while A is in flight
    clock.wait_for_thread_call()
    assert heard == []  # results are delivered on the reactor thread only
    clock.run_thread_calls()  # A done; B goes to the writer
    assert heard == ["A True"]
    clock.wait_for_thread_call()
    clock.run_thread_calls()
    assert heard == ["A True", "B True"]
    assert store.commits == 2
    assert record_of(store, "q").items == 5


def test_commit_now_commits_a_batch_staged_behind_one_in_flight(
    open_store: Callable[..., Store],
    clock: ThreadClock,
) -> None:
    # commit_now: "Commit everything staged, synchronously" - also what was staged while
    # the writer thread still had the previous batch.
    store = open_store("always")
    qid = store.create_queue("q", 0)
    heard: list[str] = []
    store.put(qid, 0, 0, 0, 0, b"a")
    store.when_committed(lambda ok: heard.append(f"A {ok}"))
    clock.advance(0)  # batch A goes to the writer
    store.put(qid, 1, 0, 0, 0, b"b")
    store.when_committed(lambda ok: heard.append(f"B {ok}"))
    store.commit_now()
    assert heard == ["A True", "B True"]
    assert store.commits == 2
    assert not store.has_pending_writes


def test_sync_periodic_commits_on_the_clock(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store("periodic")
    qid = store.create_queue("q", 0)
    put_items(store, qid, range(2))
    heard: list[bool] = []
    store.when_committed(heard.append)
    clock.advance(0)
    assert heard == [True]
    assert record_of(store, "q").items == 2


def test_close_commits_what_is_staged(tmp_path: Path, clock: ThreadClock) -> None:
    store = Store(tmp_path / "db", clock, sync="never")
    qid = store.create_queue("q", 0)
    put_items(store, qid, range(2))
    store.close()
    store.close()  # idempotent
    store = Store(tmp_path / "db", clock, sync="never")
    try:
        assert record_of(store, "q").items == 2
    finally:
        store.close()


# ---------------------------------------------------------------------- inspect_store


def test_inspect_store_while_the_store_is_open(
    open_store: Callable[..., Store], clock: ThreadClock, tmp_path: Path
) -> None:
    # Another process, as `kestrelpy dump-store` is: LMDB forbids opening one environment
    # twice in a single process.
    store = open_store()
    qid = store.create_queue("q", 5)
    put_items(store, qid, range(4))
    clock.advance(0)
    put_items(store, qid, range(4, 6))  # staged only: not visible to another reader
    script = (
        "import json, sys; from pathlib import Path;"
        "from kestrelpy.storage.lmdb_store import inspect_store;"
        "print(json.dumps([list(r) for r in inspect_store(Path(sys.argv[1]))]))"
    )
    path = str(tmp_path / "db")
    result = subprocess.run(
        [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [["q", qid, 5, 0, 4, 4, 16]]
    clock.advance(0)  # the writer was not blocked by the reader
    assert record_of(store, "q").items == 6


def test_inspect_store_after_close(tmp_path: Path, clock: ThreadClock) -> None:
    store = Store(tmp_path / "db", clock, sync="never")
    qid = store.create_queue("q", 5)
    put_items(store, qid, range(2))
    store.close()
    assert inspect_store(tmp_path / "db") == [QueueRecord("q", qid, 5, 0, 2, 2, 8)]


def test_inspect_store_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        inspect_store(tmp_path)
    assert isinstance(info.value, KestrelpyError)
    assert "data.mdb" in str(info.value)


# ------------------------------------------------------------------- counter property

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 30)),
        st.tuples(st.just("delete"), st.integers(0, 40)),
        st.tuples(st.just("truncate"), st.integers(0, 40)),
        st.tuples(st.just("commit"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_counters_and_contents_match_a_model(tmp_path_factory: Any, ops: list[Any]) -> None:
    path = tmp_path_factory.mktemp("model")
    clock = Clock()
    store = Store(path, clock, sync="never")
    try:
        qid = store.create_queue("q", 0)
        model: dict[int, bytes] = {}
        sizes: dict[int, int] = {}
        next_id = 0
        for op, arg in ops:
            if op == "put":
                store.put(qid, next_id, 0, 0, 0, b"p" * arg)
                model[next_id] = b"p" * arg
                sizes[next_id] = arg
                next_id += 1
            elif op == "delete" and next_id:
                # Only ids handed out already: a queue never removes an id it has not put.
                item_id = arg % next_id
                store.delete(qid, item_id, sizes[item_id])  # callers know each size
                model.pop(item_id, None)
            elif op == "truncate":
                below = arg % (next_id + 1)  # a queue truncates below its tail
                store.truncate(qid, 0, below)
                model = {k: v for k, v in model.items() if k >= below}
            elif op == "commit":
                # read_items merges staged puts but not staged removals (the queue never
                # reads below its window), so contents are compared once committed.
                run_until_idle(clock)
                found = store.read_items(qid, 0, next_id, 1000, 1 << 20)
                assert [(i.item_id, i.data) for i in found] == sorted(model.items())
        run_until_idle(clock)
        found = store.read_items(qid, 0, next_id, 1000, 1 << 20)
        assert [(i.item_id, i.data) for i in found] == sorted(model.items())
        record = record_of(store, "q")
        assert (record.items, record.payload_bytes) == (len(model), sum(map(len, model.values())))
        if model:
            assert (record.head_id, record.tail_id) == (min(model), max(model) + 1)
    finally:
        store.close()


def test_delete_recreate_delete_in_one_batch_leaves_nothing_behind(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    first = store.create_queue("q", 0)
    put_items(store, first, range(3))
    clock.advance(0)
    store.drop_queue("q", first)
    second = store.create_queue("q", 0)
    store.drop_queue("q", second)
    clock.advance(0)
    assert store.load_queues() == []
    # The first queue's items are gone too: nothing is readable under its id.
    assert store.read_items(first, 0, 3, 10, 1 << 20) == []


# ----------------------------------------------------------------- LmdbStorage alone


def batch_creating(name: bytes, qid: int, sizes: list[int]) -> Batch:
    """A batch that registers queue ``name`` and puts one item of each size in it."""
    batch = Batch(ticket=0)
    batch.new_queues[name] = QUEUE_RECORD.pack(qid, 9)
    batch.next_qid = qid + 1
    for item_id, size in enumerate(sizes):
        batch.puts[ITEM_KEY.pack(qid, item_id)] = encode_item(0, 0, 0, b"v" * size)
    return batch


def test_storage_commits_a_batch_with_its_counters(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "db", sync="never")
    try:
        assert storage.commit(batch_creating(b"q", 1, [3, 4, 5])) is None
        assert storage.load_queues() == [QueueRecord("q", 1, 9, 0, 3, 3, 12)]
        assert storage.next_queue_id() == 2
        removal = Batch(ticket=1)
        removal.deletes[ITEM_KEY.pack(1, 1)] = 4
        assert storage.commit(removal) is None
        assert storage.load_queues() == [QueueRecord("q", 1, 9, 0, 3, 2, 8)]
    finally:
        storage.close()


def test_storage_writes_nothing_of_a_refused_batch(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "db", sync="never")
    try:
        batch = batch_creating(b"q", 1, [3])
        batch.records[b"r" * 600] = b"x"  # LMDB refuses a key this long
        assert isinstance(storage.commit(batch), StoreError)
        assert storage.load_queues() == []
        assert storage.next_queue_id() == 1
    finally:
        storage.close()


def test_storage_grows_its_map_for_a_batch_that_does_not_fit(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "db", sync="always")
    try:
        start = (tmp_path / "db" / "data.mdb").stat().st_size
        assert storage.commit(batch_creating(b"q", 1, [1 << 20] * 24)) is None  # 24 MiB
        assert (tmp_path / "db" / "data.mdb").stat().st_size > start  # reserved, grown
        assert storage.store_bytes() > 24 << 20
        assert storage.load_queues()[0].payload_bytes == 24 << 20
    finally:
        storage.close()


def test_storage_reads_fill_gaps_from_staged_puts(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "db", sync="periodic")
    try:
        committed = batch_creating(b"q", 1, [1, 1, 1])
        staged = {ITEM_KEY.pack(1, 1): committed.puts.pop(ITEM_KEY.pack(1, 1))}
        assert storage.commit(committed) is None
        storage.sync()
        assert ids_of(storage.read_items(1, 0, 3, 10, 100)) == [0, 2]
        assert ids_of(storage.read_items(1, 0, 3, 10, 100, [{}, staged])) == [0, 1, 2]
        assert ids_of(storage.read_items(1, 1, 3, 1, 100, [staged])) == [1]
    finally:
        storage.close()


# ------------------------------------------------------------ the removal reserve


def test_a_full_map_that_cannot_grow_refuses_puts_but_commits_removals(tmp_path, monkeypatch):
    """Issue 18, finding 5: when the disk cannot take a bigger map, a batch's removals
    commit in the room kept for them and only its puts are refused; removals alone commit."""
    import errno

    from kestrelpy.errors import PutsRefusedError, StoreFullError
    from kestrelpy.storage import lmdb_store
    from kestrelpy.storage.layout import encode_item, item_key

    storage = LmdbStorage(tmp_path / "db", sync="never")

    def disk_full(path: Path, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lmdb_store, "_reserve", disk_full)
    value = encode_item(0, 0, 0, b"v" * 200)
    item_id = 0
    error = None
    while error is None:  # fill the map to the last page puts may use
        batch = Batch(item_id)
        for _ in range(64):
            batch.puts[item_key(1, item_id)] = value
            item_id += 1
        error = storage.commit(batch)
    assert type(error) is StoreFullError, error  # puts alone: nothing else to commit
    stored = [i.item_id for i in storage.read_items(1, 0, item_id, 10**6, 10**9)]
    assert stored and len(stored) < item_id

    mixed = Batch(-1)
    mixed.puts[item_key(1, item_id)] = value
    mixed.deletes[item_key(1, stored[0])] = 200
    mixed.truncations.append((1, stored[1], stored[len(stored) // 2]))
    assert isinstance(storage.commit(mixed), PutsRefusedError)
    left = [i.item_id for i in storage.read_items(1, 0, item_id + 1, 10**6, 10**9)]
    assert left == stored[len(stored) // 2 :], "the removals of the refused batch were lost"

    removals = Batch(-2)
    removals.truncations.append((1, 0, item_id + 1))
    assert storage.commit(removals) is None
    assert storage.read_items(1, 0, item_id + 1, 10**6, 10**9) == []
    storage.close()


# ------------------------------------------------------ per-item checksums, format 1


def as_format_1(path: Path) -> int:
    """Rewrite a closed store as format 1 (values without checksum, no format key), the
    way stores were written before checksums; returns how many items it holds."""
    env = lmdb.open(str(path), max_dbs=4, map_size=1 << 30)
    try:
        items_db, meta_db = env.open_db(b"items"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            values = list(txn.cursor(db=items_db))
            for key, value in values:
                flags, expiry_ms, added_ms, _ = HEADER.unpack_from(value)
                old = HEADER_V1.pack(flags, expiry_ms, added_ms) + value[HEADER.size :]
                txn.put(key, old, db=items_db)
            assert txn.delete(FORMAT_KEY, db=meta_db)
        return len(values)
    finally:
        env.close()


def format_key(path: Path) -> bytes | None:
    env = lmdb.open(str(path), max_dbs=4, readonly=True)
    try:
        with env.begin() as txn:
            return txn.get(FORMAT_KEY, db=env.open_db(b"meta", txn=txn, create=False))
    finally:
        env.close()


def test_a_format_1_store_is_upgraded_in_chunks_when_opened(
    tmp_path: Path, clock: ThreadClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "db", clock, sync="never")
    qid = committed_queue(store, clock, range(25))
    store.close()
    assert format_key(tmp_path / "db") == FORMAT
    assert as_format_1(tmp_path / "db") == 25
    monkeypatch.setattr(lmdb_store, "_UPGRADE_CHUNK", 7)  # four transactions
    store = Store(tmp_path / "db", clock, sync="never")
    try:
        items = store.read_items(qid, 0, 25, 100, 1 << 20)
        assert [(i.item_id, i.flags, i.added_ms, i.data) for i in items] == [
            (n, n % 5, 7, b"%04d" % n) for n in range(25)
        ]
        assert record_of(store, "q").payload_bytes == 100  # counters untouched
    finally:
        store.close()
    assert format_key(tmp_path / "db") == FORMAT


def test_an_upgrade_cut_short_resumes_where_it_stopped(tmp_path: Path, clock: ThreadClock) -> None:
    """What a kill during the upgrade leaves: the first chunk committed (its values in the
    new format, the format key saying up to where), the rest still format 1."""
    store = Store(tmp_path / "db", clock, sync="never")
    qid = committed_queue(store, clock, range(10))
    store.close()
    as_format_1(tmp_path / "db")
    env = lmdb.open(str(tmp_path / "db"), max_dbs=4)
    with env.begin(write=True) as txn:
        items_db, meta_db = env.open_db(b"items", txn=txn), env.open_db(b"meta", txn=txn)
        for item_id in range(4):
            key = ITEM_KEY.pack(qid, item_id)
            txn.put(key, upgrade_value(txn.get(key, db=items_db)), db=items_db)
        txn.put(FORMAT_KEY, b"1:" + ITEM_KEY.pack(qid, 3), db=meta_db)
    env.close()
    store = Store(tmp_path / "db", clock, sync="never")
    try:  # upgraded twice, the first four would come back with 4 bytes too many
        assert [i.data for i in store.read_items(qid, 0, 10, 100, 1 << 20)] == [
            b"%04d" % n for n in range(10)
        ]
    finally:
        store.close()
    assert format_key(tmp_path / "db") == FORMAT


def test_a_store_of_an_unknown_format_is_refused(tmp_path: Path, clock: ThreadClock) -> None:
    Store(tmp_path / "db", clock, sync="never").close()
    env = lmdb.open(str(tmp_path / "db"), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(FORMAT_KEY, b"9", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match="store format '9'"):
        Store(tmp_path / "db", clock, sync="never")


@pytest.mark.parametrize("flipped", [-1, 3, 11, 20], ids=["payload", "flags", "expiry", "crc"])
def test_read_items_returns_the_sound_items_before_a_corrupt_one(
    open_store: Callable[..., Store], clock: ThreadClock, tmp_path: Path, flipped: int
) -> None:
    """A flipped bit anywhere in a value (payload, header fields, the checksum itself)."""
    store = open_store()
    qid = committed_queue(store, clock, range(6))
    store.close()
    env = lmdb.open(str(tmp_path / "db"), max_dbs=4)
    with env.begin(write=True) as txn:
        items_db = env.open_db(b"items", txn=txn)
        key = ITEM_KEY.pack(qid, 3)
        value = bytearray(txn.get(key, db=items_db))
        value[flipped] ^= 0x01
        txn.put(key, bytes(value), db=items_db)
    env.close()
    store = open_store()
    assert ids_of(store.read_items(qid, 0, 6, 100, 1 << 20)) == [0, 1, 2]
    with pytest.raises(CorruptItemError) as caught:
        store.read_items(qid, 3, 6, 100, 1 << 20)
    assert (caught.value.item_id, caught.value.payload_size) == (3, 4)
    assert ids_of(store.read_items(qid, 4, 6, 100, 1 << 20)) == [4, 5]


def test_a_format_1_store_of_large_items_is_upgraded_as_the_map_grows(
    tmp_path: Path, clock: ThreadClock
) -> None:
    """Rewritten values take new pages until their transaction commits: 15 MB of them do
    not fit the map at once; the upgrade grows it (a review found MDB_MAP_FULL reported as
    a damaged store)."""
    store = Store(tmp_path / "db", clock, sync="never")
    qid = store.create_queue("big", 0)
    for item_id in range(100):
        store.put(qid, item_id, 0, 0, 7, bytes([item_id]) * 150_000)
    clock.advance(0)
    store.close()
    as_format_1(tmp_path / "db")
    store = Store(tmp_path / "db", clock, sync="never")
    try:
        items = store.read_items(qid, 0, 100, 100, 1 << 30)
        assert [i.data for i in items] == [bytes([n]) * 150_000 for n in range(100)]
    finally:
        store.close()


def test_a_directory_of_router_queues_is_refused_not_rewritten(
    tmp_path: Path, clock: ThreadClock
) -> None:
    shared = SharedQueues(tmp_path / "db", lease_ms=60_000)
    shared.put("work", [b'{"task": "send-invoice", "id": 12345}'])
    shared.close()
    with pytest.raises(StoreError, match="not a kestrelpy server store"):
        Store(tmp_path / "db", clock, sync="never")
    shared = SharedQueues(tmp_path / "db", lease_ms=60_000)
    try:
        taken = shared.take("work")
        assert taken is not None and taken.data == b'{"task": "send-invoice", "id": 12345}'
    finally:
        shared.close()
