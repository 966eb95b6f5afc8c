"""What every client operation does, written once as coroutines over an abstract link.

The three faces differ only in how bytes move: :class:`Link` is one connection to one
server (a blocking socket, an asyncio stream, a Twisted protocol) and the engine awaits it.
The blocking face's links never suspend, so it drives these coroutines to the end with a
single ``send``; the asyncio and Twisted faces await them on their event loops.

Delivery is at least once, as with Kestrel itself: a write whose connection fails before
its reply is sent again to another server, and a read whose connection fails goes back on
its queue (server side) to be delivered again.

One connection per server, shared by every task of an event-loop face. Held reads belong to
it: whatever replaces or drops it voids them (``HeldReads.drop_server``), and a failure or a
drop acts on the link it concerns only, never on the one that has replaced it since. A
cancelled exchange leaves its link in use (its reply is read and dropped; a cancelled
``open`` is followed by ``get q/abort`` on the same link, see :class:`Link`), so cancelling
one task disturbs no other task's request or held read.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

from kestrelpy.client import codecs
from kestrelpy.client.errors import (
    ClientError,
    NoServerAvailable,
    ServerRefused,
    ServerUnavailable,
    UsageError,
)
from kestrelpy.client.protocol import (
    DELETED,
    END,
    STORED,
    Reply,
    command_request,
    queue_key,
    read_request,
    set_request,
)
from kestrelpy.client.reads import HeldRead, HeldReads
from kestrelpy.client.servers import ServerAddress, ServerPool, parse_servers

DEFAULT_TIMEOUT_S = 5.0
PUT_MANY_CHUNK = 1000


class Link(Protocol):
    """One open connection to one server.

    ``exchange`` sends ``request`` (one or more pipelined requests) and returns the next
    ``replies`` replies in order. The I/O deadline is ``timeout_s`` plus ``wait_s``, the time
    the server may legitimately hold a blocking read. Any failure (refused, reset, EOF,
    deadline, unparseable reply) raises :class:`ServerUnavailable`; the link is then dead.

    Abandoned exchanges: an event-loop link whose exchange is cancelled after the request
    went out stays usable. Its replies are read and dropped in order, and if the exchange
    ``opens`` a read (the queue's key; empty otherwise), ``get <key>/abort`` is sent at once
    on the same link, its reply dropped too, so no item stays open that nobody holds (the
    abort answers END if the open got nothing). Any other
    exception escaping an exchange half-way (``KeyboardInterrupt`` in a blocking recv) makes
    the link unusable and closes it: a reply is still owed on it.
    """

    async def exchange(
        self, request: bytes, replies: int, wait_s: float, opens: bytes = b""
    ) -> list[Reply]: ...

    @property
    def usable(self) -> bool:
        """False once the link failed, was closed, or is not usable from here (an asyncio
        link of another event loop)."""

    def close(self) -> None: ...


Connector = Callable[[ServerAddress, float], Awaitable[Link]]


class Engine:
    """The operations, over several servers, for one face. Not shared between threads or
    event loops; one engine per worker."""

    def __init__(
        self,
        servers: str | Iterable[str],
        *,
        connect: Connector,
        clock: Callable[[], float],
        codec: str | codecs.Codec = "json",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_max_s: float = 30.0,
        decode_by_flags: bool = True,
    ) -> None:
        """``decode_by_flags``: decode each item by the codec mark in its flags (the
        default); False decodes every item with ``codec`` whatever its flags (with
        ``codec="raw"``: the bytes of any item, a PHP client's compressed one included)."""
        if timeout_s <= 0:
            raise UsageError(f"timeout_s={timeout_s}: expected a positive number of seconds")
        spec = servers if isinstance(servers, str) else list(servers)
        self.pool = ServerPool(parse_servers(spec), clock, backoff_max_s=backoff_max_s)
        self.codec = codecs.codec_named(codec)
        self.timeout_s = timeout_s
        self.decode_by_flags = decode_by_flags
        self._connect = connect
        self._links: dict[ServerAddress, Link] = {}
        self._reads = HeldReads()
        self._keys: dict[str, bytes] = {}  # checked queue names: one dict lookup per request

    def _key(self, queue: str) -> bytes:
        key = self._keys.get(queue)
        if key is None:
            if len(self._keys) > 10_000:
                self._keys.clear()  # many one-off queue names: bound the cache, don't grow it
            key = self._keys[queue] = queue_key(queue)
        return key

    # -- writes ------------------------------------------------------------------------------

    async def put(
        self, queue: str, data: Any, expiry_s: int = 0, *, codec: str | codecs.Codec | None = None
    ) -> None:
        """Store one item on one server (the next in rotation that is up). ``codec``: this
        item's codec, when not the client's (a dead letter kept as the bytes read, say)."""
        key = self._key(queue)
        use = self.codec if codec is None else codecs.codec_named(codec)
        body = use.encode(data)
        request = set_request(key, use.flags, expiry_s, body)
        await self._write([request], queue, len(body))

    async def put_many(self, queue: str, items: Iterable[Any], expiry_s: int = 0) -> int:
        """Store every item, pipelined: the sets go out in writes of up to
        ``PUT_MANY_CHUNK`` items, each to one server. Returns how many were stored.

        Chunks bound what either side buffers (a million-item batch sent in one write
        would fill both sockets' buffers and stall). What a failed server did not
        acknowledge is sent to the next one; nothing acknowledged is sent again. An error
        carries ``stored``: how many items of the call are queued; a
        :class:`ServerRefused` also ``refused``, the indexes (in ``items``) refused."""
        key = self._key(queue)
        codec = self.codec
        stored = 0
        for chunk in _batches(items, PUT_MANY_CHUNK):
            requests = [set_request(key, codec.flags, expiry_s, codec.encode(i)) for i in chunk]
            try:
                await self._write(requests, queue)
            except ServerRefused as err:
                err.refused = [stored + index for index in err.refused]
                err.stored += stored
                raise
            except NoServerAvailable as err:
                err.stored += stored
                raise
            stored += len(requests)
        return stored

    async def _write(self, requests: list[bytes], queue: str, size: int | None = None) -> None:
        """Send the sets to the first server that takes them all; a server that fails
        after acknowledging some gets the rest sent elsewhere. A refusal (``NOT_STORED``,
        an error line) is tried on the other servers only if nothing of the batch was
        stored, since resending stored items would queue them twice. A refusal raised
        carries ``stored`` (all the batch's items stored, wherever) and ``refused`` (the
        indexes in ``requests`` the last server refused)."""
        stored = 0  # acknowledged by servers that failed afterwards
        sent = 0  # index in the caller's ``requests`` of requests[0]
        refusal: ServerRefused | None = None
        for server in self.pool.writers():
            request = requests[0] if len(requests) == 1 else b"".join(requests)
            try:
                replies = await self._call(server, request, len(requests))
            except ServerUnavailable as err:
                replies = err.replies  # an error line, then the server closed; or nothing
                if not replies or _refusal(replies) == STORED:
                    acknowledged = len(replies)
                    stored += acknowledged
                    sent += acknowledged
                    requests = requests[acknowledged:]
                    if not requests:
                        return
                    continue
            if len(replies) == 1 == len(requests) and replies[0].line == STORED:
                self.pool.mark_writable(server)
                return
            line = _refusal(replies)
            if line == STORED and len(replies) == len(requests):
                self.pool.mark_writable(server)
                return
            what = f"set {queue} (batch)" if size is None else f"set {queue} ({size} bytes)"
            refused = [sent + i for i, reply in enumerate(replies) if reply.line != STORED]
            stored_here = len(replies) - len(refused)
            refusal = ServerRefused(
                str(server), what, line.decode(), stored=stored + stored_here, refused=refused
            )
            self._after_refusal(server, replies, writing=True)
            if stored_here:
                # part of the batch is queued there (not only a prefix: one item over a
                # queue's max_item_size refuses alone): resending it would duplicate
                raise refusal
        if refusal is not None:
            raise refusal
        unavailable = self.pool.unavailable()
        unavailable.stored = stored
        raise unavailable

    # -- reads -------------------------------------------------------------------------------

    async def get(self, queue: str, timeout_ms: int = 0) -> Any:
        """Take one item, waiting up to ``timeout_ms`` on the current server; None when every
        reachable server is empty."""
        return await self._read(queue, timeout_ms, peek=False)

    async def peek(self, queue: str, timeout_ms: int = 0) -> Any:
        return await self._read(queue, timeout_ms, peek=True)

    async def _read(self, queue: str, timeout_ms: int, *, peek: bool) -> Any:
        if not peek and self.holds(queue):
            raise UsageError(f"a reliable read of {queue!r} is open: close or abort it first")
        return await self._read_from_servers(queue, timeout_ms, peek=peek)

    async def open(self, queue: str, timeout_ms: int = 0) -> Any:
        """Take one item tentatively: it stays reserved for this client until :meth:`close`
        (done) or :meth:`abort` (back to the head of the queue), or until the connection
        drops (back too). None when every reachable server is empty."""
        held = self._reads.get(queue)
        owed_to = None
        if held is not None:
            if not held.finished and not held.lost:
                raise UsageError(f"a reliable read of {queue!r} is open: close or abort it first")
            if held.finished:
                owed_to = held.server
            self._reads.release(queue)  # its close rides on the open below, or is moot
        return await self._read_from_servers(queue, timeout_ms, open_=True, close_on=owed_to)

    async def _read_from_servers(
        self,
        queue: str,
        timeout_ms: int,
        *,
        peek: bool = False,
        open_: bool = False,
        close_on: ServerAddress | None = None,
    ) -> Any:
        """Ask the current server (with the wait), then the others (without): a hit moves
        the reader there; all empty moves it on, so the next wait is elsewhere.
        ``close_on``: the server owed a close for this queue, asked first, with the close
        folded into the request (``close/open``)."""
        key = self._key(queue)
        wait_ms = timeout_ms
        empty = False  # some server answered END: only then is None the answer
        refusal: ServerRefused | None = None
        opens = key if open_ else b""  # a cancelled open is aborted: see Link
        for server in self.pool.readers(first=close_on):
            request = read_request(
                key, timeout_ms=wait_ms, open_=open_, close=server == close_on, peek=peek
            )
            try:
                (reply,) = await self._call(server, request, 1, wait_ms / 1000, opens)
            except ServerUnavailable:
                continue
            wait_ms = 0
            if reply.values:
                value = reply.values[0]
                self.pool.read_from(server)
                if open_:
                    self._reads.hold(queue, server)
                return codecs.decode(value.body, value.flags, self.codec, self.decode_by_flags)
            if reply.line != END:
                self._after_refusal(server, [reply])
                refusal = ServerRefused(str(server), f"get {queue}", reply.line.decode())
                if reply.line.startswith(b"SERVER_ERROR"):
                    continue  # refused by status (quiescent): Kestrel's "try elsewhere"
                raise refusal
            empty = True
        if not empty:  # refused is not empty: a worker loop must not take it for "no work"
            raise refusal if refusal is not None else self.pool.unavailable()
        self.pool.move_reader_on()
        return None

    async def close(self, queue: str) -> bool:
        """Confirm the open read of ``queue`` now. False if none was held;
        :class:`ServerUnavailable` if the connection that held it is gone (the server has
        put the item back: it will be delivered again)."""
        held = self._reads.get(queue)
        if held is None:
            return False
        self._reads.release(queue)
        await self._on_holding_link(held, read_request(self._key(queue), close=True))
        return True

    def held_server(self, queue: str) -> str | None:
        """``host:port`` of the server holding this client's open read of ``queue``."""
        held = self._reads.get(queue)
        return str(held.server) if held is not None else None

    def holds(self, queue: str) -> bool:
        """True while a reliable read of ``queue`` is open and not yet finished."""
        held = self._reads.get(queue)
        return held is not None and not held.finished and not held.lost

    @asynccontextmanager
    async def reliable(self, queue: str, timeout_ms: int = 0) -> AsyncIterator[Any]:
        """``async with``: open one item for the block; close it when the block ends
        normally, abort it (back to the head) when the block raises. Yields None when every
        server is empty. The close rides on the next request to that server (see
        :meth:`finish`)."""
        job = await self.open(queue, timeout_ms)
        if not self.holds(queue):
            yield job
            return
        try:
            yield job
        except BaseException:
            with suppress(ClientError):  # if the link is gone, so is the read: item is back
                await self.abort(queue)
            raise
        self.finish(queue)

    def finish(self, queue: str) -> None:
        """Confirm the open read of ``queue`` with the next request to its server, saving a
        round trip; :meth:`flush` or :meth:`disconnect` send it if nothing else does."""
        if self._reads.get(queue) is not None:
            self._reads.finish(queue)

    async def abort(self, queue: str) -> bool:
        """Give the open read of ``queue`` back (to the head of its queue). False if none."""
        held = self._reads.get(queue)
        if held is None:
            return False
        if held.finished:
            raise UsageError(f"the read of {queue!r} is already finished: too late to abort")
        self._reads.release(queue)
        await self._on_holding_link(held, read_request(self._key(queue), abort=True))
        return True

    async def _on_holding_link(self, held: HeldRead, request: bytes) -> None:
        """Send a close or abort on the connection that opened the read, with any owed
        closes in front; never on another. Kestrel ties the read to that connection: on a
        fresh one ``close`` answers END although the server put the item back when the old
        one went, so a retry would report success for an item that will be delivered
        again. Raises :class:`ServerUnavailable` when that connection is gone."""
        server = held.server
        link = self._links.get(server)
        if held.lost or link is None or not link.usable:
            if link is not None:
                self._drop(server, link)  # unusable: whatever it held is gone with it
            raise ServerUnavailable(str(server), _READ_GONE)
        closes = self._reads.take_finished(server)
        owed = b"".join(read_request(queue_key(q), close=True) for q in closes)
        try:
            await link.exchange(owed + request, len(closes) + 1, 0.0)
        except ServerUnavailable as err:
            self._failed(server, link, err, reused=True)  # a stale one: not down; no retry
            raise ServerUnavailable(str(server), f"{err.why}; {_READ_GONE}") from err
        self.pool.mark_up(server)

    # -- administration ----------------------------------------------------------------------

    async def delete(self, queue: str) -> None:
        """Drop the queue and its items on every reachable server."""
        await self._everywhere(command_request(b"delete", self._key(queue)), DELETED)

    async def flush(self, queue: str) -> None:
        """Empty the queue on every reachable server."""
        await self._everywhere(command_request(b"flush", self._key(queue)), END)

    async def _everywhere(self, request: bytes, expected: bytes) -> None:
        reached = False
        for server in self.pool.addresses:
            if not self.pool.is_up(server):
                continue
            try:
                (reply,) = await self._call(server, request, 1)
            except ServerUnavailable:
                continue
            reached = True
            if reply.line != expected:
                self._after_refusal(server, [reply])
                raise ServerRefused(str(server), request.decode().strip(), reply.line.decode())
        if not reached:
            raise self.pool.unavailable()

    async def stats(self) -> dict[str, dict[str, str]]:
        """Each reachable server's ``stats``, keyed by ``host:port``."""
        result: dict[str, dict[str, str]] = {}
        for server in self.pool.addresses:
            if not self.pool.is_up(server):
                continue
            try:
                (reply,) = await self._call(server, b"stats\r\n", 1)
            except ServerUnavailable:
                continue
            pairs = (line.decode("latin-1").split(" ", 1) for line in reply.stats)
            result[str(server)] = {name: value for name, value in pairs}
        if not result:
            raise self.pool.unavailable()
        return result

    async def flush_closes(self) -> None:
        """Send every close still owed (see :meth:`finish`)."""
        for server in self.pool.addresses:
            if server in self._reads.servers_owed_closes():
                with suppress(ServerUnavailable):  # link gone: the server put the items back
                    await self._call(server, b"", 0)

    async def disconnect(self) -> None:
        """Send the owed closes, then close every connection. Reads still open (neither
        finished nor aborted) go back on their queues when the server sees the close."""
        await self.flush_closes()
        for server, link in list(self._links.items()):
            self._drop(server, link)

    def links(self) -> list[Link]:
        """The connections open now, one per server (for a face that must reach them from
        outside an operation, as the blocking client's ``interrupt`` does)."""
        return list(self._links.values())

    # -- one server ---------------------------------------------------------------------------

    async def _call(
        self,
        server: ServerAddress,
        request: bytes,
        replies: int,
        wait_s: float = 0.0,
        opens: bytes = b"",
    ) -> list[Reply]:
        """Send to one server, with any owed closes pipelined in front. A failure marks the
        server down, voids the reads its connection held, and raises
        :class:`ServerUnavailable` whose ``replies`` are this request's only (never the
        owed closes' ``END``s, which a write would count as stored items).

        A connection that had been idle may have been closed by the server meanwhile
        (restart, ``client_timeout``): when a reused one fails before any reply, the
        request goes once more on a fresh connection before the server counts as down.
        The owed closes are not resent: the server put those items back when it saw the
        old connection close. ``opens``: the key of the queue whose read this request
        opens, if it does (see :class:`Link`)."""
        closes = self._reads.take_finished(server)
        if closes:
            owed = b"".join(read_request(queue_key(q), close=True) for q in closes)
            return await self._exchange(server, request, replies, wait_s, opens, owed, len(closes))
        if not replies:
            return []
        link = self._links.get(server)
        if link is not None and link.usable:  # the common case, without _exchange's frame
            try:
                got = await link.exchange(request, replies, wait_s, opens)
            except ServerUnavailable as err:
                if self._failed(server, link, err, reused=True):
                    return await self._exchange(
                        server, request, replies, wait_s, opens, retry=False
                    )
                raise
            self.pool.mark_up(server)
            return got
        return await self._exchange(server, request, replies, wait_s, opens)

    async def _exchange(
        self,
        server: ServerAddress,
        request: bytes,
        replies: int,
        wait_s: float,
        opens: bytes,
        owed: bytes = b"",
        closes: int = 0,
        *,
        retry: bool = True,
    ) -> list[Reply]:
        """``_call``'s general case: connect if needed; ``owed`` carries ``closes`` owed
        closes in front of the request; ``retry``: may go once more on a fresh link."""
        link = self._links.get(server)
        reused = link is not None and link.usable
        if not reused:
            try:
                link = await self._open_link(server, link)
            except ServerUnavailable as err:
                self.pool.mark_down(server, err.why)
                raise
        assert link is not None
        try:
            got = await link.exchange(owed + request, replies + closes, wait_s, opens)
        except ServerUnavailable as err:
            failure = _without_first(err, closes) if closes else err
            if self._failed(server, link, failure, reused=reused) and retry:
                return await self._exchange(server, request, replies, wait_s, opens, retry=False)
            if failure is err:
                raise
            raise failure from err
        self.pool.mark_up(server)
        return got[closes:] if closes else got

    def _failed(
        self, server: ServerAddress, link: Link, err: ServerUnavailable, *, reused: bool
    ) -> bool:
        """``link`` failed: drop it and count the server down, unless (True: send again,
        once, on the current or a fresh link) it was a stale idle link, or it was no longer
        the server's link (dropped after a refusal, at ``disconnect``, or by another task's
        failure) and nothing on it was answered. A link that is no longer current says
        nothing about the server now: it never counts the server down."""
        if self._links.get(server) is not link:
            return not err.replies and self.pool.is_up(server)
        self._drop(server, link)
        if reused and err.stale:
            return True
        if not err.replies:  # it answered, then closed: refusing, not down
            self.pool.mark_down(server, err.why)
        return False

    async def _open_link(self, server: ServerAddress, old: Link | None) -> Link:
        """A new link to ``server`` in place of ``old`` (unusable: failed, interrupted, or
        another event loop's), which goes first, with any reads it held."""
        if old is not None:
            self._drop(server, old)
        link = await self._connect(server, self.timeout_s)
        raced = self._links.get(server)
        if raced is not None:  # another task connected meanwhile
            if raced.usable:
                link.close()
                return raced
            self._drop(server, raced)
        self._links[server] = link
        return link

    def _after_refusal(
        self, server: ServerAddress, replies: list[Reply], *, writing: bool = False
    ) -> None:
        """After an error line the server may close the connection (Kestrel closes after
        most), so the link is dropped: the server's link now, which is the one that
        answered (a replacement needs a failure after this reply, then a connect: longer
        than the caller of ``_call`` takes to get here). ``SERVER_ERROR`` also means
        "refusing for now" (status, limits): back off from that server, for writes only
        when a write was refused (a read-only server can still be drained)."""
        line = _refusal(replies)
        if line.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")):
            link = self._links.get(server)
            if link is not None:
                self._drop(server, link)
        if line.startswith(b"SERVER_ERROR") and b"too large" not in line:  # that one is ours
            self.pool.mark_down(server, line.decode(), writes_only=writing)

    def _drop(self, server: ServerAddress, link: Link) -> None:
        """Close ``link`` and void the reads it held, if it is still ``server``'s link;
        otherwise it was dropped already, and its reads with it."""
        if self._links.get(server) is not link:
            link.close()
            return
        del self._links[server]
        link.close()
        self._reads.drop_server(server)


_READ_GONE = "the connection that held the read is gone: the server put the item back"


def _without_first(err: ServerUnavailable, count: int) -> ServerUnavailable:
    """``err`` without the replies to the ``count`` owed closes sent ahead of the request."""
    return ServerUnavailable(err.server, err.why, replies=err.replies[count:], stale=err.stale)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _refusal(replies: list[Reply]) -> bytes:
    for reply in replies:
        if reply.line not in (STORED, END, DELETED):
            return reply.line
    return replies[-1].line if replies else b""
