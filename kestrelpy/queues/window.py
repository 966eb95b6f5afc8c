"""A queue's read-ahead window: which of its waiting items are in memory, and which on disk.

The oldest waiting items are kept in memory (at most ``read_ahead_items`` of them, at most
the queue's ``max_memory_size`` payload bytes, and at most ``read_ahead_size`` payload bytes
across all queues); the rest only the store has, and
the window reads them back in id order when memory runs dry. So a backlog of millions costs
disk, not RAM. The window knows nothing of expiry, limits or counters: the queue decides
what waits, the window only where it waits. Reactor thread only; O(1) per item except a
refill (O(window)), ``drop_all`` and ``forget_items``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable

from kestrelpy.errors import CorruptItemError
from kestrelpy.payload import LARGE_ITEM
from kestrelpy.queues.item_store import ItemStore
from kestrelpy.storage.layout import StoredItem as Item

_REFILL_BYTES = 1024 * 1024  # one refill reads this much payload (at least one item)


def _ignore(payload_size: int) -> None:
    pass


class CacheBudget:
    """Payload bytes all queues may keep in memory between them (``read_ahead_size``)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class ReadAheadWindow:
    """One queue's waiting items: the oldest in a deque, ids from ``_disk_from`` on disk.

    Invariant: every waiting item older than ``_disk_from`` is in memory, in id order.
    ``_disk_from`` is None when nothing waits on disk only; otherwise ids in
    ``[_disk_from, next_id)`` are in the store or gone (taken by a reader before they were
    stored, or rolled back), and a refill skips the gone ones.
    """

    __slots__ = (
        "_budget",
        "_cache",
        "_disk_from",
        "_max_items",
        "_queue_id",
        "_store",
        "max_bytes",
        "mem_bytes",
        "next_id",
        "on_corrupt",
    )

    def __init__(
        self,
        store: ItemStore,
        queue_id: int,
        budget: CacheBudget,
        max_items: int,
        max_bytes: int,
        *,
        head_id: int = 0,
        tail_id: int = 0,
    ) -> None:
        """A window over stored items ``[head_id, tail_id)``, none of them in memory yet."""
        self._store = store
        self._queue_id = queue_id
        self._budget = budget
        self._max_items = max(max_items, 1)
        self.max_bytes = max_bytes  # this queue's max_memory_size (a reload may change it)
        self._cache: deque[Item] = deque()
        self._disk_from: int | None = head_id if head_id < tail_id else None
        self.mem_bytes = 0  # payload bytes in memory
        self.next_id = tail_id  # the id of the next put; the queue advances it as it assigns
        # Told the payload size of an item dropped for failing its checksum (the queue
        # counts it out); the read that met it then raises CorruptItemError.
        self.on_corrupt: Callable[[int], None] = _ignore

    def __len__(self) -> int:
        """Items in memory."""
        return len(self._cache)

    def push(self, item: Item, spill: bool) -> None:
        """A new item waits at the tail: in memory while the window has room, else on disk.

        A large item is kept in memory only when it is next in line, so a backlog of MiB
        items waits on disk instead of piling up in Python. ``spill`` False (a memory-only
        queue, which has no disk to spill to) keeps it in memory whatever the bounds.
        """
        if self._disk_from is None:
            cache = self._cache
            budget = self._budget
            size = len(item.data)
            if not spill or (
                len(cache) < self._max_items
                and budget.used + size <= budget.limit
                and self.mem_bytes + size <= self.max_bytes
                and (size <= LARGE_ITEM or not cache)  # large here means above it
            ):
                cache.append(item)
                self.mem_bytes += size
                budget.used += size
            else:
                self._disk_from = item.item_id

    def push_front(self, items: list[Item]) -> None:
        """Items given back (aborted open reads, oldest first) wait ahead of all others."""
        cache = self._cache
        for item in reversed(items):
            cache.appendleft(item)
            self.mem_bytes += len(item.data)
            self._budget.used += len(item.data)

    def first(self) -> Item | None:
        """The oldest waiting item, left in place; None when none waits."""
        cache = self._cache
        if not cache and (self._disk_from is None or not self._refill()):
            return None
        return cache[0]

    def peek(self, count: int) -> list[Item]:
        """Up to ``count`` of the oldest waiting items, left in place (the admin API's peek).

        Those beyond memory are read from the store and not kept: a look at a backlog
        must not fill the window.
        """
        found = list(itertools.islice(self._cache, count))
        disk_from = self._disk_from
        if len(found) < count and disk_from is not None:
            more = count - len(found)
            # A look shows what is sound; the next real read drops a bad item.
            with contextlib.suppress(CorruptItemError):
                found += self._store.read_items(
                    self._queue_id, disk_from, self.next_id, more, _REFILL_BYTES
                )[:more]
        return found

    def pop(self) -> Item | None:
        """The oldest waiting item, out of the window; None when none waits."""
        cache = self._cache
        if not cache and (self._disk_from is None or not self._refill()):
            return None
        item = cache.popleft()
        size = len(item.data)
        self.mem_bytes -= size
        self._budget.used -= size
        return item

    def _refill(self) -> bool:
        """Read the next items on disk into the empty deque; False when none is left."""
        disk_from = self._disk_from
        assert disk_from is not None
        budget = self._budget
        # The deque is empty here; at least one item is always read, whatever the bounds.
        shared_room = max(budget.limit - budget.used, LARGE_ITEM)
        room = max(min(shared_room, _REFILL_BYTES, self.max_bytes), 1)
        try:
            found = self._store.read_items(
                self._queue_id, disk_from, self.next_id, self._max_items, room
            )
        except CorruptItemError as err:
            self._drop_corrupt(err)
            raise
        if not found:
            self._disk_from = None  # the rest was removed before it was committed
            return False
        after = found[-1].item_id + 1
        self._disk_from = after if after < self.next_id else None
        payload = sum(len(item.data) for item in found)
        self._cache.extend(found)
        self.mem_bytes += payload
        budget.used += payload
        return True

    def _drop_corrupt(self, err: CorruptItemError) -> None:
        """The next item on disk failed its checksum: it is removed from the store and
        skipped, so the queue goes on with the item after it."""
        self._store.delete(self._queue_id, err.item_id, err.payload_size)
        after = err.item_id + 1
        self._disk_from = after if after < self.next_id else None
        self.on_corrupt(err.payload_size)

    def drop_all(self, from_store: bool) -> None:
        """Every waiting item is gone (``flush``); ``from_store``: remove them there too.

        Items in memory are removed one by one (there are few); the rest, which only the
        store has, go as one key range.
        """
        if from_store:
            store, queue_id = self._store, self._queue_id
            for item in self._cache:
                store.delete(queue_id, item.item_id, len(item.data))
            if self._disk_from is not None:
                store.truncate(queue_id, self._disk_from, self.next_id)
        self.forget()
        self._disk_from = None

    def forget(self) -> None:
        """Give the memory budget back (queue deleted; the store drops its items itself)."""
        self._budget.used -= self.mem_bytes
        self._cache.clear()
        self.mem_bytes = 0

    def forget_items(self, item_ids: dict[int, int]) -> tuple[int, int]:
        """A commit failed: forget these uncommitted puts (id -> payload size).

        Returns the items and payload bytes of those that were still waiting (in memory or
        on disk); the others had already left the window.
        """
        kept: deque[Item] = deque()
        dropped: set[int] = set()
        for item in self._cache:
            if item.item_id in item_ids:
                dropped.add(item.item_id)
                self.mem_bytes -= len(item.data)
                self._budget.used -= len(item.data)
            else:
                kept.append(item)
        self._cache = kept
        disk_from = self._disk_from
        waiting = [
            size
            for item_id, size in item_ids.items()
            if item_id in dropped or (disk_from is not None and item_id >= disk_from)
        ]
        return len(waiting), sum(waiting)
