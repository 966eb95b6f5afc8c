"""An in-memory :class:`~kestrelpy.queues.item_store.ItemStore` for queue unit tests.

Everything is "committed" at once; ``fail_next_commit`` plays a failed commit by reporting
the given puts to the rollback handler. ``calls`` records each write, so tests can check
what a queue asked the store to do. ``test_item_store.py`` runs the same contract over this
and the server's real store.
"""

from __future__ import annotations

from typing import Any

from kestrelpy.config import QueueConfig
from kestrelpy.payload import Payload
from kestrelpy.queues.item_store import RollbackHandler
from kestrelpy.queues.queue import Queue
from kestrelpy.queues.window import CacheBudget, ReadAheadWindow
from kestrelpy.storage.layout import QueueRecord, StoredItem


class MemoryStore:
    def __init__(self) -> None:
        self.items: dict[int, dict[int, StoredItem]] = {}  # queue id -> item id -> item
        self.queues: dict[str, tuple[int, int]] = {}  # name -> (queue id, create time)
        self.calls: list[tuple[Any, ...]] = []
        self.reads = 0  # read_items calls, to see when a window refills
        self._next_qid = 1
        self._rollback: RollbackHandler | None = None

    def load_queues(self) -> list[QueueRecord]:
        records = []
        for name, (queue_id, create_time) in sorted(self.queues.items()):
            items = self.items.get(queue_id, {})
            ids = sorted(items)
            head, tail = (ids[0], ids[-1] + 1) if ids else (0, 0)
            size = sum(len(item.data) for item in items.values())
            records.append(QueueRecord(name, queue_id, create_time, head, tail, len(ids), size))
        return records

    def create_queue(self, name: str, create_time: int) -> int:
        queue_id = self._next_qid
        self._next_qid += 1
        self.queues[name] = (queue_id, create_time)
        self.calls.append(("create_queue", name))
        return queue_id

    def drop_queue(self, name: str, queue_id: int) -> None:
        self.queues.pop(name, None)
        self.items.pop(queue_id, None)
        self.calls.append(("drop_queue", name))

    def put(
        self, queue_id: int, item_id: int, flags: int, expiry_ms: int, added_ms: int, data: Payload
    ) -> None:
        item = StoredItem(item_id, flags, expiry_ms, added_ms, data)
        self.items.setdefault(queue_id, {})[item_id] = item
        self.calls.append(("put", queue_id, item_id))

    def delete(self, queue_id: int, item_id: int, payload_size: int) -> None:
        self.items.get(queue_id, {}).pop(item_id, None)
        self.calls.append(("delete", queue_id, item_id))

    def truncate(self, queue_id: int, from_id: int, below_id: int) -> None:
        items = self.items.get(queue_id, {})
        for item_id in [i for i in items if from_id <= i < below_id]:
            del items[item_id]
        self.calls.append(("truncate", queue_id, from_id, below_id))

    def read_items(
        self, queue_id: int, from_id: int, end_id: int, max_items: int, max_bytes: int
    ) -> list[StoredItem]:
        self.reads += 1
        found: list[StoredItem] = []
        budget = max_bytes
        items = self.items.get(queue_id, {})
        for item_id in sorted(i for i in items if from_id <= i < end_id):
            if len(found) >= max_items or budget <= 0:
                break
            found.append(items[item_id])
            budget -= len(items[item_id].data)
        return found

    def on_rollback(self, handler: RollbackHandler) -> None:
        self._rollback = handler

    def fail_next_commit(self, lost: list[tuple[int, int, int]]) -> None:
        """The puts ``(queue id, item id, size)`` never reached the disk."""
        for queue_id, item_id, _size in lost:
            self.items.get(queue_id, {}).pop(item_id, None)
        assert self._rollback is not None
        self._rollback(lost)

    def written(self, operation: str) -> list[tuple[Any, ...]]:
        """The recorded calls of one kind, without the operation name."""
        return [call[1:] for call in self.calls if call[0] == operation]


def new_queue(store: MemoryStore, read_ahead_items: int = 10, **config: Any) -> Queue:
    """Queue 1, "q", empty, over ``store``, with these ``QueueConfig`` settings."""
    window = ReadAheadWindow(store, 1, CacheBudget(1 << 30), read_ahead_items, 1 << 30)
    return Queue("q", 1, QueueConfig(**config), store, window, create_time=0)
