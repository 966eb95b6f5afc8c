"""The memcache dialect as a client speaks it, with no I/O: request bytes out, replies in.

Every face of the client (blocking, asyncio, Twisted) sends what these functions build and
feeds what it receives to a :class:`ReplyReader`, so the three behave byte for byte alike.
Requests can be concatenated and sent in one write (pipelining); the server answers them in
order, one reply each, and the reader hands the replies back in that order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from kestrelpy.client.errors import UsageError

MAX_KEY_BYTES = 250  # every memcache client's cap, and the server's: name plus options


class Value(NamedTuple):
    """One ``VALUE <key> <flags> <n>`` block of a reply. A NamedTuple: built per item
    read, and a frozen dataclass's ``__init__`` costs several times as much."""

    key: bytes
    flags: int
    body: bytes


@dataclass(slots=True)
class Reply:
    """One complete reply: its last line (``STORED``, ``END``, ``SERVER_ERROR …``, without
    the CRLF) and what came before it (values of a get, ``STAT`` lines of stats)."""

    line: bytes
    values: list[Value] = field(default_factory=list)
    stats: list[bytes] = field(default_factory=list)


STORED = b"STORED"
END = b"END"
DELETED = b"DELETED"


class ProtocolViolation(Exception):
    """The server sent bytes that are not a memcache reply; the connection is unusable."""


def queue_key(queue: str) -> bytes:
    """The queue name as wire bytes, checked before anything is sent: a bad name is the
    caller's mistake (``UsageError``), not a server failure to retry elsewhere."""
    key = queue.encode()
    if not key or len(key) > MAX_KEY_BYTES - 20:  # room for /close/open/t=NNNNNNNNNN
        raise UsageError(f"queue name {queue!r}: expected 1 to {MAX_KEY_BYTES - 20} bytes")
    if b"/" in key or any(byte <= 0x20 or byte == 0x7F for byte in key):
        raise UsageError(f"queue name {queue!r}: no '/', spaces or control characters")
    return key


def set_request(key: bytes, flags: int, expiry_s: int, body: bytes) -> bytes:
    return b"set %s %d %d %d\r\n%s\r\n" % (key, flags, expiry_s, len(body), body)


_READ_OPTIONS = {
    (close, open_, abort, peek): b"".join(
        word
        for word, on in (
            (b"/close", close),
            (b"/open", open_),
            (b"/abort", abort),
            (b"/peek", peek),
        )
        if on
    )
    for close in (False, True)
    for open_ in (False, True)
    for abort in (False, True)
    for peek in (False, True)
}


def read_request(
    key: bytes,
    *,
    timeout_ms: int = 0,
    open_: bool = False,
    close: bool = False,
    abort: bool = False,
    peek: bool = False,
) -> bytes:
    """``get <queue>[/close][/open][/abort][/peek][/t=N]``: Kestrel's read options."""
    options = _READ_OPTIONS[close, open_, abort, peek]
    if timeout_ms > 0:
        return b"get %s%s/t=%d\r\n" % (key, options, timeout_ms)
    return b"get " + key + options + b"\r\n"


def command_request(*words: bytes) -> bytes:
    return b" ".join(words) + b"\r\n"


