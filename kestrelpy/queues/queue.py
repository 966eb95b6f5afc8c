"""One queue's semantics: FIFO order, limits, expiry, open/close/abort, blocked readers.

Never sees bytes on a wire. The queue decides what happens to an item; its parts keep the
state: where waiting items are (:class:`~kestrelpy.queues.window.ReadAheadWindow`, memory
or store), who is blocked waiting for one (:class:`~kestrelpy.queues.waiters.WaiterLine`),
when open items time out (:class:`~kestrelpy.queues.leases.Leases`), and what it has done
(:class:`~kestrelpy.queues.counters.QueueCounters`). All methods run on the reactor thread
and are O(1) per item except a window refill (O(window)) and ``flush``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import ClassVar, Protocol

from twisted.logger import Logger

from kestrelpy.config import QueueConfig
from kestrelpy.errors import CorruptItemError
from kestrelpy.payload import Payload
from kestrelpy.queues.counters import QueueCounters
from kestrelpy.queues.expiry import is_expired
from kestrelpy.queues.item_store import ItemStore
from kestrelpy.queues.leases import GiveBack, Leases
from kestrelpy.queues.waiters import OPEN, PEEK, TAKE, Waiter, WaiterLine
from kestrelpy.queues.window import ReadAheadWindow
from kestrelpy.storage.layout import StoredItem

__all__ = ["OPEN", "PEEK", "TAKE", "ExpiryHandler", "Item", "Queue", "Waiter"]

Item = StoredItem  # (item_id, flags, expiry_ms, added_ms, data)
_UNLIMITED = sys.maxsize


class ExpiryHandler(Protocol):
    def __call__(self, queue: Queue, item: Item) -> None: ...


class Queue(QueueCounters):
    """A durable FIFO queue; its counters are those of :class:`QueueCounters`."""

    _log: ClassVar[Logger] = Logger()  # a class attribute in the compiled build too

    def __init__(
        self,
        name: str,
        queue_id: int,
        config: QueueConfig,
        store: ItemStore,
        window: ReadAheadWindow,
        *,
        create_time: int,
        items: int = 0,
        payload_bytes: int = 0,
        on_expired: ExpiryHandler | None = None,
    ) -> None:
        """``window`` covers the queue's stored items; ``items``/``payload_bytes`` count them."""
        super().__init__(items, payload_bytes)
        self.name = name
        self.queue_id = queue_id
        self.config = config
        self.expire_to_queue = config.expire_to_queue  # bound at creation, as Kestrel
        self.create_time = create_time
        self._store = store
        self._window = window
        self._line = WaiterLine()
        self._leases = Leases()
        self._on_expired = on_expired
        self.deleted = False
        window.on_corrupt = self._corrupt_dropped

    def put(self, flags: int, expiry_ms: int, data: Payload, now_ms: int) -> bool:
        """Add an item at the tail; False when the queue's limits refuse it."""
        size = len(data)
        config = self.config
        if size > config.max_item_size or size > config.max_size or config.max_items < 1:
            return False  # can never fit: refuse before discarding anything
        full = self.items + 1 > config.max_items or self.bytes + size > config.max_size
        if full and not (config.discard_old_when_full and self._make_room(size, now_ms)):
            return False
        window = self._window
        item_id = window.next_id
        window.next_id = item_id + 1  # before any reader runs: it may put again
        item = Item(item_id, flags, expiry_ms, now_ms, data)
        self.total_items += 1
        if config.enable_trace:
            _trace(self, "put", item)
        line = self._line
        if line.count and (waiter := line.next_taker(item)) is not None:
            self._hand_over(waiter, item, now_ms, stored=False)
            return True
        if config.keep_journal:
            self._store.put(self.queue_id, item_id, flags, expiry_ms, now_ms, data)
        self.items += 1
        self.bytes += size
        window.push(item, config.keep_journal)
        return True

    def _make_room(self, size: int, now_ms: int) -> bool:
        """discard_old_when_full: drop head items until the new one fits."""
        config = self.config
        while self.items and (
            self.items + 1 > config.max_items or self.bytes + size > config.max_size
        ):
            try:
                item = self._pop_head(now_ms)
            except CorruptItemError:
                continue  # dropped and counted already, which makes room too
            if item is None:
                break
            self._consume(item)
            self.discarded += 1
        return self.items + 1 <= config.max_items and self.bytes + size <= config.max_size

    def take(self, now_ms: int) -> Item | None:
        """Remove and return the head; its removal rides the next commit."""
        item = self._pop_head(now_ms)
        if item is not None:
            if self.config.enable_trace:
                _trace(self, "take", item)
            self._consume(item)
            self.age_ms = max(now_ms - item.added_ms, 0)
        return item

    def open(self, now_ms: int) -> Item | None:
        """Remove the head tentatively: it stays stored until ``close_open``."""
        if now_ms >= self._leases.next_due_ms:
            self._leases.expire(now_ms)
        item = self._pop_head(now_ms)
        if item is not None:
            if self.config.enable_trace:
                _trace(self, "open", item)
            self.count_opened(len(item.data))
            self.age_ms = max(now_ms - item.added_ms, 0)
        return item

    def lease(self, item: Item, now_ms: int, expire: GiveBack) -> None:
        """Note an open item for ``open_transaction_timeout``; ``expire`` asks for it back."""
        timeout = self.config.open_transaction_timeout
        if timeout is not None:
            self._leases.add(now_ms + timeout, item.item_id, expire)

    def expire_leases(self, now_ms: int) -> None:
        """Kestrel 2.4.7: a transactional read first aborts the oldest expired open item."""
        self._leases.expire(now_ms)

    def peek_many(self, count: int, now_ms: int) -> list[Item]:
        """Up to ``count`` waiting items from the head, left in place, none expired."""
        self.expire_sweep(now_ms, _UNLIMITED)
        max_age = self.config.max_age
        return [i for i in self._window.peek(count) if not is_expired(i, max_age, now_ms)]

    def peek(self, now_ms: int) -> Item | None:
        """The head, left in place (expired items before it go)."""
        self.expire_sweep(now_ms, _UNLIMITED)
        return self._window.first()

    def close_open(self, item: Item) -> None:
        """Confirm an open item: now it is gone for good."""
        self.count_closed(len(item.data))
        if self.config.enable_trace:
            _trace(self, "close", item)
        self._consume(item)

    def abort_open(self, item: Item, now_ms: int) -> None:
        """Return an open item to the head, ahead of everything waiting."""
        self.abort_many([item], now_ms)

    def abort_many(self, items: list[Item], now_ms: int) -> None:
        """Return open items (oldest opened first): to blocked readers, the rest to the head.

        Order is kept: the oldest goes to the reader waiting longest, or is next in line.
        """
        unserved: list[Item] = []
        for item in items:
            self.count_closed(len(item.data))
            self.canceled_transactions += 1
            if self.config.enable_trace:
                _trace(self, "abort", item)
            if self.deleted:
                continue
            if self._line.count and (waiter := self._line.next_taker(item)) is not None:
                self._hand_over(waiter, item, now_ms, stored=True)
            else:
                unserved.append(item)
        self.items += len(unserved)
        self.bytes += sum(len(item.data) for item in unserved)
        self._window.push_front(unserved)

    def _consume(self, item: Item) -> None:
        if self.config.keep_journal:
            self._store.delete(self.queue_id, item.item_id, len(item.data))

    def _pop_head(self, now_ms: int) -> Item | None:
        """Remove the first unexpired waiting item, expiring the ones before it."""
        pop = self._window.pop
        max_age = self.config.max_age
        while (item := pop()) is not None:
            if not is_expired(item, max_age, now_ms):
                self.items -= 1
                self.bytes -= len(item.data)
                return item
            self._expire(item)
        return None

    def expire_sweep(self, now_ms: int, limit: int | None = None) -> int:
        """Drop expired items from the head, at most ``limit`` (``max_expire_sweep``)."""
        window = self._window
        max_age = self.config.max_age
        limit = self.config.max_expire_sweep if limit is None else limit
        swept = 0
        while swept < limit and (item := self._sound_first()) is not None:
            if not is_expired(item, max_age, now_ms):
                break
            window.pop()
            self._expire(item)
            swept += 1
        return swept

    def _sound_first(self) -> Item | None:
        """The head, for the queue's own upkeep (expiry, stats): an item that fails its
        checksum on the way is dropped and counted (see :meth:`_corrupt_dropped`), and
        the head after it is the answer; only a reader's request reports it as an error."""
        while True:
            try:
                return self._window.first()
            except CorruptItemError:
                continue

    def _corrupt_dropped(self, payload_size: int) -> None:
        """An item read back from disk failed its checksum and was dropped by the window."""
        self.items -= 1
        self.bytes -= payload_size
        self.corrupt_items += 1
        self._log.error("queue {queue}: an item failed its checksum; dropped", queue=self.name)

    def _expire(self, item: Item) -> None:
        """An expired item has left the window: it no longer waits, and goes for good."""
        self.items -= 1
        self.bytes -= len(item.data)
        self.expired_items += 1
        self._consume(item)
        if self._on_expired is not None:
            self._on_expired(self, item)

    def add_waiter(
        self, mode: int, deliver: Callable[[Item], None], on_queue_deleted: Callable[[], None]
    ) -> Waiter:
        """Register a blocked reader; it is served in arrival order by later puts."""
        return self._line.join(mode, deliver, on_queue_deleted)

    def remove_waiter(self, waiter: Waiter) -> None:
        """Timeout or disconnect: O(1); a waiter already served or released is ignored."""
        self._line.leave(waiter)

    @property
    def waiters(self) -> int:
        """Readers blocked on this queue now."""
        return self._line.count

    def _hand_over(self, waiter: Waiter, item: Item, now_ms: int, *, stored: bool) -> None:
        """Give a new or returned item to a blocked reader who takes or opens it.

        A new item is not ``stored`` yet: a plain reader takes it without it ever being
        written, an open read stores it first (it must survive until closed).
        """
        if waiter.mode == OPEN:
            if not stored and self.config.keep_journal:
                self._store.put(self.queue_id, *item)  # an item's fields are put's arguments
            self.count_opened(len(item.data))
        elif stored:
            self._consume(item)
        self.age_ms = max(now_ms - item.added_ms, 0)
        waiter.deliver(item)

    def release_waiters(self) -> list[Waiter]:
        """Detach every blocked reader (queue deleted or server stopping)."""
        return self._line.release_all()

    def reconfigure(self, config: QueueConfig) -> None:
        """RELOAD: new limits apply from the next operation; ``expire_to_queue`` stays."""
        self.config = config
        self._window.max_bytes = config.max_memory_size

    def flush(self) -> None:
        """Remove every waiting item; open items stay stored (they may still be aborted)."""
        self._window.drop_all(from_store=self.config.keep_journal)
        self.items = 0
        self.bytes = 0
        self.total_flushes += 1

    def forget_cache(self) -> None:
        """Give the memory budget back (queue deleted)."""
        self._window.forget()

    def rollback(self, item_ids: dict[int, int]) -> None:
        """A commit failed: forget these puts (id -> size); those handed out are gone already."""
        items, payload_bytes = self._window.forget_items(item_ids)
        self.items -= items
        self.bytes -= payload_bytes

    @property
    def mem_items(self) -> int:
        return len(self._window)

    @property
    def mem_bytes(self) -> int:
        return self._window.mem_bytes

    def oldest_age_ms(self, now_ms: int) -> int:
        item = self._sound_first() if self.items else None
        return max(now_ms - item.added_ms, 0) if item is not None else 0


def _trace(queue: Queue, operation: str, item: Item) -> None:
    """enable_trace: one log line per operation on a queue (a debugging aid)."""
    queue._log.info(
        "trace {queue} {operation} id={item_id} bytes={size}",
        queue=queue.name,
        operation=operation,
        item_id=item.item_id,
        size=len(item.data),
    )
