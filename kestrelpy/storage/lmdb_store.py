"""The durable store: the only module that imports ``lmdb``.

Layout (one LMDB environment in the data directory, three named databases):

* ``items``: key = queue id (u32, big-endian) + item id (u64, big-endian), so every queue is
  one ordered key range and key order is FIFO order. Value = ``_HEADER`` (flags, expiry ms,
  added ms) + payload.
* ``queues``: queue name (bytes) -> queue id + creation time. Ids are never reused, so a
  queue deleted and re-created in the same batch cannot collide with its old items.
* ``meta``: per-queue item/byte counters (updated in the same transaction as the items they
  count, so startup needs no scan), the next queue id, and small server records (status).

Writes are staged in a :class:`_Batch` on the reactor thread and committed together
(group commit). Under ``sync="always"`` one writer thread commits with fsync while the
reactor keeps filling the next batch; under ``"periodic"`` and ``"never"`` the batch is
committed inline on the reactor thread at the end of the reactor turn (a commit without
fsync costs less than a thread hand-off), and ``"periodic"`` fsyncs from a timer thread.
Every batch's listeners are told, in commit order, whether it reached the store.

Large items (``LARGE_ITEM`` bytes and up) travel in a lane of their own: batches of at
most ``_BATCH_LARGE_BYTES`` (or one item), committed in turn with the batch of everything
else, so a 64-byte set never shares a commit (or its fsync) with MiBs of other clients'
data and waits for at most one large batch (loadtest ``fairness``). A large batch commits
only after the batch of small writes that was open when it was last written to, which
keeps PROTOCOL.md §12: a reply to a write follows the commit of every removal answered
before it.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Literal, NamedTuple

import lmdb
from twisted.logger import Logger

from kestrelpy.errors import StoreError, StoreFullError
from kestrelpy.payload import Payload

SyncPolicy = Literal["always", "periodic", "never"]

_KEY = struct.Struct(">IQ")
_HEADER = struct.Struct(">Iqq")  # flags, expiry unix ms (0 = none), added unix ms
_HEADER_SIZE = _HEADER.size
_QUEUE_RECORD = struct.Struct(">Iq")  # queue id, create time unix s
_COUNTERS = struct.Struct(">qq")  # items, payload bytes
_U32 = struct.Struct(">I")
_NEXT_QID_KEY = b"next_qid"
_COUNTER_PREFIX = b"c"
_RECORD_PREFIX = b"r"
_INITIAL_MAP_SIZE = 16 * 1024 * 1024
_MAX_MAP_STEP = 1024 * 1024 * 1024  # grow by doubling, but by at most 1 GiB at a time
_RETRY_PAUSE_S = 0.5
_LAZY_COMMIT_S = 0.02  # removals alone wait this long for a write to ride along with
_MAX_ID = 2**64 - 1
LARGE_ITEM = 64 * 1024  # payloads this big are spread over commits, one MiB or so apiece
_BATCH_LARGE_BYTES = 1024 * 1024
_LARGE_BACKLOG_BYTES = 32 * 1024 * 1024  # beyond this, merge large batches to catch up


class StoredItem(NamedTuple):
    """One queued item as the store hands it back (payload copied out of LMDB)."""

    item_id: int
    flags: int
    expiry_ms: int
    added_ms: int
    data: Payload


class QueueRecord(NamedTuple):
    """What startup learns about a stored queue without scanning its items."""

    name: str
    queue_id: int
    create_time: int
    head_id: int  # first stored item id (== tail_id when empty)
    tail_id: int  # one past the last stored item id
    items: int
    payload_bytes: int


CommitListener = Callable[[bool], None]
RollbackHandler = Callable[[list[tuple[int, int, int]]], None]  # (queue id, item id, size)


class _Batch:
    """Writes that will commit in one transaction, and who waits for that commit.

    A plain slotted class: one is made per commit, on the hot path.
    """

    __slots__ = (
        "after",
        "deletes",
        "dropped_queues",
        "is_large",
        "large_bytes",
        "listeners",
        "new_queues",
        "next_qid",
        "puts",
        "records",
        "ticket",
        "truncations",
    )

    def __init__(self, ticket: int) -> None:
        self.ticket = ticket
        self.puts: dict[bytes, bytes] = {}
        self.deletes: dict[bytes, int] = {}  # key -> payload size
        self.truncations: list[tuple[int, int, int]] = []  # (queue id, from id, below id)
        # (name, queue id); a list: one name may be deleted, re-created and deleted again
        self.dropped_queues: list[tuple[bytes, int]] = []
        self.new_queues: dict[bytes, bytes] = {}  # name -> record
        self.records: dict[bytes, bytes | None] = {}
        self.next_qid: int | None = None
        self.listeners: list[CommitListener] = []
        self.large_bytes = 0  # payload bytes of the large items among ``puts``
        self.after = 0  # a large batch commits after the small batch with this ticket
        self.is_large = False  # a batch of the large-item lane

    def is_empty(self) -> bool:
        return not (
            self.puts
            or self.deletes
            or self.truncations
            or self.dropped_queues
            or self.new_queues
            or self.records
            or self.next_qid is not None
        )

    def carry_over_from(self, failed: _Batch) -> None:
        """Keep a failed batch's removals and metadata: they were answered already.

        Its puts are not kept: their writers were told ``SERVER_ERROR``.
        """
        for key, size in failed.deletes.items():
            self.deletes.setdefault(key, size)
        self.truncations[:0] = failed.truncations
        dropped_since = {qid for _name, qid in self.dropped_queues}
        self.dropped_queues[:0] = failed.dropped_queues
        merged_new = {
            name: record
            for name, record in failed.new_queues.items()
            if _QUEUE_RECORD.unpack(record)[0] not in dropped_since  # deleted meanwhile
        }
        merged_new.update(self.new_queues)
        self.new_queues = merged_new
        merged_records = dict(failed.records)
        merged_records.update(self.records)
        self.records = merged_records
        if self.next_qid is None:
            self.next_qid = failed.next_qid

    def absorb(self, later: _Batch) -> None:
        """Take over the next batch of large puts (to catch up with a backlog)."""
        self.puts.update(later.puts)
        self.large_bytes += later.large_bytes
        self.listeners.extend(later.listeners)
        self.after = max(self.after, later.after)

    def drop_puts(self, prefix: bytes, from_id: int = 0, below_id: int = _MAX_ID) -> None:
        """Forget staged puts of one queue (``prefix``) with ids in [from_id, below_id)."""
        for key in [k for k in self.puts if k.startswith(prefix)]:
            if from_id <= _KEY.unpack(key)[1] < below_id:
                size = len(self.puts.pop(key)) - _HEADER_SIZE
                if size >= LARGE_ITEM:
                    self.large_bytes -= size


def item_key(queue_id: int, item_id: int) -> bytes:
    return _KEY.pack(queue_id, item_id)


class LmdbStore:
    """Durable FIFO storage with group commit.

    All public methods run on the reactor thread. Only ``_commit_batch`` (and the periodic
    fsync) may run on another thread, and they touch nothing but the LMDB environment and
    the batch they were handed.
    """

    _log = Logger()

    def __init__(
        self,
        path: Path,
        reactor: Any,
        *,
        sync: SyncPolicy = "always",
        sync_interval_ms: int = 50,
    ) -> None:
        self._reactor: Any = reactor  # IReactorTime + IReactorThreads
        self._sync = sync
        self._sync_interval_s = max(sync_interval_ms, 1) / 1000.0
        self._path = path
        self._env = _open_env(path, sync=(sync == "always"))
        self._items_db = self._env.open_db(b"items")
        self._queues_db = self._env.open_db(b"queues")
        self._meta_db = self._env.open_db(b"meta")
        self._env_lock = threading.Lock()  # map resizes vs. reactor-thread read transactions
        self._next_qid = self._read_next_qid()
        self._counters: dict[int, tuple[int, int]] = self._read_counters()
        self._ticket = 0
        self._pending = _Batch(ticket=0)  # small writes, removals, records
        self._large: deque[_Batch] = deque()  # batches of large puts, in commit order
        self._large_turn = False  # the writer's last batch was a small one: a large goes next
        # Since take_write_tickets: batches besides _pending its caller must wait for (the
        # large batches it wrote to, and those a reader it handed an item to waits for).
        self._wait_also: list[int] = []
        self._in_flight: _Batch | None = None
        self._commit_scheduled = False
        self._backoff = False  # a commit failed: wait _RETRY_PAUSE_S before the next
        self._lazy_commit: Any = None  # IDelayedCall for a removals-only commit
        self._rollback: RollbackHandler | None = None
        self._closed = False
        self._dirty_since_sync = threading.Event()
        self._writer: _Writer | None = None
        self._syncer: _PeriodicSyncer | None = None
        self.commits = 0
        self.last_error: str | None = None
        if sync == "always":
            self._writer = _Writer(self._commit_batch, self._writer_done)
        elif sync == "periodic":
            self._syncer = _PeriodicSyncer(self._env, self._sync_interval_s, self._dirty_since_sync)

    # ----------------------------------------------------------------- queue registry

    def load_queues(self) -> list[QueueRecord]:
        """Every stored queue with its head, tail and counters: O(queues * log(items))."""
        with self._env_lock, self._env.begin() as txn:
            return _queue_records(txn, self._items_db, self._queues_db, self._meta_db)

    def create_queue(self, name: str, create_time: int) -> int:
        """Reserve a queue id now; the registration rides the next commit."""
        qid = self._next_qid
        self._next_qid += 1
        batch = self._pending
        batch.new_queues[name.encode("latin-1")] = _QUEUE_RECORD.pack(qid, create_time)
        batch.next_qid = self._next_qid
        self._schedule_commit()
        return qid

    def drop_queue(self, name: str, queue_id: int) -> None:
        """Forget a queue and all its items (``delete``), in the next commit."""
        batch = self._pending
        encoded = name.encode("latin-1")
        batch.new_queues.pop(encoded, None)
        batch.dropped_queues.append((encoded, queue_id))
        self._drop_staged_puts(_U32.pack(queue_id))
        self._schedule_commit()

    # ----------------------------------------------------------------------- items

    def put(
        self, queue_id: int, item_id: int, flags: int, expiry_ms: int, added_ms: int, data: Payload
    ) -> None:
        size = len(data)
        batch = self._pending if size < LARGE_ITEM else self._large_batch(size)
        batch.puts[_KEY.pack(queue_id, item_id)] = _HEADER.pack(flags, expiry_ms, added_ms) + data
        if not self._commit_scheduled:
            self._schedule_commit()

    def _large_batch(self, size: int) -> _Batch:
        """The batch a large put rides: the newest large one while it has room."""
        batch = self._large[-1] if self._large else None
        if batch is None or (batch.large_bytes and batch.large_bytes + size > _BATCH_LARGE_BYTES):
            self._ticket += 1
            batch = _Batch(ticket=self._ticket)
            batch.is_large = True
            self._large.append(batch)
        batch.after = self._pending.ticket  # removals answered so far commit first
        batch.large_bytes += size
        if batch.ticket not in self._wait_also:
            self._wait_also.append(batch.ticket)
        return batch

    def delete(self, queue_id: int, item_id: int, payload_size: int) -> None:
        """Remove an item in the next commit; a put still pending is simply cancelled."""
        key = _KEY.pack(queue_id, item_id)
        batch = self._pending
        if batch.puts.pop(key, None) is None and not self._cancel_large_put(key, payload_size):
            batch.deletes[key] = payload_size
            if self._lazy_commit is None and not self._commit_scheduled:
                # Nobody waits for a removal: let it ride the next write's commit, or
                # commit it alone shortly. A crash before then redelivers, never loses.
                self._lazy_commit = self._reactor.callLater(_LAZY_COMMIT_S, self._lazy_turn)

    def truncate(self, queue_id: int, from_id: int, below_id: int) -> None:
        """Remove a queue's items with ``from_id <= id < below_id`` (``flush``)."""
        self._drop_staged_puts(_U32.pack(queue_id), from_id, below_id)
        self._pending.truncations.append((queue_id, from_id, below_id))
        self._schedule_commit()

    def _cancel_large_put(self, key: bytes, payload_size: int) -> bool:
        for batch in self._large:
            if batch.puts.pop(key, None) is not None:
                batch.large_bytes -= payload_size
                return True
        return False

    def _drop_staged_puts(self, prefix: bytes, from_id: int = 0, below_id: int = _MAX_ID) -> None:
        for batch in (self._pending, *self._large):
            batch.drop_puts(prefix, from_id, below_id)

    def read_items(
        self, queue_id: int, from_id: int, end_id: int, max_items: int, max_bytes: int
    ) -> list[StoredItem]:
        """Items with ``from_id <= id < end_id`` in id order, committed or not yet committed.

        Runs on the reactor thread; used only to refill a queue's read-ahead window, so a
        backlog lives on disk rather than in Python objects. Each lane commits in id order
        but the lanes interleave (a large item may still be staged while later small ones
        are committed), so committed and staged items are merged by id.
        """
        found: list[StoredItem] = []
        budget = max_bytes
        staged_in = [self._pending.puts, *(batch.puts for batch in self._large)]
        if self._in_flight is not None:
            staged_in.append(self._in_flight.puts)
        anything_staged = any(staged_in)
        end_key = _KEY.pack(queue_id, end_id)
        next_id = from_id
        with self._env_lock, self._env.begin(buffers=True) as txn:
            cursor = txn.cursor(db=self._items_db)
            disk_id = _position(cursor, cursor.set_range(_KEY.pack(queue_id, from_id)), end_key)
            while next_id < end_id and len(found) < max_items and budget > 0:
                if next_id < min(disk_id, end_id):
                    if not anything_staged:
                        next_id = disk_id  # nothing staged can fill the gap
                        continue
                    key = _KEY.pack(queue_id, next_id)
                    staged = next((puts[key] for puts in staged_in if key in puts), None)
                    next_id += 1
                    if staged is None:
                        continue
                    item = _decode(key, memoryview(staged))
                else:
                    item = _decode(bytes(cursor.key()), cursor.value())
                    next_id = disk_id + 1
                    disk_id = _position(cursor, cursor.next(), end_key)
                found.append(item)
                budget -= len(item.data)
        return found

    # ----------------------------------------------------------------- small records

    def get_record(self, name: bytes) -> bytes | None:
        staged = self._pending.records
        if name in staged:
            return staged[name]
        with self._env_lock, self._env.begin() as txn:
            value = txn.get(_RECORD_PREFIX + name, db=self._meta_db)
            return bytes(value) if value is not None else None

    def set_record(self, name: bytes, value: bytes | None) -> None:
        self._pending.records[name] = value
        self._schedule_commit()

    # ---------------------------------------------------------------- commit control

    @property
    def has_pending_writes(self) -> bool:
        return not self._pending.is_empty() or bool(self._large)

    def take_write_tickets(self) -> tuple[int, ...]:
        """The batches to wait for so that every write staged since the last call (by the
        caller: one connection's run of requests) has committed.

        The batch of small writes, and the large batches written to. The large ones commit
        after that small batch anyway (``after``), so waiting for it too costs nothing.
        None at all when nothing is staged or committing: the writes left nothing to store
        (an item handed straight to a reader) and no earlier removal is still uncommitted.
        """
        if not self._wait_also:
            if self._in_flight is None and self._pending.is_empty():
                return ()
            return (self._pending.ticket,)
        live = {batch.ticket for batch in self._large}  # not gone with an earlier commit
        if self._in_flight is not None:
            live.add(self._in_flight.ticket)
        tickets = [self._pending.ticket]
        tickets += [t for t in dict.fromkeys(self._wait_also) if t in live and t not in tickets]
        self._wait_also = []
        return tuple(tickets)

    def wait_also_for(self, tickets: Iterable[int]) -> None:
        """The next ``take_write_tickets`` caller must also wait for these batches.

        For a writer whose item went straight to a reader with replies still held back
        by commits: its ``STORED`` must not leave before the reader has the item, or a
        crash in between would lose an acknowledged item.
        """
        self._wait_also.extend(tickets)

    def when_committed(self, listener: CommitListener, ticket: int | None = None) -> None:
        """Call ``listener(ok)`` once the batch ``ticket`` (default: the batch of small
        writes; else one staged or committing now) has committed or failed."""
        batch = self._pending
        if ticket is not None and ticket != batch.ticket:
            in_flight = self._in_flight
            if in_flight is not None and in_flight.ticket == ticket:
                batch = in_flight
            else:
                batch = next(b for b in self._large if b.ticket == ticket)
        batch.listeners.append(listener)
        self._schedule_commit()

    def on_rollback(self, handler: RollbackHandler) -> None:
        """Who to tell which (queue id, item id) puts were lost when a commit failed."""
        self._rollback = handler

    def flush_now(self) -> None:
        """Commit everything staged, synchronously (shutdown and tests)."""
        if self._writer is not None:
            self._writer.drain()
            self._deliver_writer_results(resubmit=False)
        while (batch := self._next_batch()) is not None:
            error = self._commit_batch(batch)
            self._finish(batch, error)
            if error is not None:
                break  # not retried here; the large batches that were to follow it failed too

    def close(self) -> None:
        """Commit what is staged, fsync, and close the environment."""
        if self._closed:
            return
        self.flush_now()
        if self._writer is not None:
            self._writer.stop()
        if self._syncer is not None:
            self._syncer.stop()
        self._closed = True
        if self._sync != "always":
            self._env.sync(True)
        self._env.close()

    def store_bytes(self) -> int:
        """Bytes the store's pages occupy (``logsize`` in stats)."""
        info = self._env.info()
        stat = self._env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    # ---------------------------------------------------------------------- internals

    def _schedule_commit(self) -> None:
        if self._commit_scheduled or self._closed:
            return
        self._commit_scheduled = True
        self._reactor.callLater(0, self._commit_turn)

    def _lazy_turn(self) -> None:
        self._lazy_commit = None
        self._schedule_commit()

    def _commit_turn(self) -> None:
        """End of a reactor turn: commit what this turn staged (or hand it to the writer)."""
        self._commit_scheduled = False
        if self._backoff:
            return  # after a failed commit, _end_backoff schedules the retry
        if self._writer is None:
            # At most one batch of each lane per turn: the small writes first, then up to
            # ~1 MiB of large items; more large batches wait for the next turn.
            for _lane in range(2):
                batch = self._next_batch()
                if batch is None:
                    return
                self._finish(batch, self._commit_batch(batch))
                if self._backoff:
                    return
            if self._has_work():
                self._schedule_commit()
        elif self._in_flight is None:
            self._submit_next()

    def _has_work(self) -> bool:
        return bool(self._large) or self._small_ready()

    def _next_batch(self) -> _Batch | None:
        """Take the batch to commit next, alternating the lanes when both have one."""
        pending = self._pending
        small_ready = self._small_ready()
        large_ready = bool(self._large) and self._may_commit(self._large[0])
        if large_ready and (self._large_turn or not small_ready):
            self._large_turn = False
            return self._take_large()
        if small_ready:
            self._large_turn = True
            self._ticket += 1
            self._pending = _Batch(ticket=self._ticket)
            return pending
        return None

    def _small_ready(self) -> bool:
        pending = self._pending
        return bool(pending.listeners) or not pending.is_empty()

    def _may_commit(self, large: _Batch) -> bool:
        """A large batch goes after the small batch open when it was written to, if that
        one holds anything (a removal answered before the large set arrived, say)."""
        return large.after < self._pending.ticket or not self._small_ready()

    def _take_large(self) -> _Batch:
        batch = self._large.popleft()
        backlog = sum(later.large_bytes for later in self._large)
        while backlog > _LARGE_BACKLOG_BYTES and self._may_commit(self._large[0]):
            later = self._large.popleft()  # a backlog: commit more per batch to catch up
            backlog -= later.large_bytes
            batch.absorb(later)
        return batch

    def _writer_done(self) -> None:
        """Runs in the writer thread: wake the reactor to deliver the results."""
        self._reactor.callFromThread(self._deliver_writer_results)

    def _deliver_writer_results(self, resubmit: bool = True) -> None:
        assert self._writer is not None
        for batch, error in self._writer.results():
            if batch is self._in_flight:
                self._in_flight = None
            self._finish(batch, error)
        idle = resubmit and not self._backoff and self._in_flight is None and not self._closed
        if idle:
            self._submit_next()

    def _submit_next(self) -> None:
        assert self._writer is not None
        batch = self._next_batch()
        if batch is not None:
            self._in_flight = batch
            self._writer.submit(batch)

    def _finish(self, batch: _Batch, error: StoreError | None) -> None:
        if error is None:
            self.commits += 1
            self.last_error = None
        else:
            self.last_error = str(error)
            self._log.error(
                "commit failed, {count} writes refused: {error}",
                count=len(batch.puts),
                error=str(error),
            )
            self._pending.carry_over_from(batch)
            if batch.puts and self._rollback is not None:
                self._rollback(
                    [
                        (*_KEY.unpack(key), len(value) - _HEADER_SIZE)
                        for key, value in batch.puts.items()
                    ]
                )
            self._schedule_commit_later()
        for listener in batch.listeners:
            listener(error is None)
        if error is not None and not batch.is_large:
            self._fail_large_after(batch, error)

    def _fail_large_after(self, failed: _Batch, error: StoreError) -> None:
        """Large batches that were to commit after a failed small one fail with it.

        Their writers may share a reply batch with writes of the failed one; failing them
        too keeps every reply of a client's batch true (stored, or refused and not stored).
        """
        for batch in [b for b in self._large if b.after <= failed.ticket]:
            self._large.remove(batch)
            self._finish(batch, error)

    def _schedule_commit_later(self) -> None:
        """After a failure, pause commits (retrying at once would spin on a full disk)."""
        if self._closed or self._backoff:
            return
        self._backoff = True
        self._reactor.callLater(_RETRY_PAUSE_S, self._end_backoff)

    def _end_backoff(self) -> None:
        self._backoff = False
        self._schedule_commit()

    def _commit_batch(self, batch: _Batch) -> StoreError | None:
        """Write one batch in one transaction. May run on the writer thread."""
        if batch.is_empty():
            return None
        for _attempt in range(16):
            try:
                with self._env.begin(write=True) as txn:
                    counter_updates = self._apply(txn, batch)
            except lmdb.MapFullError:
                try:
                    self._grow_map()
                except OSError as err:
                    return StoreFullError(f"cannot grow the store: {err.strerror}")
                continue
            except lmdb.Error as err:
                return _store_error(err)
            for qid, counts in counter_updates:
                if counts is None:
                    self._counters.pop(qid, None)
                else:
                    self._counters[qid] = counts
            if self._sync == "periodic":
                self._dirty_since_sync.set()
            return None
        return StoreFullError("store map cannot grow further")

    def _grow_map(self) -> None:
        """Double the map (at most +1 GiB), reserving the disk blocks first.

        Disk blocks are reserved with fallocate first, so a full disk surfaces here, as
        StoreFullError, before any commit depends on the new space.
        """
        with self._env_lock:
            size = self._env.info()["map_size"]
            new_size = size + min(size, _MAX_MAP_STEP)
            _reserve(self._path, new_size)
            self._env.set_mapsize(new_size)

    def _apply(self, txn: Any, batch: _Batch) -> list[tuple[int, tuple[int, int] | None]]:
        """Stage a batch in ``txn``; returns the counter values to remember once committed.

        Counters are cached (``_counters``) so a commit writes them without reading them
        back; only this thread (the writer, or the reactor under inline commits) uses it.
        """
        counter_updates: list[tuple[int, tuple[int, int] | None]] = []
        deltas: dict[int, list[int]] = {}
        items, meta = self._items_db, self._meta_db
        dropped_ids: set[int] = set()
        if batch.dropped_queues or batch.new_queues or batch.next_qid is not None:
            dropped_ids = self._apply_registry(txn, batch)
        puts = batch.puts
        if puts:
            # Ids are fresh, so every put adds a key: count in Python, write in one C call.
            unpack_qid = _U32.unpack_from
            for key, value in puts.items():
                delta = deltas.get(unpack_qid(key)[0])
                if delta is None:
                    delta = deltas[unpack_qid(key)[0]] = [0, 0]
                delta[0] += 1
                delta[1] += len(value) - _HEADER_SIZE
            txn.cursor(items).putmulti(puts.items())
        if batch.deletes:
            delete = txn.delete
            for key, size in batch.deletes.items():
                if delete(key, b"", items):
                    delta = deltas.setdefault(_U32.unpack_from(key)[0], [0, 0])
                    delta[0] -= 1
                    delta[1] -= size
        for qid, from_id, below in batch.truncations:
            count, size = _delete_range(txn, items, qid, from_id, below)
            delta = deltas.setdefault(qid, [0, 0])
            delta[0] -= count
            delta[1] -= size
        counters = self._counters
        for qid, (count, size) in deltas.items():
            if qid in dropped_ids or (count == 0 and size == 0):
                continue
            old_count, old_size = counters.get(qid, (0, 0))
            new = (old_count + count, old_size + size)
            txn.put(_COUNTER_PREFIX + _U32.pack(qid), _COUNTERS.pack(*new), db=meta)
            counter_updates.append((qid, new))
        for qid in dropped_ids:
            counter_updates.append((qid, None))
        for name, record in batch.records.items():
            if record is None:
                txn.delete(_RECORD_PREFIX + name, db=meta)
            else:
                txn.put(_RECORD_PREFIX + name, record, db=meta)
        return counter_updates

    def _apply_registry(self, txn: Any, batch: _Batch) -> set[int]:
        """Queue deletions and creations; returns the ids of queues deleted."""
        queues, meta = self._queues_db, self._meta_db
        for name, qid in batch.dropped_queues:
            txn.delete(name, db=queues)
            txn.delete(_COUNTER_PREFIX + _U32.pack(qid), db=meta)
            _delete_range(txn, self._items_db, qid, 0, _MAX_ID)
        for name, record in batch.new_queues.items():
            txn.put(name, record, db=queues)
        if batch.next_qid is not None:
            txn.put(_NEXT_QID_KEY, _U32.pack(batch.next_qid), db=meta)
        return {qid for _name, qid in batch.dropped_queues}

    def _read_counters(self) -> dict[int, tuple[int, int]]:
        counters: dict[int, tuple[int, int]] = {}
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._meta_db)
            if cursor.set_range(_COUNTER_PREFIX):
                for key, value in cursor:
                    if not key.startswith(_COUNTER_PREFIX) or len(key) != 5:
                        break
                    counters[_U32.unpack_from(key, 1)[0]] = _COUNTERS.unpack(value)
        return counters

    def _read_next_qid(self) -> int:
        with self._env.begin() as txn:
            raw = txn.get(_NEXT_QID_KEY, db=self._meta_db)
            return int(_U32.unpack(raw)[0]) if raw else 1


