"""The items one connection holds open (reliable reads), per queue, oldest first.

An item opened with ``get q/open`` (or ``monitor``) stays stored until the connection
closes it (``/close``, ``confirm``) or gives it back (``/abort``, disconnect, or its
``open_transaction_timeout`` passing). Each queue's open items remember the queue object
they came from: if that queue was deleted, even if a new one of the same name exists,
there is nothing to close or return. Reactor thread only.
"""

from __future__ import annotations

from collections import deque
from functools import partial

from kestrelpy.clock import ReactorClock, now_ms
from kestrelpy.queues.queue import Item, Queue


class _OpenOnQueue:
    """The items open on one queue, oldest first, and that queue."""

    __slots__ = ("opened", "queue")

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.opened: deque[Item] = deque()


class OpenReads:
    """One connection's open items."""

    __slots__ = ("_by_name", "_clock")

    def __init__(self, clock: ReactorClock) -> None:
        self._clock = clock
        self._by_name: dict[str, _OpenOnQueue] = {}

    def count(self, name: str) -> int:
        """How many items are open on queue ``name`` (asked on every get)."""
        if name not in self._by_name:
            return 0  # the common case, in one lookup
        reads = self._live(name)
        return len(reads.opened) if reads is not None else 0

    def _live(self, name: str) -> _OpenOnQueue | None:
        """The items open on queue ``name``, unless that queue was deleted meanwhile."""
        reads = self._by_name.get(name)
        if reads is not None and reads.queue.deleted:
            del self._by_name[name]
            return None
        return reads

    def add(self, queue: Queue, item: Item) -> None:
        """The connection now holds ``item`` open (until close, abort or disconnect)."""
        reads = self._by_name.get(queue.name)
        if reads is None or reads.queue is not queue:
            reads = self._by_name[queue.name] = _OpenOnQueue(queue)
        reads.opened.append(item)
        if queue.config.open_transaction_timeout is not None:
            queue.lease(item, now_ms(self._clock), partial(self._lease_expired, queue))

    def close_oldest(self, name: str) -> None:
        """Confirm the oldest item open on ``name``: it is gone for good."""
        reads = self._live(name)
        if reads is not None and reads.opened:
            reads.queue.close_open(reads.opened.popleft())

    def confirm(self, name: str, count: int) -> bool:
        """``confirm``: close the ``count`` oldest items open on ``name``; False, closing
        nothing, when ``count`` is 0 or more than are open."""
        if count == 0 or count > self.count(name):
            return False
        for _ in range(count):
            self.close_oldest(name)
        return True

    def abort_oldest(self, name: str) -> None:
        """Give the oldest item open on ``name`` back to the head of its queue."""
        reads = self._live(name)
        if reads is not None and reads.opened:
            reads.queue.abort_open(reads.opened.popleft(), now_ms(self._clock))

    def abort_all(self) -> None:
        """Connection gone: every open item returns to its queue's head, in the order
        they were opened (docs/protocol.md §12)."""
        now = now_ms(self._clock)
        for reads in self._by_name.values():
            if reads.queue.deleted:
                continue
            reads.queue.abort_many(list(reads.opened), now)
            reads.opened.clear()
        self._by_name.clear()

    def _lease_expired(self, queue: Queue, item_id: int) -> bool:
        """open_transaction_timeout passed: give the item back if still held."""
        reads = self._by_name.get(queue.name)
        if reads is None or reads.queue is not queue:
            return False
        for item in reads.opened:
            if item.item_id == item_id:
                reads.opened.remove(item)
                queue.abort_open(item, now_ms(self._clock))
                return True
        return False
