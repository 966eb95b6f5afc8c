"""The asyncio face: :class:`AsyncClient`, whose operations are coroutines.

Several tasks may share one client: requests to a server are pipelined on its connection
and replies matched to their tasks in order. Reliable reads are the exception: keep each
queue's open/close in one task (Kestrel allows one open read per queue per connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from kestrelpy.client import codecs
from kestrelpy.client.engine import DEFAULT_TIMEOUT_S, Engine
from kestrelpy.client.errors import ServerUnavailable
from kestrelpy.client.protocol import PendingReplies, ProtocolViolation, Reply
from kestrelpy.client.servers import ServerAddress


class StreamLink(asyncio.Protocol):
    """One connection on the running loop; a cancelled or timed-out exchange leaves later
    replies unmatched, so it makes the link unusable (the engine reconnects)."""

    def __init__(self, address: ServerAddress, timeout_s: float) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._pending: PendingReplies[asyncio.Future[list[Reply]]] = PendingReplies()
        self._transport: asyncio.Transport | None = None
        self._usable = True
        self._closed_by_us = False  # then a lost connection is no stale idle one

    @property
    def usable(self) -> bool:
        return self._usable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            done = self._pending.feed(data)
        except ProtocolViolation as err:
            self._fail(str(err))
            return
        for future, replies in done:
            if not future.done():
                future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(str(exc) if exc else "connection closed by the server", closed=True)

    def _fail(self, why: str, *, closed: bool = False) -> None:
        self._usable = False
        for future, got in self._pending.abandon():
            if not future.done():
                stale = closed and not got and not self._closed_by_us
                error = ServerUnavailable(str(self._address), why, replies=got, stale=stale)
                future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    async def exchange(self, request: bytes, replies: int, wait_s: float) -> list[Reply]:
        if not self._usable or self._transport is None:
            raise ServerUnavailable(str(self._address), "connection lost")
        future: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()
        self._pending.expect(future, replies)
        self._transport.write(request)
        try:
            return await asyncio.wait_for(future, self._timeout_s + wait_s)
        except TimeoutError:
            self._fail("timed out")
            raise ServerUnavailable(str(self._address), "timed out") from None
        except asyncio.CancelledError:
            # Its replies still arrive, and are dropped in order (the future is done). But a
            # cancelled open may leave an item open on this connection that nobody holds:
            # take no new requests here; the engine replaces the link, and closing it
            # returns any such item to its queue.
            self._usable = False
            raise

    def close(self) -> None:
        self._usable = False
        self._closed_by_us = True
        if self._transport is not None:
            self._transport.close()


async def connect_stream(address: ServerAddress, timeout_s: float) -> StreamLink:
    loop = asyncio.get_running_loop()
    try:
        _, link = await asyncio.wait_for(
            loop.create_connection(
                lambda: StreamLink(address, timeout_s), address.host, address.port
            ),
            timeout_s,
        )
    except (OSError, TimeoutError) as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ServerUnavailable(str(address), why) from err
    return link


class AsyncClient(Engine):
    """An asyncio kestrelpy (or Kestrel) client over one or more servers; same arguments
    and operations as :class:`~kestrelpy.client.Client`, each awaited.
    ``async with AsyncClient(...) as client:`` confirms finished reads on the way out."""

    def __init__(
        self,
        servers: str | Iterable[str] = "127.0.0.1:22133",
        *,
        codec: str | codecs.Codec = "json",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            servers,
            connect=connect_stream,
            clock=_loop_time,
            codec=codec,
            timeout_s=timeout_s,
            backoff_max_s=backoff_max_s,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
