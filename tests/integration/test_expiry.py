"""Item expiry, queue ``max_age``, ``expire_to_queue``, sweeps and ``max_queue_age``.

Contract (docs/protocol.md §3, §4, §8, §12; issue 5 item 3): a set's exptime is ``0`` (none),
``1..999999`` relative seconds, ``>= 1000000`` absolute unix seconds, negative = already
expired; a queue's ``max_age`` caps every item's life (the earlier of the two wins). Expired
items are never returned; ``expire_to_queue`` moves them to another queue; ``flush_expired q``
and ``flush_all_expired`` answer the number removed; with ``expiration_timer_frequency`` set,
a background sweep removes expired items without any read and deletes queues that are empty
and older than ``max_queue_age``. Items that expired while the server was down are not
returned after a restart.

Waiting for time to pass uses the server's own blocking ``get <empty>/t=N`` (the reply comes
no earlier than N ms later); state changed by the timer is polled from ``stats``.
"""

from __future__ import annotations

import time

import pytest

from .conftest import ServerFactory, drain, wait_until

pytestmark = pytest.mark.timeout(60)

LAZY_CONFIG = """\
[server]
expiration_timer_frequency = "never"

[queues."aged"]
max_age = "300ms"

[queues."aged_src"]
max_age = "300ms"
expire_to_queue = "aged_dst"

[queues."long_age"]
max_age = "1h"
"""

SWEEP_CONFIG = """\
[server]
expiration_timer_frequency = "100ms"

[queues."swept"]
max_age = "200ms"

[queues."swept_src"]
max_age = "200ms"
expire_to_queue = "swept_dst"

[queues."old_empty"]
max_queue_age = "200ms"

[queues."old_full"]
max_queue_age = "200ms"
"""

DOWN_CONFIG = """\
[server]
expiration_timer_frequency = "never"

[queues."short_age"]
max_age = "500ms"
"""


@pytest.fixture(scope="module")
def lazy(tmp_path_factory):
    """No expiration timer: only reads and flush commands remove expired items."""
    factory = ServerFactory(tmp_path_factory.mktemp("lazy"))
    yield factory(LAZY_CONFIG)
    factory.close()


@pytest.fixture(scope="module")
def sweeping(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("sweeping"))
    yield factory(SWEEP_CONFIG)
    factory.close()


def set_exp(conn, queue: str, body: bytes, exptime: int) -> None:
    conn.send(b"set %s 0 %d %d\r\n%s\r\n" % (queue.encode(), exptime, len(body), body))
    conn.expect(b"STORED\r\n")


def server_wait(conn, ms: int, qname: str) -> None:
    """Let at least ``ms`` ms pass on the server: a blocking get on an empty queue."""
    started = time.monotonic()
    assert conn.get(f"{qname}_clock/t={ms}", timeout=ms / 1000 + 5) is None
    assert time.monotonic() - started >= ms / 1000 - 0.05


def poll_stats(server, predicate, what: str, timeout: float = 10.0) -> dict[str, str]:
    seen: dict[str, str] = {}
    with server.connect() as conn:

        def check() -> bool:
            seen.clear()
            seen.update(conn.stats())
            return predicate(seen)

        wait_until(check, timeout, what, server)
    return dict(seen)


# -- per-item exptime -----------------------------------------------------------------------


def test_negative_exptime_is_already_expired_and_never_returned(lazy, qname):
    with lazy.connect() as conn:
        set_exp(conn, qname, b"gone1", -1)
        set_exp(conn, qname, b"keep1", 0)
        set_exp(conn, qname, b"gone2", -5)
        set_exp(conn, qname, b"keep2", 0)
        assert conn.get(qname + "/peek") == b"keep1"
        assert conn.get(qname) == b"keep1"
        assert conn.get(qname + "/open") == b"keep2"
        assert conn.get(qname + "/close") is None
        assert conn.get(qname) is None
        stats = conn.stats()
        assert stats[f"queue_{qname}_expired_items"] == "2"
        assert stats[f"queue_{qname}_items"] == "0"


