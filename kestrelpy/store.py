"""The store the queues and connections use: writes staged in batches, group-committed to LMDB.

:class:`Store` ties three parts together: :class:`~kestrelpy.storage.lmdb_store.LmdbStorage`
(LMDB access), :class:`~kestrelpy.commits.lanes.Lanes` (the staged batches) and
:class:`~kestrelpy.commits.scheduler.CommitScheduler` (when they commit, and who is told).
Of its own it only encodes each write into its batch and hands out queue ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zlib import crc32

from kestrelpy.commits.batch import RollbackHandler
from kestrelpy.commits.scheduler import CommitScheduler
from kestrelpy.commits.stats import CommitStats
from kestrelpy.config import SyncPolicy
from kestrelpy.payload import LARGE_ITEM, Payload
from kestrelpy.storage.layout import QUEUE_RECORD, U32, item_checksum, item_fields, item_key
from kestrelpy.storage.lmdb_store import LmdbStorage, QueueRecord, StoredItem


class Store:
    """Durable FIFO storage with group commit; a :class:`~kestrelpy.commits.CommitGate`.

    Reactor thread only. Writes are staged and reach the disk in the next commit, in call
    order; reads see them at once. The CommitGate methods (``take_write_tickets``,
    ``wait_also_for``, ``when_committed``) are the scheduler's own, bound here: a
    connection calls them for every write, so no facade call stands in between.
    """

    def __init__(
        self,
        path: Path,
        clock: Any,
        *,
        sync: SyncPolicy = "always",
        sync_interval_ms: int = 50,
    ) -> None:
        storage = LmdbStorage(path, sync=sync)
        scheduler = CommitScheduler(storage, clock, sync=sync, sync_interval_ms=sync_interval_ms)
        self._storage = storage
        self._scheduler = scheduler
        self._lanes = scheduler.lanes
        self._next_qid = storage.next_queue_id()
        self._closed = False
        self.take_write_tickets = scheduler.take_write_tickets
        self.wait_also_for = scheduler.wait_also_for
        self.when_committed = scheduler.when_committed

    # ----------------------------------------------------------------- queue registry

    def load_queues(self) -> list[QueueRecord]:
        """Every stored queue with its head, tail and counters: O(queues * log(items))."""
        return self._storage.load_queues()

    def create_queue(self, name: str, create_time: int) -> int:
        """Reserve a queue id now; the registration rides the next commit."""
        qid = self._next_qid
        self._next_qid += 1
        batch = self._lanes.pending
        batch.new_queues[name.encode("latin-1")] = QUEUE_RECORD.pack(qid, create_time)
        batch.next_qid = self._next_qid
        self._scheduler.schedule_commit()
        return qid

    def drop_queue(self, name: str, queue_id: int) -> None:
        """Forget a queue and all its items (``delete``), in the next commit."""
        lanes = self._lanes
        encoded = name.encode("latin-1")
        lanes.pending.new_queues.pop(encoded, None)
        lanes.pending.dropped_queues.append((encoded, queue_id))
        lanes.drop_puts(U32.pack(queue_id))
        self._scheduler.schedule_commit()

    # ----------------------------------------------------------------------- items

    def put(
        self, queue_id: int, item_id: int, flags: int, expiry_ms: int, added_ms: int, data: Payload
    ) -> None:
        size = len(data)
        scheduler = self._scheduler
        batch = self._lanes.pending if size < LARGE_ITEM else scheduler.large_batch(size)
        # layout.encode_item, inline: this is the hot path of every set.
        fields = item_fields(flags, expiry_ms, added_ms)
        checksum = item_checksum(crc32(data, crc32(fields)))
        batch.puts[item_key(queue_id, item_id)] = b"".join((fields, checksum, data))
        if not scheduler.commit_scheduled:
            scheduler.schedule_commit()

    def delete(self, queue_id: int, item_id: int, payload_size: int) -> None:
        """Remove an item in the next commit; a put still staged is simply cancelled."""
        key = item_key(queue_id, item_id)
        lanes = self._lanes
        batch = lanes.pending
        if batch.puts.pop(key, None) is None and not lanes.cancel_large_put(key, payload_size):
            batch.deletes[key] = payload_size
            scheduler = self._scheduler
            if scheduler.lazy_commit is None and not scheduler.commit_scheduled:
                scheduler.commit_soon()

    def truncate(self, queue_id: int, from_id: int, below_id: int) -> None:
        """Remove a queue's items with ``from_id <= id < below_id`` (``flush``)."""
        lanes = self._lanes
        lanes.drop_puts(U32.pack(queue_id), from_id, below_id)
        lanes.pending.truncations.append((queue_id, from_id, below_id))
        self._scheduler.schedule_commit()

    def read_items(
        self, queue_id: int, from_id: int, end_id: int, max_items: int, max_bytes: int
    ) -> list[StoredItem]:
        """Items with ``from_id <= id < end_id`` in id order, committed or still staged.

        Used only to refill a queue's read-ahead window, so a backlog lives on disk rather
        than in Python objects.
        """
        staged = self._lanes.staged_puts()
        return self._storage.read_items(queue_id, from_id, end_id, max_items, max_bytes, staged)

    # ----------------------------------------------------------------- small records

    def get_record(self, name: bytes) -> bytes | None:
        staged = self._lanes.pending.records
        if name in staged:
            return staged[name]
        return self._storage.get_record(name)

    def set_record(self, name: bytes, value: bytes | None) -> None:
        self._lanes.pending.records[name] = value
        self._scheduler.schedule_commit()

    # ---------------------------------------------------------------- commit control

    @property
    def has_pending_writes(self) -> bool:
        return self._lanes.has_staged

    @property
    def commits(self) -> int:
        """Batches committed so far (failed ones not)."""
        return self._scheduler.commits

    @property
    def commit_stats(self) -> CommitStats:
        """Commit latency, writes per commit and fsync latency (for the metrics)."""
        return self._scheduler.stats

    def on_rollback(self, handler: RollbackHandler) -> None:
        """Who to tell which (queue id, item id, size) puts were lost when a commit failed."""
        self._scheduler.on_rollback(handler)

    def commit_now(self) -> None:
        """Commit everything staged, synchronously (shutdown and tests)."""
        self._scheduler.commit_now()

    def close(self) -> None:
        """Commit what is staged, fsync, and close the environment."""
        if self._closed:
            return
        self._scheduler.close()
        self._storage.close()
        self._closed = True

    def store_bytes(self) -> int:
        """Bytes the store's pages occupy in its data file (for the metrics of the store size)."""
        return self._storage.store_bytes()

    def map_size_bytes(self) -> int:
        """The store's map size: how far its data file may grow before the map grows."""
        return self._storage.map_size_bytes()
