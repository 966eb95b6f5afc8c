"""One commit's staged writes: what survives a failed commit, merging, dropping puts."""

from __future__ import annotations

from commit_rig import BIG, QID, SMALL

from kestrelpy.commits.batch import Batch
from kestrelpy.storage.layout import HEADER_SIZE, ITEM_KEY, QUEUE_RECORD, U32


def key(item_id: int) -> bytes:
    return ITEM_KEY.pack(QID, item_id)


def value(size: int) -> bytes:
    return bytes(HEADER_SIZE + size)


def test_listeners_alone_leave_a_batch_empty() -> None:
    batch = Batch(ticket=3)
    batch.listeners.append(lambda ok: None)
    assert batch.is_empty()
    batch.next_qid = 9
    assert not batch.is_empty()


def test_a_failed_batch_leaves_its_removals_and_metadata_not_its_puts() -> None:
    failed = Batch(ticket=1)
    failed.puts[key(0)] = value(SMALL)
    failed.deletes[key(1)] = 5
    failed.truncations.append((QID, 0, 1))
    failed.dropped_queues.append((b"old", 2))
    failed.new_queues[b"kept"] = QUEUE_RECORD.pack(3, 0)
    failed.new_queues[b"gone"] = QUEUE_RECORD.pack(4, 0)
    failed.records[b"status"] = b"up"
    failed.records[b"other"] = b"x"
    failed.next_qid = 5
    later = Batch(ticket=2)
    later.deletes[key(1)] = 5
    later.truncations.append((QID, 1, 2))
    later.dropped_queues.append((b"gone", 4))  # deleted after the failed batch made it
    later.records[b"status"] = b"readonly"
    later.carry_over_from(failed)
    assert not later.puts
    assert later.deletes == {key(1): 5}
    assert later.truncations == [(QID, 0, 1), (QID, 1, 2)]  # the failed one's first
    assert later.dropped_queues == [(b"old", 2), (b"gone", 4)]
    assert later.new_queues == {b"kept": QUEUE_RECORD.pack(3, 0)}
    assert later.records == {b"status": b"readonly", b"other": b"x"}  # later writes win
    assert later.next_qid == 5


def test_absorbing_the_next_large_batch() -> None:
    first, second = Batch(ticket=1), Batch(ticket=2)
    first.puts[key(0)] = value(BIG)
    second.puts[key(1)] = value(BIG)
    first.large_bytes = second.large_bytes = BIG
    first.after, second.after = 0, 4
    heard: list[str] = []
    first.listeners.append(lambda ok: heard.append("first"))
    second.listeners.append(lambda ok: heard.append("second"))
    first.absorb(second)
    assert list(first.puts) == [key(0), key(1)]
    assert (first.large_bytes, first.after) == (2 * BIG, 4)
    for listener in first.listeners:
        listener(True)
    assert heard == ["first", "second"]


def test_dropping_puts_of_one_queue_in_an_id_range() -> None:
    batch = Batch(ticket=1)
    for item_id in range(4):
        batch.puts[key(item_id)] = value(BIG if item_id % 2 else SMALL)
    batch.large_bytes = 2 * BIG
    batch.puts[ITEM_KEY.pack(QID + 1, 1)] = value(SMALL)  # the neighbour queue
    batch.drop_puts(U32.pack(QID), 1, 3)
    assert sorted(batch.puts) == [key(0), key(3), ITEM_KEY.pack(QID + 1, 1)]
    assert batch.large_bytes == BIG


def test_lost_puts_name_queue_item_and_payload_size() -> None:
    batch = Batch(ticket=1)
    batch.puts[key(5)] = value(SMALL)
    batch.puts[key(6)] = value(BIG)
    assert batch.lost_puts() == [(QID, 5, SMALL), (QID, 6, BIG)]
