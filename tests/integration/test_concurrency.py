"""Many producers and blocking consumers at once: every item delivered exactly once.

Threads with raw sockets; every socket read has a deadline and every join a timeout. The
consumers block in the server (``/t=500``) instead of polling, so an idle consumer costs no
CPU and wakes when an item arrives.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from .conftest import wait_until

pytestmark = pytest.mark.timeout(90)

JOIN_TIMEOUT_S = 60


class Worker(threading.Thread):
    """A thread that records its exception instead of losing it."""

    def __init__(self, target, *args):
        super().__init__(daemon=True)
        self._target_fn = target
        self._args = args
        self.error: BaseException | None = None

    def run(self):
        try:
            self._target_fn(*self._args)
        except BaseException as err:
            self.error = err


def join_all(workers, server):
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    stuck = [w.name for w in workers if w.is_alive()]
    assert not stuck, f"threads still running after {JOIN_TIMEOUT_S}s: {stuck}\n{server.log()}"
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0]


def test_20_producers_20_blocking_consumers_exactly_once(server):
    queue = "busy"
    producers, consumers, per_producer = 20, 20, 100
    expected = {b"p%02d-%04d" % (p, i) for p in range(producers) for i in range(per_producer)}
    counts: Counter[bytes] = Counter()
    per_consumer: list[list[bytes]] = [[] for _ in range(consumers)]
    lock = threading.Lock()
    all_received = threading.Event()
    deadline = time.monotonic() + JOIN_TIMEOUT_S

    def produce(idx):
        bodies = [b"p%02d-%04d" % (idx, i) for i in range(per_producer)]
        with server.connect(timeout=20) as conn:
            if idx % 2:  # half pipeline in batches, half send one set at a time
                for start in range(0, per_producer, 25):
                    batch = bodies[start : start + 25]
                    conn.send(b"".join(b"set busy 0 0 %d\r\n%s\r\n" % (len(b), b) for b in batch))
                    conn.expect(b"STORED\r\n" * len(batch), timeout=20)
            else:
                for body in bodies:
                    assert conn.set(queue, body) == b"STORED\r\n"

    def consume(idx):
        reliable = idx % 2 == 0  # half use open/close, half plain removing gets
        key = queue + ("/close/open/t=500" if reliable else "/t=500")
        with server.connect(timeout=20) as conn:
            while not all_received.is_set() and time.monotonic() < deadline:
                body = conn.get(key)
                if body is None:
                    continue
                per_consumer[idx].append(body)
                with lock:
                    counts[body] += 1
                    if sum(counts.values()) >= len(expected):
                        all_received.set()
            if reliable:
                assert conn.get(queue + "/close") is None

    consumer_threads = [Worker(consume, i) for i in range(consumers)]
    producer_threads = [Worker(produce, i) for i in range(producers)]
    for worker in consumer_threads:  # consumers first: they block waiting for items
        worker.start()
    for worker in producer_threads:
        worker.start()
    join_all(producer_threads, server)
    assert all_received.wait(max(0.0, deadline - time.monotonic())), (
        f"received {sum(counts.values())} of {len(expected)}\n{server.log()}"
    )
    join_all(consumer_threads, server)

    duplicates = {body: n for body, n in counts.items() if n > 1}
    assert not duplicates, f"delivered more than once: {sorted(duplicates)[:10]}"
    assert set(counts) == expected, f"missing: {sorted(expected - set(counts))[:10]}"
    # One FIFO queue: each consumer sees any one producer's items in production order.
    for got in per_consumer:
        for producer in range(producers):
            prefix = b"p%02d-" % producer
            seqs = [body for body in got if body.startswith(prefix)]
            assert seqs == sorted(seqs), f"out of order for producer {producer}: {seqs}"
    assert sum(1 for got in per_consumer if got) > 1, "only one consumer ever got work"

    with server.connect() as conn:
        assert conn.get(queue + "/t=200") is None
        stats = conn.stats()
    assert stats[f"queue_{queue}_items"] == "0"
    assert stats[f"queue_{queue}_open_transactions"] == "0"


def test_blocked_get_wakes_when_an_item_arrives(server):
    got = threading.Event()
    result: list[bytes | None] = []

    def wait_for_item():
        with server.connect(timeout=10) as conn:
            result.append(conn.get("wake/t=8000", timeout=10))
            got.set()

    worker = Worker(wait_for_item)
    worker.start()
    with server.connect() as conn:
        wait_until(
            lambda: conn.stats().get("queue_wake_waiters") == "1",
            10,
            "the consumer to block in the server",
            server,
        )
        assert not got.is_set()
        set_at = time.monotonic()
        assert conn.set("wake", b"ping") == b"STORED\r\n"
    assert got.wait(5), f"blocked get did not wake up\n{server.log()}"
    woke_after = time.monotonic() - set_at
    join_all([worker], server)
    assert result == [b"ping"]
    assert woke_after < 2.0, f"woke {woke_after:.2f}s after the set (the wait was 8s)"


def test_one_item_many_waiters_exactly_one_gets_it(server):
    waiters = 10
    results: list[bytes | None] = []
    lock = threading.Lock()

    def wait_once():
        with server.connect(timeout=10) as conn:
            body = conn.get("single/t=1500")
            with lock:
                results.append(body)

    workers = [Worker(wait_once) for _ in range(waiters)]
    for worker in workers:
        worker.start()
    with server.connect() as conn:
        wait_until(
            lambda: conn.stats().get("queue_single_waiters") == str(waiters),
            10,
            f"{waiters} consumers to block in the server",
            server,
        )
        assert conn.set("single", b"only") == b"STORED\r\n"
    join_all(workers, server)
    assert sorted(results, key=lambda b: b or b"") == [None] * (waiters - 1) + [b"only"]


@pytest.mark.parametrize("first", ["/close/open/t=5000", "/open/t=5000"])
def test_item_handed_to_a_waiting_open_is_confirmed_by_the_next_close(server, first):
    """The reliable-read loop when the worker was idle: the item that woke the blocked
    ``open`` must be the one the next ``close`` confirms, and must not come back."""
    with server.connect() as worker, server.connect() as producer:
        worker.send(b"get wq" + first.encode() + b"\r\n")
        wait_until(
            lambda: producer.stats().get("queue_wq_waiters") == "1",
            10,
            "the worker to block in the server",
            server,
        )
        assert producer.set("wq", b"0") == b"STORED\r\n"
        worker.expect(b"VALUE wq" + first.encode() + b" 0 1\r\n0\r\nEND\r\n")
        assert producer.set("wq", b"1") == b"STORED\r\n"
        worker.send(b"get wq/close/open/t=5000\r\n")
        worker.expect(b"VALUE wq/close/open/t=5000 0 1\r\n1\r\nEND\r\n")
        worker.send(b"get wq/close\r\n")
        worker.expect(b"END\r\n")
        stats = producer.stats()
        assert stats["queue_wq_items"] == "0"
        assert stats["queue_wq_bytes"] == "0"
        assert stats["queue_wq_open_transactions"] == "0"
        assert producer.get("wq/t=100") is None
