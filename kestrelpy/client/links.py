"""What the two event-loop links (asyncio's and Twisted's) share: replies matched to
their waiters in order, one failure handed to every waiter still owed replies, and the
abort that follows a cancelled ``open``. Each face supplies how a waiter (a future, a
Deferred) is settled and how its transport writes and aborts."""

from __future__ import annotations

from typing import Generic, TypeVar

from kestrelpy.client.errors import ServerUnavailable
from kestrelpy.client.protocol import PendingReplies, ProtocolViolation, Reply, read_request
from kestrelpy.client.servers import ServerAddress

W = TypeVar("W")


class PipelinedLink(Generic[W]):
    def __init__(self, address: ServerAddress) -> None:
        self._address = address
        self._pending: PendingReplies[W] = PendingReplies()
        self._usable = True
        self._closed_by_us = False  # then a lost connection is no stale idle one

    # -- supplied by each face ----------------------------------------------------------------

    def _settled(self, waiter: W) -> bool:
        raise NotImplementedError

    def _resolve(self, waiter: W, replies: list[Reply]) -> None:
        raise NotImplementedError

    def _reject(self, waiter: W, error: ServerUnavailable) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _abort_transport(self) -> None:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        try:
            done = self._pending.feed(data)
        except ProtocolViolation as err:
            self._fail(str(err))
            return
        for waiter, replies in done:
            if not self._settled(waiter):
                self._resolve(waiter, replies)

    def _fail(self, why: str, *, closed: bool = False) -> None:
        """The link is dead: every waiter gets :class:`ServerUnavailable` with the replies
        it did get. ``stale`` (retry once on a fresh link) only when the server closed a
        connection before answering it, not when we closed it."""
        self._usable = False
        for waiter, got in self._pending.abandon():
            if not self._settled(waiter):
                stale = closed and not got and not self._closed_by_us
                self._reject(
                    waiter, ServerUnavailable(str(self._address), why, replies=got, stale=stale)
                )
        self._abort_transport()

    def _cancelled(self, opens: bytes) -> None:
        """An exchange was cancelled after its request went out. Its replies still arrive
        and are dropped in order (its waiter is settled); the link stays in use, so other
        requests and held reads are untouched. A cancelled open may have opened an item
        nobody holds: an abort right behind it gives that item back (or answers END)."""
        if opens and self._usable:
            self._pending.discard(1)
            self._write(read_request(opens, abort=True))