class _Writer:
    """The one thread that commits (and fsyncs) batches under ``sync="always"``."""

    def __init__(
        self, commit: Callable[[_Batch], StoreError | None], notify: Callable[[], None]
    ) -> None:
        self._commit = commit
        self._notify = notify
        self._inbox: SimpleQueue[_Batch | None] = SimpleQueue()
        self._done: SimpleQueue[tuple[_Batch, StoreError | None]] = SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="kestrelpy-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: _Batch) -> None:
        self._idle.clear()
        self._inbox.put(batch)

    def results(self) -> Iterator[tuple[_Batch, StoreError | None]]:
        while not self._done.empty():
            yield self._done.get()

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for the batch in flight (shutdown): at most one is ever submitted."""
        self._idle.wait(timeout_s)

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30.0)

    def _run(self) -> None:
        while True:
            batch = self._inbox.get()
            if batch is None:
                return
            error = self._commit(batch)
            self._done.put((batch, error))
            self._idle.set()
            self._notify()


class _PeriodicSyncer:
    """fsyncs the environment every interval when something was committed since the last."""

    def __init__(self, env: Any, interval_s: float, dirty: threading.Event) -> None:
        self._env = env
        self._interval_s = interval_s
        self._dirty = dirty
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kestrelpy-fsync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30.0)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            if self._dirty.is_set():
                self._dirty.clear()
                self._env.sync(True)


def _open_env(path: Path, *, sync: bool) -> Any:
    """Open the environment, and reserve disk blocks for its map.

    Not with writemap: it makes a small commit ~4x cheaper, but a commit then writes
    into pages the periodic fsync may be writing back, and the kernel stalls those
    writes; with 1 MiB items streaming, 64-byte sets waited over half a second. Through
    pwrite the flood rate is the same within noise (loadtest), and fairness holds.
    """
    path.mkdir(parents=True, exist_ok=True)
    data_file = path / "data.mdb"
    map_size = max(_INITIAL_MAP_SIZE, data_file.stat().st_size if data_file.exists() else 0)
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=4,
            sync=sync,
            metasync=sync,
            writemap=False,
            readahead=False,
            map_async=False,
        )
        _reserve(path, map_size)
        return env
    except lmdb.Error as err:
        raise StoreError(f"cannot open store in {path}: {err}") from err
    except OSError as err:
        raise StoreFullError(f"cannot reserve {map_size} bytes in {path}: {err.strerror}") from err


def _reserve(path: Path, size: int) -> None:
    """Allocate disk blocks for the first ``size`` bytes of the data file."""
    fd = os.open(path / "data.mdb", os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _decode(key: bytes, value: Any) -> StoredItem:
    flags, expiry_ms, added_ms = _HEADER.unpack_from(value)
    return StoredItem(_KEY.unpack(key)[1], flags, expiry_ms, added_ms, bytes(value[_HEADER_SIZE:]))


def _position(cursor: Any, positioned: bool, end_key: bytes) -> int:
    """The item id under ``cursor``, or a sentinel past every id once it is past ``end_key``."""
    if not positioned:
        return _MAX_ID
    key = bytes(cursor.key())
    return _MAX_ID if key >= end_key else int(_KEY.unpack(key)[1])


def _queue_records(txn: Any, items_db: Any, queues_db: Any, meta_db: Any) -> list[QueueRecord]:
    """Every registered queue with its head, tail and stored counters (no item scan)."""
    records: list[QueueRecord] = []
    for raw_name, raw_record in txn.cursor(db=queues_db):
        qid, created = _QUEUE_RECORD.unpack(raw_record)
        head, tail = _id_range(txn, items_db, qid)
        counters = txn.get(_COUNTER_PREFIX + _U32.pack(qid), db=meta_db)
        items, size = _COUNTERS.unpack(counters) if counters else (0, 0)
        name = bytes(raw_name).decode("latin-1")
        records.append(QueueRecord(name, qid, created, head, tail, items, size))
    return records


def _id_range(txn: Any, db: Any, qid: int) -> tuple[int, int]:
    """(head id, tail id) of a queue from its key range: two B-tree seeks, no scan."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(_KEY.pack(qid, 0)) or _U32.unpack_from(cursor.key())[0] != qid:
        return 0, 0
    head = _KEY.unpack(cursor.key())[1]
    if cursor.set_range(_U32.pack(qid + 1)):
        cursor.prev()  # the last key below the next queue's range is this queue's tail
    else:
        cursor.last()  # nothing after this queue: its tail is the last key
    tail = _KEY.unpack(cursor.key())[1] + 1
    return head, tail


