"""A minimal epoll event loop for load generation: one process, many non-blocking sockets.

Why not asyncio or selectors: per request they add several Python calls and objects, and on a
2-core box the client's CPU competes with the server's. Here one ``epoll.poll`` returns every
ready socket and each gets one method call; requests are prebuilt bytes and replies are parsed
from the received bytes in place. Linux only (so are /proc and CPU pinning).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable

from loadtest._client import Address, connect

RECV_SIZE = 65536  # big enough for a pipelined batch of replies or a chunk of a large value
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_LINGER_RESET = struct.pack("ii", 1, 0)  # linger on, 0 s: close() sends RST, no TIME_WAIT


class ConnectionLost(Exception):
    """The server closed a connection the tool still needed."""


class Conn:
    """One non-blocking connection registered with a Loop.

    Subclasses implement ``on_readable``. ``send`` never blocks: what the kernel does not take
    at once waits in ``_out`` and is flushed on EPOLLOUT, in order.
    """

    __slots__ = ("_out", "closed", "fd", "loop", "sock")

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self._out: list[memoryview] = []
        self.closed = False
        loop.add(self)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for sending, writing as much as the kernel takes right now."""
        if self._out:
            self._out.append(memoryview(data))
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._out.append(memoryview(data)[sent:])
            self.loop.want_write(self, True)

    def on_writable(self) -> None:
        """Flush queued output; stop watching EPOLLOUT once it is all written."""
        while self._out:
            chunk = self._out[0]
            try:
                sent = self.sock.send(chunk)
            except BlockingIOError:
                return
            if sent < len(chunk):
                self._out[0] = chunk[sent:]
                return
            self._out.pop(0)
        self.loop.want_write(self, False)

    def on_readable(self) -> None:
        raise NotImplementedError

    def recv(self) -> bytes:
        """Whatever arrived; raises ConnectionLost on EOF or reset.

        Only called after EPOLLIN, so a spurious wake-up (empty read buffer) returns b"".
        """
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return b""
        except ConnectionError as err:
            raise ConnectionLost(str(err)) from None
        if not data:
            raise ConnectionLost("server closed the connection")
        return data

    def close(self, abortive: bool = False) -> None:
        """Unregister and close; ``abortive`` sends RST instead of FIN (SO_LINGER 0)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self)
        if abortive:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.sock.close()


class Loop:
    """epoll plus maps from fd to Conn; level-triggered, so unread data wakes us again."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        # fd -> bound on_readable: the hot path makes one dict lookup and one call per event.
        self._readers: dict[int, Callable[[], None]] = {}

    def add(self, conn: Conn) -> None:
        self._epoll.register(conn.fd, _IN)
        self.conns[conn.fd] = conn
        self._readers[conn.fd] = conn.on_readable

    def remove(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            del self._readers[conn.fd]
            self._epoll.unregister(conn.fd)

    def want_write(self, conn: Conn, on: bool) -> None:
        if conn.fd in self.conns:
            self._epoll.modify(conn.fd, _IN | _OUT if on else _IN)

    def poll(self, timeout_s: float) -> int:
        """Serve every ready connection once; returns how many events were handled.

        A handler may close its own or another connection; events for fds that are no longer
        registered are skipped (the fd number may even have been reused: the map decides).
        """
        events = self._epoll.poll(timeout_s)
        readers = self._readers
        for fd, mask in events:
            if mask == _IN:
                reader = readers.get(fd)
                if reader is not None:
                    reader()
            else:
                self._other_event(fd, mask)
        return len(events)

    def _other_event(self, fd: int, mask: int) -> None:
        """Writable, hang-up or error: flush pending output, then let the reader see EOF."""
        conn = self.conns.get(fd)
        if conn is None:
            return
        if mask & _OUT:
            conn.on_writable()
        if mask & ~_OUT and not conn.closed:
            conn.on_readable()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.close()
        self._epoll.close()


def connect_many(
    addr: Address, count: int, timeout: float, deadline: float, batch: int = 200
) -> list[socket.socket]:
    """Open ``count`` connections without overflowing the server's accept queue.

    Blocking connects succeed as soon as the kernel finishes the handshake, before the server
    accepts; thousands in a row would overflow a 1024-deep backlog and stall in SYN retries.
    After every ``batch`` connects, one ``version`` round trip on the newest connection proves
    the server has accepted it and everything queued before it (accept is FIFO).
    """
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(socks)} of {count} connections within deadline")
            for _ in range(min(batch, count - len(socks))):
                socks.append(connect(addr, timeout))
            _round_trip(socks[-1])
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _round_trip(sock: socket.socket) -> None:
    """Send ``version`` and read its one-line reply (sockets here are still blocking)."""
    sock.sendall(b"version\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        data = sock.recv(4096)
        if not data:
            raise ConnectionLost("server closed a new connection")
        reply += data
