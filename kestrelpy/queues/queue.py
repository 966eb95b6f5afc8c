"""One queue's semantics: FIFO order, open/close/abort, blocked readers, expiry and limits.

Never sees bytes on a wire. Items live in the store; a queue keeps only a bounded
read-ahead window of its head in memory (``_cache``) and refills it from the store when it
drains, so a backlog of millions costs disk, not RAM. All methods run on the reactor
thread and are O(1) per item except a refill (O(window)) and ``flush``.

Counters here are the single source of truth for per-queue stats and metrics.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from kestrelpy.config import QueueConfig
from kestrelpy.payload import Payload
from kestrelpy.storage.lmdb_store import LmdbStore, StoredItem

Item = StoredItem  # (item_id, flags, expiry_ms, added_ms, data)

TAKE, OPEN, PEEK = 0, 1, 2
_COMPACT_SLACK = 64
_LARGE_ITEM = 64 * 1024  # payload bytes above which an item is cached only at the head
_REFILL_BYTES = 1024 * 1024  # one refill reads this much payload (at least one item)


class CacheBudget:
    """Payload bytes all queues may keep in memory between them (``read_ahead_size``)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class Waiter:
    """A reader blocked in ``get q/t=N``: a few slots, no timer work while it waits."""

    __slots__ = ("active", "cancel", "deliver", "mode")

    def __init__(
        self, mode: int, deliver: Callable[[Item], None], cancel: Callable[[], None]
    ) -> None:
        self.mode = mode
        self.deliver = deliver  # called with the item handed over
        self.cancel = cancel  # called when the wait ends without an item (queue deleted)
        self.active = True


class ExpiryHandler(Protocol):
    def __call__(self, queue: Queue, item: Item) -> None: ...


