"""``stats``: every global and per-queue key, in the documented order, with values that move.

Contract (docs/protocol.md §6, §12; issue 5 item 6): global keys ``uptime`` … ``queue_expires`` in
Kestrel's order; then, per queue in sorted name order, ``queue_<name>_<k>`` for Kestrel's keys
``items`` … ``journal_rotations``, then kestrelpy's ``create_time``, ``age_msec``,
``oldest_item_age_ms``, then ``children`` only for a fanout parent; then ``END``. ``items`` and
``bytes`` count waiting items and payload bytes (not open ones); ``get_hits``/``get_misses``
include peeks, ``cmd_peek`` is separate from ``cmd_get``; ``age`` is how long the last fetched
item waited (0 when empty); ``age_msec``/``oldest_item_age_ms`` are the age of the oldest
waiting item; ``logsize`` is the queue's store bytes (issue 5).
"""

from __future__ import annotations

import re
import time

import pytest

from .conftest import is_our_version, wait_until

pytestmark = pytest.mark.timeout(60)

GLOBAL_KEYS = [
    "uptime", "time", "version", "curr_items", "total_items", "bytes",
    "reserved_memory_ratio", "curr_connections", "total_connections", "cmd_get", "cmd_set",
    "cmd_peek", "get_hits", "get_misses", "bytes_read", "bytes_written", "queue_creates",
    "queue_deletes", "queue_expires",
]  # fmt: skip

QUEUE_KEYS = [
    "items", "bytes", "total_items", "logsize", "expired_items", "mem_items", "mem_bytes",
    "age", "discarded", "waiters", "open_transactions", "transactions",
    "canceled_transactions", "total_flushes", "journal_rewrites", "journal_rotations",
    "create_time", "age_msec", "oldest_item_age_ms",
]  # fmt: skip


def qstats(stats: dict[str, str], queue: str) -> dict[str, int]:
    prefix = f"queue_{queue}_"
    return {k[len(prefix) :]: int(v) for k, v in stats.items() if k.startswith(prefix)}


def ints(stats: dict[str, str], *keys: str) -> dict[str, int]:
    return {key: int(stats[key]) for key in keys}


def test_key_order_globals_then_sorted_queues_then_children_last(server):
    with server.connect() as conn:
        assert conn.set("beta", b"x") == b"STORED\r\n"
        assert conn.get("alpha+kid") is None
        assert conn.set("alpha", b"y") == b"STORED\r\n"
        keys = list(conn.stats())
    expected = list(GLOBAL_KEYS)
    for queue in ("alpha", "alpha+kid", "beta"):
        expected += [f"queue_{queue}_{key}" for key in QUEUE_KEYS]
        if queue == "alpha":
            expected.append("queue_alpha_children")
    assert keys == expected


def test_global_values_on_a_fresh_server_and_how_they_change(server):
    t0 = int(time.time())
    conn = server.connect()
    try:
        version = conn.request(b"version").split()[1].decode()
        s0 = conn.stats()
        t1 = int(time.time())
        assert list(s0) == GLOBAL_KEYS  # no queues yet
        assert is_our_version(s0["version"]) and s0["version"] == version
        assert 0 <= int(s0["uptime"]) <= 60
        assert t0 - 1 <= int(s0["time"]) <= t1 + 1
        assert re.fullmatch(r"\d+\.\d{3}", s0["reserved_memory_ratio"]), s0
        zero = (
            "curr_items", "total_items", "bytes", "cmd_get", "cmd_set", "cmd_peek", "get_hits",
            "get_misses", "queue_creates", "queue_deletes", "queue_expires",
        )  # fmt: skip
        assert ints(s0, *zero) == dict.fromkeys(zero, 0)
        assert ints(s0, "curr_connections", "total_connections") == {
            "curr_connections": 1,
            "total_connections": 1,
        }

        sent = b"set g 0 0 5\r\nhello\r\nset g 0 0 6\r\nworld!\r\n"
        conn.send(sent)
        conn.expect(b"STORED\r\nSTORED\r\n")
        s1 = conn.stats()
        assert ints(s1, "cmd_set", "curr_items", "total_items", "bytes", "queue_creates") == {
            "cmd_set": 2,
            "curr_items": 2,
            "total_items": 2,
            "bytes": 11,
            "queue_creates": 1,
        }
        assert int(s1["bytes_read"]) - int(s0["bytes_read"]) >= len(sent)
        assert int(s1["bytes_written"]) - int(s0["bytes_written"]) >= len(b"STORED\r\n") * 2

        assert conn.get("g") == b"hello"  # hit
        assert conn.get("g/peek") == b"world!"  # peek hit
        assert conn.get("empty") is None  # miss; creates "empty"
        assert conn.get("empty/peek") is None  # peek miss
        s2 = conn.stats()
        counters = ("cmd_get", "cmd_peek", "get_hits", "get_misses", "curr_items", "bytes")
        assert ints(s2, *counters, "total_items", "queue_creates") == {
            "cmd_get": 2,
            "cmd_peek": 2,
            "get_hits": 2,
            "get_misses": 2,
            "curr_items": 1,
            "bytes": 6,
            "total_items": 2,
            "queue_creates": 2,
        }

        assert conn.get("empty/t=100") is None  # a wait that times out is a miss
        assert int(conn.stats()["get_misses"]) == 3

        with server.connect() as second:
            assert second.request(b"version").startswith(b"VERSION ")  # accepted by now
            s3 = conn.stats()
            assert ints(s3, "curr_connections", "total_connections") == {
                "curr_connections": 2,
                "total_connections": 2,
            }
        wait_until(lambda: conn.stats()["curr_connections"] == "1", 10, "the disconnect", server)
        assert conn.stats()["total_connections"] == "2"

        assert conn.request(b"delete empty") == b"DELETED\r\n"
        assert conn.request(b"delete never_created") == b"DELETED\r\n"
        s4 = conn.stats()
        assert int(s4["queue_deletes"]) == 1
        assert int(s4["bytes_written"]) > int(s2["bytes_written"])
    finally:
        conn.close()


