"""The contract between the queues and the durable store: what queues ask of a store.

Queues decide order, limits and delivery; the store only keeps items by (queue id, item id)
and tells which puts a failed commit lost. Any object with these methods will do: the server
passes its store, unit tests a plain in-memory one (``tests/queues/memory_store.py``).

Every method is called on the reactor thread and returns without waiting for the disk.
Writes (``put``, ``delete``, ``truncate``, ``create_queue``, ``drop_queue``) are staged and
reach the disk together in the store's next commit (group commit), in call order.
``read_items`` sees a staged put at once, but a removal perhaps only once committed: a queue
never reads back an id it removed. A crash before that commit loses staged puts (the server
replies ``STORED`` only after it) and undoes staged removals (those items are redelivered,
never lost). A commit that fails is reported through the ``on_rollback`` handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kestrelpy.payload import Payload
from kestrelpy.storage.layout import QueueRecord, StoredItem

# A commit failed: the (queue id, item id, payload size) of each put it lost.
RollbackHandler = Callable[[list[tuple[int, int, int]]], None]


class ItemStore(Protocol):
    """Durable items by (queue id, item id); item ids only grow, so id order is FIFO order.

    The collection calls ``on_rollback`` and ``load_queues`` once, at startup, before
    anything else. A queue id comes from ``create_queue`` (or ``load_queues``) and is never
    reused, even after ``drop_queue``.
    """

    def load_queues(self) -> list[QueueRecord]:
        """Every stored queue with its id range and counters, as of the last commit."""
        ...

    def create_queue(self, name: str, create_time: int) -> int:
        """A new queue's id, usable at once; the queue is durable after the next commit."""
        ...

    def drop_queue(self, name: str, queue_id: int) -> None:
        """Forget the queue and all its items, staged or committed."""
        ...

    def put(
        self, queue_id: int, item_id: int, flags: int, expiry_ms: int, added_ms: int, data: Payload
    ) -> None:
        """Stage an item; durable after the next commit. ``data`` is not copied or changed."""
        ...

    def delete(self, queue_id: int, item_id: int, payload_size: int) -> None:
        """Remove one item (a staged put is simply cancelled)."""
        ...

    def truncate(self, queue_id: int, from_id: int, below_id: int) -> None:
        """Remove every item with ``from_id <= id < below_id`` (staged or committed)."""
        ...

    def read_items(
        self, queue_id: int, from_id: int, end_id: int, max_items: int, max_bytes: int
    ) -> list[StoredItem]:
        """Items with ``from_id <= id < end_id`` in id order, staged ones included.

        At most ``max_items``, and no more once their payloads reach ``max_bytes``; the
        last may overshoot it, so a positive ``max_bytes`` returns an item if any is there.
        """
        ...

    def on_rollback(self, handler: RollbackHandler) -> None:
        """Call ``handler`` (reactor thread) with the puts each failed commit lost."""
        ...