class Queue:
    """A durable FIFO queue.

    ``items``/``bytes`` count items waiting (not those open on a connection); ``bytes``
    counts payload only.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        queue_id: int,
        config: QueueConfig,
        store: LmdbStore,
        budget: CacheBudget,
        *,
        read_ahead_items: int,
        create_time: int,
        head_id: int = 0,
        tail_id: int = 0,
        items: int = 0,
        payload_bytes: int = 0,
        on_expired: ExpiryHandler | None = None,
    ) -> None:
        self.name = name
        self.queue_id = queue_id
        self.config = config
        self.expire_to_queue = config.expire_to_queue  # bound at creation, as Kestrel
        self.create_time = create_time
        self._store = store
        self._budget = budget
        self._read_ahead_items = max(read_ahead_items, 1)
        self._cache: deque[Item] = deque()
        self._cache_bytes = 0
        self._tail = tail_id
        self._disk_from = head_id if items else tail_id  # ids >= this are only on disk
        self._waiters: deque[Waiter] = deque()
        self._dead_waiters = 0
        self._on_expired = on_expired
        self.items = items
        self.bytes = payload_bytes
        self.total_items = 0
        self.expired_items = 0
        self.discarded = 0
        self.open_transactions = 0
        self.transactions = 0
        self.canceled_transactions = 0
        self.total_flushes = 0
        self.age_ms = 0
        self.waiters = 0
        self.get_hits = 0
        self.get_misses = 0
        self.open_bytes = 0
        self.deleted = False
        self._leases: deque[tuple[int, int, Callable[[int], bool]]] = deque()

    # ------------------------------------------------------------------------ writes

    def put(self, flags: int, expiry_ms: int, data: Payload, now_ms: int) -> bool:
        """Add an item at the tail; False when the queue's limits refuse it."""
        size = len(data)
        config = self.config
        if size > config.max_item_size or size > config.max_size or config.max_items < 1:
            return False  # can never fit: refuse before discarding anything
        full = self.items + 1 > config.max_items or self.bytes + size > config.max_size
        if full and not (config.discard_old_when_full and self._make_room(size, now_ms)):
            return False
        item_id = self._tail
        self._tail = item_id + 1
        item = Item(item_id, flags, expiry_ms, now_ms, data)
        self.total_items += 1
        if config.enable_trace:
            self._trace("put", item)
        if self._waiters and self._hand_to_waiter(item, now_ms, stored=False):
            if self._disk_from == item_id:
                self._disk_from = item_id + 1  # it never waited, so it must not be read back
            return True
        if config.keep_journal:
            self._store.put(self.queue_id, item_id, flags, expiry_ms, now_ms, data)
        self.items += 1
        self.bytes += size
        self._remember(item)
        return True

    def _remember(self, item: Item) -> None:
        """Keep a new tail item in memory while the window has room, else only on disk.

        A large item is kept only when it is next in line: a backlog of MiB items then
        waits on disk instead of piling up in Python.
        """
        if self._disk_from == item.item_id:
            budget = self._budget
            size = len(item.data)
            if (
                len(self._cache) < self._read_ahead_items
                and budget.used + size <= budget.limit
                and (size <= _LARGE_ITEM or not self._cache)
            ) or not self.config.keep_journal:  # a memory-only queue has no disk to spill to
                self._cache.append(item)
                self._cache_bytes += size
                budget.used += size
                self._disk_from = item.item_id + 1

    def _make_room(self, size: int, now_ms: int) -> bool:
        """discard_old_when_full: drop head items until the new one fits."""
        config = self.config
        while self.items and (
            self.items + 1 > config.max_items or self.bytes + size > config.max_size
        ):
            item = self._pop_head(now_ms)
            if item is None:
                break
            self._consume(item)
            self.discarded += 1
        return self.items + 1 <= config.max_items and self.bytes + size <= config.max_size

    # ------------------------------------------------------------------------- reads

    def take(self, now_ms: int) -> Item | None:
        """Remove and return the head; its removal rides the next commit."""
        item = self._pop_head(now_ms)
        if item is not None:
            if self.config.enable_trace:
                self._trace("take", item)
            self._consume(item)
            self.age_ms = max(now_ms - item.added_ms, 0)
        return item

    def open(self, now_ms: int) -> Item | None:
        """Remove the head tentatively: it stays stored until ``close_open``."""
        if self._leases:
            self.expire_leases(now_ms)
        item = self._pop_head(now_ms)
        if item is not None:
            if self.config.enable_trace:
                self._trace("open", item)
            self._count_opened(item)
            self.age_ms = max(now_ms - item.added_ms, 0)
        return item

    def lease(self, item: Item, now_ms: int, expire: Callable[[int], bool]) -> None:
        """Note an open item for ``open_transaction_timeout``.

        ``expire(item_id)`` asks its holder to give it back; False if it no longer holds it.
        """
        timeout = self.config.open_transaction_timeout
        if timeout is not None:
            self._leases.append((now_ms + timeout, item.item_id, expire))

    def expire_leases(self, now_ms: int) -> None:
        """Kestrel 2.4.7: a transactional read first aborts the oldest expired open item."""
        leases = self._leases
        while leases and leases[0][0] <= now_ms:
            _deadline, item_id, expire = leases.popleft()
            if expire(item_id):
                return

    def peek(self, now_ms: int) -> Item | None:
        return self._head(now_ms)

    def close_open(self, item: Item) -> None:
        """Confirm an open item: now it is gone for good."""
        self._count_closed(item)
        if self.config.enable_trace:
            self._trace("close", item)
        self._consume(item)

    def abort_open(self, item: Item, now_ms: int) -> None:
        """Return an open item to the head, ahead of everything waiting."""
        self.abort_many([item], now_ms)

    def abort_many(self, items: list[Item], now_ms: int) -> None:
        """Return open items (oldest opened first) to the head, keeping their order.

        Blocked readers take them first, oldest first; the rest go back to the head so
        that the oldest is next in line.
        """
        unserved: list[Item] = []
        for item in items:
            self._count_closed(item)
            self.canceled_transactions += 1
            if self.config.enable_trace:
                self._trace("abort", item)
            if self.deleted or (self._waiters and self._hand_to_waiter(item, now_ms)):
                continue
            unserved.append(item)
        for item in reversed(unserved):
            size = len(item.data)
            self.items += 1
            self.bytes += size
            self._cache.appendleft(item)
            self._cache_bytes += size
            self._budget.used += size

    def _count_opened(self, item: Item) -> None:
        self.open_transactions += 1
        self.open_bytes += len(item.data)
        self.transactions += 1

    def _count_closed(self, item: Item) -> None:
        """An open item is confirmed or aborted: it no longer counts as open."""
        self.open_transactions -= 1
        self.open_bytes -= len(item.data)

    def _trace(self, operation: str, item: Item) -> None:
        """enable_trace: one log line per operation on this queue (debugging aid)."""
        self._log.info(
            "trace {queue} {operation} id={item_id} bytes={size}",
            queue=self.name,
            operation=operation,
            item_id=item.item_id,
            size=len(item.data),
        )

    def _consume(self, item: Item) -> None:
        if self.config.keep_journal:
            self._store.delete(self.queue_id, item.item_id, len(item.data))

    def _pop_head(self, now_ms: int) -> Item | None:
        item = self._head(now_ms)
        if item is not None:
            self._drop_head(item)
        return item

    def _drop_head(self, item: Item) -> None:
        """Take the cached head ``item`` out of the window and out of the waiting counts."""
        self._cache.popleft()
        size = len(item.data)
        self._cache_bytes -= size
        self._budget.used -= size
        self.items -= 1
        self.bytes -= size

    def _head(self, now_ms: int) -> Item | None:
        """The first unexpired item, refilling the window from disk when it runs dry."""
        cache = self._cache
        while True:
            if not cache and (self._disk_from >= self._tail or not self._refill()):
                return None
            item = cache[0]
            if self._expired(item, now_ms):
                self._expire_head(item)
                continue
            return item

    def _expired(self, item: Item, now_ms: int) -> bool:
        expiry = item.expiry_ms
        max_age = self.config.max_age
        if max_age is not None:
            aged_out = item.added_ms + max_age
            expiry = aged_out if not expiry else min(expiry, aged_out)
        return bool(expiry) and expiry <= now_ms

    def _expire_head(self, item: Item) -> None:
        self._drop_head(item)
        self.expired_items += 1
        self._consume(item)
        if self._on_expired is not None:
            self._on_expired(self, item)

    def _refill(self) -> bool:
        budget = self._budget
        room = min(max(budget.limit - budget.used, _LARGE_ITEM), _REFILL_BYTES)
        found = self._store.read_items(
            self.queue_id, self._disk_from, self._tail, self._read_ahead_items, room
        )
        if not found:
            self._disk_from = self._tail  # the rest was removed before it was committed
            return False
        self._disk_from = found[-1].item_id + 1
        for item in found:
            self._cache.append(item)
            self._cache_bytes += len(item.data)
            budget.used += len(item.data)
        return True

    def expire_sweep(self, now_ms: int) -> int:
        """Drop expired items from the head, at most ``max_expire_sweep`` of them."""
        before = self.expired_items
        limit = self.config.max_expire_sweep
        while self.expired_items - before < limit:
            item = self._head_raw()
            if item is None or not self._expired(item, now_ms):
                break
            self._expire_head(item)
        return self.expired_items - before

    def _head_raw(self) -> Item | None:
        if not self._cache and (self._disk_from >= self._tail or not self._refill()):
            return None
        return self._cache[0]

    # ----------------------------------------------------------------------- waiters

    def add_waiter(
        self, mode: int, deliver: Callable[[Item], None], cancel: Callable[[], None]
    ) -> Waiter:
        """Register a blocked reader; it is served in arrival order by later puts."""
        waiter = Waiter(mode, deliver, cancel)
        self._waiters.append(waiter)
        self.waiters += 1
        return waiter

    def remove_waiter(self, waiter: Waiter) -> None:
        """Timeout or disconnect: O(1) now, the deque is compacted lazily."""
        if not waiter.active:
            return
        waiter.active = False
        self.waiters -= 1
        self._dead_waiters += 1
        if self._dead_waiters > self.waiters + _COMPACT_SLACK:
            self._waiters = deque(w for w in self._waiters if w.active)
            self._dead_waiters = 0

    def _hand_to_waiter(self, item: Item, now_ms: int, *, stored: bool = True) -> bool:
        """Give a new or returned item to the oldest blocked reader; True if it took it.

        A new item is not ``stored`` yet: a plain reader takes it without it ever being
        written, an open read stores it first (it must survive until closed).
        """
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.active:
                self._dead_waiters -= 1
                continue
            waiter.active = False
            self.waiters -= 1
            if waiter.mode == PEEK:
                waiter.deliver(item)
                continue
            if waiter.mode == OPEN:
                if not stored and self.config.keep_journal:
                    self._store.put(
                        self.queue_id,
                        item.item_id,
                        item.flags,
                        item.expiry_ms,
                        item.added_ms,
                        item.data,
                    )
                self._count_opened(item)
            elif stored:
                self._consume(item)
            self.age_ms = max(now_ms - item.added_ms, 0)
            waiter.deliver(item)
            return True
        return False

    def release_waiters(self) -> list[Waiter]:
        """Detach every blocked reader (queue deleted or server stopping)."""
        live = [w for w in self._waiters if w.active]
        for waiter in live:
            waiter.active = False
        self._waiters.clear()
        self._dead_waiters = 0
        self.waiters = 0
        return live

    # ------------------------------------------------------------------------- admin

    def flush(self) -> None:
        """Remove every waiting item; open items stay stored (they may still be aborted).

        Cached items are removed one by one (the window is bounded); the rest, which
        only the store has, go as one key range.
        """
        if self.config.keep_journal:
            for item in self._cache:
                self._store.delete(self.queue_id, item.item_id, len(item.data))
            if self._disk_from < self._tail:
                self._store.truncate(self.queue_id, self._disk_from, self._tail)
        self._budget.used -= self._cache_bytes
        self._cache.clear()
        self._cache_bytes = 0
        self._disk_from = self._tail
        self.items = 0
        self.bytes = 0
        self.total_flushes += 1

    def forget_cache(self) -> None:
        """Give the memory budget back (queue deleted)."""
        self._budget.used -= self._cache_bytes
        self._cache.clear()
        self._cache_bytes = 0

    def rollback(self, item_ids: dict[int, int]) -> None:
        """A commit failed: forget these uncommitted puts (id -> payload size).

        Only items still waiting are uncounted; ones already handed out were counted out
        when they left.
        """
        kept: deque[Item] = deque()
        dropped: set[int] = set()
        for item in self._cache:
            if item.item_id in item_ids:
                dropped.add(item.item_id)
                self._cache_bytes -= len(item.data)
                self._budget.used -= len(item.data)
            else:
                kept.append(item)
        self._cache = kept
        for item_id, size in item_ids.items():
            if item_id in dropped or item_id >= self._disk_from:
                self.items -= 1
                self.bytes -= size

    @property
    def mem_items(self) -> int:
        return len(self._cache)

    @property
    def mem_bytes(self) -> int:
        return self._cache_bytes

    def oldest_age_ms(self, now_ms: int) -> int:
        item = self._head_raw() if self.items else None
        return max(now_ms - item.added_ms, 0) if item is not None else 0
