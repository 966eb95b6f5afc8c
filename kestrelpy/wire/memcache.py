"""The memcache text protocol as Kestrel speaks it: bytes in, requests out; replies to bytes.

Pure: no I/O, no Twisted, no queue logic, so it is cheap to test on plain byte strings and
cheap to run on the hot path. :class:`MemcacheParser` keeps the framing state of one
connection (a partial line, or a data block still arriving) and turns every complete
request of a chunk into a request value, in order, so a pipelined batch is parsed in one
call. Error replies follow docs/protocol.md §7: the first token says who is at fault, a short
reason follows, and ``close`` says whether framing is lost and the connection must end.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from kestrelpy.errors import KestrelpyError
from kestrelpy.payload import Payload

MAX_KEY_LENGTH = 250
MAX_WAIT_MS = 2**31 - 1
_MAX_FLAGS = 2**31 - 1  # Kestrel reads flags as a signed 32-bit int
_CRLF = b"\r\n"
_STORAGE_VERBS = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")
_INT = re.compile(rb"-?[0-9]{1,19}\Z")
_GOOD_KEYS_MAX = 256
_NO_KEYS: frozenset[bytes] = frozenset()  # shared until a connection validates its first key
# The two requests a queue spends its life on, in their plain form (flags and exptime 0,
# one key, "\r\n"): matched in one C call each. Anything else takes the general path.
_KEY = rb"([^\x00-\x20\x7f]{1,250})"
_PLAIN_SET = re.compile(rb"set " + _KEY + rb" 0 0 ([0-9]{1,9})( noreply)?\r\n")
_PLAIN_GET = re.compile(rb"get " + _KEY + rb"\r\n")

STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
END = b"END\r\n"
DELETED = b"DELETED\r\n"
ERROR = b"ERROR\r\n"


class ProtocolError(KestrelpyError):
    """A request the server will not run; ``reply`` is the whole error line to send."""

    def __init__(self, reply: bytes, *, close: bool = False) -> None:
        super().__init__(reply.decode("latin-1"))
        self.reply = reply
        self.close = close


class Store(NamedTuple):
    """``set <key> <flags> <exptime> <bytes> [noreply]`` with its data block."""

    key: bytes
    flags: int
    exptime: int
    data: Payload
    noreply: bool


class Retrieve(NamedTuple):
    """``get``/``gets``: Kestrel reads only the first key; the rest are ignored."""

    key: bytes
    with_cas: bool


class Command(NamedTuple):
    """Any other command line; ``verb`` is lower-cased, arguments stay as sent."""

    verb: bytes
    args: tuple[bytes, ...]
    noreply: bool


class Invalid(NamedTuple):
    """A request that failed to parse: send ``reply`` (unless noreply), close if asked."""

    reply: bytes
    close: bool
    noreply: bool


Request = Store | Retrieve | Command | Invalid


class GetOptions(NamedTuple):
    """The options after a queue name in a get key (``work/t=500/close/open``)."""

    queue: str
    wait_ms: int | None
    open: bool
    close: bool
    abort: bool
    peek: bool


class MemcacheParser:
    """Framing state of one connection.

    ``feed`` returns every request completed by the new bytes. After an ``Invalid`` with
    ``close`` the parser stops: the connection is beyond repair and will be closed.

    Slotted, and what only some connections need (a data block's buffer, the set of keys
    already validated) is made when first needed: an idle connection costs a few hundred
    bytes, and a server holds thousands of them.
    """

    __slots__ = (
        "_bare_errors",
        "_block",
        "_buffer",
        "_good_keys",
        "_honor_noreply",
        "_item_size_max",
        "_max_line",
        "_pending_set",
        "bytes_read",
        "closed",
    )

    def __init__(
        self,
        *,
        max_line_length: int = 2048,
        item_size_max: int = 16 * 1024 * 1024,
        honor_noreply: bool = True,
        bare_errors: bool = False,
    ) -> None:
        self._max_line = max_line_length
        self._item_size_max = item_size_max
        self._honor_noreply = honor_noreply
        self._bare_errors = bare_errors
        self._buffer = b""
        # A data block still arriving is appended to its final buffer as its bytes come:
        # one copy per byte for a MiB-sized item, and the buffer never holds more than
        # the client has sent (a header alone allocates nothing; see ``_fill_block``).
        # None while no block is arriving.
        self._block: bytearray | None = None
        self._pending_set: tuple[bytes, list[bytes], int] | None = None  # verb, tokens, size
        self._good_keys: set[bytes] | frozenset[bytes] = _NO_KEYS
        self.closed = False
        self.bytes_read = 0

    def feed(self, data: bytes) -> list[Request]:
        """Parse all complete requests; keep the incomplete tail for the next call."""
        if self.closed:
            return []
        self.bytes_read += len(data)
        requests: list[Request] = []
        if self._pending_set is not None:
            pos = self._fill_block(data, requests)
            if pos < 0 or self.closed:
                return requests
        else:
            if self._buffer:
                data = self._buffer + data
                self._buffer = b""
            pos = 0
        self._parse_lines(data, pos, requests)
        return requests

    def _parse_lines(self, data: bytes, pos: int, requests: list[Request]) -> None:
        size = len(data)
        plain_set, plain_get = _PLAIN_SET.match, _PLAIN_GET.match
        line_max = self._max_line + 2
        while pos < size:
            plain = plain_set(data, pos)
            if plain is not None and plain.end() - pos <= line_max:
                start = plain.end()
                block_end = start + int(plain[2])
                if (
                    block_end - start <= self._item_size_max
                    and data[block_end : block_end + 2] == _CRLF
                ):
                    noreply = plain[3] is not None and self._honor_noreply
                    requests.append(Store(plain[1], 0, 0, data[start:block_end], noreply))
                    pos = block_end + 2
                    continue
            elif (plain := plain_get(data, pos)) is not None and plain.end() - pos <= line_max:
                requests.append(Retrieve(plain[1], False))
                pos = plain.end()
                continue
            eol = data.find(b"\n", pos)
            if eol < 0:
                if size - pos > self._max_line + 1:  # + 1: the "\r" may be in already
                    self._fail(requests, b"CLIENT_ERROR line too long", close=True)
                else:
                    self._buffer = data[pos:]
                return
            end = eol - 1 if eol > pos and data[eol - 1] == 13 else eol
            if end - pos > self._max_line:
                self._fail(requests, b"CLIENT_ERROR line too long", close=True)
                return
            line = data[pos:end]
            pos = eol + 1
            tokens = line.split(b" ")
            while len(tokens) > 1 and not tokens[-1]:
                tokens.pop()  # trailing spaces are dropped, as Kestrel does
            verb = tokens[0]
            if verb != b"get" and verb != b"set":
                verb = verb.lower()  # commands are case-insensitive; names are not
            if verb == b"get" or verb == b"gets":
                requests.append(self._retrieve(tokens, verb == b"gets"))
            elif verb in _STORAGE_VERBS:
                pos = self._start_store(verb, tokens, data, pos, requests)
            else:
                noreply = self._honor_noreply and tokens[-1] == b"noreply" and len(tokens) > 1
                args = tuple(tokens[1:-1] if noreply else tokens[1:])
                requests.append(Command(verb, args, noreply))
            if self.closed:
                return

    def _retrieve(self, tokens: list[bytes], with_cas: bool) -> Request:
        if len(tokens) < 2:
            return self._invalid(b"CLIENT_ERROR missing key", close=False)
        key = tokens[1]
        if key not in self._good_keys:
            reason = key_problem(key)
            if reason is not None:
                return self._invalid(b"CLIENT_ERROR " + reason, close=not key)
            self._remember_key(key)
        return Retrieve(key, with_cas)

    def _remember_key(self, key: bytes) -> None:
        """Keys repeat on a connection: validate each once (a small, bounded set, made at
        the first key that takes the general path: plain gets and sets never need it)."""
        keys = self._good_keys
        if not isinstance(keys, set) or len(keys) >= _GOOD_KEYS_MAX:
            keys = self._good_keys = set()
        keys.add(key)

    def _start_store(
        self, verb: bytes, tokens: list[bytes], data: bytes, pos: int, requests: list[Request]
    ) -> int:
        """Read a storage command's header; consume its data block if it is all here.

        Returns where parsing continues: after the data block, or the end of ``data`` when
        the block is still arriving (it is then copied into ``_block`` as it comes).
        """
        if len(tokens) < 5 or not tokens[4].isdigit():
            self._fail(requests, b"CLIENT_ERROR bad command line format", close=True)
            return pos
        size = int(tokens[4])
        if size > self._item_size_max:
            self._fail(requests, b"SERVER_ERROR object too large", close=True)
            return pos
        self._pending_set = (verb, tokens, size)
        if len(data) - pos < size + 2:
            self._block = bytearray()  # grows as the block arrives, not by its declared size
            self._fill_block(memoryview(data)[pos:], requests)
            return len(data)
        return self._finish_store(data, pos, requests)

    def _fill_block(self, data: bytes | memoryview, requests: list[Request]) -> int:
        """Copy the next part of an arriving data block; at its end, emit the request.

        Returns where parsing continues in ``data``, or -1 if all of it was block.
        """
        assert self._pending_set is not None
        verb, tokens, size = self._pending_set
        block = self._block
        assert block is not None  # made by _start_store with the pending set
        taken = min(len(data), size + 2 - len(block))
        # Appending, not reserving ``size`` up front: a client that sends only a header
        # (``set q 0 0 16777216``) must not buy item_size_max bytes, or a MiB, per
        # connection. glibc grows a large buffer in place with realloc, so appending a
        # MiB in 64 KiB reads costs less than one preallocated (zero-filled) buffer did.
        block += data if taken == len(data) else data[:taken]
        if len(block) < size + 2:
            return -1
        self._pending_set = None
        self._block = None
        if block[-2:] != _CRLF:
            self._fail(requests, b"CLIENT_ERROR bad data chunk", close=True)
            return -1
        del block[-2:]  # shrinks in place
        noreply = self._honor_noreply and len(tokens) > 5 and tokens[5] == b"noreply"
        requests.append(self._store_request(verb, tokens, block, noreply))
        return taken

    def _finish_store(self, data: bytes, pos: int, requests: list[Request]) -> int:
        """Take the data block at ``pos``; returns the position after its trailer."""
        assert self._pending_set is not None
        verb, tokens, size = self._pending_set
        self._pending_set = None
        end = pos + size
        if data[end : end + 2] != _CRLF:
            self._fail(requests, b"CLIENT_ERROR bad data chunk", close=True)
            return len(data)
        noreply = self._honor_noreply and len(tokens) > 5 and tokens[5] == b"noreply"
        requests.append(self._store_request(verb, tokens, data[pos:end], noreply))
        return end + 2

    def _store_request(
        self, verb: bytes, tokens: list[bytes], block: Payload, noreply: bool
    ) -> Request:
        if verb != b"set":
            return Invalid(self._error_line(ERROR[:-2]), False, noreply)
        key, raw_flags, raw_exptime = tokens[1], tokens[2], tokens[3]
        if key not in self._good_keys:
            reason = key_problem(key)
            if reason is not None:
                return Invalid(self._error_line(b"CLIENT_ERROR " + reason), False, noreply)
            self._remember_key(key)
        flags = 0 if raw_flags == b"0" else _parse_int(raw_flags)
        if flags is None or not 0 <= flags <= _MAX_FLAGS:
            return Invalid(self._error_line(b"CLIENT_ERROR bad flags"), False, noreply)
        exptime = 0 if raw_exptime == b"0" else _parse_int(raw_exptime)
        if exptime is None or not -(2**31) <= exptime < 2**31:
            # Kestrel drops the connection here; we say why first.
            self.closed = True
            return Invalid(self._error_line(b"CLIENT_ERROR bad exptime"), True, False)
        return Store(key, flags, exptime, block, noreply)

    def _invalid(self, reply: bytes, *, close: bool) -> Invalid:
        if close:
            self.closed = True
        return Invalid(self._error_line(reply), close, False)

    def _fail(self, requests: list[Request], reply: bytes, *, close: bool) -> None:
        requests.append(self._invalid(reply, close=close))

    def _error_line(self, reply: bytes) -> bytes:
        if self._bare_errors:
            reply = reply.split(b" ", 1)[0]
        return reply + _CRLF


def key_problem(key: bytes) -> bytes | None:
    """Why a key cannot name a queue, or None. Clients cap keys at 250 bytes too."""
    if not key:
        return b"empty key"
    if len(key) > MAX_KEY_LENGTH:
        return b"key too long"
    if _BAD_KEY_BYTE.search(key):
        return b"bad key: control character or space"
    return None


def is_queue_name(key: bytes) -> bool:
    """A key that names a queue by itself: valid, and without the ``/`` of get options."""
    return key_problem(key) is None and b"/" not in key


def parse_get_key(key: bytes) -> GetOptions:
    """Split ``queue/opt/opt`` (any order, repeats allowed, unknown options ignored).

    Raises ProtocolError(close=True) for the combinations Kestrel rejects, which it
    answers by dropping the connection.
    """
    name, *options = key.split(b"/")
    if not name:
        raise ProtocolError(b"CLIENT_ERROR empty queue name\r\n", close=True)
    wait_ms: int | None = None
    is_open = is_close = is_abort = is_peek = False
    for option in options:
        if option == b"open":
            is_open = True
        elif option == b"close":
            is_close = True
        elif option == b"abort":
            is_abort = True
        elif option == b"peek":
            is_peek = True
        elif option.startswith(b"t="):
            wait_ms = _parse_wait(option[2:])
    if is_peek and (is_open or is_close or is_abort):
        raise ProtocolError(
            b"CLIENT_ERROR bad get options: peek with open/close/abort\r\n", close=True
        )
    if is_abort and (is_open or is_close):
        raise ProtocolError(b"CLIENT_ERROR bad get options: abort with open/close\r\n", close=True)
    return GetOptions(name.decode("latin-1"), wait_ms, is_open, is_close, is_abort, is_peek)


def _parse_wait(raw: bytes) -> int | None:
    value = _parse_int(raw)
    if value is None or value > MAX_WAIT_MS:
        return None  # Kestrel drops a bad timeout and reads without waiting
    return value if value > 0 else None


def _parse_int(raw: bytes) -> int | None:
    return int(raw) if _INT.match(raw) else None


def value_reply(key: bytes, flags: int, data: Payload, cas: int | None) -> bytes:
    """One ``VALUE`` block plus ``END``: the whole reply to a get that found an item."""
    # %b takes a bytearray too, but mypy's format check says bytes only; not a cast, which
    # the compiled build (setup.py) checks at run time, refusing a bytearray.
    block: Any = data
    if cas is None:
        return b"VALUE %b %d %d\r\n%b\r\nEND\r\n" % (key, flags, len(block), block)
    return b"VALUE %b %d %d %d\r\n%b\r\nEND\r\n" % (key, flags, len(block), cas, block)


def stat_lines(stats: list[tuple[str, object]]) -> bytes:
    """``STAT name value`` lines and the closing ``END``."""
    return stat_body(stats) + END


def stat_body(stats: list[tuple[str, object]]) -> bytes:
    """``STAT name value`` lines (a piece of a streamed ``stats``: no ``END``)."""
    return "".join(f"STAT {name} {value}\r\n" for name, value in stats).encode("latin-1")
