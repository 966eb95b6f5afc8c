"""The ``kestrel`` backend: queues on kestrelpy (or Kestrel) servers, through the bundled
client, with reliable reads.

A message is one queue item (``wire.pack``), written with the raw codec so other memcache
clients see exactly those bytes, and read as bytes whatever memcache flags the item
carries (``decode_by_flags=False``): an item another producer put (kestrelpy's JSON codec,
PHP's compression flag) is a body without headers, decoded by the interface's encoding.
``take`` is a reliable read (``get q/open``): the item stays reserved to this connection
until ``ack`` (``/close``) or ``release`` (``/abort``, back to the head), and a consumer
that dies has it back on the queue when the server sees the connection close. Whatever
fails after the open (a bad item, an interrupt) aborts the read before it is raised, so
one bad item never wedges the backend's later takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from kestrelpy.client import Client, ClientError
from kestrelpy.router.backends.base import BackendError, checked_where
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import BadMessage, Message, pack, unpack

_KEYS = {"servers", "timeout_s", "read_timeout_ms"}


class KestrelLease:
    def __init__(self, backend: KestrelBackend, queue: str, message: Message) -> None:
        self._backend = backend
        self._queue = queue
        self._message = message

    @property
    def message(self) -> Message:
        return self._message

    def ack(self) -> None:
        self._backend.confirm(self._queue)

    def release(self) -> None:
        self._backend.give_back(self._queue)


class KestrelBackend:
    network = False  # our own servers: trusted = true may carry pickle

    def __init__(self, name: str, client: Client, read_timeout_ms: int) -> None:
        self._name = name
        self._client = client
        self._read_timeout_ms = read_timeout_ms

    def send(self, queue: str, messages: Sequence[Message]) -> None:
        try:
            self._client.put_many(queue, [pack(message) for message in messages])
        except ClientError as err:
            raise BackendError(f"router interface {self._name!r}: {err}") from err

    def take(self, queue: str) -> KestrelLease | None:
        try:
            data = self._client.open(queue, self._read_timeout_ms)
        except BaseException as err:
            if self._client.engine.holds(queue):  # taken, then failed (decoding, say)
                self.give_back(queue)
            if isinstance(err, ClientError):
                raise BackendError(f"router interface {self._name!r}: {err}") from err
            raise
        if not self._client.engine.holds(queue):
            return None
        try:  # from here on the read is open: whatever goes wrong must not keep it
            if not isinstance(data, bytes):  # the client decodes nothing (decode_by_flags off)
                raise BackendError(
                    f"router interface {self._name!r}: the client gave a "
                    f"{type(data).__name__}, not the item's bytes"
                )
            try:
                message = unpack(data)
            except BadMessage:
                message = Message({}, data)  # someone else's item that happens to look like ours
            return KestrelLease(self, queue, message)
        except BaseException:
            self.give_back(queue)
            raise

    def confirm(self, queue: str) -> None:
        try:
            self._client.close(queue)
        except ClientError as err:  # the connection is gone: the item is back on the queue
            raise BackendError(f"router interface {self._name!r}: {err}") from err

    def give_back(self, queue: str) -> None:
        with suppress(ClientError):  # the link is gone, and with it the read: item is back
            self._client.abort(queue)

    def close(self) -> None:
        with suppress(ClientError):  # nothing left to say to a server that is gone
            self._client.disconnect()


def open_backend(name: str, options: Mapping[str, Any]) -> KestrelBackend:
    where = checked_where(name, "kestrel", options, _KEYS)
    servers = options.get("servers", "127.0.0.1:22133")
    timeout_s = options.get("timeout_s", 5.0)
    read_timeout_ms = options.get("read_timeout_ms", 0)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise RouterConfigError(f"{where}: timeout_s: expected a positive number of seconds")
    if isinstance(read_timeout_ms, bool) or not isinstance(read_timeout_ms, int):
        raise RouterConfigError(f"{where}: read_timeout_ms: expected whole milliseconds")
    if not isinstance(servers, str | list | tuple):
        raise RouterConfigError(f"{where}: servers: expected 'host:port' or a list of them")
    try:
        # Raw bytes whatever an item's memcache flags say: another producer's item (the
        # JSON codec's mark, PHP's compression flag) is still one body for the router.
        client = Client(servers, codec="raw", decode_by_flags=False, timeout_s=float(timeout_s))
    except ClientError as err:
        raise RouterConfigError(f"{where}: servers: {err}") from err
    return KestrelBackend(name, client, read_timeout_ms)