class ReplyReader:
    """Splits the byte stream from one server into :class:`Reply` objects.

    ``feed`` appends bytes as they arrive (any fragmenting); ``take`` returns the next
    complete reply or None when more bytes are needed. A reply is a run of ``VALUE`` blocks
    and ``STAT`` lines closed by any other line, which is how every reply of the dialect
    ends (``END``, ``STORED``, ``DELETED``, an error line, a bare count).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the unparsed part; compacted when a read needs more bytes
        self._values: list[Value] = []
        self._stats: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_line_reply(self, data: bytes) -> Reply | None:
        """The fast path for a reply arriving whole in one read with nothing buffered: a
        one-line reply (``STORED``, ``END``) or one ``VALUE`` block and ``END``, returned
        without copying through the buffer. Anything else is fed to the buffer and None
        is returned; :meth:`take` carries on."""
        if self._buf or self._values or self._stats:
            self._buf += data
            return None
        if data == b"STORED\r\n":
            return Reply(STORED, [], [])
        if data.startswith(b"VALUE "):
            head_end = data.find(b"\r\n")
            if head_end > 0 and data.endswith(b"\r\nEND\r\n"):
                header = data[6:head_end].split(b" ")
                if len(header) in (3, 4) and header[1].isdigit() and header[2].isdigit():
                    start = head_end + 2
                    stop = start + int(header[2])
                    if stop + 7 == len(data):
                        value = Value(header[0], int(header[1]), data[start:stop])
                        return Reply(END, [value], [])
        elif (
            data.endswith(b"\r\n")
            and data.find(b"\r\n") == len(data) - 2
            and not data.startswith(b"STAT ")
        ):
            return Reply(data[:-2], [], [])
        self._buf += data
        return None

    def take(self) -> Reply | None:
        buf = self._buf
        while True:
            pos = self._pos
            end = buf.find(b"\r\n", pos)
            if end < 0:
                self._compact()
                return None
            if buf.startswith(b"VALUE ", pos):
                value = self._value(pos, end)
                if value is None:
                    self._compact()
                    return None
                self._values.append(value)
            elif buf.startswith(b"STAT ", pos):
                self._stats.append(bytes(buf[pos + 5 : end]))
                self._pos = end + 2
            else:
                self._pos = end + 2
                reply = Reply(bytes(buf[pos:end]), self._values, self._stats)
                self._values = []  # fresh lists even when empty: the reply owns its own,
                self._stats = []  # or the next reply's values would show up in it too
                if self._pos == len(buf):
                    buf.clear()
                    self._pos = 0
                return reply

    def _value(self, pos: int, end: int) -> Value | None:
        """The VALUE block whose header line ends at ``end``, or None if its data has not
        all arrived. ``_pos`` moves past the block only when it is complete."""
        header = bytes(self._buf[pos:end]).split(b" ")
        if len(header) not in (4, 5) or not header[2].isdigit() or not header[3].isdigit():
            raise ProtocolViolation(f"bad VALUE line {bytes(self._buf[pos:end])!r}")
        size = int(header[3])
        start = end + 2
        stop = start + size
        if len(self._buf) < stop + 2:
            return None
        if self._buf[stop : stop + 2] != b"\r\n":
            raise ProtocolViolation("data block not followed by CRLF")
        self._pos = stop + 2
        return Value(header[1], int(header[2]), bytes(self._buf[start:stop]))

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buf) - self._pos


W = TypeVar("W")


class PendingReplies(Generic[W]):
    """Exchanges in flight on one connection, answered in the order they were sent.

    The event-loop faces let several tasks share a connection, each awaiting its own
    replies; this matches replies to waiters (``W``: a future or a Deferred) by position,
    which is all memcache offers.
    """

    def __init__(self) -> None:
        self._reader = ReplyReader()
        self._waiting: deque[tuple[W | None, int, list[Reply]]] = deque()

    def expect(self, waiter: W, count: int) -> None:
        self._waiting.append((waiter, count, []))

    def discard(self, count: int) -> None:
        """The next ``count`` replies (after those already expected) go to nobody: the
        reply to a request sent on behalf of a cancelled exchange (an abort)."""
        self._waiting.append((None, count, []))

    def feed(self, data: bytes) -> list[tuple[W, list[Reply]]]:
        """Bytes arrived; returns the waiters now complete, with their replies."""
        self._reader.feed(data)
        done: list[tuple[W, list[Reply]]] = []
        while self._waiting:
            waiter, count, got = self._waiting[0]
            while len(got) < count and (reply := self._reader.take()) is not None:
                got.append(reply)
            if len(got) < count:
                break
            self._waiting.popleft()
            if waiter is not None:
                done.append((waiter, got))
        if not self._waiting and self._reader.pending_bytes:
            raise ProtocolViolation("the server sent a reply nobody asked for")
        return done

    def abandon(self) -> list[tuple[W, list[Reply]]]:
        """The connection is gone: every waiter still owed replies, with those it got."""
        waiters = [(waiter, got) for waiter, _, got in self._waiting if waiter is not None]
        self._waiting.clear()
        return waiters
