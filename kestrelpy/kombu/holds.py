"""Which connection holds which delivered message: the ack mapping, with no kombu in it.

Kestrel ties an open item to the TCP connection that opened it, and ``get q/close`` on that
connection confirms the *oldest* item it holds open on ``q``: it cannot name one. kombu acks
by delivery tag, in any order (a prefork worker finishes tasks out of order). So every
delivered, unacknowledged message sits alone on its own connection (one bundled
:class:`~kestrelpy.client.Client`): an ack is ``close`` on that connection, a requeue is
``abort`` on it, and whatever kills the process kills the connections, so the server puts
every unacknowledged message back. No connection holds more than one item, so the server's
``max_open_transactions`` (default 1) is never in the way, whatever the prefetch count; the
prefetch count bounds instead how many connections a consumer holds.

An ack or requeue goes out at once, from whichever thread makes it (a prefork Celery
worker acks from its pool's result thread), on the holding connection, which nothing
else uses: it never waits behind the consuming thread's blocking read. The client then
goes back to an idle stack and reads a later message.

Threads: every method may be called from any thread (one lock); a client is
used by one thread at a time, since it is in exactly one place: a reader slot (consuming
thread), a hold (the thread that acks it), or the idle stack (nobody).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Held(Generic[C]):
    """One delivered message still open on the server: its connection and its queue."""

    client: C
    queue: str  # the kestrelpy queue name (read with /open)


class Holds(Generic[C]):
    """Delivered messages by delivery tag, and the idle clients; thread-safe."""

    def __init__(self, new_client: Callable[[], C]) -> None:
        self._new_client = new_client
        self._lock = threading.Lock()
        self._held: dict[str, Held[C]] = {}
        self._idle: list[C] = []  # a stack: the client idled last (its socket warm) reads next
        self._closed = False  # after drop_all: nothing more is kept, so nothing leaks

    def hold(self, tag: str, client: C, queue: str) -> bool:
        """Keep ``client`` under ``tag``; False once closed: the caller disconnects it (the
        server then puts its message back), since nobody would ever settle it."""
        with self._lock:
            if self._closed:
                return False
            self._held[tag] = Held(client, queue)
            return True

    def take(self, tag: str) -> Held[C] | None:
        """The hold of ``tag``, removed; None if it was never held here or already taken."""
        with self._lock:
            return self._held.pop(tag, None)

    def tags(self) -> list[str]:
        """Tags held now, oldest delivery first."""
        with self._lock:
            return list(self._held)

    def idle(self, client: C) -> bool:
        """``client`` holds nothing open: it can read again. False once closed (an ack
        racing the channel's close): the caller disconnects it, or it would leak."""
        with self._lock:
            if self._closed:
                return False
            self._idle.append(client)
            return True

    def __len__(self) -> int:
        """How many messages are held."""
        with self._lock:
            return len(self._held)

    def checkout(self) -> C:
        """A client to read with: the one idled last, or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_client()

    def drain_idle(self, keep: int = 0) -> list[C]:
        """Take all idle clients but the ``keep`` idled last; the caller idles them again
        or drops them."""
        with self._lock:
            cut = max(len(self._idle) - keep, 0)
            taken, self._idle[:cut] = self._idle[:cut], []
            return taken

    def drop_all(self) -> list[C]:
        """Every client this knows of, idle or holding, forgotten (at channel close); from
        now on :meth:`hold` and :meth:`idle` refuse, so the caller owns every client."""
        with self._lock:
            self._closed = True
            clients = [*self._idle, *(held.client for held in self._held.values())]
            self._idle.clear()
            self._held.clear()
            return clients
