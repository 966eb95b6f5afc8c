"""LMDB access: open the environment, commit one batch per write transaction, read back.

With ``shared_queues`` (the router's store), the only code that imports ``lmdb``. The
layout of the environment is described, and encoded, in :mod:`kestrelpy.storage.layout`;
when batches are committed is the business of :mod:`kestrelpy.commits`, which hands
:meth:`LmdbStorage.commit` one batch at a time.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import lmdb

from kestrelpy.config import SyncPolicy
from kestrelpy.errors import (
    CorruptItemError,
    DamagedStoreError,
    PutsRefusedError,
    StoreError,
    StoreFullError,
)
from kestrelpy.storage.layout import (
    COUNTER_PREFIX,
    COUNTERS,
    FORMAT,
    FORMAT_KEY,
    HEADER_SIZE,
    HEADER_V1,
    ITEM_KEY,
    MAX_ID,
    NEXT_QID_KEY,
    QUEUE_RECORD,
    RECORD_PREFIX,
    U32,
    QueueRecord,
    StoredItem,
    decode_item,
    item_key,
    key_fields,
    queue_of_key,
    upgrade_value,
)

__all__ = ["LmdbStorage", "QueueRecord", "StagedWrites", "StoredItem", "inspect_store"]

_INITIAL_MAP_SIZE = 16 * 1024 * 1024
_MAX_MAP_STEP = 1024 * 1024 * 1024  # grow by doubling, but by at most 1 GiB at a time
_MAP_GROWTHS = 16  # a commit that still does not fit after this many growths fails
_MIN_REMOVAL_RESERVE = 1024 * 1024
_REMOVAL_RESERVE_SHARE = 128  # of the data file kept for removals: a full flush's free list
# needs about 1/512 of the file (an 8-byte page number per 4 KiB page) plus its branch pages


# What LMDB raises for a data file that is not a sound store (at open: too short for its
# meta pages, or not an LMDB file); a permission or lock problem is not "damaged".
_DAMAGE = (
    lmdb.InvalidError,
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.VersionMismatchError,
)


def removal_reserve(file_bytes: int) -> int:
    """Bytes at the end of the data file that only removals may use: puts see a map this
    much smaller than the reserved file, so when the disk is full and the map cannot grow,
    a ``get``, ``delete`` or ``flush`` can still commit (their copy-on-write pages and the
    free list need room too)."""
    return max(_MIN_REMOVAL_RESERVE, file_bytes // _REMOVAL_RESERVE_SHARE)


class StagedWrites(Protocol):
    """What one commit writes (a :class:`kestrelpy.commits.batch.Batch`), encoded per
    :mod:`~kestrelpy.storage.layout`; only read here."""

    @property
    def puts(self) -> Mapping[bytes, bytes]: ...  # item key -> header + payload

    @property
    def deletes(self) -> Mapping[bytes, int]: ...  # item key -> payload size

    @property
    def truncations(self) -> Sequence[tuple[int, int, int]]: ...  # queue id, from, below

    @property
    def dropped_queues(self) -> Sequence[tuple[bytes, int]]: ...  # name, queue id

    @property
    def new_queues(self) -> Mapping[bytes, bytes]: ...  # name -> QUEUE_RECORD

    @property
    def records(self) -> Mapping[bytes, bytes | None]: ...  # None deletes the record

    @property
    def next_qid(self) -> int | None: ...

    def is_empty(self) -> bool: ...


P = ParamSpec("P")
T = TypeVar("T")


def _reading(
    method: Callable[Concatenate[LmdbStorage, P], T],
) -> Callable[Concatenate[LmdbStorage, P], T]:
    """A read of the served store: an LMDB error there is a damaged page, raised as
    :class:`DamagedStoreError` (one line naming the file and what to do)."""

    @functools.wraps(method)
    def read(self: LmdbStorage, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except lmdb.Error as err:
            raise _damaged(self._path, err, "serve") from err

    return read


class LmdbStorage:
    """One LMDB environment: a batch per write transaction, reads of committed state.

    ``commit`` runs on one thread at a time (the writer thread, or the reactor thread under
    inline commits) and ``sync`` on the fsync thread; every other method runs on the
    reactor thread. Transactions never outlive their call, and values are copied out
    before it returns.
    """

    def __init__(self, path: Path, *, sync: SyncPolicy = "always") -> None:
        self._path = path
        self._sync = sync
        self._env, self._file_bytes = _open_env(path, sync=(sync == "always"))
        self._env_lock = threading.Lock()  # map resizes vs. reactor-thread read transactions
        self._unsynced = threading.Event()  # committed since the last sync ("periodic")
        try:
            self._refuse_foreign_store()
            self._items_db = self._env.open_db(b"items")
            self._queues_db = self._env.open_db(b"queues")
            self._meta_db = self._env.open_db(b"meta")
            self._upgrade_format()
            self._counters: dict[int, tuple[int, int]] = self._read_counters()
        except lmdb.Error as err:
            self._env.close()
            raise _damaged(path, err, "serve") from err
        except BaseException:
            self._env.close()
            raise

    # ---------------------------------------------------------------------- reads

    @_reading
    def next_queue_id(self) -> int:
        """The first queue id never handed out (ids are never reused)."""
        with self._env.begin() as txn:
            raw = txn.get(NEXT_QID_KEY, db=self._meta_db)
            return int(U32.unpack(raw)[0]) if raw else 1

    @_reading
    def load_queues(self) -> list[QueueRecord]:
        """Every stored queue with its head, tail and counters: O(queues * log(items))."""
        with self._env_lock, self._env.begin() as txn:
            return _queue_records(txn, self._items_db, self._queues_db, self._meta_db)

    @_reading
    def get_record(self, name: bytes) -> bytes | None:
        """A small server record as last committed."""
        with self._env_lock, self._env.begin() as txn:
            value = txn.get(RECORD_PREFIX + name, db=self._meta_db)
            return bytes(value) if value is not None else None

    @_reading
    def read_items(
        self,
        queue_id: int,
        from_id: int,
        end_id: int,
        max_items: int,
        max_bytes: int,
        staged: Sequence[Mapping[bytes, bytes]] = (),
    ) -> list[StoredItem]:
        """Items with ``from_id <= id < end_id`` in id order: the committed key range, with
        the puts in ``staged`` (item key -> value, not committed yet) filled in by id.

        At most ``max_items``, and no more once their payloads reach ``max_bytes`` (at
        least one). Staged puts are looked up by id in the gaps of the committed range:
        the lanes commit in id order but interleave, so a large item may still be staged
        while later small ones are committed.

        A damaged page raises :class:`DamagedStoreError` (the caller answers
        ``SERVER_ERROR``; nothing was read, so the queue is as it was).
        """
        found: list[StoredItem] = []
        budget = max_bytes
        anything_staged = any(staged)
        end_key = ITEM_KEY.pack(queue_id, end_id)
        next_id = from_id
        with self._env_lock, self._env.begin(buffers=True) as txn:
            cursor = txn.cursor(db=self._items_db)
            disk_id = _position(cursor, cursor.set_range(ITEM_KEY.pack(queue_id, from_id)), end_key)
            while next_id < end_id and len(found) < max_items and budget > 0:
                if next_id < min(disk_id, end_id):
                    if not anything_staged:
                        next_id = disk_id  # nothing staged can fill the gap
                        continue
                    key = item_key(queue_id, next_id)
                    value = next((puts[key] for puts in staged if key in puts), None)
                    next_id += 1
                    if value is None:
                        continue
                    item = decode_item(key, memoryview(value))
                else:
                    try:
                        item = decode_item(bytes(cursor.key()), cursor.value())
                    except CorruptItemError:
                        if found:
                            break  # the next read starts with it, and reports it
                        raise
                    next_id = disk_id + 1
                    disk_id = _position(cursor, cursor.next(), end_key)
                found.append(item)
                budget -= len(item.data)
        return found

    def store_bytes(self) -> int:
        """Bytes the store's pages occupy in its data file (for the metrics of the store size)."""
        info = self._env.info()
        stat = self._env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def map_size_bytes(self) -> int:
        """The size of the memory map: the store's data file may grow to it before the
        map itself grows (by doubling; metrics of the store size). Any thread.

        The reserved data file, that is: puts see a map :func:`removal_reserve` smaller."""
        return self._file_bytes

    # --------------------------------------------------------------------- writes

    def commit(self, batch: StagedWrites) -> StoreError | None:
        """Write one batch in one transaction (with fsync under ``sync="always"``).

        Returns why it failed, having written nothing of it; a full map is grown (and its
        disk blocks reserved) and the commit retried. When the map cannot grow (a full
        disk), the batch's removals and metadata are committed alone, in the room kept
        for them (:func:`removal_reserve`), and only its puts are refused
        (:class:`PutsRefusedError`).
        """
        if batch.is_empty():
            return None
        for _attempt in range(_MAP_GROWTHS):
            try:
                with self._env.begin(write=True) as txn:  # commits on exit, aborts on raise
                    counter_updates = self._apply(txn, batch)
            except lmdb.MapFullError:
                try:
                    self._grow_map()
                except OSError as grow_err:
                    return self._commit_in_reserve(
                        batch, f"cannot grow the store: {grow_err.strerror}"
                    )
                continue
            except lmdb.Error as err:
                return _store_error(err)
            self._committed(counter_updates)
            return None
        return self._commit_in_reserve(batch, "store map cannot grow further")

    def _commit_in_reserve(self, batch: StagedWrites, why: str) -> StoreError | None:
        """The map cannot grow: commit all but the puts with the removal reserve opened.

        None when the batch had no puts; :class:`PutsRefusedError` when only its puts were
        refused; a plain error when even the rest did not fit (nothing written).
        """
        rest = _WithoutPuts(batch)
        if rest.is_empty():
            return StoreFullError(why)
        with self._env_lock:
            self._env.set_mapsize(self._file_bytes)  # its disk blocks are reserved already
        try:
            with self._env.begin(write=True) as txn:
                counter_updates = self._apply(txn, rest)
        except lmdb.MapFullError:
            return StoreFullError(f"{why}; no room left even for removals")
        except lmdb.Error as err:
            return _store_error(err)
        finally:
            with self._env_lock:  # LMDB keeps it at least as large as the pages in use
                self._env.set_mapsize(self._file_bytes - removal_reserve(self._file_bytes))
        self._committed(counter_updates)
        return PutsRefusedError(why) if batch.puts else None

    def _committed(self, counter_updates: list[tuple[int, tuple[int, int] | None]]) -> None:
        for qid, counts in counter_updates:
            if counts is None:
                self._counters.pop(qid, None)
            else:
                self._counters[qid] = counts
        if self._sync == "periodic":
            self._unsynced.set()

    def sync(self) -> bool:
        """fsync, when anything was committed since the last sync (fsync thread).

        True when it did fsync, so the caller times real fsyncs only.
        """
        if not self._unsynced.is_set():
            return False
        self._unsynced.clear()
        self._env.sync(True)
        return True

    def close(self) -> None:
        """fsync (unless every commit did) and close the environment."""
        if self._sync != "always":
            self._env.sync(True)
        self._env.close()

    def _refuse_foreign_store(self) -> None:
        """An LMDB directory with items but no queue registry is someone else's (a router's
        shared queues, say): refuse it before creating anything in it."""
        try:
            self._env.open_db(b"items", create=False)
        except lmdb.NotFoundError:
            return  # a new store, or one without items yet
        try:
            self._env.open_db(b"queues", create=False)
        except lmdb.NotFoundError:
            raise StoreError(
                f"{self._path}: not a kestrelpy server store (it has items but no queues); "
                "give the server a directory of its own"
            ) from None

    def _upgrade_format(self) -> None:
        """Bring a store written before the per-item checksum (format 1) to the current
        format, in place.

        The items are rewritten in key order, a chunk per transaction (at most
        ``_UPGRADE_CHUNK`` items and ``_UPGRADE_CHUNK_BYTES`` of values: every rewritten
        value takes new pages until its transaction commits, and the map grows as for any
        commit). Until the last chunk commits with the format key, ``FORMAT_KEY`` holds
        ``1:`` and the key up to which values are upgraded, so a crash midway resumes
        where it stopped instead of rewriting (and checksumming twice) what is done. A new
        store just gets the format key; an LMDB directory that holds items but is not a
        server store (a router's shared queues, say) is refused, never rewritten.
        """
        env, items_db, meta_db = self._env, self._items_db, self._meta_db
        with env.begin() as txn:
            current = txn.get(FORMAT_KEY, db=meta_db)
            items = txn.cursor(db=items_db)
            first_key = bytes(items.key()) if items.first() else b""
            has_queues = txn.cursor(db=self._queues_db).first()
        if current == FORMAT:
            return
        if current is not None and not current.startswith(b"1:"):
            raise StoreError(
                f"{self._path}: store format {bytes(current).decode('latin-1')!r} is not one "
                f"this kestrelpy reads (it writes {FORMAT.decode()}); run the kestrelpy that "
                "wrote it (stores are not downgraded)"
            )
        if current is None and not first_key:
            with env.begin(write=True) as txn:
                txn.put(FORMAT_KEY, FORMAT, db=meta_db)
            return
        if current is None and (not has_queues or len(first_key) != ITEM_KEY.size):
            raise StoreError(
                f"{self._path}: not a kestrelpy server store (no queue holds its items)"
            )
        done_to: bytes | None = bytes(current[2:]) if current is not None else b""
        while done_to is not None:
            done_to = self._upgrade_chunk(done_to)

    def _upgrade_chunk(self, done_to: bytes) -> bytes | None:
        """Rewrite the next chunk of format 1 values after ``done_to`` (b"": from the
        first); returns the last key done, or None when the store is upgraded."""
        for _attempt in range(_MAP_GROWTHS):
            try:
                with self._env.begin(write=True) as txn:
                    return _rewrite_chunk(txn, self._items_db, self._meta_db, done_to)
            except DamagedStoreError as err:
                raise _damaged(self._path, err, "serve") from err
            except lmdb.MapFullError:
                try:
                    self._grow_map()
                except OSError as grow_err:
                    raise StoreFullError(
                        f"{self._path}: no room to upgrade the store format: {grow_err.strerror}"
                    ) from grow_err
        raise StoreFullError(f"{self._path}: the store map cannot grow to upgrade its format")

    def _grow_map(self) -> None:
        """Double the map (at most +1 GiB), reserving the disk blocks first.

        Disk blocks are reserved with fallocate first, so a full disk surfaces here, as
        StoreFullError, before any commit depends on the new space.
        """
        with self._env_lock:
            size = self._file_bytes
            new_size = size + min(size, _MAX_MAP_STEP)
            _reserve(self._path, new_size)
            self._env.set_mapsize(new_size - removal_reserve(new_size))
            self._file_bytes = new_size

    def _apply(self, txn: Any, batch: StagedWrites) -> list[tuple[int, tuple[int, int] | None]]:
        """Stage a batch in ``txn``; returns the counter values to remember once committed.

        Counters are cached (``_counters``) so a commit writes them without reading them
        back; only the committing thread uses the cache.
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
            for key, value in puts.items():
                delta = deltas.get(queue_of_key(key)[0])
                if delta is None:
                    delta = deltas[queue_of_key(key)[0]] = [0, 0]
                delta[0] += 1
                delta[1] += len(value) - HEADER_SIZE
            txn.cursor(items).putmulti(puts.items())
        if batch.deletes:
            delete = txn.delete
            for key, size in batch.deletes.items():
                if delete(key, b"", items):
                    delta = deltas.setdefault(queue_of_key(key)[0], [0, 0])
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
            txn.put(COUNTER_PREFIX + U32.pack(qid), COUNTERS.pack(*new), db=meta)
            counter_updates.append((qid, new))
        for qid in dropped_ids:
            counter_updates.append((qid, None))
        for name, record in batch.records.items():
            if record is None:
                txn.delete(RECORD_PREFIX + name, db=meta)
            else:
                txn.put(RECORD_PREFIX + name, record, db=meta)
        return counter_updates

    def _apply_registry(self, txn: Any, batch: StagedWrites) -> set[int]:
        """Queue deletions and creations; returns the ids of queues deleted."""
        queues, meta = self._queues_db, self._meta_db
        for name, qid in batch.dropped_queues:
            txn.delete(name, db=queues)
            txn.delete(COUNTER_PREFIX + U32.pack(qid), db=meta)
            _delete_range(txn, self._items_db, qid, 0, MAX_ID)
        for name, record in batch.new_queues.items():
            txn.put(name, record, db=queues)
        if batch.next_qid is not None:
            txn.put(NEXT_QID_KEY, U32.pack(batch.next_qid), db=meta)
        return {qid for _name, qid in batch.dropped_queues}

    def _read_counters(self) -> dict[int, tuple[int, int]]:
        counters: dict[int, tuple[int, int]] = {}
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._meta_db)
            if cursor.set_range(COUNTER_PREFIX):
                for key, value in cursor:
                    if not key.startswith(COUNTER_PREFIX) or len(key) != 5:
                        break
                    counters[U32.unpack_from(key, 1)[0]] = COUNTERS.unpack(value)
        return counters


def _open_env(path: Path, *, sync: bool) -> tuple[Any, int]:
    """Open the environment, and reserve disk blocks for its map; returns it and the
    bytes reserved (the data file's size).

    A data file shorter than its pages is refused before anything reads them: through the
    map, a page past the end of the file is SIGBUS, not an error.

    Not with writemap: it makes a small commit ~4x cheaper, but a commit then writes
    into pages the periodic fsync may be writing back, and the kernel stalls those
    writes; with 1 MiB items streaming, 64-byte sets waited over half a second. Through
    pwrite the flood rate is the same within noise (loadtest), and fairness holds.
    """
    path.mkdir(parents=True, exist_ok=True)
    data_file = path / "data.mdb"
    file_bytes = data_file.stat().st_size if data_file.exists() else 0
    map_size = max(_INITIAL_MAP_SIZE, file_bytes)
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size - removal_reserve(map_size),
            max_dbs=4,
            sync=sync,
            metasync=sync,
            writemap=False,
            readahead=False,
            map_async=False,
        )
    except _DAMAGE as err:
        raise _damaged(path, err, "serve") from err
    except lmdb.Error as err:
        raise StoreError(f"cannot open store in {path}: {err}") from err
    try:
        if file_bytes:
            _check_length(env, path, file_bytes, "serve")
        _reserve(path, map_size)
        return env, map_size
    except OSError as reserve_err:
        env.close()
        raise StoreFullError(
            f"cannot reserve {map_size} bytes in {path}: {reserve_err.strerror}"
        ) from reserve_err
    except StoreError:
        env.close()
        raise


_UPGRADE_CHUNK = 10_000  # items rewritten per transaction when upgrading the format
_UPGRADE_CHUNK_BYTES = 16 * 1024 * 1024  # and at most this much of their values


def _rewrite_chunk(txn: Any, items_db: Any, meta_db: Any, done_to: bytes) -> bytes | None:
    """One transaction of the format upgrade (see ``LmdbStorage._upgrade_format``)."""
    cursor = txn.cursor(db=items_db)
    positioned = cursor.set_range(done_to) if done_to else cursor.first()
    if positioned and done_to and cursor.key() == done_to:
        positioned = cursor.next()
    rewritten = size = 0
    last = done_to
    while positioned and rewritten < _UPGRADE_CHUNK and size < _UPGRADE_CHUNK_BYTES:
        last = bytes(cursor.key())
        value = cursor.value()
        if len(value) < HEADER_V1.size:
            raise DamagedStoreError(f"item value of {len(value)} bytes under key {last.hex()}")
        cursor.put(last, upgrade_value(value))
        rewritten += 1
        size += len(value)
        positioned = cursor.next()
    if not positioned:
        txn.put(FORMAT_KEY, FORMAT, db=meta_db)
        return None
    txn.put(FORMAT_KEY, b"1:" + last, db=meta_db)
    return last


def _check_length(env: Any, path: Path, file_bytes: int, command: str) -> None:
    """Refuse a data file shorter than the pages its meta page says are in use."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if file_bytes < needed:
        raise _damaged(path, f"truncated: {file_bytes} bytes, its pages need {needed}", command)


def _damaged(path: Path, why: object, command: str) -> DamagedStoreError:
    """One line naming the damaged file and what to do."""
    advice = (
        "restore the store from a copy"
        if command == "dump-store"
        else f"see what is still readable with `kestrelpy dump-store --data-dir {path}`, "
        "or restore the store from a copy"
    )
    return DamagedStoreError(f"{path / 'data.mdb'}: store damaged ({why}); {advice}")


class _WithoutPuts:
    """A batch's removals and metadata, without its puts (a commit in the removal reserve)."""

    def __init__(self, batch: StagedWrites) -> None:
        self.puts: Mapping[bytes, bytes] = {}
        self.deletes = batch.deletes
        self.truncations = batch.truncations
        self.dropped_queues = batch.dropped_queues
        self.new_queues = batch.new_queues
        self.records = batch.records
        self.next_qid = batch.next_qid

    def is_empty(self) -> bool:
        return not (
            self.deletes
            or self.truncations
            or self.dropped_queues
            or self.new_queues
            or self.records
            or self.next_qid is not None
        )


def _reserve(path: Path, size: int) -> None:
    """Allocate disk blocks for the first ``size`` bytes of the data file."""
    fd = os.open(path / "data.mdb", os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _position(cursor: Any, positioned: bool, end_key: bytes) -> int:
    """The item id under ``cursor``, or a sentinel past every id once it is past ``end_key``."""
    if not positioned:
        return MAX_ID
    key = bytes(cursor.key())
    return MAX_ID if key >= end_key else int(key_fields(key)[1])


def _queue_records(txn: Any, items_db: Any, queues_db: Any, meta_db: Any) -> list[QueueRecord]:
    """Every registered queue with its head, tail and stored counters (no item scan)."""
    records: list[QueueRecord] = []
    for raw_name, raw_record in txn.cursor(db=queues_db):
        qid, created = QUEUE_RECORD.unpack(raw_record)
        head, tail = _id_range(txn, items_db, qid)
        counters = txn.get(COUNTER_PREFIX + U32.pack(qid), db=meta_db)
        items, size = COUNTERS.unpack(counters) if counters else (0, 0)
        name = bytes(raw_name).decode("latin-1")
        records.append(QueueRecord(name, qid, created, head, tail, items, size))
    return records


def _id_range(txn: Any, db: Any, qid: int) -> tuple[int, int]:
    """(head id, tail id) of a queue from its key range: two B-tree seeks, no scan."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(ITEM_KEY.pack(qid, 0)) or U32.unpack_from(cursor.key())[0] != qid:
        return 0, 0
    head = ITEM_KEY.unpack(cursor.key())[1]
    if cursor.set_range(U32.pack(qid + 1)):
        cursor.prev()  # the last key below the next queue's range is this queue's tail
    else:
        cursor.last()  # nothing after this queue: its tail is the last key
    tail = ITEM_KEY.unpack(cursor.key())[1] + 1
    return head, tail


def _delete_range(txn: Any, db: Any, qid: int, from_id: int, below_id: int) -> tuple[int, int]:
    """Delete a queue's items with from_id <= id < below_id; returns (count, payload bytes)."""
    cursor = txn.cursor(db=db)
    end_key = ITEM_KEY.pack(qid, below_id) if below_id < MAX_ID else U32.pack(qid + 1)
    count = size = 0
    if not cursor.set_range(ITEM_KEY.pack(qid, from_id)):
        return 0, 0
    while True:
        key = cursor.key()
        if not key or key >= end_key:  # unpositioned after deleting the last key
            break
        size += len(cursor.value()) - HEADER_SIZE
        count += 1
        if not cursor.delete():
            break
    return count, size


def _store_error(err: Exception) -> StoreError:
    text = str(err)
    if "No space left" in text or getattr(err, "errno", None) == errno.ENOSPC:
        return StoreFullError(f"disk full: {text}")
    return StoreError(text)


def inspect_store(path: Path) -> list[QueueRecord]:
    """Queues, counts and bytes of a store, opened read-only.

    Safe while a server runs on the same directory: LMDB readers in other processes see
    the last committed snapshot and never block the writer.
    """
    if not (path / "data.mdb").exists():
        raise StoreError(f"{path}: no kestrelpy store here (data.mdb missing)")
    try:
        env = lmdb.open(str(path), readonly=True, max_dbs=4, lock=True)
    except _DAMAGE as err:
        raise _damaged(path, err, "dump-store") from err
    except lmdb.Error as err:
        raise StoreError(f"cannot open store in {path}: {err}") from err
    try:
        _check_length(env, path, (path / "data.mdb").stat().st_size, "dump-store")
        items_db = env.open_db(b"items", create=False)
        queues_db = env.open_db(b"queues", create=False)
        meta_db = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            return _queue_records(txn, items_db, queues_db, meta_db)
    except lmdb.NotFoundError as missing:  # a sound LMDB file without our databases
        raise StoreError(f"{path}: not a kestrelpy store ({missing})") from missing
    except lmdb.Error as err:
        raise _damaged(path, err, "dump-store") from err
    finally:
        env.close()
