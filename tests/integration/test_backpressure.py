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
        while peeks(good) < 64:
            assert time.monotonic() < deadline, "the server never read the pipelined gets"
        reply = roundtrip(good, b"set small 0 0 1\r\nx\r\nget small\r\n", b"END\r\n")
        assert reply == b"STORED\r\nVALUE small 0 1\r\nx\r\nEND\r\n"
        peak = peak_rss_kb(server.pid)
        assert peak < RSS_LIMIT_KB, f"server memory peaked at {peak} KiB"
        assert peeks(good) < REQUESTS  # it stopped running requests nobody reads
        greedy.close()
        stats = roundtrip(good, b"stats\r\n", b"END\r\n")
        assert b"STAT queue_big_items 1\r\n" in stats  # peeks removed nothing
