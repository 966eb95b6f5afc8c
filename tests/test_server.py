"""The memcache connection over a real KestrelService on LMDB: framing, order, durability.

Connections are StringTransports, time is a Clock (see conftest.py). Under
``sync = "never"`` the store commits when the clock runs its end-of-turn call, so
``clock.advance(0)`` is the commit: a reply to a write may appear only after it.
"""

from __future__ import annotations

import gc
import resource
import shutil
import signal
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_CONFIG, Conn, Harness, TcpStringTransport
from twisted.internet.interfaces import ILoggingContext, IProtocol, IPushProducer
from twisted.internet.task import Clock

from kestrelpy import __version__
from kestrelpy.commands import REPORT_PIECE_QUEUES
from kestrelpy.config import load_config
from kestrelpy.errors import DamagedStoreError
from kestrelpy.handler import Session
from kestrelpy.malloc_tuning import HeapTrimmer
from kestrelpy.replies import COMMIT_FAILED
from kestrelpy.server import _OUTPUT_BOUND, _PAUSE_BACKLOG, MemcacheFactory, State
from kestrelpy.service import make_service
from kestrelpy.stats import server_report
from kestrelpy.wire.memcache import stat_lines

VERSION = b"VERSION kestrelpy-" + __version__.encode() + b"\r\n"
MakeHarness = Callable[..., Harness]


def config(**server: object) -> str:
    """DEFAULT_CONFIG plus extra ``[server]`` keys (TOML values written as given)."""
    lines = "".join(f"{key} = {value}\n" for key, value in server.items())
    return DEFAULT_CONFIG + lines


def value(key: bytes, data: bytes, flags: int = 0, cas: int | None = None) -> bytes:
    head = b"VALUE %b %d %d" % (key, flags, len(data))
    if cas is not None:
        head += b" %d" % cas
    return head + b"\r\n" + data + b"\r\nEND\r\n"


def set_req(queue: bytes, data: bytes, flags: int = 0, exptime: int = 0) -> bytes:
    return b"set %b %d %d %d\r\n%b\r\n" % (queue, flags, exptime, len(data), data)


def fill(conn: Conn, queue: bytes, *items: bytes) -> None:
    reply = conn.ask(b"".join(set_req(queue, item) for item in items))
    assert reply == b"STORED\r\n" * len(items)


def drain(conn: Conn, queue: bytes) -> list[bytes]:
    """Take items with plain gets until END; returns their payloads."""
    found = []
    while True:
        reply = conn.ask(b"get " + queue + b"\r\n")
        if reply == b"END\r\n":
            return found
        head, data, end = reply.split(b"\r\n", 2)
        assert head.startswith(b"VALUE " + queue + b" ") and end == b"END\r\n", reply
        found.append(data)


def write_order(**conns: Conn) -> list[str]:
    """A list that records, by name, which connection the server writes to, in order."""
    order: list[str] = []
    for name, conn in conns.items():
        write = conn.transport.write

        def logged(data: bytes, name: str = name, write: Any = write) -> None:
            order.append(name)
            write(data)

        conn.transport.write = logged  # type: ignore[method-assign]
    return order


def queue_stat(harness: Harness, queue: str, key: str) -> object:
    return getattr(harness.collection.get(queue), key)


def test_a_connection_provides_the_interfaces_twisted_asks_for(kp: MakeHarness) -> None:
    # Declared with classImplements after the class (a decorator would keep mypyc from
    # compiling it as a native class): Twisted adapts a protocol by what it provides.
    proto = kp().connect().proto
    assert IProtocol.providedBy(proto)
    assert IPushProducer.providedBy(proto)
    assert ILoggingContext.providedBy(proto)
    assert proto.logPrefix() == "MemcacheConnection"


# -------------------------------------------------------------------- commit gating