def test_exptime_below_one_million_is_relative_at_or_above_is_absolute(lazy, qname):
    now = int(time.time())
    with lazy.connect() as conn:
        set_exp(conn, qname, b"abs-1970", 1_000_000)  # absolute: 1970-01-12, long gone
        set_exp(conn, qname, b"rel-11days", 999_999)  # relative: alive
        set_exp(conn, qname, b"rel-14days-in-memcached", 1_209_600)  # absolute 1970 here
        set_exp(conn, qname, b"abs-future", now + 3600)
        set_exp(conn, qname, b"abs-30days-in-memcached", 2_592_000)  # absolute 1970 here
        set_exp(conn, qname, b"abs-past", now - 10)
        assert drain(conn, qname) == [b"rel-11days", b"abs-future"]
        assert conn.stats()[f"queue_{qname}_expired_items"] == "4"


def test_relative_exptime_expires_after_that_many_seconds(lazy, qname):
    with lazy.connect() as conn:
        set_exp(conn, qname, b"short", 1)
        set_exp(conn, qname, b"forever", 0)
        assert conn.get(qname + "/peek") == b"short"  # alive at first
        server_wait(conn, 1100, qname)
        assert drain(conn, qname) == [b"forever"]
        assert conn.stats()[f"queue_{qname}_expired_items"] == "1"


# -- max_age and expire_to_queue ------------------------------------------------------------


def test_max_age_expires_items_and_wins_over_a_longer_exptime(lazy, qname):
    with lazy.connect() as conn:
        set_exp(conn, "aged", b"old1", 0)
        set_exp(conn, "aged", b"old2", 3600)  # the queue's 300 ms cap is earlier
        assert conn.get("aged/peek") == b"old1"
        server_wait(conn, 400, qname)
        set_exp(conn, "aged", b"new", 0)
        assert drain(conn, "aged") == [b"new"]
        assert conn.stats()["queue_aged_expired_items"] == "2"


def test_exptime_wins_over_a_longer_max_age(lazy):
    with lazy.connect() as conn:
        set_exp(conn, "long_age", b"gone", -1)
        set_exp(conn, "long_age", b"kept", 3600)
        assert drain(conn, "long_age") == [b"kept"]


def test_expire_to_queue_moves_expired_items_on_read(lazy, qname):
    with lazy.connect() as conn:
        set_exp(conn, "aged_src", b"m1", 0)
        set_exp(conn, "aged_src", b"m2", -1)  # already expired: moved as well
        server_wait(conn, 400, qname)
        assert conn.get("aged_src") is None
        assert drain(conn, "aged_dst") == [b"m1", b"m2"]
        stats = conn.stats()
        assert stats["queue_aged_src_expired_items"] == "2"
        assert stats["queue_aged_src_items"] == "0"


# -- flush_expired / flush_all_expired ------------------------------------------------------


def test_flush_expired_answers_the_count_removed(lazy, qname):
    with lazy.connect() as conn:
        for body in (b"x1", b"x2", b"x3"):
            set_exp(conn, qname, body, -1)
        set_exp(conn, qname, b"live", 0)
        assert conn.request(b"flush_expired " + qname.encode()) == b"3\r\n"
        assert conn.request(b"flush_expired " + qname.encode()) == b"0\r\n"
        stats = conn.stats()
        assert stats[f"queue_{qname}_items"] == "1"
        assert stats[f"queue_{qname}_expired_items"] == "3"
        assert drain(conn, qname) == [b"live"]


def test_flush_expired_of_an_unknown_queue_is_zero_and_does_not_create_it(lazy, qname):
    with lazy.connect() as conn:
        assert conn.request(b"flush_expired " + qname.encode()) == b"0\r\n"
        assert not any(key.startswith(f"queue_{qname}_") for key in conn.stats())


