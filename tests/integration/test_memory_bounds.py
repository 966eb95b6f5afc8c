"""Memory a client can make the server hold (issue 18, findings 2 and 3), on a real process.

Figures are the server's anonymous resident memory (``RssAnon`` in ``/proc/<pid>/status``:
LMDB's mapped file pages are left out). The effects guarded against are about a MiB per
connection; the bounds allow tens of KiB, so a loaded machine does not make them flaky.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .conftest import ServerProcess, wait_until

pytestmark = pytest.mark.timeout(60)  # Linux only, as the project: it reads /proc

MiB = 1024 * 1024
HEADERS = 300  # connections that send only a set header declaring item_size_max
HEADER = b"set q 0 0 16777216\r\n"
BURST = 40  # connections that each send part of a big data block, then hang up
BURST_SENT = 2 * MiB  # bytes of a 4 MiB block each of them sends


def rss_anon(srv: ServerProcess) -> int:
    """The server's anonymous resident memory, in bytes."""
    for line in Path(f"/proc/{srv.pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/<pid>/status")


def stat(srv: ServerProcess, key: str) -> int:
    with srv.connect() as conn:
        return int(conn.stats()[key])


def open_clients(srv: ServerProcess, count: int) -> list[socket.socket]:
    assert srv.port is not None
    return [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(count)]


def test_set_headers_buy_no_memory_and_a_burst_gives_it_back(server_factory) -> None:
    srv = server_factory()
    warm = open_clients(srv, 20)  # first connections grow the server's pools: not counted
    for sock in warm:
        sock.sendall(HEADER)
    for sock in warm:
        sock.close()
    wait_until(lambda: stat(srv, "curr_connections") == 1, 10, "warm-up closed", srv)
    baseline = rss_anon(srv)
    read_before = stat(srv, "bytes_read")

    # Finding 2: a header alone used to allocate a MiB (of a declared 16 MiB) per connection.
    idle = open_clients(srv, HEADERS)
    for sock in idle:
        sock.sendall(HEADER)
    expected = read_before + HEADERS * len(HEADER)
    wait_until(lambda: stat(srv, "bytes_read") >= expected, 20, "headers read", srv)
    held = rss_anon(srv) - baseline
    assert held < HEADERS * 64 * 1024, f"{held / HEADERS / 1024:.0f} KiB per header-only client"

    # Finding 3: after a burst that did hold big buffers, the memory goes back when the
    # clients leave: freed by refcounting at once, and returned to the kernel.
    burst = open_clients(srv, BURST)
    for sock in burst:
        sock.sendall(b"set big 0 0 %d\r\n" % (2 * BURST_SENT) + b"x" * BURST_SENT)
    expected += BURST * BURST_SENT
    wait_until(lambda: stat(srv, "bytes_read") >= expected, 20, "burst read", srv)
    peak = rss_anon(srv) - baseline
    assert peak > BURST * BURST_SENT // 2, "the burst should hold its buffers while open"
    for sock in idle + burst:
        sock.close()
    wait_until(lambda: stat(srv, "curr_connections") == 1, 10, "clients gone", srv)
    bound = 32 * MiB
    try:
        wait_until(lambda: rss_anon(srv) - baseline < bound, 10, "memory returned", srv)
    except AssertionError:
        left = (rss_anon(srv) - baseline) / MiB
        raise AssertionError(f"{left:.0f} MiB still held after the clients left") from None