def test_stored_is_written_only_after_the_commit(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    commits = h.store.commits
    conn.send(set_req(b"q", b"hello"))
    assert conn.take() == b""
    assert h.store.commits == commits
    assert [r.items for r in h.store.load_queues() if r.name == "q"] == []  # not on disk
    h.settle()
    assert h.store.commits == commits + 1
    assert conn.take() == b"STORED\r\n"
    (record,) = [r for r in h.store.load_queues() if r.name == "q"]
    assert (record.items, record.payload_bytes) == (1, 5)


def test_replies_queued_behind_a_stored_wait_for_its_commit(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.send(b"get r\r\n" + set_req(b"q", b"x") + b"version\r\nget q\r\n")
    assert conn.take() == b""  # END for `get r` may not overtake the STORED behind it...
    h.settle()
    assert conn.take() == b"END\r\nSTORED\r\n" + VERSION + value(b"q", b"x")


def test_reads_on_other_connections_do_not_wait_for_a_commit(kp: MakeHarness) -> None:
    h = kp()
    writer, reader = h.connect(), h.connect()
    writer.send(set_req(b"q", b"x"))
    reader.send(b"get q\r\nget q\r\n")
    assert reader.take() == value(b"q", b"x") + b"END\r\n"
    assert writer.take() == b""
    h.settle()
    assert writer.take() == b"STORED\r\n"


def test_two_writes_in_one_turn_share_one_commit(kp: MakeHarness) -> None:
    h = kp()
    first, second = h.connect(), h.connect()
    h.connect().ask(b"get q\r\n")  # creates q: its registration commits now
    commits = h.store.commits
    first.send(set_req(b"q", b"1"))
    second.send(set_req(b"q", b"2"))
    h.settle()
    assert h.store.commits == commits + 1
    assert first.take() == second.take() == b"STORED\r\n"


def test_a_set_handed_to_a_blocked_reader_needs_no_commit(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    assert reader.ask(b"get q/t=1000\r\n") == b""  # creates q (committed now) and waits
    commits = h.store.commits
    writer.send(set_req(b"q", b"x"))
    assert reader.take() == value(b"q/t=1000", b"x")
    assert writer.take() == b"STORED\r\n"  # nothing to store: no commit to wait for
    h.run_until_idle()
    assert h.store.commits == commits


def test_a_set_handed_to_a_blocked_open_read_is_stored(kp: MakeHarness) -> None:
    """An open item must survive a crash until it is closed: it is written first."""
    h = kp()
    reader, writer = h.connect(), h.connect()
    assert reader.ask(b"get q/t=1000/open\r\n") == b""
    writer.send(set_req(b"q", b"x"))
    assert reader.take() == value(b"q/t=1000/open", b"x")
    assert writer.take() == b""
    h.settle()
    assert writer.take() == b"STORED\r\n"
    (record,) = [r for r in h.store.load_queues() if r.name == "q"]
    assert (record.items, record.payload_bytes) == (1, 1)


def test_a_handed_over_set_still_waits_for_an_earlier_removal(kp: MakeHarness) -> None:
    """docs/protocol.md 12: a STORED follows the commit of every removal answered before."""
    h = kp()
    first, reader, writer = h.connect(), h.connect(), h.connect()
    fill(first, b"q", b"old")
    assert first.ask(b"get q\r\n") == value(b"q", b"old")  # its removal is still staged
    assert reader.ask(b"get q/t=1000\r\n") == b""
    commits = h.store.commits
    writer.send(set_req(b"q", b"new"))
    assert reader.take() == value(b"q/t=1000", b"new")
    assert writer.take() == b""
    h.settle()
    assert h.store.commits == commits + 1
    assert writer.take() == b"STORED\r\n"


def test_a_set_handed_to_a_reader_with_held_replies_waits_for_them(kp: MakeHarness) -> None:
    """A STORED must not leave before the reader the item went to has it: a crash in
    between would lose an acknowledged item."""
    h = kp()
    reader, writer = h.connect(), h.connect()
    h.connect().ask(b"get big\r\nget q\r\n")  # creates both queues now
    big = b"b" * (100 * 1024)
    reader.send(set_req(b"big", big) + b"get q/t=5000\r\n")  # STORED held, then it waits
    order = write_order(reader=reader, writer=writer)
    writer.send(set_req(b"q", b"abc"))
    assert writer.take() == reader.take() == b""
    h.settle()
    assert reader.take() == b"STORED\r\n" + value(b"q/t=5000", b"abc")
    assert writer.take() == b"STORED\r\n"
    assert order == ["reader", "writer"]


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored): a real write error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_each_write_in_a_pipeline_gets_its_own_commits_verdict(kp: MakeHarness) -> None:
    """A small set and a large one ride different commits; only the large one fails
    (the store cannot grow its file), so only its reply says so."""
    h = kp(config(item_size_max='"32MB"'))
    conn = h.connect()
    assert conn.ask(b"get q\r\n") == b"END\r\n"  # creates q now
    big = b"b" * (17 * 1024 * 1024)  # more than the store's first 16 MiB map can take
    with file_size_limit((h.data_dir / "data.mdb").stat().st_size):
        conn.send(set_req(b"q", b"small") + set_req(b"q", big))
        h.settle()
    assert conn.take() == b"STORED\r\n" + COMMIT_FAILED
    assert drain(conn, b"q") == [b"small"]


def test_a_small_set_is_answered_before_a_backlog_of_large_sets(kp: MakeHarness) -> None:
    """Large items commit in a lane of their own, about 1 MiB per commit."""
    h = kp()
    bulk, quick = h.connect(), h.connect()
    h.connect().ask(b"get big\r\nget small\r\n")  # creates both queues now
    order = write_order(bulk=bulk, quick=quick)
    big = b"b" * (600 * 1024)
    bulk.send(set_req(b"big", big) * 3)
    quick.send(set_req(b"small", b"x"))
    assert bulk.take() == quick.take() == b""
    h.settle()
    assert quick.take() == b"STORED\r\n"
    assert bulk.take() == b"STORED\r\n" * 3
    assert order == ["quick", "bulk", "bulk", "bulk"]  # each large set as its commit ends
    assert drain(quick, b"big") == [big] * 3


def test_replies_to_large_and_small_sets_keep_their_order(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    big = b"b" * (600 * 1024)
    conn.send(set_req(b"q", big) + set_req(b"q", b"small") + set_req(b"q", big) + b"get r\r\n")
    assert conn.take() == b""
    h.settle()
    assert conn.take() == b"STORED\r\n" * 3 + b"END\r\n"
    assert drain(conn, b"q") == [big, b"small", big]


def test_stored_set_survives_a_crash(kp: MakeHarness, tmp_path: Path) -> None:
    # Copy the data dir the moment STORED is written: that is what a killed process leaves.
    h = kp()
    conn = h.connect()
    conn.send(set_req(b"q", b"durable"))
    h.settle()
    assert conn.take() == b"STORED\r\n"
    crashed = tmp_path / "crashed"
    shutil.copytree(h.data_dir, crashed)
    service = make_service(load_config(h.config_path, data_dir=crashed), h.clock)
    try:
        queue = service.collection.get("q")
        assert queue is not None
        assert queue.take(0) is not None and queue.take(0) is None
    finally:
        service.store.close()


def test_removal_answered_before_a_set_commits_with_it(kp: MakeHarness, tmp_path: Path) -> None:
    # docs/protocol.md §12: a STORED means every removal answered before it is committed too.
    h = kp()
    reader, writer = h.connect(), h.connect()
    fill(writer, b"q", b"a", b"b")
    assert reader.ask(b"get q\r\n") == value(b"q", b"a")
    reader.send(b"get q\r\n")
    assert reader.take() == value(b"q", b"b")  # answered at once, removal only staged
    writer.send(set_req(b"other", b"x"))
    h.settle()
    assert writer.take() == b"STORED\r\n"
    crashed = tmp_path / "crashed"
    shutil.copytree(h.data_dir, crashed)
    service = make_service(load_config(h.config_path, data_dir=crashed), h.clock)
    try:
        assert service.collection.get("q").items == 0  # type: ignore[union-attr]
        assert service.collection.get("other").items == 1  # type: ignore[union-attr]
    finally:
        service.store.close()


# ---------------------------------------------------------------- split at every offset

STREAM = (
    set_req(b"q", b"hello")
    + b"set q 7 0 5 noreply\r\nworld\r\n"
    + b"get q\r\n"
    + b"gets q/open\n"
    + b"get q/close\r\n"
    + b"get q\r\n"
    + b"bogus command\r\n"
    + b"version\r\n"
    + set_req(b"q", b"a\r\nb")
    + b"get q/peek\r\n"
    + b"delete q\r\n"
    + b"get q/t=0\r\n"
    + b"flush r\r\n"
    + b"set r 0 0 1 noreply\r\nz\r\n"
    + b"get r/t=100\n"
    + b"get s/t=100\r\n"  # blocks until the clock passes 100 ms...
    + b"version\r\n"  # ...and holds this one back
)
EXPECTED = (
    b"STORED\r\n"
    + value(b"q", b"hello")
    + value(b"q/open", b"world", flags=7, cas=1)
    + b"END\r\n"  # close
    + b"END\r\n"  # empty
    + b"ERROR\r\n"
    + VERSION
    + b"STORED\r\n"
    + value(b"q/peek", b"a\r\nb")
    + b"DELETED\r\n"
    + b"END\r\n"
    + b"END\r\n"
    + value(b"r/t=100", b"z")
    + b"END\r\n"
    + VERSION
)


def run_pieces(h: Harness, pieces: list[bytes], *, settle_between: bool) -> bytes:
    conn = h.connect()
    for piece in pieces:
        conn.send(piece)
        if settle_between:
            h.settle()
    h.settle()
    before_timeout = conn.take()
    h.clock.advance(0.1)
    h.settle()
    return before_timeout + conn.take()


def test_stream_whole(kp: MakeHarness) -> None:
    assert run_pieces(kp(), [STREAM], settle_between=False) == EXPECTED


def test_stream_split_at_every_offset(kp: MakeHarness) -> None:
    for offset in range(1, len(STREAM)):
        pieces = [STREAM[:offset], STREAM[offset:]]
        h = kp(name=f"split{offset}")
        assert run_pieces(h, pieces, settle_between=offset % 2 == 0) == EXPECTED, offset
        h.stop()


@pytest.mark.parametrize("settle_between", [False, True])
def test_stream_byte_by_byte(kp: MakeHarness, settle_between: bool) -> None:
    pieces = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert run_pieces(kp(), pieces, settle_between=settle_between) == EXPECTED


# ------------------------------------------------------------------------ blocked reads


def test_blocked_get_woken_by_a_set_on_another_connection(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    assert reader.ask(b"get q/t=500\r\n") == b""
    assert queue_stat(h, "q", "waiters") == 1
    h.clock.advance(0.2)
    assert reader.take() == b""
    writer.send(set_req(b"q", b"job"))
    assert reader.take() == value(b"q/t=500", b"job")
    h.settle()
    assert writer.take() == b"STORED\r\n"
    assert queue_stat(h, "q", "waiters") == 0
    assert queue_stat(h, "q", "items") == 0
    h.clock.advance(1)  # the cancelled timer must not answer a second time
    assert reader.take() == b""
    assert reader.ask(b"get q\r\n") == b"END\r\n"


def test_blocked_get_times_out_with_end(kp: MakeHarness) -> None:
    h = kp()
    reader = h.connect()
    assert reader.ask(b"get q/t=500\r\n") == b""
    h.clock.advance(0.4)
    assert reader.take() == b""
    h.clock.advance(0.1)
    assert reader.take() == b"END\r\n"
    assert h.ctx.stats.get_misses == 1
    assert queue_stat(h, "q", "waiters") == 0


def test_blocked_readers_are_served_in_arrival_order(kp: MakeHarness) -> None:
    h = kp()
    first, second, writer = h.connect(), h.connect(), h.connect()
    first.ask(b"get q/t=1000\r\n")
    second.ask(b"get q/t=1000\r\n")
    writer.ask(set_req(b"q", b"1"))
    assert (first.take(), second.take()) == (value(b"q/t=1000", b"1"), b"")
    writer.ask(set_req(b"q", b"2"))
    assert second.take() == value(b"q/t=1000", b"2")


def test_pipelined_requests_behind_a_blocked_get_wait_in_order(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    assert reader.ask(b"get q/t=500\r\nget r\r\nversion\r\n") == b""
    writer.send(set_req(b"q", b"x"))
    h.settle()
    assert reader.take() == value(b"q/t=500", b"x") + b"END\r\n" + VERSION


def test_pipelined_requests_answered_after_a_timeout(kp: MakeHarness) -> None:
    h = kp()
    reader = h.connect()
    assert reader.ask(b"get q/t=500\r\n" + set_req(b"q", b"late") + b"get q\r\n") == b""
    h.clock.advance(0.5)
    h.settle()
    # The set behind the wait runs only after the wait ended: the get saw nothing.
    assert reader.take() == b"END\r\nSTORED\r\n" + value(b"q", b"late")


def test_requests_arriving_while_blocked_wait_too(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.ask(b"get q/t=500\r\n")
    assert reader.ask(b"version\r\nget q\r\n") == b""
    writer.ask(set_req(b"q", b"1") + set_req(b"q", b"2"))
    assert reader.take() == value(b"q/t=500", b"1") + VERSION + value(b"q", b"2")


def test_disconnect_while_blocked_cancels_the_wait(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.ask(b"get q/t=500\r\n")
    reader.lose()
    assert queue_stat(h, "q", "waiters") == 0
    assert writer.ask(set_req(b"q", b"kept")) == b"STORED\r\n"
    assert reader.take() == b""
    assert queue_stat(h, "q", "items") == 1
    h.clock.advance(1)
    assert drain(h.connect(), b"q") == [b"kept"]


def test_blocked_open_then_disconnect_returns_the_item(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.ask(b"get q/t=500/open\r\n")
    writer.ask(set_req(b"q", b"x"))
    assert reader.take() == value(b"q/t=500/open", b"x")
    assert queue_stat(h, "q", "open_transactions") == 1
    reader.lose()
    assert queue_stat(h, "q", "open_transactions") == 0
    assert drain(h.connect(), b"q") == [b"x"]


def test_blocked_peek_leaves_the_item(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.ask(b"get q/peek/t=500\r\n")
    writer.ask(set_req(b"q", b"x"))
    assert reader.take() == value(b"q/peek/t=500", b"x")
    assert drain(h.connect(), b"q") == [b"x"]


def test_delete_ends_a_blocked_read(kp: MakeHarness) -> None:
    h = kp()
    reader, admin = h.connect(), h.connect()
    reader.ask(b"get q/t=500\r\nversion\r\n")
    assert admin.ask(b"delete q\r\n") == b"DELETED\r\n"
    h.settle()
    assert reader.take() == b"END\r\n" + VERSION
    h.clock.advance(1)
    assert reader.take() == b""


# ----------------------------------------------------------------------- reliable reads


def test_open_close(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    fill(conn, b"q", b"a", b"b")
    assert conn.ask(b"get q/open\r\n") == value(b"q/open", b"a")
    assert queue_stat(h, "q", "open_transactions") == 1
    assert queue_stat(h, "q", "items") == 1
    assert conn.ask(b"get q/close\r\n") == b"END\r\n"
    assert queue_stat(h, "q", "open_transactions") == 0
    assert conn.ask(b"get q/close\r\n") == b"END\r\n"  # nothing open: no-op
    conn.lose()
    h.restart()
    assert drain(h.connect(), b"q") == [b"b"]


def test_close_open_confirms_then_opens(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    fill(conn, b"q", b"a", b"b")
    assert conn.ask(b"get q/open\r\n") == value(b"q/open", b"a")
    assert conn.ask(b"get q/close/open\r\n") == value(b"q/close/open", b"b")
    assert conn.ask(b"get q/open/close\r\n") == b"END\r\n"
    assert queue_stat(h, "q", "open_transactions") == 0
    assert queue_stat(h, "q", "transactions") == 2


def test_abort_returns_the_item_to_the_head(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    fill(conn, b"q", b"a", b"b")
    assert conn.ask(b"get q/open\r\n") == value(b"q/open", b"a")
    assert conn.ask(b"get q/abort\r\n") == b"END\r\n"
    assert queue_stat(h, "q", "canceled_transactions") == 1
    assert conn.ask(b"get q/abort\r\n") == b"END\r\n"  # nothing open: no-op
    assert queue_stat(h, "q", "canceled_transactions") == 1
    assert drain(conn, b"q") == [b"a", b"b"]


def test_close_on_another_connection_is_a_no_op(kp: MakeHarness) -> None:
    h = kp()
    owner, other = h.connect(), h.connect()
    fill(owner, b"q", b"a")
    owner.ask(b"get q/open\r\n")
    assert other.ask(b"get q/close\r\n") == b"END\r\n"
    assert queue_stat(h, "q", "open_transactions") == 1
    owner.lose()
    assert drain(other, b"q") == [b"a"]


def test_connection_loss_returns_open_items_in_opening_order(kp: MakeHarness) -> None:
    h = kp(config(max_open_transactions=3))
    owner, other = h.connect(), h.connect()
    fill(owner, b"q", b"a", b"b", b"c", b"d")
    fill(owner, b"r", b"r1")
    for item in (b"a", b"b", b"c"):
        assert owner.ask(b"get q/open\r\n") == value(b"q/open", item)
    assert owner.ask(b"get r/open\r\n") == value(b"r/open", b"r1")
    assert other.ask(b"get q\r\n") == value(b"q", b"d")
    owner.lose()
    assert queue_stat(h, "q", "canceled_transactions") == 3
    assert queue_stat(h, "q", "open_transactions") == 0
    assert drain(other, b"q") == [b"a", b"b", b"c"]
    assert drain(other, b"r") == [b"r1"]


def test_second_open_over_the_limit_is_error_and_close(kp: MakeHarness) -> None:
    h = kp()
    conn, other = h.connect(), h.connect()
    fill(conn, b"q", b"a", b"b")
    assert conn.ask(b"get q/open\r\n") == value(b"q/open", b"a")
    assert conn.ask(b"get q/open\r\nversion\r\n") == b"ERROR\r\n"
    assert conn.closing
    assert conn.ask(b"version\r\n") == b""  # nothing more is answered
    conn.lose()  # the server's close completes: the held item goes back
    assert drain(other, b"q") == [b"a", b"b"]


def test_plain_get_while_holding_is_error_and_close(kp: MakeHarness) -> None:
    h = kp()
    conn, other = h.connect(), h.connect()
    fill(conn, b"q", b"a", b"b")
    conn.ask(b"get q/open\r\n")
    assert conn.ask(b"get q/peek\r\n") == value(b"q/peek", b"b")  # peek is allowed
    assert conn.ask(b"get r\r\n") == b"END\r\n"  # another queue is irrelevant
    assert conn.ask(b"get q\r\n") == b"ERROR\r\n"
    assert conn.closing
    conn.lose()
    assert drain(other, b"q") == [b"a", b"b"]


def test_max_open_transactions_allows_several(kp: MakeHarness) -> None:
    h = kp(config(max_open_transactions=2))
    conn = h.connect()
    fill(conn, b"q", b"a", b"b", b"c")
    assert conn.ask(b"get q/open\r\nget q/open\r\n") == value(b"q/open", b"a") + value(
        b"q/open", b"b"
    )
    assert conn.ask(b"get q/open\r\n") == b"ERROR\r\n"
    assert conn.closing


def test_restart_keeps_items_and_open_items_in_order(kp: MakeHarness) -> None:
    h = kp()
    writer, holder, taker = h.connect(), h.connect(), h.connect()
    fill(writer, b"q", b"1", b"2", b"3", b"4", b"5")
    assert taker.ask(b"get q\r\n") == value(b"q", b"1")
    assert holder.ask(b"get q/open\r\n") == value(b"q/open", b"2")
    assert holder.ask(b"get q/close/open\r\n") == value(b"q/close/open", b"3")
    fill(writer, b"q", b"6")
    h.restart()  # holder never closed 3 and never saw its connection end
    conn = h.connect()
    assert conn.ask(b"get q/close\r\n") == b"END\r\n"  # a post-restart close is a no-op
    assert drain(conn, b"q") == [b"3", b"4", b"5", b"6"]


def test_restart_keeps_open_items_of_a_live_connection(kp: MakeHarness) -> None:
    h = kp(config(max_open_transactions=2))
    conn = h.connect()
    fill(conn, b"q", b"a", b"b", b"c")
    conn.ask(b"get q/open\r\nget q/open\r\n")
    h.restart()
    assert drain(h.connect(), b"q") == [b"a", b"b", b"c"]


def test_restart_commits_staged_writes(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.send(set_req(b"q", b"staged"))  # no settle: still in the pending batch
    h.restart()
    assert conn.take() == b"STORED\r\n"  # answered when the stop committed it
    assert drain(h.connect(), b"q") == [b"staged"]


# ------------------------------------------------------------------- commands and stats


def test_noreply_sets_produce_no_output(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.send(b"set q 0 0 1 noreply\r\nx\r\nset q 0 0 1 noreply\r\ny\r\n")
    assert conn.take() == b""
    h.settle()
    assert conn.take() == b""
    assert conn.ask(b"set q x 0 1 noreply\r\nz\r\ndelete r noreply\r\n") == b""
    assert conn.ask(b"get q\r\nget q\r\nget q\r\n") == value(b"q", b"x") + value(b"q", b"y") + (
        b"END\r\n"
    )


def test_noreply_ignored_when_not_honoured(kp: MakeHarness) -> None:
    h = kp(config(honor_noreply="false"))
    assert h.connect().ask(b"set q 0 0 1 noreply\r\nx\r\n") == b"STORED\r\n"


def test_flags_preserved(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.ask(set_req(b"q", b"x", flags=2147483647) + set_req(b"q", b"y", flags=12))
    assert conn.ask(b"get q\r\n") == value(b"q", b"x", flags=2147483647)
    assert conn.ask(b"get q/open\r\n") == value(b"q/open", b"y", flags=12)
    conn.ask(b"get q/abort\r\n")
    h.restart()
    assert h.connect().ask(b"get q\r\n") == value(b"q", b"y", flags=12)


def test_flags_zeroed_without_preserve_flags(kp: MakeHarness) -> None:
    h = kp(config(preserve_flags="false"))
    conn = h.connect()
    conn.ask(set_req(b"q", b"x", flags=12))
    assert conn.ask(b"get q\r\n") == value(b"q", b"x")


def test_gets_returns_the_item_id_as_cas(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    fill(conn, b"q", b"a", b"b", b"c")
    assert conn.ask(b"gets q\r\n") == value(b"q", b"a", cas=0)
    assert conn.ask(b"get q\r\n") == value(b"q", b"b")
    assert conn.ask(b"gets q/peek\r\n") == value(b"q/peek", b"c", cas=2)


def test_gets_without_cas_when_disabled(kp: MakeHarness) -> None:
    h = kp(config(gets_cas="false"))
    conn = h.connect()
    fill(conn, b"q", b"a")
    assert conn.ask(b"gets q\r\n") == value(b"q", b"a")


def test_bare_queue_name_without_echo(kp: MakeHarness) -> None:
    h = kp(config(echo_requested_key="false"))
    conn = h.connect()
    fill(conn, b"q", b"a")
    assert conn.ask(b"get q/t=10/open\r\n") == value(b"q", b"a")


def test_unknown_command_keeps_the_connection(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    assert conn.ask(b"bogus\r\nincr q 1\r\n\r\nversion\r\n") == b"ERROR\r\n" * 3 + VERSION
    assert not conn.closing


def test_bad_get_options_close(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    reply = conn.ask(b"get q/peek/open\r\nversion\r\n")
    assert reply.startswith(b"CLIENT_ERROR ") and reply.count(b"\r\n") == 1
    assert conn.closing


def test_set_with_slash_in_name_is_refused_and_kept(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    assert conn.ask(set_req(b"a/b", b"x") + b"version\r\n") == (
        b"CLIENT_ERROR bad queue name\r\n" + VERSION
    )
    assert not conn.closing


def test_item_over_item_size_max_closes(kp: MakeHarness) -> None:
    h = kp(config(item_size_max=8))
    conn = h.connect()
    assert conn.ask(set_req(b"q", b"12345678")) == b"STORED\r\n"
    assert conn.ask(set_req(b"q", b"123456789") + b"version\r\n") == (
        b"SERVER_ERROR object too large\r\n"
    )
    assert conn.closing


def test_item_over_queue_max_item_size_is_not_stored(kp: MakeHarness) -> None:
    h = kp(DEFAULT_CONFIG + "[defaults]\nmax_item_size = 4\n")
    conn = h.connect()
    assert conn.ask(set_req(b"q", b"12345") + set_req(b"q", b"1234")) == (
        b"NOT_STORED\r\nSTORED\r\n"
    )
    assert not conn.closing


def test_negative_flags_never_reach_the_store(kp: MakeHarness) -> None:
    # Kestrel reads flags as a signed int32; whether kp accepts -1 or refuses it, a reply
    # must come back and the connection must stay usable.
    h = kp()
    conn = h.connect()
    reply = conn.ask(set_req(b"q", b"x", flags=-1) + b"version\r\n")
    assert reply in (b"CLIENT_ERROR bad flags\r\n" + VERSION, b"STORED\r\n" + VERSION)


def test_huge_exptime_is_a_client_error(kp: MakeHarness) -> None:
    # 10**16 s does not fit the store's int64 ms expiry; it must not reach the store.
    h = kp()
    conn = h.connect()
    conn.send(b"set q 0 10000000000000000 1\r\nx\r\n")
    h.settle()
    reply = conn.take()
    assert reply.startswith(b"CLIENT_ERROR "), reply
    assert conn.ask(b"get q\r\n") in (b"", b"END\r\n")


def test_expired_items_are_never_returned(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.ask(
        set_req(b"q", b"gone", exptime=-1)
        + set_req(b"q", b"old", exptime=1_000_000)  # absolute: 1970
        + set_req(b"q", b"ten", exptime=10)  # relative: 10 s
        + set_req(b"q", b"keep")
    )
    h.clock.advance(9.999)
    assert conn.ask(b"get q/peek\r\n") == value(b"q/peek", b"ten")
    assert queue_stat(h, "q", "expired_items") == 2
    h.clock.advance(0.001)
    assert conn.ask(b"get q\r\n") == value(b"q", b"keep")
    assert queue_stat(h, "q", "expired_items") == 3


def test_max_age_applies(kp: MakeHarness) -> None:
    h = kp(DEFAULT_CONFIG + '[queues."q"]\nmax_age = "2s"\n')
    conn = h.connect()
    conn.ask(set_req(b"q", b"a") + set_req(b"q", b"b", exptime=1))
    h.clock.advance(1.0)
    assert conn.ask(b"get q/peek\r\n") == value(b"q/peek", b"a")  # b expired already
    h.clock.advance(1.0)
    assert conn.ask(b"get q\r\n") == b"END\r\n"


def test_flush_expired(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.ask(set_req(b"q", b"a", exptime=-1) + set_req(b"q", b"b", exptime=-1))
    conn.ask(set_req(b"q", b"c"))
    assert conn.ask(b"flush_expired q\r\nflush_expired nope\r\n") == b"2\r\n0\r\n"
    assert h.collection.get("nope") is None
    assert drain(conn, b"q") == [b"c"]


def test_delete_and_flush(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    fill(conn, b"q", b"a", b"b")
    fill(conn, b"r", b"c")
    assert conn.ask(b"flush q\r\n") == b"END\r\n"
    assert queue_stat(h, "q", "total_flushes") == 1
    assert conn.ask(b"get q\r\n") == b"END\r\n"
    assert conn.ask(b"delete r\r\ndelete nope\r\n") == b"DELETED\r\nDELETED\r\n"
    assert h.collection.get("r") is None
    assert h.collection.get("nope") is None
    fill(conn, b"q", b"d")
    assert conn.ask(b"flush_all\r\n") == b"Flushed all queues.\r\n"
    h.restart()
    conn = h.connect()
    assert h.collection.names() == ["q"]
    assert conn.ask(b"get q\r\n") == b"END\r\n"


def test_readonly_status_refuses_writes(kp: MakeHarness) -> None:
    h = kp()
    admin, writer = h.connect(), h.connect()
    fill(admin, b"q", b"a")
    assert admin.ask(b"status readonly\r\nstatus\r\n") == b"END\r\nREADONLY\r\n"
    assert writer.ask(b"get q\r\n") == value(b"q", b"a")
    reply = writer.ask(set_req(b"q", b"x") + b"version\r\n")
    assert reply.startswith(b"SERVER_ERROR") and reply.count(b"\r\n") == 1
    assert writer.closing


def parse_stats(reply: bytes) -> list[tuple[str, str]]:
    lines = reply.decode("latin-1").split("\r\n")
    assert lines[-2:] == ["END", ""]
    pairs = []
    for line in lines[:-2]:
        stat, name, val = line.split(" ", 2)
        assert stat == "STAT"
        pairs.append((name, val))
    return pairs


GLOBAL_KEYS = [
    "uptime",
    "time",
    "version",
    "curr_items",
    "total_items",
    "bytes",
    "reserved_memory_ratio",
    "curr_connections",
    "total_connections",
    "cmd_get",
    "cmd_set",
    "cmd_peek",
    "get_hits",
    "get_misses",
    "bytes_read",
    "bytes_written",
    "queue_creates",
    "queue_deletes",
    "queue_expires",
]
QUEUE_KEYS = [
    "items",
    "bytes",
    "total_items",
    "logsize",
    "expired_items",
    "mem_items",
    "mem_bytes",
    "age",
    "discarded",
    "waiters",
    "open_transactions",
    "transactions",
    "canceled_transactions",
    "total_flushes",
    "journal_rewrites",
    "journal_rotations",
    "create_time",
    "age_msec",
    "oldest_item_age_ms",
]


def test_stats(kp: MakeHarness) -> None:
    h = kp()
    conn, other = h.connect(), h.connect()
    sent = b""
    received = b""
    for request in (
        set_req(b"q", b"aaa") + set_req(b"q", b"bb") + set_req(b"q", b"c"),
        b"get q\r\n",  # hit
        b"get q/peek\r\n",  # peek hit
        b"get q/open\r\n",  # hit, held
        b"get empty\r\n",  # miss, creates `empty`
        b"set q 0 0 1 noreply\r\nd\r\n",
    ):
        sent += request
        received += conn.ask(request)
    other.lose()
    sent += b"stats\r\n"
    reply = conn.ask(b"stats\r\n")
    pairs = parse_stats(reply)
    names = [name for name, _ in pairs]
    per_queue = [f"queue_empty_{key}" for key in QUEUE_KEYS] + [
        f"queue_q_{key}" for key in QUEUE_KEYS
    ]
    assert names == GLOBAL_KEYS + per_queue
    stats = dict(pairs)
    assert stats["version"] == "kestrelpy-" + __version__
    assert stats["reserved_memory_ratio"] == "0.000"
    expected = {
        "curr_items": "2",  # c, d waiting; bb is open, aaa taken
        "total_items": "4",
        "bytes": "2",
        "curr_connections": "1",
        "total_connections": "2",
        "cmd_get": "3",
        "cmd_set": "4",
        "cmd_peek": "1",
        "get_hits": "3",
        "get_misses": "1",
        "bytes_read": str(len(sent)),
        "bytes_written": str(len(received)),
        "queue_creates": "2",
        "queue_deletes": "0",
        "queue_q_items": "2",
        "queue_q_bytes": "2",
        "queue_q_total_items": "4",
        "queue_q_mem_items": "2",
        "queue_q_mem_bytes": "2",
        "queue_q_open_transactions": "1",
        "queue_q_transactions": "1",
        "queue_q_canceled_transactions": "0",
        "queue_q_waiters": "0",
        "queue_q_discarded": "0",
        "queue_q_expired_items": "0",
        "queue_empty_items": "0",
        "queue_empty_age": "0",
        "queue_empty_age_msec": "0",
    }
    assert {key: stats[key] for key in expected} == expected


def test_stats_lists_fanout_children(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.ask(b"get p+b\r\nget p+a\r\n")
    conn.ask(set_req(b"p", b"x"))
    stats = dict(parse_stats(conn.ask(b"stats\r\n")))
    assert stats["queue_p_children"] == "p+a,p+b"
    assert stats["queue_p+a_items"] == stats["queue_p+b_items"] == stats["queue_p_items"] == "1"


def test_connection_asks_for_tcp_nodelay(kp: MakeHarness) -> None:
    assert kp().connect().transport.tcp_nodelay is True


def test_connection_counters(kp: MakeHarness) -> None:
    h = kp()
    first, second = h.connect(), h.connect()
    assert (h.ctx.stats.curr_connections, h.ctx.stats.total_connections) == (2, 2)
    first.lose()
    second.lose()
    assert (h.ctx.stats.curr_connections, h.ctx.stats.total_connections) == (0, 2)


def test_abort_wakes_a_blocked_reader(kp: MakeHarness) -> None:
    h = kp()
    owner, reader = h.connect(), h.connect()
    fill(owner, b"q", b"a")
    owner.ask(b"get q/open\r\n")
    assert reader.ask(b"get q/t=500\r\n") == b""
    assert owner.ask(b"get q/abort\r\n") == b"END\r\n"
    assert reader.take() == value(b"q/t=500", b"a")
    assert queue_stat(h, "q", "items") == 0


def test_blocked_reader_output_waits_behind_its_own_pending_stored(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.send(set_req(b"r", b"mine") + b"get q/t=500\r\n")
    writer.send(set_req(b"q", b"x"))  # wakes the reader in the same turn
    assert reader.take() == b""  # its VALUE may not overtake its own STORED
    h.settle()
    assert reader.take() == b"STORED\r\n" + value(b"q/t=500", b"x")
    assert writer.take() == b"STORED\r\n"


def test_close_after_delete_does_not_touch_a_new_queue_of_that_name(kp: MakeHarness) -> None:
    h = kp()
    owner, admin = h.connect(), h.connect()
    fill(owner, b"q", b"old")
    assert owner.ask(b"get q/open\r\n") == value(b"q/open", b"old")
    assert admin.ask(b"delete q\r\n") == b"DELETED\r\n"
    fill(admin, b"q", b"new")  # a new queue q; its first item reuses the old item's id
    assert owner.ask(b"get q/close\r\n") == b"END\r\n"
    assert queue_stat(h, "q", "open_transactions") == 0
    assert queue_stat(h, "q", "items") == 1
    h.restart()
    assert drain(h.connect(), b"q") == [b"new"]


def test_disconnect_after_delete_does_not_revive_the_old_item(kp: MakeHarness) -> None:
    h = kp()
    owner, admin = h.connect(), h.connect()
    fill(owner, b"q", b"old")
    owner.ask(b"get q/open\r\n")
    assert admin.ask(b"delete q\r\n") == b"DELETED\r\n"
    fill(admin, b"q", b"new")
    owner.lose()
    assert queue_stat(h, "q", "open_transactions") == 0
    assert queue_stat(h, "q", "canceled_transactions") == 0
    assert drain(admin, b"q") == [b"new"]


# ------------------------------------------------------------- connection states


def test_connection_state_follows_its_requests(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    assert reader.proto.state is State.RUNNING
    assert reader.ask(b"get q/t=1000\r\nversion\r\n") == b""
    assert reader.proto.state is State.WAITING
    writer.ask(set_req(b"q", b"x"))
    assert reader.proto.state is State.RUNNING
    assert reader.take() == value(b"q/t=1000", b"x") + VERSION
    reader.send(b"quit\r\nversion\r\n")
    assert reader.proto.state is State.CLOSING
    h.settle()
    assert reader.closing and reader.take() == b""  # nothing after quit is run
    reader.lose()
    assert reader.proto.state is State.GONE


def test_a_long_backlog_behind_a_wait_pauses_reading_until_it_ends(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.send(b"get q/t=1000\r\n")
    reader.send(b"version\r\n" * (_PAUSE_BACKLOG + 1))  # arrives while the read waits
    assert reader.transport.producerState == "paused"
    writer.ask(set_req(b"q", b"x"))
    h.settle()
    assert reader.proto.state is State.RUNNING
    assert reader.transport.producerState == "producing"
    assert reader.take() == value(b"q/t=1000", b"x") + VERSION * (_PAUSE_BACKLOG + 1)


def test_a_full_send_buffer_stops_running_requests_until_it_drains(kp: MakeHarness) -> None:
    h = kp()
    conn = h.connect()
    conn.proto.pauseProducing()  # what the transport does when the client stops reading
    assert conn.transport.producerState == "paused"
    conn.send(b"version\r\n")
    h.settle()
    assert conn.take() == b""
    conn.proto.resumeProducing()
    assert conn.transport.producerState == "producing"
    h.settle()
    assert conn.take() == VERSION


def test_reading_resumes_only_when_no_reason_to_pause_is_left(kp: MakeHarness) -> None:
    h = kp()
    reader, writer = h.connect(), h.connect()
    reader.send(b"get q/t=1000\r\n")
    reader.send(b"version\r\n" * (_PAUSE_BACKLOG + 1))  # arrives while the read waits
    reader.proto.pauseProducing()  # and the client stops reading as well
    writer.ask(set_req(b"q", b"x"))
    h.settle()
    assert reader.transport.producerState == "paused"  # the send buffer is still full
    reader.proto.resumeProducing()
    h.settle()
    assert reader.transport.producerState == "producing"
    assert reader.take() == value(b"q/t=1000", b"x") + VERSION * (_PAUSE_BACKLOG + 1)


def test_a_reload_that_turns_client_timeout_off_keeps_open_connections(kp: MakeHarness) -> None:
    h = kp(config(client_timeout='"10s"'))
    conn = h.connect()
    h.config_path.write_text(DEFAULT_CONFIG, encoding="utf-8")
    assert conn.ask(b"reload\r\n") == b"Reloaded config.\r\n"
    assert conn.ask(b"version\r\n") == VERSION
    h.clock.advance(60)
    assert not conn.closing


# -- memory bought by a client (issue 18, findings 2 and 3) ----------------------------


def test_a_set_header_alone_allocates_no_data_block(kp: MakeHarness) -> None:
    """A header declaring 16 MiB, and no data: the connection holds a few KiB, not the
    declared size nor a preallocated MiB (data blocks grow as their bytes arrive)."""
    h = kp()
    conn = h.connect()
    tracemalloc.start()
    try:
        conn.send(b"set q 0 0 16777216\r\n")
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024, held
    conn.send(b"x" * 100_000)  # the block grows with what was sent, not what was declared
    assert conn.take() == b""
    conn.send(b"x" * (16777216 - 100_000) + b"\r\nget q/peek\r\n")
    h.settle()
    reply = conn.take()
    assert reply.startswith(b"STORED\r\nVALUE q/peek 0 16777216\r\nxxx"), reply[:40]
    assert reply.endswith(b"x\r\nEND\r\n") and len(reply) == 16777216 + 40


def test_a_closed_connection_is_freed_without_the_cycle_collector(kp: MakeHarness) -> None:
    """Connection, session, blocked read and output refer to each other; connectionLost
    breaks those cycles, so refcounting alone frees them (a burst of closed connections
    does not wait for a full collection)."""
    h = kp()
    writer = h.connect()
    assert writer.ask(set_req(b"q", b"x")) == b"STORED\r\n"
    conn = h.connect()
    assert conn.ask(b"get q/open\r\n") == value(b"q/open", b"x")  # an open read
    conn.ask(b"get other/t=5000\r\nset q 0 0 1000000\r\n" + b"y" * 50_000)  # blocked
    proto = weakref.ref(conn.proto)
    gc.collect()
    gc.disable()
    sessions = sum(type(o) is Session for o in gc.get_objects())
    try:
        conn.transport.unregisterProducer()  # as Twisted's transport does before the call
        conn.lose()
        del conn
        assert proto() is None, gc.get_referrers(proto())
        assert sum(type(o) is Session for o in gc.get_objects()) == sessions - 1
    finally:
        gc.enable()
    assert queue_stat(h, "q", "open_transactions") == 0
    assert queue_stat(h, "other", "waiters") == 0
    assert drain(writer, b"q") == [b"x"]


IDLE_READERS = 1000
IDLE_READER_BYTES = 1200  # 1,988 before issue 19, 1,029 after (the C++ clone: ~2 KB in all)


def test_an_idle_blocked_reader_costs_its_connection_little_memory(kp: MakeHarness) -> None:
    """Ten thousand readers blocked in ``get q/t=60000`` are a normal load (issue 19): what
    the server keeps per reader (connection, parser, session, blocked read, output, waiter
    and deadline), counted by tracemalloc, stays within a bound. The transports are test
    doubles made beforehand: a real one (tcp.Server and its socket) adds about 600 B."""
    h = kp()
    first = h.connect()  # the queue, its waiter line and the 60 s deadline lane exist
    first.send(b"get q/t=60000\r\n")
    factory = MemcacheFactory(h.ctx, h.store)
    transports = [TcpStringTransport() for _ in range(IDLE_READERS)]
    readers: list[Any] = []
    gc.collect()
    tracemalloc.start()
    try:
        before, _peak = tracemalloc.get_traced_memory()
        for transport in transports:
            proto = factory.buildProtocol(None)
            proto.makeConnection(transport)
            proto.dataReceived(b"get q/t=60000\r\n")
            readers.append(proto)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert queue_stat(h, "q", "waiters") == IDLE_READERS + 1
    assert transports[0].value() == b""  # still waiting
    per_reader = (held - before) / IDLE_READERS
    assert per_reader < IDLE_READER_BYTES, per_reader


def test_heap_trim_follows_a_burst_of_closed_connections_once() -> None:
    """malloc_trim runs once, a moment after connections that read enough have closed;
    connections that read little never cause one."""
    clock = Clock()
    calls: list[int] = []
    trimmer = HeapTrimmer(
        clock, after_bytes=1000, delay_s=1.0, trim=lambda pad: calls.append(pad) or 1
    )
    for _ in range(10):
        trimmer.connection_closed(99)
    clock.advance(5)
    assert calls == []
    for _ in range(100):
        trimmer.connection_closed(500)  # a burst: one trim, after it
    assert calls == []
    clock.advance(1)
    assert calls == [0] and trimmer.trims == 1
    clock.advance(5)
    assert calls == [0]
    trimmer.connection_closed(2000)
    trimmer.stop()
    clock.advance(5)
    assert calls == [0]


# -- output bounded per reply, not per batch (issue 18, finding 1) -----------------------


def test_replies_held_for_a_commit_stop_running_requests_at_the_output_bound(
    kp: MakeHarness,
) -> None:
    """A set, then peeks of a big item in the same batch: the peeks' replies wait for the
    set's commit, so once they pass the bound no more are built until that commit ends."""
    h = kp()
    big = b"b" * (1 << 20)
    fill(h.connect(), b"big", big)
    conn = h.connect()
    peeks = h.ctx.stats.cmd_peek
    conn.send(set_req(b"x", b"x") + b"get big/peek\r\n" * 20)
    assert conn.take() == b""  # all behind the set's commit
    reply = value(b"big/peek", big)
    assert h.ctx.stats.cmd_peek - peeks == _OUTPUT_BOUND // len(reply) + 1  # not 20
    assert conn.transport.producerState == "paused"
    h.settle()  # the commit ends: the replies go, and the rest of the pipeline runs
    assert conn.transport.producerState == "producing"
    assert conn.take() == b"STORED\r\n" + reply * 20


def test_a_write_every_64th_request_is_not_acknowledged_before_its_commit(
    kp: MakeHarness,
) -> None:
    """The periodic send of a long pipeline comes after the write's hold, not before it."""
    h = kp()
    conn = h.connect()
    conn.send(b"get r\r\n" * 63 + set_req(b"q", b"x"))
    assert conn.take() == b""
    h.settle()
    assert conn.take() == b"END\r\n" * 63 + b"STORED\r\n"


# -- big reports stream (issue 18, finding 1: stats over many queues) --------------------


def one_turn(clock: Clock) -> None:
    """Run the calls due now but not the ones they schedule: one turn of a real reactor."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        func, args, kw = call.func, call.args, call.kw
        call.cancel()
        func(*args, **kw)


def make_queues(h: Harness, count: int) -> list[bytes]:
    names = [b"q%05d" % n for n in range(count)]
    h.connect().ask(b"".join(b"get " + name + b"\r\n" for name in names))
    return names


def test_stats_over_many_queues_comes_in_pieces_while_others_are_served(
    kp: MakeHarness,
) -> None:
    h = kp()
    make_queues(h, 3 * REPORT_PIECE_QUEUES + 5)
    whole = stat_lines(server_report(h.ctx.stats, h.collection, int(h.clock.seconds() * 1000)))
    conn, other = h.connect(), h.connect()
    conn.send(b"stats\r\nversion\r\n")
    pieces = []
    while conn.proto.state is State.WAITING:
        one_turn(h.clock)
        pieces.append(conn.take())
        other.send(b"version\r\n")
        assert other.take() == VERSION  # not kept waiting for the whole report
    h.settle()  # the rest of the pipeline
    pieces.append(conn.take())
    sent = [piece for piece in pieces if piece]  # (one turn finds the report complete)
    assert len(sent) == 7  # the server's lines; 256 queues, 256, 256, 5; END; VERSION
    received = b"".join(sent)
    assert received.endswith(b"END\r\n" + VERSION)
    streamed = parse_stats(received[: -len(VERSION)])
    assert [name for name, _ in streamed] == [name for name, _ in parse_stats(whole)]
    queue_lines = [pair for pair in streamed if pair[0].startswith("queue_")]
    assert queue_lines == [pair for pair in parse_stats(whole) if pair[0].startswith("queue_")]
    assert not pieces[0].endswith(b"END\r\n")


def test_a_report_is_not_built_further_while_the_client_does_not_read(kp: MakeHarness) -> None:
    h = kp()
    make_queues(h, 4 * REPORT_PIECE_QUEUES)
    conn = h.connect()
    conn.send(b"dump_stats\r\nversion\r\n")
    one_turn(h.clock)
    first = conn.take()
    assert first.startswith(b"queue 'q00000' {\r\n")
    conn.proto.pauseProducing()  # the transport's buffer is full
    h.run_until_idle()
    assert conn.take() == b""  # no piece built until it drains
    conn.proto.resumeProducing()
    h.run_until_idle()
    rest = conn.take()
    assert rest.endswith(b"}\r\nEND\r\n" + VERSION)
    assert (first + rest).count(b"queue '") == 4 * REPORT_PIECE_QUEUES


def test_a_streamed_report_behind_a_write_waits_for_its_commit(kp: MakeHarness) -> None:
    h = kp()
    make_queues(h, 2 * REPORT_PIECE_QUEUES)
    conn = h.connect()
    conn.send(set_req(b"x", b"1") + b"dump_config\r\nversion\r\n")
    assert conn.take() == b""  # STORED and all after it wait for the set's commit
    h.run_until_idle()
    reply = conn.take()
    assert reply.startswith(b"STORED\r\nqueue 'q00000' {\r\n")
    assert reply.endswith(b"END\r\n" + VERSION)


@pytest.mark.parametrize(
    ("command", "line_of"),
    [
        (b"stats", lambda name: b"STAT queue_%b_items " % name),
        (b"dump_stats", lambda name: b"queue '%b' {" % name),
    ],
)
def test_a_queue_deleted_while_a_report_streams_is_left_out(
    kp: MakeHarness, command: bytes, line_of: Callable[[bytes], bytes]
) -> None:
    h = kp()
    names = make_queues(h, 2 * REPORT_PIECE_QUEUES)
    conn = h.connect()
    conn.send(command + b"\r\n")
    one_turn(h.clock)
    h.connect().ask(b"delete " + names[-1] + b"\r\n")
    h.run_until_idle()
    report = conn.take()
    assert line_of(names[-2]) in report
    assert line_of(names[-1]) not in report


def test_a_connection_lost_while_a_report_streams_ends_it(kp: MakeHarness) -> None:
    h = kp()
    make_queues(h, 3 * REPORT_PIECE_QUEUES)
    conn = h.connect()
    conn.send(b"stats\r\n")
    one_turn(h.clock)
    conn.take()
    conn.lose()
    h.run_until_idle()
    assert conn.take() == b""
    assert h.connect().ask(b"version\r\n") == VERSION


def test_client_timeout_closes_a_client_that_stopped_reading_its_report(kp: MakeHarness) -> None:
    h = kp(config(client_timeout='"1s"'))
    make_queues(h, 3 * REPORT_PIECE_QUEUES)
    conn = h.connect()
    conn.send(b"stats\r\n")
    one_turn(h.clock)
    conn.proto.pauseProducing()  # the client stopped reading: its send buffer is full
    h.clock.advance(1.5)
    assert conn.closing


def test_a_report_that_fails_midway_closes_the_connection_after_what_was_sent(
    kp: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged page met while a piece is built: the report cannot be ended honestly, so
    the client sees the connection close rather than wait forever for its END."""
    h = kp()
    names = make_queues(h, 2 * REPORT_PIECE_QUEUES)
    damaged = h.collection.get(names[-1].decode())
    assert damaged is not None

    def fail(now_ms: int) -> int:
        raise DamagedStoreError("a damaged page")

    monkeypatch.setattr(damaged, "oldest_age_ms", fail)
    conn = h.connect()
    conn.send(b"stats\r\nversion\r\n")
    h.run_until_idle()
    sent = conn.take()
    assert sent.startswith(b"STAT uptime ") and not sent.endswith(b"END\r\n")
    assert conn.closing and conn.proto.state is State.CLOSING
    assert h.connect().ask(b"version\r\n") == VERSION  # the server carries on
