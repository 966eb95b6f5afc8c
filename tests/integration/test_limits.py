"""Queue limits configured in ``server.conf`` (docs/protocol.md §3, §8, §12; issue 5 item 2).

Contract: ``max_items``/``max_size`` make a queue full when *adding the item would exceed the
limit*, so a queue never holds more than its limits and the item that would exceed is refused
with ``NOT_STORED`` (the connection stays usable). ``max_item_size`` refuses a larger payload
after reading its data block. With ``discard_old_when_full`` the oldest items are dropped
instead, and counted in the ``discarded`` stat. ``[defaults]`` applies to every queue.
"""

from __future__ import annotations

import pytest

from .conftest import drain, module_server

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
[server]
expiration_timer_frequency = "never"

[defaults]
max_item_size = 1000

[queues."cap3"]
max_items = 3

[queues."size10"]
max_size = 10

[queues."size1k"]
max_size = "1KB"

[queues."itemsize8"]
max_item_size = 8

[queues."disc2"]
max_items = 2
discard_old_when_full = true

[queues."discsize"]
max_size = 10
discard_old_when_full = true

[queues."discbig"]
max_items = 2
max_item_size = 4
discard_old_when_full = true

[queues."bigitem"]
max_item_size = "2KB"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "limits", CONFIG)


def queue_stat(conn, queue: str, key: str) -> str:
    stats = conn.stats()
    name = f"queue_{queue}_{key}"
    assert name in stats, f"{name} missing from stats: {sorted(stats)}"
    return stats[name]


def test_max_items_refuses_the_item_that_would_exceed(srv):
    with srv.connect() as conn:
        for body in (b"a", b"b", b"c"):
            assert conn.set("cap3", body) == b"STORED\r\n"
        assert conn.set("cap3", b"d") == b"NOT_STORED\r\n"
        assert queue_stat(conn, "cap3", "items") == "3"
        assert queue_stat(conn, "cap3", "total_items") == "3"
        assert conn.get("cap3") == b"a"  # room for one more now
        assert conn.set("cap3", b"e") == b"STORED\r\n"
        assert conn.set("cap3", b"f") == b"NOT_STORED\r\n"
        assert drain(conn, "cap3") == [b"b", b"c", b"e"]


def test_open_items_do_not_count_toward_max_items(srv):
    """``items`` counts waiting items only (docs/protocol.md §12); an open one has left the
    queue."""
    with srv.connect() as holder, srv.connect() as conn:
        for body in (b"1", b"2", b"3"):
            assert conn.set("cap3", body) == b"STORED\r\n"
        assert holder.get("cap3/open") == b"1"
        assert conn.set("cap3", b"4") == b"STORED\r\n"
        assert conn.set("cap3", b"5") == b"NOT_STORED\r\n"
        assert holder.get("cap3/close") is None
        assert drain(conn, "cap3") == [b"2", b"3", b"4"]


def test_max_size_counts_payload_bytes_and_refuses_what_would_exceed(srv):
    with srv.connect() as conn:
        assert conn.set("size10", b"x" * 6) == b"STORED\r\n"
        assert conn.set("size10", b"y" * 5) == b"NOT_STORED\r\n"  # 11 > 10
        assert conn.set("size10", b"z" * 4) == b"STORED\r\n"  # exactly 10
        assert conn.set("size10", b"w") == b"NOT_STORED\r\n"
        assert queue_stat(conn, "size10", "bytes") == "10"
        assert queue_stat(conn, "size10", "items") == "2"
        assert drain(conn, "size10") == [b"x" * 6, b"z" * 4]


def test_max_size_accepts_a_size_with_unit(srv):
    with srv.connect() as conn:
        assert conn.set("size1k", b"k" * 1000) == b"STORED\r\n"
        assert conn.set("size1k", b"k" * 24) == b"STORED\r\n"  # 1024 = "1KB"
        assert conn.set("size1k", b"k") == b"NOT_STORED\r\n"
        assert queue_stat(conn, "size1k", "bytes") == "1024"
        assert drain(conn, "size1k") == [b"k" * 1000, b"k" * 24]


def test_max_item_size_is_not_stored_and_the_connection_is_kept(srv):
    with srv.connect() as conn:
        # Pipelined: the refused item's data block must be consumed, not parsed as commands.
        conn.send(b"set itemsize8 0 0 9\r\nget x/y/z\r\nset itemsize8 0 0 8\r\n12345678\r\n")
        conn.expect(b"NOT_STORED\r\nSTORED\r\n")
        assert conn.request(b"version").startswith(b"VERSION ")
        assert drain(conn, "itemsize8") == [b"12345678"]
        assert queue_stat(conn, "itemsize8", "total_items") == "1"


def test_defaults_section_applies_to_every_queue(srv, qname):
    with srv.connect() as conn:
        assert conn.set(qname, b"d" * 1001) == b"NOT_STORED\r\n"
        assert conn.set(qname, b"d" * 1000) == b"STORED\r\n"
        # A queue entry overrides the default.
        assert conn.set("bigitem", b"b" * 2048) == b"STORED\r\n"
        assert conn.set("bigitem", b"b" * 2049) == b"NOT_STORED\r\n"
        assert drain(conn, qname) == [b"d" * 1000]
        assert drain(conn, "bigitem") == [b"b" * 2048]


def test_discard_old_when_full_drops_the_oldest_and_counts_them(srv):
    with srv.connect() as conn:
        for body in (b"a", b"b", b"c", b"d"):
            assert conn.set("disc2", body) == b"STORED\r\n"
        stats = conn.stats()
        assert stats["queue_disc2_items"] == "2"
        assert stats["queue_disc2_discarded"] == "2"
        assert stats["queue_disc2_total_items"] == "4"
        assert drain(conn, "disc2") == [b"c", b"d"]
        assert queue_stat(conn, "disc2", "discarded") == "2"


def test_discard_old_when_full_by_size_drops_until_the_new_item_fits(srv):
    with srv.connect() as conn:
        assert conn.set("discsize", b"1111") == b"STORED\r\n"
        assert conn.set("discsize", b"2222") == b"STORED\r\n"
        assert conn.set("discsize", b"333333") == b"STORED\r\n"  # 14 > 10: drop "1111"
        stats = conn.stats()
        assert stats["queue_discsize_bytes"] == "10"
        assert stats["queue_discsize_discarded"] == "1"
        assert drain(conn, "discsize") == [b"2222", b"333333"]


def test_discard_old_when_full_does_not_apply_to_an_oversized_item(srv):
    with srv.connect() as conn:
        assert conn.set("discbig", b"a") == b"STORED\r\n"
        assert conn.set("discbig", b"b") == b"STORED\r\n"
        assert conn.set("discbig", b"12345") == b"NOT_STORED\r\n"  # > max_item_size 4
        assert queue_stat(conn, "discbig", "discarded") == "0"
        assert drain(conn, "discbig") == [b"a", b"b"]
