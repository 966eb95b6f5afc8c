"""A blocking, one-request-at-a-time client for setup, probes and verification.

Not for load: the tools generate load with their own non-blocking loops. This client only
does the few round trips around a run (version, stats, delete, drain), where clarity and a
timeout on every read matter more than speed.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from loadtest._proto import (
    CRLF,
    ReplyError,
    get_request,
    parse_get_reply,
    parse_line,
    parse_store_reply,
    set_request,
)

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """``host:port`` (``[v6]:port`` too) to a tuple; a bare port means 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, number


def connect(addr: Address, timeout: float) -> socket.socket:
    """A connected TCP socket with Nagle off (requests are small and latency-sensitive)."""
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SyncClient:
    """Blocking memcache client: every call sends one request and waits for its reply.

    Each read is bounded by ``timeout`` seconds (socket.timeout propagates), so a dead server
    fails the tool instead of hanging it.
    """

    def __init__(self, addr: Address, timeout: float = 5.0) -> None:
        self.sock = connect(addr, timeout)
        self._buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self._buf += data

    def _line(self) -> bytes:
        while True:
            pos, line = parse_line(self._buf)
            if line is not None:
                del self._buf[:pos]
                return line
            self._fill()

    def version(self) -> str:
        """The server's version string (empty if it answered something else)."""
        self.sock.sendall(b"version\r\n")
        line = self._line()
        return line[8:].decode("latin-1") if line.startswith(b"VERSION ") else ""

    def stats(self) -> dict[str, str]:
        """All ``STAT name value`` pairs of ``stats``."""
        self.sock.sendall(b"stats\r\n")
        found: dict[str, str] = {}
        while (line := self._line()) != b"END":
            _stat, name, value = line.decode("latin-1").split(" ", 2)
            found[name] = value
        return found

    def set(self, key: bytes, body: bytes) -> bool:
        """True if STORED, False if NOT_STORED."""
        self.sock.sendall(set_request(key, body))
        while True:
            pos, stored = parse_store_reply(self._buf)
            if pos:
                del self._buf[:pos]
                return stored
            self._fill()

    def get(self, key: bytes) -> bytes | None:
        """The body, or None on a miss; ``key`` may carry Kestrel options."""
        self.sock.sendall(get_request(key))
        return self._get_reply()

    def _get_reply(self) -> bytes | None:
        while True:
            pos, body = parse_get_reply(self._buf)
            if pos:
                del self._buf[:pos]
                return body
            self._fill()

    def delete(self, key: bytes) -> bytes:
        """Send ``delete``; returns the reply line (``DELETED``, ``NOT_FOUND``)."""
        self.sock.sendall(b"delete " + key + CRLF)
        return self._line()

    def drain(self, queue: bytes, limit: int, deadline: float, batch: int = 64) -> list[bytes]:
        """Remove up to ``limit`` items with pipelined plain gets until the queue is empty.

        Stops at the first miss or at ``deadline`` (time.monotonic()). Plain gets may return
        fewer than ``batch`` items; every reply of a batch is read before the next, so no
        removed item is ever left unread on the wire.
        """
        bodies: list[bytes] = []
        request = get_request(queue)
        while len(bodies) < limit and time.monotonic() < deadline:
            n = min(batch, limit - len(bodies))
            self.sock.sendall(request * n)
            misses = 0
            for _ in range(n):
                body = self._get_reply()
                if body is None:
                    misses += 1
                else:
                    bodies.append(body)
            if misses:
                break
        return bodies


@dataclass(frozen=True)
class ServerInfo:
    """What the tools learned about the server before loading it."""

    kind: str  # "queue" (Kestrel semantics) or "cache" (plain memcache: no exactly-once)
    version: str
    reason: str

    @property
    def is_queue(self) -> bool:
        return self.kind == "queue"


def detect_server(addr: Address, expect: str, timeout: float = 5.0) -> ServerInfo:
    """Decide whether ``addr`` is a queue server, as ``--expect-queue`` (auto/yes/no) asks.

    auto: a version mentioning kestrel means a queue; otherwise set a probe item into a probe
    queue and look for ``queue_`` keys in ``stats``, which every Kestrel flavour reports and
    memcached never does (real Kestrel's version is a bare number, so version alone cannot
    decide). The probe queue is deleted again.
    """
    with SyncClient(addr, timeout) as client:
        version = client.version()
        if expect in ("yes", "no"):
            kind = "queue" if expect == "yes" else "cache"
            return ServerInfo(kind, version, "forced by --expect-queue")
        if "kestrel" in version.lower():
            return ServerInfo("queue", version, f"version {version!r}")
        probe = b"loadtest_probe_%d" % os.getpid()
        client.set(probe, b"probe")
        has_queues = any(name.startswith("queue_") for name in client.stats())
        client.delete(probe)
    if has_queues:
        return ServerInfo("queue", version, "stats lists queue_ keys")
    return ServerInfo(
        "cache", version, f"plain cache (version {version!r}, no queue_ keys in stats)"
    )


def reset_queue(addr: Address, queue: bytes, timeout: float = 5.0) -> None:
    """Delete ``queue`` so a run starts empty (leftovers would count as foreign items)."""
    with SyncClient(addr, timeout) as client:
        client.delete(queue)


def queue_stat(stats: dict[str, str], queue: bytes, name: str) -> int | None:
    """``queue_<q>_<name>`` from a stats dict as an int, None if the server has no such key."""
    value = stats.get(f"queue_{queue.decode('latin-1')}_{name}")
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


__all__ = [
    "Address",
    "ReplyError",
    "ServerInfo",
    "SyncClient",
    "connect",
    "detect_server",
    "parse_address",
    "queue_stat",
    "reset_queue",
]
