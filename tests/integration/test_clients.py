"""Real memcache clients (pymemcache, pylibmc, python-memcached) and raw bytes against the server.

Each test uses its own queue on a module-wide server, so the tests do not interfere. The
expected bytes come from docs/protocol.md with the kestrelpy defaults: noreply honoured, VALUE
echoes the requested key, flags preserved, ``gets`` appends a CAS.
"""

from __future__ import annotations

import time

import memcache
import pylibmc
import pytest
from pymemcache import serde
from pymemcache.client.base import Client as PymemcacheClient

from .conftest import is_our_version

pytestmark = pytest.mark.timeout(60)


def pymemcache_client(server, **kwargs):
    return PymemcacheClient((server.host, server.port), connect_timeout=5, timeout=5, **kwargs)


def pylibmc_client(server):
    # binary=False: Kestrel speaks the text protocol only. libmemcached's poll timeout
    # (5 s by default) must stay above every /t= wait used here.
    return pylibmc.Client(
        [server.address], binary=False, behaviors={"tcp_nodelay": True, "_poll_timeout": 5000}
    )


def python_memcached_client(server):
    return memcache.Client([server.address], socket_timeout=5)


# -- pymemcache --------------------------------------------------------------------------------


def test_pymemcache_default_noreply_set_then_get(shared_server, qname):
    client = pymemcache_client(shared_server, default_noreply=True)
    try:
        assert client.set(qname, b"one") is True
        assert client.set(qname, b"two") is True
        # If the server answered the noreply sets, these reads would see STORED and fail.
        assert client.get(qname) == b"one"
        assert client.get(qname) == b"two"
        assert client.get(qname + "/t=100") is None
    finally:
        client.close()


def test_pymemcache_set_with_reply_and_delete(shared_server, qname):
    client = pymemcache_client(shared_server, default_noreply=False)
    try:
        assert client.set(qname, b"x") is True
        assert client.set(qname, b"y") is True
        assert client.delete(qname) is True  # DELETED drops the queue's items
        assert client.get(qname) is None
    finally:
        client.close()


def test_pymemcache_get_with_timeout_on_empty_queue_waits_then_returns_none(shared_server, qname):
    client = pymemcache_client(shared_server)
    try:
        started = time.monotonic()
        assert client.get(qname + "/t=100") is None
        elapsed = time.monotonic() - started
        assert 0.09 <= elapsed < 3.0, f"t=100 wait took {elapsed:.3f}s"
    finally:
        client.close()


def test_pymemcache_get_many_maps_values_by_requested_key(shared_server, qname):
    client = pymemcache_client(shared_server)
    try:
        client.set(qname, b"a")
        assert client.get_many([qname]) == {qname: b"a"}
        client.set(qname, b"b")
        # pymemcache maps the VALUE line by key; this needs the requested key echoed back.
        assert client.get_many([qname + "/t=50"]) == {qname + "/t=50": b"b"}
        assert client.get_many([qname]) == {}
    finally:
        client.close()


def test_pymemcache_get_many_serves_only_the_first_key(shared_server, qname):
    """Kestrel ignores keys after the first (docs/protocol.md §4): only one item leaves."""
    client = pymemcache_client(shared_server)
    second = qname + "_second"
    try:
        client.set(qname, b"first")
        client.set(second, b"second")
        assert client.get_many([qname, second]) == {qname: b"first"}
        assert client.get(second) == b"second"  # untouched by the multi-get
    finally:
        client.close()


def test_pymemcache_gets_returns_value_and_cas(shared_server, qname):
    client = pymemcache_client(shared_server)
    try:
        client.set(qname, b"v1")
        client.set(qname, b"v2")
        value1, cas1 = client.gets(qname)
        value2, cas2 = client.gets(qname)
        assert (value1, value2) == (b"v1", b"v2")  # gets removes, like get
        assert isinstance(cas1, bytes) and cas1.isdigit(), cas1
        assert isinstance(cas2, bytes) and cas2.isdigit(), cas2
        assert cas1 != cas2, "two items share one CAS/item id"
        assert int(cas1) < 2**64 and int(cas2) < 2**64
        assert client.gets(qname) == (None, None)
    finally:
        client.close()


