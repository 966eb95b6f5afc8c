"""Memcache text protocol pieces for the load tools: request bytes, reply parsing, item bodies.

Everything here is a pure function over bytes (no I/O), so hot loops can call it cheaply and
tests can feed it fragments. The parsers take a buffer and a start offset and return the offset
after the reply; returning the start offset unchanged means "incomplete, read more". Works on
``bytes`` and ``bytearray`` alike, so a connection can keep a growing ``bytearray``.
"""

from __future__ import annotations

STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
END = b"END\r\n"
CRLF = b"\r\n"

# A reply line longer than this without CRLF is garbage, not a slow server: fail loudly instead
# of buffering forever. VALUE lines are short (key <= 250 bytes plus numbers).
MAX_LINE = 1024

# Item bodies carry an id so consumers can count every item exactly once:
# 8 hex digits of run tag (items of other runs are "foreign"), then 8 hex digits of item id.
ID_BYTES = 16
# Bodies of tools that measure delivery latency add 16 hex digits of CLOCK_MONOTONIC ns, which
# is one clock for every process on the machine, so producer and consumer can differ.
STAMPED_BYTES = ID_BYTES + 16
FILLER = b"x"


class ReplyError(Exception):
    """The server answered with an error line or bytes that are not a memcache reply."""


def get_request(key: bytes) -> bytes:
    """One ``get``; the key may carry Kestrel options (``q/t=500/open``)."""
    return b"get " + key + CRLF


def set_head(key: bytes, size: int) -> bytes:
    """The command line of a ``set`` of ``size`` bytes, to be followed by the body and CRLF."""
    return b"set %s 0 0 %d\r\n" % (key, size)


def set_request(key: bytes, body: bytes) -> bytes:
    """A whole ``set`` request (command line, data block, trailer)."""
    return set_head(key, len(body)) + body + CRLF


def _error_line(line: bytes) -> ReplyError:
    text = line.decode("latin-1", "replace")
    return ReplyError(f"server replied {text!r}")


def _line_end(buf: bytes | bytearray, pos: int) -> int:
    """Offset of the CRLF ending the line at ``pos``, or -1 if it has not arrived yet."""
    eol = buf.find(CRLF, pos)
    if eol < 0 and len(buf) - pos > MAX_LINE:
        raise ReplyError("reply line too long")
    return eol


def parse_get_reply(buf: bytes | bytearray, pos: int = 0) -> tuple[int, bytes | None]:
    """Parse one reply to a single-key ``get`` starting at ``pos``.

    Returns ``(next_pos, body)``: ``body`` is None for a miss (``END``). ``next_pos == pos``
    means the reply is incomplete. Flags and an optional CAS field on the VALUE line are
    ignored, so replies from memcached (``gets``) and every Kestrel flavour parse alike.
    Raises ReplyError on ``ERROR``/``CLIENT_ERROR``/``SERVER_ERROR`` or malformed bytes.
    """
    if buf.startswith(END, pos):
        return pos + 5, None
    eol = _line_end(buf, pos)
    if eol < 0:
        return pos, None
    line = bytes(buf[pos:eol])
    parts = line.split(b" ")
    if parts[0] != b"VALUE" or len(parts) < 4:
        raise _error_line(line)
    try:
        size = int(parts[3])
    except ValueError:
        raise _error_line(line) from None
    start = eol + 2
    stop = start + size
    if len(buf) < stop + 7:  # data, CRLF, END CRLF
        return pos, None
    if buf[stop : stop + 2] != CRLF or not buf.startswith(END, stop + 2):
        raise ReplyError("VALUE data not followed by CRLF END")
    return stop + 7, bytes(buf[start:stop])


def parse_store_reply(buf: bytes | bytearray, pos: int = 0) -> tuple[int, bool]:
    """Parse one reply to a ``set``: ``(next_pos, stored)``; ``next_pos == pos`` = incomplete.

    ``NOT_STORED`` (queue full, item too big for the queue) is an answer, not an error; error
    lines raise ReplyError.
    """
    if buf.startswith(STORED, pos):
        return pos + 8, True
    eol = _line_end(buf, pos)
    if eol < 0:
        return pos, False
    line = bytes(buf[pos:eol])
    if line == b"NOT_STORED":
        return eol + 2, False
    raise _error_line(line)


def parse_line(buf: bytes | bytearray, pos: int = 0) -> tuple[int, bytes | None]:
    """Parse one single-line reply (``END``, ``DELETED``, ``VERSION x``): ``(next_pos, line)``.

    ``line`` is None when incomplete. Error lines raise ReplyError.
    """
    eol = _line_end(buf, pos)
    if eol < 0:
        return pos, None
    line = bytes(buf[pos:eol])
    if line == b"ERROR" or line.startswith((b"CLIENT_ERROR", b"SERVER_ERROR")):
        raise _error_line(line)
    return eol + 2, line


def item_tag(tag: int) -> bytes:
    """The 8 hex digits that mark this run's items; ``tag`` < 2**32."""
    return b"%08x" % tag


def make_body(tag: int, item_id: int, size: int) -> bytes:
    """A body of ``size`` bytes (>= ID_BYTES) carrying the run tag and the item id."""
    return (b"%08x%08x" % (tag, item_id)).ljust(size, FILLER)


def make_stamped_body(tag: int, item_id: int, stamp_ns: int, size: int) -> bytes:
    """Like make_body, plus the send time (CLOCK_MONOTONIC ns) for delivery latency."""
    return (b"%08x%08x%016x" % (tag, item_id, stamp_ns)).ljust(size, FILLER)


def body_id(body: bytes, tag: bytes) -> int:
    """The item id in ``body``, or -1 if the body is not one of this run's items."""
    if len(body) < ID_BYTES or body[:8] != tag:
        return -1
    try:
        return int(body[8:16], 16)
    except ValueError:
        return -1


def body_stamp(body: bytes) -> int:
    """The send time stored by make_stamped_body, or -1 if there is none."""
    try:
        return int(body[16:32], 16)
    except ValueError:
        return -1
