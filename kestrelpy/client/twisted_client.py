"""The Twisted face: :class:`TwistedClient`, whose operations return Deferreds.

The engine's coroutines run under ``Deferred.fromCoroutine`` and await the connection's
Deferreds, so ``yield client.put(...)`` in ``inlineCallbacks``, ``await`` in
``ensureDeferred`` coroutines and ``addCallback`` chains all work. ``reliable`` is an
async context manager: ``async with client.reliable(q) as job:`` inside a coroutine run by
``ensureDeferred``. Several callers may share one client (requests are pipelined); keep
each queue's reliable reads in one caller.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from kestrelpy.client import codecs
from kestrelpy.client.engine import DEFAULT_TIMEOUT_S, Engine
from kestrelpy.client.errors import ServerUnavailable
from kestrelpy.client.links import PipelinedLink
from kestrelpy.client.protocol import Reply
from kestrelpy.client.servers import ServerAddress

P = ParamSpec("P")
T = TypeVar("T")


class DeferredLink(PipelinedLink["Deferred[list[Reply]]"], Protocol):
    """One connection on the reactor. A timed-out exchange leaves later replies unmatched,
    so it fails the link (the engine reconnects); a cancelled one (``Deferred.cancel`` on
    an operation) does not (see :class:`~kestrelpy.client.engine.Link`): its replies are
    dropped in order, and an abort behind a cancelled open gives back what it opened."""

    def __init__(self, address: ServerAddress, timeout_s: float, clock: IReactorTime) -> None:
        super().__init__(address)
        self._timeout_s = timeout_s
        self._clock = clock

    @property
    def usable(self) -> bool:
        return self._usable

    def dataReceived(self, data: bytes) -> None:
        self._received(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._fail("connection closed", closed=True)

    def _settled(self, waiter: Deferred[list[Reply]]) -> bool:
        return waiter.called

    def _resolve(self, waiter: Deferred[list[Reply]], replies: list[Reply]) -> None:
        waiter.callback(replies)

    def _reject(self, waiter: Deferred[list[Reply]], error: ServerUnavailable) -> None:
        waiter.errback(error)

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def _abort_transport(self) -> None:
        transport: Any = self.transport
        if transport is not None and self.connected:
            transport.abortConnection()

    async def exchange(
        self, request: bytes, replies: int, wait_s: float, opens: bytes = b""
    ) -> list[Reply]:
        if not self._usable:
            raise ServerUnavailable(str(self._address), "connection lost")
        deferred: Deferred[list[Reply]] = Deferred()
        self._pending.expect(deferred, replies)
        transport: Any = self.transport
        transport.write(request)
        deferred.addTimeout(self._timeout_s + wait_s, self._clock)
        try:
            return await deferred
        except DeferredTimeout:
            self._fail("timed out")
            raise ServerUnavailable(str(self._address), "timed out") from None
        except CancelledError:
            self._cancelled(opens)  # the deferred has fired: its replies will be dropped
            raise

    def close(self) -> None:
        self._usable = False
        self._closed_by_us = True
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()


def _deferred(
    operation: Callable[Concatenate[Engine, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[TwistedClient, P], Deferred[T]]:
    """The engine operation, run on this client's engine as a Deferred."""

    @functools.wraps(operation)
    def method(self: TwistedClient, /, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(operation(self.engine, *args, **kwargs))

    return method


class TwistedClient:
    """A Twisted kestrelpy (or Kestrel) client over one or more servers; same arguments
    and operations as :class:`~kestrelpy.client.Client`, each returning a Deferred.
    ``reactor`` provides TCP and time (pass a ``MemoryReactorClock`` in tests)."""

    def __init__(
        self,
        reactor: Any,
        servers: str | Iterable[str] = "127.0.0.1:22133",
        *,
        codec: str | codecs.Codec = "json",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_max_s: float = 30.0,
        decode_by_flags: bool = True,
    ) -> None:
        self._reactor = reactor
        self.engine = Engine(
            servers,
            connect=self._connect,
            clock=reactor.seconds,
            codec=codec,
            timeout_s=timeout_s,
            backoff_max_s=backoff_max_s,
            decode_by_flags=decode_by_flags,
        )

    async def _connect(self, address: ServerAddress, timeout_s: float) -> DeferredLink:
        reactor: IReactorTCP = self._reactor
        endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=timeout_s)
        link = DeferredLink(address, timeout_s, self._reactor)
        connecting: Deferred[Any] = connectProtocol(endpoint, link)  # type: ignore[no-untyped-call]
        connecting.addTimeout(timeout_s, self._reactor)
        try:
            await connecting
        except Exception as err:
            raise ServerUnavailable(str(address), str(err) or type(err).__name__) from err
        return link

    put = _deferred(Engine.put)
    put_many = _deferred(Engine.put_many)
    get = _deferred(Engine.get)
    peek = _deferred(Engine.peek)
    open = _deferred(Engine.open)
    close = _deferred(Engine.close)
    abort = _deferred(Engine.abort)
    delete = _deferred(Engine.delete)
    flush = _deferred(Engine.flush)
    stats = _deferred(Engine.stats)
    flush_closes = _deferred(Engine.flush_closes)
    disconnect = _deferred(Engine.disconnect)

    def reliable(self, queue: str, timeout_ms: int = 0) -> AbstractAsyncContextManager[Any]:
        """``async with client.reliable(q) as job:`` in an ``ensureDeferred`` coroutine:
        closed when the block ends normally, aborted when it raises; None when empty."""
        return self.engine.reliable(queue, timeout_ms)
