"""Large items ride their own lane of commits (Store on a real LMDB in tmp_path).

What must hold: a small write commits without waiting behind a backlog of large items;
large items still commit in order, no earlier than the removals staged before them
(docs/protocol.md §12); and a staged large put can be cancelled, dropped, truncated and read
back like any other.
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import ThreadClock

from kestrelpy.payload import LARGE_ITEM
from kestrelpy.store import Store

BIG = 600 * 1024  # two do not fit one large batch (about 1 MiB), so each rides its own
SMALL = b"s" * 64


def big(item_id: int) -> bytes:
    return bytes([65 + item_id % 26]) * BIG


def stage_large(store: Store, qid: int, count: int) -> None:
    """Stage ``count`` large puts (ids 0 up) in queue ``qid``, one large batch each."""
    for item_id in range(count):
        store.put(qid, item_id, 0, 0, 0, big(item_id))


def items_on_disk(store: Store, name: str) -> int:
    (record,) = [r for r in store.load_queues() if r.name == name]
    return record.items


def test_a_large_put_through_the_store_gets_a_ticket_of_its_own(
    open_store: Callable[..., Store],
) -> None:
    # The wiring Store.put -> the large lane -> the caller's tickets, on the real store
    # (tests/commits checks the scheduler's side of it on a fake storage).
    store = open_store()
    qid = store.create_queue("q", 0)
    store.put(qid, 0, 0, 0, 0, SMALL)
    small_only = store.take_write_tickets()
    store.put(qid, 1, 0, 0, 0, big(1))
    with_large = store.take_write_tickets()
    assert len(small_only) == 1
    assert len(with_large) == 2 and with_large[0] == small_only[0]
    assert with_large[1] != with_large[0]
    assert store.take_write_tickets() == small_only  # taking resets what was written


def test_a_small_write_does_not_wait_behind_a_large_backlog(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("big", 0)
    small_qid = store.create_queue("small", 0)
    clock.advance(0)
    commits = store.commits
    heard: list[str] = []
    for item_id in range(4):
        store.put(qid, item_id, 0, 0, 0, big(item_id))
        (_small, large) = store.take_write_tickets()
        store.when_committed(lambda ok, n=item_id: heard.append(f"big{n}"), large)
    store.put(small_qid, 0, 0, 0, 0, SMALL)
    (ticket,) = store.take_write_tickets()
    store.when_committed(lambda ok: heard.append("small"), ticket)
    clock.advance(0)
    assert heard == ["small", "big0", "big1", "big2", "big3"]
    assert store.commits - commits == 5  # one small batch, then one large batch each
    assert items_on_disk(store, "big") == 4
    assert items_on_disk(store, "small") == 1


def test_a_large_batch_never_commits_before_removals_staged_earlier(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    """Under the writer thread the lanes alternate; a removal still goes first."""
    store = open_store("always")
    qid = store.create_queue("q", 0)
    store.put(qid, 0, 0, 0, 0, SMALL)
    store.when_committed(lambda ok: None)
    clock.advance(0)  # the writer takes the small batch; a large one would be next
    store.delete(qid, 0, len(SMALL))  # answered now: must be on disk before the next STORED
    store.put(qid, 1, 0, 0, 0, big(1))
    order: list[str] = []
    small, large = store.take_write_tickets()
    store.when_committed(lambda ok: order.append("large"), large)
    store.when_committed(lambda ok: order.append("removal"), small)
    while len(order) < 2:
        clock.wait_for_thread_call()
        clock.run_thread_calls()
    assert order == ["removal", "large"]
    assert items_on_disk(store, "q") == 1


def test_a_large_put_read_before_its_commit_leaves_nothing(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    stage_large(store, qid, 2)
    (first, second) = store.read_items(qid, 0, 2, 10, 10 * BIG)
    assert (first.data, second.data) == (big(0), big(1))
    store.delete(qid, 1, BIG)  # taken before its batch committed
    clock.advance(0)
    assert items_on_disk(store, "q") == 1
    assert [item.item_id for item in store.read_items(qid, 0, 2, 10, 10 * BIG)] == [0]


def test_reads_merge_committed_small_items_with_large_ones_still_staged(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    """Small items after a large one may commit first: a read must not skip the large."""
    store = open_store("always")
    qid = store.create_queue("q", 0)
    store.put(qid, 0, 0, 0, 0, SMALL)
    for item_id in (1, 2):
        store.put(qid, item_id, 0, 0, 0, big(item_id))
    store.put(qid, 3, 0, 0, 0, SMALL)
    (small, first_large, _second) = store.take_write_tickets()
    heard: list[str] = []
    store.when_committed(lambda ok: heard.append("small"), small)
    store.when_committed(lambda ok: heard.append("large"), first_large)
    clock.advance(0)  # the writer takes the small batch: items 0 and 3
    while heard != ["small"]:
        clock.wait_for_thread_call()
        clock.run_thread_calls()  # ... and, once it is done, the first large batch
    items = store.read_items(qid, 0, 4, 10, 10 * BIG)
    assert [item.item_id for item in items] == [0, 1, 2, 3]
    assert [len(item.data) for item in items] == [len(SMALL), BIG, BIG, len(SMALL)]


def test_dropping_a_queue_drops_its_staged_large_puts(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    stage_large(store, qid, 3)
    store.drop_queue("q", qid)
    clock.advance(0)
    assert store.load_queues() == []
    assert store.read_items(qid, 0, 3, 10, 10 * BIG) == []
    assert not store.has_pending_writes


def test_truncating_drops_staged_large_puts_in_range(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    stage_large(store, qid, 3)
    store.truncate(qid, 0, 2)
    clock.advance(0)
    assert [item.item_id for item in store.read_items(qid, 0, 3, 10, 10 * BIG)] == [2]
    assert items_on_disk(store, "q") == 1


def test_a_large_backlog_is_caught_up_in_bigger_commits(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    clock.advance(0)
    commits = store.commits
    count = 64  # 64 x 600 KiB = 37.5 MiB staged, over the 32 MiB backlog mark
    stage_large(store, qid, count)
    clock.advance(0)
    assert items_on_disk(store, "q") == count
    assert store.commits - commits < count  # some batches were merged to catch up


def test_items_just_under_the_large_size_ride_with_small_writes(
    open_store: Callable[..., Store],
) -> None:
    store = open_store()
    qid = store.create_queue("q", 0)
    store.put(qid, 0, 0, 0, 0, b"x" * (LARGE_ITEM - 1))
    assert len(store.take_write_tickets()) == 1
    store.put(qid, 1, 0, 0, 0, b"x" * LARGE_ITEM)
    assert len(store.take_write_tickets()) == 2


def test_a_failed_small_commit_fails_the_large_batches_behind_it(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    """Replies to one client's batch may wait for both lanes: all true, or all refused."""
    store = open_store()
    qid = store.create_queue("q", 0)
    clock.advance(0)
    lost: list[tuple[int, int, int]] = []
    store.on_rollback(lost.extend)
    store.set_record(b"r" * 600, b"x")  # LMDB refuses a key this long: the small batch fails
    stage_large(store, qid, 1)
    small, large = store.take_write_tickets()
    heard: list[tuple[str, bool]] = []
    store.when_committed(lambda ok: heard.append(("small", ok)), small)
    store.when_committed(lambda ok: heard.append(("large", ok)), large)
    clock.advance(0)
    assert heard == [("small", False), ("large", False)]
    assert lost == [(qid, 0, BIG)]
    assert items_on_disk(store, "q") == 0
