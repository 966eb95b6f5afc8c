"""The blocking face: :class:`Client`, for scripts, workers and threaded web apps.

Its links are plain sockets whose ``exchange`` never suspends, so each engine coroutine
runs to its end inside one ``send(None)``: one implementation of every operation, no event
loop. A ``Client`` is not thread-safe; give each thread its own (connections are cheap).

Why not pymemcache underneath: the three faces must share one request builder, reply reader
and reliable-read state, and pymemcache cannot pipeline several sets of one key (its
``set_many`` takes a dict) or hand back the flags of each item to pick a codec.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from contextlib import suppress
from typing import Any, Concatenate, ParamSpec, TypeVar

from kestrelpy.client import codecs
from kestrelpy.client.engine import DEFAULT_TIMEOUT_S, Engine
from kestrelpy.client.errors import ClientError, ServerUnavailable
from kestrelpy.client.protocol import ProtocolViolation, Reply, ReplyReader
from kestrelpy.client.servers import ServerAddress

P = ParamSpec("P")
T = TypeVar("T")

_RECV_BYTES = 64 * 1024


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend (blocking links) and return its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a blocking-client operation tried to suspend")


def _blocking(
    operation: Callable[Concatenate[Engine, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """The engine operation, run to its end on this client's engine."""

    @functools.wraps(operation)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        coroutine = operation(self.engine, *args, **kwargs)
        try:
            coroutine.send(None)  # run_to_end, inlined: one frame less per operation
        except StopIteration as done:
            result: T = done.value
            return result
        coroutine.close()
        raise RuntimeError("a blocking-client operation tried to suspend")

    return method


class SocketLink:
    """One blocking TCP connection; every send and receive has a deadline. An exchange
    left half-way by any other exception (``KeyboardInterrupt``, a signal handler's) closes
    the connection: its reply is still owed, and the next request would get it."""

    def __init__(self, sock: socket.socket, address: ServerAddress, timeout_s: float) -> None:
        self._sock = sock
        self._address = address
        self._timeout_s = timeout_s
        self._deadline_s = timeout_s
        self._replies = ReplyReader()
        self._usable = True
        self._interrupted = False  # set by interrupt(), from another thread

    @property
    def usable(self) -> bool:
        return self._usable

    async def exchange(
        self, request: bytes, replies: int, wait_s: float, opens: bytes = b""
    ) -> list[Reply]:
        """``opens`` is not used here: nothing cancels a blocking exchange half-way but
        an exception, after which the link is closed (an item it opened goes back)."""
        sock = self._sock
        reader = self._replies
        got: list[Reply] = []
        try:
            deadline_s = self._timeout_s + wait_s
            if deadline_s != self._deadline_s:
                sock.settimeout(deadline_s)
                self._deadline_s = deadline_s
            sock.sendall(request)
            if replies == 1:
                first = reader.take_line_reply(sock.recv(_RECV_BYTES))
                if first is not None:
                    return [first]
            while len(got) < replies:
                reply = reader.take()
                if reply is not None:
                    got.append(reply)
                    continue
                chunk = sock.recv(_RECV_BYTES)
                if not chunk:
                    raise ConnectionResetError("connection closed by the server")
                reader.feed(chunk)
            return got
        except (OSError, ProtocolViolation) as err:
            self._usable = False
            reset = isinstance(err, ConnectionResetError | BrokenPipeError)
            stale = reset and not got and not reader.pending_bytes and not self._interrupted
            raise ServerUnavailable(
                str(self._address), _describe(err), replies=got, stale=stale
            ) from err
        except BaseException:
            self.close()  # interrupted (before the request went out, or after): out of step
            raise

    def interrupt(self) -> None:
        """Cut short an exchange blocked in another thread: the socket is shut down, so its
        receive returns at once, and the exchange fails as interrupted, never as a stale
        idle link (which would be sent again on a fresh connection)."""
        self._interrupted = True
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._usable = False
        self._sock.close()


async def connect_socket(address: ServerAddress, timeout_s: float) -> SocketLink:
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout_s)
    except OSError as err:
        raise ServerUnavailable(str(address), _describe(err)) from err
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return SocketLink(sock, address, timeout_s)


def _describe(err: Exception) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


class Client:
    """A blocking kestrelpy (or Kestrel) client over one or more servers.

    ``servers``: ``"host:port"``, ``"h1:p1,h2:p2"`` or a list. ``codec``: ``"json"``
    (default), ``"raw"`` or ``"msgpack"``. ``timeout_s`` bounds every connect, send and
    receive (a blocking read adds its own wait on top). ``decode_by_flags=False`` decodes
    every item with ``codec``, whatever codec mark or other client's flags it carries.
    Use it as a context manager, or call :meth:`disconnect`, so finished reliable reads
    are confirmed before you go.
    """

    def __init__(
        self,
        servers: str | Iterable[str] = "127.0.0.1:22133",
        *,
        codec: str | codecs.Codec = "json",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_max_s: float = 30.0,
        decode_by_flags: bool = True,
    ) -> None:
        self.engine = Engine(
            servers,
            connect=connect_socket,
            clock=time.monotonic,
            codec=codec,
            timeout_s=timeout_s,
            backoff_max_s=backoff_max_s,
            decode_by_flags=decode_by_flags,
        )

    put = _blocking(Engine.put)
    put_many = _blocking(Engine.put_many)
    get = _blocking(Engine.get)
    peek = _blocking(Engine.peek)
    open = _blocking(Engine.open)
    close = _blocking(Engine.close)
    abort = _blocking(Engine.abort)
    delete = _blocking(Engine.delete)
    flush = _blocking(Engine.flush)
    stats = _blocking(Engine.stats)
    flush_closes = _blocking(Engine.flush_closes)
    disconnect = _blocking(Engine.disconnect)

    def interrupt(self) -> None:
        """Cut short an operation blocked in another thread (the one call a ``Client``
        takes from another thread): it fails at once, as when its server goes away
        (:class:`NoServerAvailable` if no other server is up), instead of waiting out a
        blocking read, and is not sent again. A read that has not connected yet ends with
        its own wait. Disconnect the client afterwards."""
        for link in self.engine.links():
            if isinstance(link, SocketLink):
                link.interrupt()

    def reliable(self, queue: str, timeout_ms: int = 0) -> _ReliableRead:
        """Open one item of ``queue`` for the ``with`` block: closed when the block ends
        normally, aborted (back to the head of the queue) when it raises. Yields None when
        every server is empty. The close is sent with this client's next request to that
        server (one round trip per job in a loop), or at :meth:`disconnect`."""
        return _ReliableRead(self, queue, timeout_ms)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


class _ReliableRead:
    """:meth:`Client.reliable`'s context manager: a class, not a generator, since it runs
    once per job in a worker loop."""

    __slots__ = ("_client", "_held", "_queue", "_timeout_ms")

    def __init__(self, client: Client, queue: str, timeout_ms: int) -> None:
        self._client = client
        self._queue = queue
        self._timeout_ms = timeout_ms
        self._held = False

    def __enter__(self) -> Any:
        job = self._client.open(self._queue, self._timeout_ms)
        self._held = self._client.engine.holds(self._queue)
        return job

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if not self._held:
            return
        if exc_type is None:
            self._client.engine.finish(self._queue)
            return
        with suppress(ClientError):  # if the link is gone, so is the read: item is back
            self._client.abort(self._queue)