def test_flush_all_expired_answers_the_sum_over_all_queues(lazy, qname):
    with lazy.connect() as conn:
        first = conn.request(b"flush_all_expired")
        assert first.rstrip(b"\r\n").isdigit(), first  # clears leftovers of other tests
        set_exp(conn, qname + "_a", b"a1", -1)
        set_exp(conn, qname + "_a", b"a2", -1)
        set_exp(conn, qname + "_a", b"a3", 0)
        set_exp(conn, qname + "_b", b"b1", -1)
        assert conn.request(b"flush_all_expired") == b"3\r\n"
        assert conn.request(b"flush_all_expired") == b"0\r\n"
        stats = conn.stats()
        assert stats[f"queue_{qname}_a_items"] == "1"
        assert stats[f"queue_{qname}_b_items"] == "0"
        assert drain(conn, qname + "_a") == [b"a3"]


# -- background sweep ----------------------------------------------------------------------


def test_background_sweep_removes_expired_items_without_any_read(sweeping, qname):
    with sweeping.connect() as conn:
        for body in (b"s1", b"s2", b"s3"):
            set_exp(conn, "swept", body, 0)
        set_exp(conn, qname, b"neg", -1)
        set_exp(conn, qname, b"neg2", -1)
        stats = conn.stats()
        assert stats["queue_swept_items"] == "3"
    stats = poll_stats(
        sweeping,
        lambda s: s.get("queue_swept_items") == "0" and s.get(f"queue_{qname}_items") == "0",
        "the timer to sweep the expired items",
    )
    assert stats["queue_swept_expired_items"] == "3"
    assert stats["queue_swept_bytes"] == "0"
    assert stats[f"queue_{qname}_expired_items"] == "2"


def test_background_sweep_moves_items_to_expire_to_queue(sweeping):
    with sweeping.connect() as conn:
        set_exp(conn, "swept_src", b"first", 0)
        set_exp(conn, "swept_src", b"second", 0)
    poll_stats(
        sweeping,
        lambda s: s.get("queue_swept_dst_items") == "2",
        "the sweep to move both items to swept_dst",
    )
    with sweeping.connect() as conn:
        assert conn.get("swept_src") is None
        assert drain(conn, "swept_dst") == [b"first", b"second"]


def test_max_queue_age_deletes_an_empty_old_queue_but_not_a_non_empty_one(sweeping):
    with sweeping.connect() as conn:
        before = int(conn.stats()["queue_expires"])
        set_exp(conn, "old_full", b"keep", 0)
        assert conn.get("old_empty") is None  # the first read creates the queue
    stats = poll_stats(
        sweeping,
        lambda s: "queue_old_empty_items" not in s,
        "the empty old queue to be deleted",
    )
    assert stats["queue_old_full_items"] == "1"  # as old, but not empty: kept
    assert int(stats["queue_expires"]) == before + 1  # it existed, and expired
    with sweeping.connect() as conn:
        assert conn.get("old_full") == b"keep"
    stats = poll_stats(
        sweeping,
        lambda s: "queue_old_full_items" not in s,
        "the drained old queue to be deleted",
    )
    assert int(stats["queue_expires"]) == before + 2


# -- restart ---------------------------------------------------------------------------------


def test_items_that_expired_while_the_server_was_down_are_not_returned(server_factory):
    srv = server_factory(DOWN_CONFIG)
    with srv.connect() as conn:
        set_exp(conn, "ttl", b"dies", 1)
        set_exp(conn, "ttl", b"lives", 0)
        set_exp(conn, "ttl", b"dies-too", 1)
        set_exp(conn, "ttl", b"lives-too", 3600)
        set_exp(conn, "short_age", b"aged-out", 0)
        set_exp(conn, "short_age", b"aged-out-too", 0)
        stored_at = time.time()
        assert conn.get("ttl/peek") == b"dies"
        assert conn.get("short_age/peek") == b"aged-out"
    srv.stop()
    # The server is down while every short-lived item's expiry passes (wall clock).
    wait_until(lambda: time.time() > stored_at + 1.2, 5, "the expiry time to pass", srv)
    srv.start()
    with srv.connect() as conn:
        assert drain(conn, "ttl") == [b"lives", b"lives-too"]
        assert conn.get("short_age") is None
        stats = conn.stats()
        assert stats["queue_ttl_expired_items"] == "2"
        assert stats["queue_short_age_expired_items"] == "2"
