"""One server pool for every client of a channel: which servers are backing off, and where
reads start, learnt once for all of them.

A channel makes a client per unacknowledged message (see :mod:`kestrelpy.kombu.holds`),
and each delivered message leaves with the client that read it, so most reads start on a
fresh client. With a pool of its own, each fresh client would learn again, at the cost of
a whole ``timeout_s``, that a server in the URL is hung, and would start its blocking wait
on the first server whatever the last read found. Sharing one pool lets a failure seen by
one client back the server off for all, and a hit move every later read there.

Threads: the consuming thread reads, a pool's result thread acks (which marks servers up
or down), any thread publishes. :class:`~kestrelpy.client.servers.ServerPool` is written
for one thread, so every method that changes it runs under one lock here. Methods that
only look (``readers``, ``is_up``) do not lock: they may see a change a moment late,
which costs at most one request to a server that just went down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from kestrelpy.client import Client
from kestrelpy.client.servers import ServerAddress, ServerPool, parse_servers


class SharedServerPool(ServerPool):
    """A :class:`ServerPool` whose changes are serialised, for clients of several threads."""

    def __init__(
        self, servers: Sequence[str], clock: Callable[[], float], *, backoff_max_s: float = 30.0
    ) -> None:
        super().__init__(parse_servers(list(servers)), clock, backoff_max_s=backoff_max_s)
        self._lock = threading.Lock()

    def writers(self) -> Iterator[ServerAddress]:
        with self._lock:
            return iter(list(super().writers()))

    def read_from(self, address: ServerAddress) -> None:
        with self._lock:
            super().read_from(address)

    def move_reader_on(self) -> None:
        with self._lock:
            super().move_reader_on()

    def mark_down(self, address: ServerAddress, why: str, *, writes_only: bool = False) -> None:
        with self._lock:
            super().mark_down(address, why, writes_only=writes_only)

    def mark_up(self, address: ServerAddress) -> None:
        if not self._troubled:  # every request's path: no lock while all servers are up
            return
        with self._lock:
            super().mark_up(address)

    def mark_writable(self, address: ServerAddress) -> None:
        if not self._troubled:
            return
        with self._lock:
            super().mark_writable(address)


def sharing(client: Client, pool: SharedServerPool) -> Client:
    """``client``, its own pool replaced by ``pool`` (made for the same servers, in the
    same order); before its first request, so no state of its own is lost."""
    if client.engine.pool.addresses != pool.addresses:
        raise ValueError("a shared pool must name the client's servers, in its order")
    client.engine.pool = pool
    return client
