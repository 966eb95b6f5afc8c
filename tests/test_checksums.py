"""Items that fail their checksum, met by every kind of read over a real service on LMDB.

Issue 18, finding 4: flipped bits on disk were served as sound. Each test writes items
through the server, stops it, flips bits in the LMDB file's values (as a failing disk
would), starts it again and reads: the damaged item is never served, it is dropped and
counted once, the queue's counters stay exact, and the connection carries on.
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import DEFAULT_CONFIG, Harness

from kestrelpy.storage.layout import key_fields

MakeHarness = Callable[..., Harness]
CHECKSUM_ERROR = b"SERVER_ERROR item failed its checksum and was dropped\r\n"


def set_req(queue: bytes, data: bytes, flags: int = 0) -> bytes:
    return b"set %b %d 0 %d\r\n%b\r\n" % (queue, flags, len(data), data)


def stored_and_restarted(h: Harness, *items: bytes, flags: int = 0) -> None:
    assert h.connect().ask(b"".join(set_req(b"q", item, flags) for item in items)) == (
        b"STORED\r\n" * len(items)
    )
    h.run_until_idle()
    h.restart()  # from now on the queue's items are read back from disk


def flip(h: Harness, item_ids: set[int], at: int = -1) -> None:
    """Flip one bit at offset ``at`` of the stored values of ``item_ids`` (queue ``q``)."""
    storage = h.store._storage
    with storage._env.begin(write=True) as txn:
        for key, value in list(txn.cursor(db=storage._items_db)):
            if key_fields(key)[1] in item_ids:
                damaged = bytearray(value)
                damaged[at] ^= 0x10
                txn.put(key, bytes(damaged), db=storage._items_db)


def counts(h: Harness) -> tuple[int, int, int]:
    queue = h.collection.get("q")
    assert queue is not None
    return queue.items, queue.bytes, queue.corrupt_items


def test_a_flipped_header_bit_is_refused_too(kp: MakeHarness) -> None:
    h = kp()
    stored_and_restarted(h, b"abcd", flags=7)
    flip(h, {0}, at=3)  # the low byte of the flags field
    conn = h.connect()
    assert conn.ask(b"get q\r\n") == CHECKSUM_ERROR
    assert conn.ask(b"get q\r\n") == b"END\r\n"
    assert counts(h) == (0, 0, 1)


def test_reads_skip_the_damaged_items_and_the_counters_stay_exact(kp: MakeHarness) -> None:
    h = kp()
    stored_and_restarted(h, *(b"item%d" % n for n in range(6)))
    flip(h, {1, 3})
    conn = h.connect()
    replies = [conn.ask(b"get q\r\n") for _ in range(7)]
    values = [reply.split(b"\r\n")[1] for reply in replies if reply.startswith(b"VALUE")]
    assert values == [b"item0", b"item2", b"item4", b"item5"]
    assert replies.count(CHECKSUM_ERROR) == 2 and replies[-1] == b"END\r\n"
    assert counts(h) == (0, 0, 2)
    h.run_until_idle()
    h.restart()  # the drops were committed: nothing comes back, counters persisted exact
    assert counts(h) == (0, 0, 0)
    assert h.connect().ask(b"get q\r\n") == b"END\r\n"


def test_a_set_that_discards_a_damaged_head_is_stored(kp: MakeHarness) -> None:
    """discard_old_when_full meets the damaged head while making room (a review found the
    error escaping the set and dropping the client with no reply)."""
    h = kp(DEFAULT_CONFIG + '[queues."q"]\nmax_items = 2\ndiscard_old_when_full = true\n')
    stored_and_restarted(h, b"aaaa", b"bbbb")
    flip(h, {0, 1})
    conn = h.connect()
    assert conn.ask(set_req(b"q", b"cccc")) == b"STORED\r\n"  # room made by dropping one
    replies = [conn.ask(b"get q\r\n") for _ in range(3)]
    assert replies == [CHECKSUM_ERROR, b"VALUE q 0 4\r\ncccc\r\nEND\r\n", b"END\r\n"]
    assert counts(h) == (0, 0, 2)


def test_stats_and_the_expiry_sweep_drop_a_damaged_head_without_failing(
    kp: MakeHarness,
) -> None:
    h = kp()
    stored_and_restarted(h, b"item0", b"item1", b"item2")
    flip(h, {0, 1})
    reply = h.connect().ask(b"stats\r\n")
    assert b"STAT queue_q_items 1\r\n" in reply and reply.endswith(b"END\r\n")
    assert counts(h) == (1, 5, 2)
    assert h.connect().ask(b"get q\r\n") == b"VALUE q 0 5\r\nitem2\r\nEND\r\n"


def test_monitor_skips_a_damaged_item_and_goes_on(kp: MakeHarness) -> None:
    h = kp(DEFAULT_CONFIG + "max_open_transactions = 10\n")
    stored_and_restarted(h, *(b"item%d" % n for n in range(4)))
    flip(h, {1})
    conn = h.connect()
    reply = conn.ask(b"monitor q 0 10\r\n")
    assert (
        reply == b"".join(b"VALUE q 0 5\r\nitem%d\r\nEND\r\n" % n for n in (0, 2, 3)) + b"END\r\n"
    )
    assert conn.ask(b"confirm q 3\r\n") == b"END\r\n"
    assert counts(h) == (0, 0, 1)