def _delete_range(txn: Any, db: Any, qid: int, from_id: int, below_id: int) -> tuple[int, int]:
    """Delete a queue's items with from_id <= id < below_id; returns (count, payload bytes)."""
    cursor = txn.cursor(db=db)
    end_key = _KEY.pack(qid, below_id) if below_id < _MAX_ID else _U32.pack(qid + 1)
    count = size = 0
    if not cursor.set_range(_KEY.pack(qid, from_id)):
        return 0, 0
    while True:
        key = cursor.key()
        if not key or key >= end_key:  # unpositioned after deleting the last key
            break
        size += len(cursor.value()) - _HEADER_SIZE
        count += 1
        if not cursor.delete():
            break
    return count, size


def _store_error(err: Exception) -> StoreError:
    text = str(err)
    if "No space left" in text or getattr(err, "errno", None) == errno.ENOSPC:
        return StoreFullError(f"disk full: {text}")
    return StoreError(text)


def now_ms() -> int:
    """Wall-clock unix milliseconds: expiry and ages are stored in this clock."""
    return int(time.time() * 1000)


def inspect_store(path: Path) -> list[QueueRecord]:
    """Queues, counts and bytes of a store, opened read-only.

    Safe while a server runs on the same directory: LMDB readers in other processes see
    the last committed snapshot and never block the writer.
    """
    if not (path / "data.mdb").exists():
        raise StoreError(f"{path}: no kestrelpy store here (data.mdb missing)")
    try:
        env = lmdb.open(str(path), readonly=True, max_dbs=4, lock=True)
    except lmdb.Error as err:
        raise StoreError(f"cannot open store in {path}: {err}") from err
    try:
        items_db = env.open_db(b"items", create=False)
        queues_db = env.open_db(b"queues", create=False)
        meta_db = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            return _queue_records(txn, items_db, queues_db, meta_db)
    except lmdb.Error as err:
        raise StoreError(f"cannot read store in {path}: {err}") from err
    finally:
        env.close()