def test_per_queue_values_through_set_open_abort_close_flush(shared_server, qname):
    t0 = int(time.time())
    with shared_server.connect() as conn:
        assert conn.get(qname) is None
        t1 = int(time.time())
        s = qstats(conn.stats(), qname)
        assert list(s) == QUEUE_KEYS
        assert t0 - 1 <= s["create_time"] <= t1 + 1
        assert {k: v for k, v in s.items() if k != "create_time"} == dict.fromkeys(
            [k for k in QUEUE_KEYS if k != "create_time"], 0
        )

        for body in (b"1", b"22", b"333"):
            assert conn.set(qname, body) == b"STORED\r\n"
        s = qstats(conn.stats(), qname)
        assert (s["items"], s["bytes"], s["total_items"]) == (3, 6, 3)
        assert 0 <= s["mem_items"] <= 3 and 0 <= s["mem_bytes"] <= 6

        assert conn.get(qname + "/open") == b"1"
        s = qstats(conn.stats(), qname)
        assert (s["items"], s["bytes"], s["open_transactions"], s["transactions"]) == (2, 5, 1, 1)

        assert conn.get(qname + "/abort") is None
        s = qstats(conn.stats(), qname)
        assert (s["items"], s["bytes"], s["open_transactions"]) == (3, 6, 0)
        assert s["canceled_transactions"] == 1

        assert conn.get(qname + "/open") == b"1"
        assert conn.get(qname + "/close") is None
        s = qstats(conn.stats(), qname)
        assert (s["items"], s["bytes"], s["open_transactions"], s["transactions"]) == (2, 5, 0, 2)
        assert (s["canceled_transactions"], s["total_items"]) == (1, 3)

        assert conn.request(b"flush " + qname.encode()) == b"END\r\n"
        s = qstats(conn.stats(), qname)
        assert (s["items"], s["bytes"], s["mem_items"], s["mem_bytes"]) == (0, 0, 0, 0)
        assert (s["total_flushes"], s["age"], s["age_msec"], s["oldest_item_age_ms"]) == (
            1,
            0,
            0,
            0,
        )


def test_expired_items_and_discarded_counters(shared_server, qname):
    with shared_server.connect() as conn:
        conn.send(b"set %s 0 -1 4\r\ngone\r\n" % qname.encode())
        conn.expect(b"STORED\r\n")
        assert conn.set(qname, b"live") == b"STORED\r\n"
        assert conn.get(qname) == b"live"
        s = qstats(conn.stats(), qname)
        assert (s["expired_items"], s["discarded"], s["items"], s["total_items"]) == (1, 0, 0, 2)


def test_waiters_counts_blocked_reads(shared_server, qname):
    with shared_server.connect() as conn, shared_server.connect() as w1:
        with shared_server.connect() as w2:
            for waiter, suffix, count in ((w1, "", 1), (w2, "/open", 2)):  # in this order
                waiter.send(f"get {qname}{suffix}/t=20000\r\n".encode())
                wait_until(
                    lambda count=count: qstats(conn.stats(), qname).get("waiters") == count,
                    10,
                    f"{count} blocked read(s)",
                    shared_server,
                )
            assert conn.set(qname, b"first") == b"STORED\r\n"
            assert w1.read_get_reply(timeout=10)[0].data == b"first"
            assert qstats(conn.stats(), qname)["waiters"] == 1
            assert conn.set(qname, b"second") == b"STORED\r\n"
            assert w2.read_get_reply(timeout=10)[0].data == b"second"
            s = qstats(conn.stats(), qname)
            assert (s["waiters"], s["open_transactions"], s["items"]) == (0, 1, 0)
        wait_until(
            lambda: qstats(conn.stats(), qname)["open_transactions"] == 0,
            10,
            "the disconnect to return the open item",
            shared_server,
        )
        assert qstats(conn.stats(), qname)["items"] == 1


def test_age_and_oldest_item_age(shared_server, qname):
    with shared_server.connect() as conn:
        assert conn.set(qname, b"older") == b"STORED\r\n"
        assert conn.get(qname + "_clock/t=250") is None  # >= 250 ms pass on the server
        assert conn.set(qname, b"newer") == b"STORED\r\n"
        s = qstats(conn.stats(), qname)
        assert 250 <= s["age_msec"] < 30_000, s
        assert s["oldest_item_age_ms"] == s["age_msec"]
        assert s["age"] == 0  # nothing fetched yet
        assert conn.get(qname) == b"older"
        s = qstats(conn.stats(), qname)
        assert 250 <= s["age"] < 30_000, s  # how long "older" waited
        assert s["age_msec"] < 250  # now "newer" is the oldest waiting item
        assert s["oldest_item_age_ms"] == s["age_msec"]
        assert conn.get(qname) == b"newer"
        s = qstats(conn.stats(), qname)
        assert (s["age"], s["age_msec"], s["oldest_item_age_ms"]) == (0, 0, 0)  # empty


def test_logsize_reports_store_bytes(shared_server, qname):
    with shared_server.connect() as conn:
        for _ in range(10):
            assert conn.set(qname, b"p" * 100) == b"STORED\r\n"
        s = qstats(conn.stats(), qname)
        assert s["bytes"] == 1000
        assert s["logsize"] >= s["bytes"], f"logsize {s['logsize']}: not the store bytes"
