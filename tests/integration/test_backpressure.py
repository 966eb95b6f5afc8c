"""A client that pipelines reads and never reads the replies cannot grow the server.

The server stops reading a connection whose unsent replies fill its send buffer, so
its memory stays bounded and every other connection is served as usual.
"""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import HOST, ServerProcess

pytestmark = pytest.mark.timeout(60)

ITEM_BYTES = 256 * 1024
REQUESTS = 2000  # 2000 replies of 256 KiB: 512 MiB if the server kept them all
RSS_LIMIT_KB = 300 * 1024


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM): no sampling can miss a spike."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM line")


def peeks(sock: socket.socket) -> int:
    stats = roundtrip(sock, b"stats\r\n", b"END\r\n")
    return int(stats.split(b"STAT cmd_peek ")[1].split(b"\r\n")[0])


def roundtrip(sock: socket.socket, request: bytes, end: bytes) -> bytes:
    sock.sendall(request)
    reply = b""
    while not reply.endswith(end):
        chunk = sock.recv(1 << 20)
        assert chunk, f"server closed the connection; got {reply!r}"
        reply += chunk
    return reply


def test_unread_replies_do_not_pile_up_in_the_server(server: ServerProcess) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as good:
        body = b"b" * ITEM_BYTES
        header = b"set big 0 0 %d\r\n" % ITEM_BYTES
        assert roundtrip(good, header + body + b"\r\n", b"\r\n") == b"STORED\r\n"

        greedy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect((HOST, server.port))
        greedy.sendall(b"get big/peek\r\n" * REQUESTS)  # and never read a reply

        # Wait for the server to have run some of them (a peek counts in cmd_peek).
        deadline = time.monotonic() + 10.0
        while peeks(good) < 1:
            assert time.monotonic() < deadline, "the server never read the pipelined gets"
        reply = roundtrip(good, b"set small 0 0 1\r\nx\r\nget small\r\n", b"END\r\n")
        assert reply == b"STORED\r\nVALUE small 0 1\r\nx\r\nEND\r\n"
        peak = peak_rss_kb(server.pid)
        assert peak < RSS_LIMIT_KB, f"server memory peaked at {peak} KiB"
        assert peeks(good) < REQUESTS  # it stopped running requests nobody reads
        greedy.close()
        stats = roundtrip(good, b"stats\r\n", b"END\r\n")
        assert b"STAT queue_big_items 1\r\n" in stats  # peeks removed nothing


# -- per reply, not per batch (issue 18, finding 1) -------------------------------------------

BIG_BYTES = 4_000_000
GROWTH_LIMIT_KB = 32 * 1024  # 100 unread 4 MB peeks would be 400 MB


def rss_anon_kb(pid: int) -> int:
    """The process's anonymous resident memory now (heap, not mapped store pages)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon line")


def stat(sock: socket.socket, name: bytes) -> int:
    stats = roundtrip(sock, b"stats\r\n", b"END\r\n")
    return int(stats.split(b"STAT " + name + b" ")[1].split(b"\r\n")[0])


def unread_client(server: ServerProcess, requests: bytes) -> socket.socket:
    """A connection that sends ``requests`` and never reads a reply."""
    greedy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.connect((HOST, server.port))
    greedy.sendall(requests)
    return greedy


def assert_others_served_and_memory_bounded(
    server: ServerProcess, good: socket.socket, before_kb: int
) -> None:
    # The greedy batch is one dataReceived: once the server answers this, it has run as
    # much of it as it ever will without the client reading.
    reply = roundtrip(good, b"set small 0 0 1\r\nx\r\nget small\r\n", b"END\r\n")
    assert reply == b"STORED\r\nVALUE small 0 1\r\nx\r\nEND\r\n"
    grown = rss_anon_kb(server.pid) - before_kb
    assert grown < GROWTH_LIMIT_KB, f"server anonymous memory grew by {grown} KiB"


def test_unread_replies_after_a_set_stay_bounded(server: ServerProcess) -> None:
    """A set, then 100 peeks of a 4 MB item in the same batch, never read: replies held
    for the set's commit count against the bound, so they are not all built."""
    with socket.create_connection((HOST, server.port), timeout=10) as good:
        header = b"set big 0 0 %d\r\n" % BIG_BYTES
        assert roundtrip(good, header + b"b" * BIG_BYTES + b"\r\n", b"\r\n") == b"STORED\r\n"
        before = rss_anon_kb(server.pid)
        greedy = unread_client(server, b"set x 0 0 1\r\nx\r\n" + b"get big/peek\r\n" * 100)
        with greedy:
            deadline = time.monotonic() + 10.0
            while stat(good, b"cmd_peek") < 1:
                assert time.monotonic() < deadline, "the server never read the pipelined gets"
            assert_others_served_and_memory_bounded(server, good, before)
            assert stat(good, b"cmd_peek") < 100


def test_unread_stats_reports_stay_bounded(server: ServerProcess) -> None:
    """Pipelined ``stats`` with many queues, never read: not 64 reports built at once."""
    with socket.create_connection((HOST, server.port), timeout=30) as good:
        names = b"".join(b"get many%d\r\n" % i for i in range(2000))
        assert roundtrip(good, names, b"END\r\n" * 2000).count(b"END\r\n") == 2000
        report = len(roundtrip(good, b"stats\r\n", b"END\r\n"))
        assert report > 500_000  # so that 100 of them would be over the limit
        before = rss_anon_kb(server.pid)
        read_before = stat(good, b"bytes_read")
        payload = b"stats\r\n" * 100
        with unread_client(server, payload):
            deadline = time.monotonic() + 10.0
            polls = 1
            while stat(good, b"bytes_read") - read_before - 7 * polls < len(payload):
                polls += 1
                assert time.monotonic() < deadline, "the server never read the pipelined stats"
            assert_others_served_and_memory_bounded(server, good, before)
