"""The asyncio face: :class:`AsyncClient`, whose operations are coroutines.

Several tasks may share one client: requests to a server are pipelined on its connection
and replies matched to their tasks in order. Reliable reads are the exception: keep each
queue's open/close in one task (Kestrel allows one open read per queue per connection).

A client may outlive its event loop (``asyncio.run`` twice, say): a connection made on
another loop is not used, it is replaced on the running one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from contextlib import suppress

from kestrelpy.client import codecs
from kestrelpy.client.engine import DEFAULT_TIMEOUT_S, Engine
from kestrelpy.client.errors import ServerUnavailable
from kestrelpy.client.links import PipelinedLink
from kestrelpy.client.protocol import Reply
from kestrelpy.client.servers import ServerAddress


class StreamLink(PipelinedLink["asyncio.Future[list[Reply]]"], asyncio.Protocol):
    """One connection on the loop that made it. A timed-out exchange leaves later replies
    unmatched, so it fails the link (the engine reconnects); a cancelled one does not (see
    :class:`~kestrelpy.client.engine.Link`): its replies are dropped in order."""

    def __init__(self, address: ServerAddress, timeout_s: float) -> None:
        super().__init__(address)
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None

    @property
    def usable(self) -> bool:
        # only on its own loop: another loop's transport cannot be used (or closed) here
        return self._usable and self._loop is asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(str(exc) if exc else "connection closed by the server", closed=True)

    def _settled(self, waiter: asyncio.Future[list[Reply]]) -> bool:
        return waiter.done()

    def _resolve(self, waiter: asyncio.Future[list[Reply]], replies: list[Reply]) -> None:
        waiter.set_result(replies)

    def _reject(self, waiter: asyncio.Future[list[Reply]], error: ServerUnavailable) -> None:
        waiter.set_exception(error)

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _abort_transport(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def exchange(
        self, request: bytes, replies: int, wait_s: float, opens: bytes = b""
    ) -> list[Reply]:
        if not self._usable or self._transport is None:
            raise ServerUnavailable(str(self._address), "connection lost")
        future: asyncio.Future[list[Reply]] = self._loop.create_future()
        self._pending.expect(future, replies)
        self._transport.write(request)
        try:
            return await asyncio.wait_for(future, self._timeout_s + wait_s)
        except TimeoutError:
            self._fail("timed out")
            raise ServerUnavailable(str(self._address), "timed out") from None
        except asyncio.CancelledError:
            self._cancelled(opens)  # the future is done: its replies will be dropped
            raise

    def close(self) -> None:
        self._usable = False
        self._closed_by_us = True
        if self._transport is None:
            return
        if not self._loop.is_closed():
            if self._loop is asyncio.get_running_loop():
                self._transport.close()
            else:
                self._loop.call_soon_threadsafe(self._transport.close)
            return
        # its loop is closed, and the transport with it: end the TCP connection by hand, so
        # the server puts back any item it held (the descriptor goes with the transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


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
        decode_by_flags: bool = True,
    ) -> None:
        super().__init__(
            servers,
            connect=connect_stream,
            clock=_loop_time,
            codec=codec,
            timeout_s=timeout_s,
            backoff_max_s=backoff_max_s,
            decode_by_flags=decode_by_flags,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