def test_pymemcache_flags_carry_the_serialization(shared_server, qname):
    client = pymemcache_client(shared_server, serde=serde.pickle_serde)
    try:
        client.set(qname, {"job": "resize", "ids": [1, 2]})  # FLAG_PICKLE
        client.set(qname, 42)  # FLAG_INTEGER
        client.set(qname, "text é")  # FLAG_TEXT
        assert client.get(qname) == {"job": "resize", "ids": [1, 2]}
        assert client.get(qname) == 42
        assert client.get(qname) == "text é"
    finally:
        client.close()


def test_pymemcache_reliable_read_with_abort(shared_server, qname):
    client = pymemcache_client(shared_server)
    try:
        client.set(qname, b"a")
        client.set(qname, b"b")
        assert client.get(qname + "/open") == b"a"
        assert client.get(qname + "/abort") is None  # always END
        assert client.get(qname + "/close/open") == b"a"  # aborted item is back at the head
        assert client.get(qname + "/close/open") == b"b"
        assert client.get(qname + "/close/open/t=50") is None
        assert client.get(qname + "/close") is None
    finally:
        client.close()
    with shared_server.connect() as conn:
        assert conn.get(qname + "/t=100") is None  # nothing came back after the disconnect


def test_pymemcache_version(shared_server):
    client = pymemcache_client(shared_server)
    try:
        version = client.version()
        assert is_our_version(version), version
    finally:
        client.close()


# -- pylibmc -----------------------------------------------------------------------------------


def test_pylibmc_set_get_keeps_types_through_flags(shared_server, qname):
    mc = pylibmc_client(shared_server)
    try:
        assert mc.set(qname, b"raw bytes") is True
        assert mc.set(qname, "héllo") is True  # str: pylibmc marks it in the flags
        assert mc.set(qname, 7) is True
        assert mc.set(qname, {"a": 1}) is True  # pickled
        assert mc.get(qname) == b"raw bytes"
        assert mc.get(qname) == "héllo"
        assert mc.get(qname) == 7
        assert mc.get(qname) == {"a": 1}
        assert mc.get(qname) is None
    finally:
        mc.disconnect_all()


def test_pylibmc_reliable_read_loop(shared_server, qname):
    mc = pylibmc_client(shared_server)
    jobs = [f"job-{i}".encode() for i in range(20)]
    try:
        for job in jobs:
            assert mc.set(qname, job) is True
        got = []
        for _ in range(len(jobs) + 5):  # bounded: a broken server cannot loop us forever
            item = mc.get(qname + "/close/open/t=100")
            if item is None:
                break
            got.append(item)
        assert mc.get(qname + "/close") is None
        assert got == jobs
    finally:
        mc.disconnect_all()
    with shared_server.connect() as conn:
        assert conn.get(qname + "/t=100") is None


def test_pylibmc_abort_then_reopen_gets_the_same_item(shared_server, qname):
    mc = pylibmc_client(shared_server)
    try:
        mc.set(qname, b"first")
        mc.set(qname, b"second")
        assert mc.get(qname + "/open") == b"first"
        assert mc.get(qname + "/abort") is None
        assert mc.get(qname + "/open") == b"first"
        assert mc.get(qname + "/close/open") == b"second"
        assert mc.get(qname + "/close") is None
        assert mc.get(qname + "/t=50") is None
    finally:
        mc.disconnect_all()


# -- python-memcached --------------------------------------------------------------------------


