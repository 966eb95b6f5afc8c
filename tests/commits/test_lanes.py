"""Which batch a write joins, and which batch commits next: Lanes alone, no clock, no store."""

from __future__ import annotations

from commit_rig import BIG, QID, SMALL

from kestrelpy.commits.batch import Batch
from kestrelpy.commits.lanes import Lanes
from kestrelpy.storage.layout import HEADER_SIZE, ITEM_KEY, U32

MIB = 1024 * 1024


def small(lanes: Lanes, item_id: int) -> Batch:
    lanes.pending.puts[ITEM_KEY.pack(QID, item_id)] = bytes(HEADER_SIZE + SMALL)
    return lanes.pending


def large(lanes: Lanes, item_id: int, size: int = BIG) -> Batch:
    batch = lanes.large_batch(size)
    batch.puts[ITEM_KEY.pack(QID, item_id)] = bytes(HEADER_SIZE + size)
    return batch


def order(lanes: Lanes) -> list[int]:
    """Tickets in the order next_batch hands them out, until it has nothing more."""
    taken = []
    while (batch := lanes.next_batch()) is not None:
        taken.append(batch.ticket)
    return taken


# --------------------------------------------------------------------------- joining


def test_large_puts_share_a_batch_up_to_about_a_mebibyte() -> None:
    lanes = Lanes()
    first = large(lanes, 0, 300 * 1024)
    assert large(lanes, 1, 300 * 1024) is first
    assert large(lanes, 2, 600 * 1024) is not first  # would pass 1 MiB
    alone = large(lanes, 3, 2 * MIB)
    assert alone.large_bytes == 2 * MIB  # one item over the size still gets a batch
    assert large(lanes, 4, 100 * 1024) is not alone
    assert [batch.is_large for batch in lanes.large] == [True] * 4
    assert len({batch.ticket for batch in (lanes.pending, *lanes.large)}) == 5


def test_a_large_batch_commits_after_the_small_batch_open_when_last_written() -> None:
    lanes = Lanes()
    batch = large(lanes, 0, 100 * 1024)
    assert batch.after == lanes.pending.ticket
    small(lanes, 1)
    assert lanes.next_batch() is not batch  # the small batch first
    large(lanes, 2, 100 * 1024)  # written to again, now after the new small batch
    assert batch.after == lanes.pending.ticket
    second = small(lanes, 3)
    assert order(lanes) == [second.ticket, batch.ticket]  # even on the large lane's turn


def test_a_large_batch_goes_first_when_the_small_batch_holds_nothing() -> None:
    lanes = Lanes()
    batch = large(lanes, 0)
    assert lanes.next_batch() is batch
    assert lanes.next_batch() is None


# ----------------------------------------------------------------------- commit order


def test_the_lanes_alternate_and_a_ready_small_batch_rides_the_large_commit() -> None:
    """Small, then large: on the large lane's turn a small batch that is ready shares the
    large batch's commit (one fsync before its replies, not two)."""
    lanes = Lanes()
    small(lanes, 0)
    big = [large(lanes, n) for n in (1, 2, 3)]  # each commits after the first small batch
    heard: list[str] = []
    big[1].listeners.append(lambda ok: heard.append("big1"))
    first = lanes.next_batch()
    assert first is not None and first.ticket == 0  # the small batch first
    assert lanes.next_batch() is big[0]  # the large turn; no small batch is ready
    riding = small(lanes, 4)
    riding.listeners.append(lambda ok: heard.append("small4"))
    assert lanes.next_batch() is riding  # the small turn
    rider = small(lanes, 5)
    rider.listeners.append(lambda ok: heard.append("small5"))
    merged = lanes.next_batch()  # the large turn, with a small batch ready
    assert merged is rider and not merged.is_large
    assert set(merged.puts) == {ITEM_KEY.pack(QID, 5), ITEM_KEY.pack(QID, 2)}
    for listener in merged.listeners:
        listener(True)
    assert heard == ["small5", "big1"]  # both told by the one commit
    assert lanes.next_batch() is big[2]
    assert lanes.next_batch() is None


def test_a_large_backlog_is_merged_into_bigger_batches() -> None:
    lanes = Lanes()
    count = 64  # 64 x 600 KiB = 37.5 MiB, over the 32 MiB backlog mark
    heard: list[int] = []
    for item_id in range(count):
        large(lanes, item_id).listeners.append(lambda ok, n=item_id: heard.append(n))
    merged = lanes.next_batch()
    assert merged is not None and len(merged.puts) > 1
    assert len(merged.puts) + sum(len(batch.puts) for batch in lanes.large) == count
    for listener in merged.listeners:
        listener(True)
    assert heard == list(range(len(merged.puts)))  # listeners kept, in order


def test_listeners_alone_make_the_small_batch_ready() -> None:
    lanes = Lanes()
    assert lanes.next_batch() is None and not lanes.has_work()
    lanes.pending.listeners.append(lambda ok: None)
    assert lanes.has_work() and not lanes.has_staged
    assert order(lanes) == [0]


def test_the_large_batches_after_a_small_one_are_taken_out() -> None:
    lanes = Lanes()
    before = large(lanes, 0)
    failing = small(lanes, 1)
    lanes.next_batch()  # ``before`` has not committed yet
    after = large(lanes, 2)
    assert lanes.take_large_after(failing.ticket) == [before]
    assert list(lanes.large) == [after]


# -------------------------------------------------------------------- staged state


def test_staged_puts_cover_every_lane_and_the_batch_in_flight() -> None:
    lanes = Lanes()
    small(lanes, 0)
    lanes.in_flight = lanes.next_batch()
    small(lanes, 1)
    large(lanes, 2)
    keys = [key for puts in lanes.staged_puts() for key in puts]
    assert sorted(ITEM_KEY.unpack(key)[1] for key in keys) == [0, 1, 2]
    assert lanes.find(lanes.in_flight.ticket) is lanes.in_flight
    assert lanes.live_tickets() == {lanes.in_flight.ticket, lanes.large[0].ticket}


def test_cancelling_and_dropping_staged_large_puts() -> None:
    lanes = Lanes()
    batch = large(lanes, 0, 300 * 1024)
    large(lanes, 1, 300 * 1024)
    assert lanes.cancel_large_put(ITEM_KEY.pack(QID, 0), 300 * 1024)
    assert not lanes.cancel_large_put(ITEM_KEY.pack(QID, 0), 300 * 1024)
    assert batch.large_bytes == 300 * 1024
    small(lanes, 2)
    lanes.drop_puts(U32.pack(QID), 1, 3)
    assert lanes.pending.is_empty()
    assert batch.large_bytes == 0 and not batch.puts
