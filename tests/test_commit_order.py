"""No reply leaves before the flush that covers it, under ``sync = "always"``, end to end.

docs/protocol.md §12: ``STORED`` means the item is on disk, and so is every removal answered
before that request arrived, on any connection. Here a real service on LMDB runs with its
writer thread; the storage's commit (which fsyncs before it returns) is wrapped to log what
each commit made durable, and each connection's writes are logged in the same sequence. The
test then checks every ``STORED`` against that log: its item, and every removal answered
before its set was sent, were in commits that had returned before the reply was written.
Small and large (own-lane) items, and removals by plain gets, on several connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import Conn, Harness

from kestrelpy.storage.layout import item_key

MakeHarness = Callable[..., Harness]
ALWAYS = '[server]\nsync = "always"\nexpiration_timer_frequency = "never"\n'
BIG = b"B" * (200 * 1024)  # a large item: it commits in its own lane


class OrderLog:
    """One sequence of events: ("durable", keys) after each commit returned, ("reply",
    connection, bytes) for each write to a connection."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def durable_before(self, index: int) -> set[bytes]:
        """Keys whose put or delete a commit had made durable before event ``index``."""
        keys: set[bytes] = set()
        for event in self.events[:index]:
            if event[0] == "durable":
                keys |= event[1]
        return keys


def logged(h: Harness, monkeypatch: pytest.MonkeyPatch) -> OrderLog:
    log = OrderLog()
    storage = h.store._storage
    commit = storage.commit

    def logged_commit(batch: Any) -> Any:
        error = commit(batch)  # under "always" it returns after the fsync
        if error is None:
            log.events.append(("durable", set(batch.puts) | set(batch.deletes)))
        return error

    monkeypatch.setattr(storage, "commit", logged_commit)
    return log


def watch(log: OrderLog, name: str, conn: Conn) -> None:
    write = conn.transport.write

    def logged_write(data: bytes) -> None:
        log.events.append(("reply", name, data))
        write(data)

    conn.transport.write = logged_write  # type: ignore[method-assign]


def settle(h: Harness, conns: list[Conn], replies: int) -> None:
    """Turn the reactor and deliver the writer's results until ``replies`` lines came."""
    for _ in range(200):
        h.clock.advance(0)
        if sum(c.transport.value().count(b"\r\n") for c in conns) >= replies:
            return
        h.clock.wait_for_thread_call()
        h.clock.run_thread_calls()
    raise AssertionError("replies did not all come")


def test_no_stored_leaves_before_the_flush_of_its_item_and_earlier_removals(
    kp: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = kp(ALWAYS)
    seed = h.connect()
    seed.send(b"set taken 0 0 1\r\na\r\nset taken 0 0 1\r\nb\r\n")
    settle(h, [seed], 2)
    log = logged(h, monkeypatch)
    small, large, reader = h.connect(), h.connect(), h.connect()
    for name, conn in (("small", small), ("large", large), ("reader", reader)):
        watch(log, name, conn)
    # The reader's plain get removes item 0 of "taken" (answered at once, committed later);
    # the sets sent after that answer must not be acknowledged before that removal is on disk.
    reader.send(b"get taken\r\n")
    assert reader.transport.value().startswith(b"VALUE taken 0 1\r\na\r\n")
    removal_answered_at = len(log.events)
    small.send(b"".join(b"set s 0 0 2\r\n%02d\r\n" % n for n in range(5)))
    large.send(b"set L 0 0 %d\r\n%b\r\n" % (len(BIG), BIG) * 2)
    reader.send(b"get taken\r\nset r 0 0 1\r\nx\r\n")
    settle(h, [small, large, reader], 3 + 5 + 2 + 3 + 1)  # get, 5 sets, 2 sets, get, set

    removal = item_key(h.collection.get("taken").queue_id, 0)  # type: ignore[union-attr]
    items = {
        "small": [item_key(h.collection.get("s").queue_id, n) for n in range(5)],  # type: ignore[union-attr]
        "large": [item_key(h.collection.get("L").queue_id, n) for n in range(2)],  # type: ignore[union-attr]
        "reader": [item_key(h.collection.get("r").queue_id, 0)],  # type: ignore[union-attr]
    }
    acknowledged = {name: 0 for name in items}
    for index, event in enumerate(log.events):
        if event[0] != "reply":
            continue
        _, name, data = event
        durable = log.durable_before(index)
        for _ in range(data.count(b"STORED\r\n")):
            key = items[name][acknowledged[name]]
            assert key in durable, f"{name}: STORED for {key.hex()} before its commit"
            if index > removal_answered_at:
                assert removal in durable, f"{name}: STORED before an earlier removal's commit"
            acknowledged[name] += 1
    assert acknowledged == {"small": 5, "large": 2, "reader": 1}