def test_python_memcached_set_get_and_types(shared_server, qname):
    mc = python_memcached_client(shared_server)
    try:
        assert mc.set(qname, "text") == 1
        assert mc.set(qname, 12345) == 1
        assert mc.set(qname, b"bytes") == 1
        assert mc.get(qname) == "text"
        assert mc.get(qname) == 12345
        assert mc.get(qname) == b"bytes"
        assert mc.get(qname + "/t=100") is None
    finally:
        mc.disconnect_all()


def test_python_memcached_get_multi_and_delete(shared_server, qname):
    mc = python_memcached_client(shared_server)
    try:
        mc.set(qname, "one")
        assert mc.get_multi([qname + "/t=10"]) == {qname + "/t=10": "one"}
        mc.set(qname, "two")
        assert mc.delete(qname) == 1
        assert mc.get_multi([qname]) == {}
    finally:
        mc.disconnect_all()


# -- raw bytes ---------------------------------------------------------------------------------


def test_raw_set_get_exact_bytes_with_flags_and_peek(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(b"set " + q + b" 5 0 3\r\nabc\r\n")
        conn.expect(b"STORED\r\n")
        conn.send(b"get " + q + b"/peek\r\n")
        conn.expect(b"VALUE " + q + b"/peek 5 3\r\nabc\r\nEND\r\n")
        conn.send(b"get " + q + b"\r\n")  # peek left the item in place
        conn.expect(b"VALUE " + q + b" 5 3\r\nabc\r\nEND\r\n")
        conn.send(b"get " + q + b"\r\n")
        conn.expect(b"END\r\n")


def test_raw_gets_appends_a_numeric_cas(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        assert conn.set(q, b"abc", flags=9) == b"STORED\r\n"
        conn.send(b"gets " + q + b"\r\n")
        line = conn.read_line()
        parts = line.split()
        assert parts[:4] == [b"VALUE", q, b"9", b"3"], line
        assert len(parts) == 5 and parts[4].isdigit(), line
        conn.expect(b"abc\r\nEND\r\n")


def test_raw_noreply_set_sends_no_reply(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(
            b"set " + q + b" 0 0 1 noreply\r\na\r\n"
            b"set " + q + b" 0 0 1 noreply\r\nb\r\n"
            b"get " + q + b"\r\n"
        )
        conn.expect(b"VALUE " + q + b" 0 1\r\na\r\nEND\r\n")
        conn.send(b"get " + q + b"\r\n")
        conn.expect(b"VALUE " + q + b" 0 1\r\nb\r\nEND\r\n")


def test_raw_pipelined_replies_stay_in_order_behind_a_blocking_get(shared_server, qname):
    q = qname.encode()
    empty = q + b"_empty"
    with shared_server.connect() as conn:
        started = time.monotonic()
        conn.send(
            b"set " + q + b" 0 0 1\r\nx\r\n"
            b"get " + empty + b"/t=300\r\n"
            b"get " + q + b"\r\n"
            b"version\r\n"
        )
        conn.expect(b"STORED\r\n")
        conn.expect(b"END\r\n")
        conn.expect(b"VALUE " + q + b" 0 1\r\nx\r\nEND\r\n")
        line = conn.read_line()
        assert line.startswith(b"VERSION ") and is_our_version(line[8:-2]), line
        # The get after the blocking one was held back until the wait ended.
        assert time.monotonic() - started >= 0.25


def test_raw_bare_lf_request_lines(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(b"set " + q + b" 0 0 1\nz\r\n")
        conn.expect(b"STORED\r\n")
        conn.send(b"get " + q + b"\n")
        conn.expect(b"VALUE " + q + b" 0 1\r\nz\r\nEND\r\n")


@pytest.mark.parametrize(("set_word", "get_word"), [(b"SET", b"GET"), (b"Set", b"Get")])
def test_raw_command_words_are_case_insensitive(shared_server, qname, set_word, get_word):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(set_word + b" " + q + b" 0 0 1\r\nz\r\n")
        conn.expect(b"STORED\r\n")
        conn.send(get_word + b" " + q + b"/peek\r\n")
        conn.expect(b"VALUE " + q + b"/peek 0 1\r\nz\r\nEND\r\n")
        # Queue names are case-sensitive: the upper-cased name is another, empty queue.
        conn.send(b"get " + q.upper() + b"\r\n")
        conn.expect(b"END\r\n")


def test_raw_version(shared_server):
    with shared_server.connect() as conn:
        line = conn.request(b"version")
        assert line.startswith(b"VERSION ") and line.endswith(b"\r\n"), line
        assert is_our_version(line[8:-2]), line


def test_raw_delete_and_flush(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        assert conn.request(b"delete " + q + b"_never_seen") == b"DELETED\r\n"
        conn.set(q, b"1")
        conn.set(q, b"2")
        assert conn.request(b"flush " + q) == b"END\r\n"
        assert conn.get(q) is None
        conn.set(q, b"3")
        assert conn.request(b"delete " + q) == b"DELETED\r\n"
        assert conn.get(q) is None


def test_raw_open_item_belongs_to_its_connection(shared_server, qname):
    q = qname.encode()
    holder = shared_server.connect()
    with shared_server.connect() as other:
        assert holder.set(q, b"job") == b"STORED\r\n"
        assert holder.get(q + b"/open") == b"job"
        assert other.get(q + b"/close") is None  # a close elsewhere is a no-op
        assert other.get(q) is None  # the open item is not waiting in the queue
        holder.close()  # disconnect: the open item goes back to the head
        assert other.get(q + b"/t=3000") == b"job"


def test_raw_closed_item_is_gone_after_disconnect(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.set(q, b"job")
        assert conn.get(q + b"/open") == b"job"
        assert conn.get(q + b"/close") is None
    with shared_server.connect() as conn:
        assert conn.get(q + b"/t=200") is None


def test_raw_abort_puts_item_back_at_the_head(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as worker, shared_server.connect() as other:
        worker.set(q, b"a")
        worker.set(q, b"b")
        assert worker.get(q + b"/open") == b"a"
        assert worker.get(q + b"/abort") is None
        assert other.get(q) == b"a"
        assert other.get(q) == b"b"


def test_raw_stats_report_items_and_open_transactions(shared_server, qname):
    with shared_server.connect() as conn:
        for body in (b"1", b"22", b"333"):
            conn.set(qname, body)
        assert conn.get(qname + "/open") == b"1"
        stats = conn.stats()
    first_keys = [
        "uptime", "time", "version", "curr_items", "total_items", "bytes",
        "reserved_memory_ratio", "curr_connections", "total_connections", "cmd_get",
        "cmd_set", "cmd_peek", "get_hits", "get_misses", "bytes_read", "bytes_written",
        "queue_creates", "queue_deletes", "queue_expires",
    ]  # fmt: skip
    assert list(stats)[: len(first_keys)] == first_keys
    assert is_our_version(stats["version"]), stats["version"]
    # the open item is not counted (docs/protocol.md §12)
    assert stats[f"queue_{qname}_items"] == "2"
    assert stats[f"queue_{qname}_bytes"] == "5"
    assert stats[f"queue_{qname}_open_transactions"] == "1"
    assert stats[f"queue_{qname}_total_items"] == "3"


def test_raw_exptime_below_one_million_is_relative(shared_server, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(b"set " + q + b" 0 999999 5\r\nalive\r\n")
        conn.expect(b"STORED\r\n")
        conn.send(b"set " + q + b" 0 1000000 4\r\ngone\r\n")  # absolute: 1970-01-12
        conn.expect(b"STORED\r\n")
        conn.send(b"set " + q + b" 0 -1 4\r\ngone\r\n")  # negative: already expired
        conn.expect(b"STORED\r\n")
        assert conn.get(q) == b"alive"
        assert conn.get(q) is None
