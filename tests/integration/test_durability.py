"""What survives a crash (kill -9) or a clean stop (SIGTERM), on the same data dir.

Contract (docs/protocol.md §3, §5, §12): under ``sync = "always"`` a ``STORED`` reply means the item
is on disk; removals answered before a later ``STORED`` are on disk too; items open at a crash
are delivered again, at the head, in their original order. A clean SIGTERM keeps everything
whatever the sync policy.
"""

from __future__ import annotations

import time

import pytest
from pymemcache.client.base import Client as PymemcacheClient

from .conftest import wait_until

pytestmark = pytest.mark.timeout(90)


def set_pipelined(conn, queue, bodies):
    """Send every set in one write, then check one STORED per set, in order."""
    q = queue.encode()
    conn.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (q, len(b), b) for b in bodies))
    conn.expect(b"STORED\r\n" * len(bodies), timeout=30)


def drain_pipelined(conn, queue, expected_count):
    """Pipeline expected_count + 1 plain gets; return the bodies (None for END)."""
    q = queue.encode()
    conn.send(b"get %s\r\n" % q * (expected_count + 1))
    bodies = []
    for _ in range(expected_count + 1):
        values = conn.read_get_reply(timeout=30)
        assert len(values) <= 1
        bodies.append(values[0].data if values else None)
    return bodies


def test_acknowledged_sets_survive_kill9(server):
    bodies = [b"item-%04d" % i for i in range(1000)]
    with server.connect() as conn:
        set_pipelined(conn, "durable", bodies)
    client = PymemcacheClient((server.host, server.port), timeout=5, default_noreply=False)
    singles = [b"single-%02d" % i for i in range(50)]
    try:
        for body in singles:
            assert client.set("one_by_one", body) is True
    finally:
        client.close()

    server.kill9()
    server.start()

    with server.connect() as conn:
        stats = conn.stats()  # stored queues load at start; stats does not create them
        assert stats.get("queue_durable_items") == "1000", stats
        assert drain_pipelined(conn, "durable", 1000) == [*bodies, None]
        assert drain_pipelined(conn, "one_by_one", 50) == [*singles, None]


def test_open_items_are_redelivered_after_kill9_in_original_order(server):
    holder1 = server.connect()
    holder2 = server.connect()
    try:
        for body in (b"a", b"b", b"c"):
            assert holder1.set("work", body) == b"STORED\r\n"
        assert holder1.get("work/open") == b"a"
        assert holder2.get("work/open") == b"b"
        with server.connect() as conn:  # the open items are not waiting any more
            assert conn.get("work") == b"c"
            assert conn.set("work", b"d") == b"STORED\r\n"  # commits the removal of c
        server.kill9()
    finally:
        holder1.close()
        holder2.close()

    server.start()
    with server.connect() as conn:
        assert conn.get("work/close") is None  # nothing is open on this new connection
        assert drain_pipelined(conn, "work", 3) == [b"a", b"b", b"d", None]


def test_removals_answered_before_a_stored_survive_kill9(server):
    with server.connect() as conn:
        for body in (b"a", b"b", b"c", b"d"):
            assert conn.set("jobs", body) == b"STORED\r\n"
        assert conn.get("jobs") == b"a"  # plain get removes
        assert conn.get("jobs/open") == b"b"
        assert conn.get("jobs/close") is None  # confirmed
        # This STORED also covers the removals the server answered before it.
        assert conn.set("jobs", b"e") == b"STORED\r\n"
        server.kill9()

    server.start()
    with server.connect() as conn:
        assert drain_pipelined(conn, "jobs", 3) == [b"c", b"d", b"e", None]


def test_sigterm_exits_zero_keeps_items_and_returns_open_ones(server):
    bodies = [b"job-%03d" % i for i in range(100)]
    holder = server.connect()
    waiter = server.connect()
    try:
        set_pipelined(holder, "tasks", bodies)
        assert holder.get("tasks/open") == b"job-000"
        waiter.send(b"get idle/t=60000\r\n")  # blocked in the server during shutdown
        with server.connect() as conn:

            def waiting() -> bool:
                return conn.stats().get("queue_idle_waiters") == "1"

            wait_until(waiting, 10, "the blocking get to be waiting", server)

        started = time.monotonic()
        server.stop()  # asserts exit code 0
        assert time.monotonic() - started < 10, "a blocked get held up the shutdown"
    finally:
        holder.close()
        waiter.close()

    server.start()
    with server.connect() as conn:
        assert drain_pipelined(conn, "tasks", 100) == [*bodies, None]


@pytest.mark.parametrize("sync", ["periodic", "never"])
def test_clean_restart_keeps_everything_with_relaxed_sync(server_factory, sync):
    server = server_factory(f'[server]\nsync = "{sync}"\n')
    bodies = [b"p-%04d" % i for i in range(1000)]
    with server.connect() as conn:
        set_pipelined(conn, "relaxed", bodies)
        assert conn.get("relaxed/peek") == b"p-0000"

    server.stop()
    server.start()

    with server.connect() as conn:
        assert drain_pipelined(conn, "relaxed", 1000) == [*bodies, None]
