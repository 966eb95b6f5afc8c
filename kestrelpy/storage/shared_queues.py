"""FIFO queues that several processes share through one LMDB directory, with leases.

The store behind the router's ``local`` backend. Any number of processes open the same
directory; LMDB's lock file serialises their write transactions, so each message is taken
by exactly one of them. Every operation is one write transaction, committed with an fsync
(``sync=True``, LMDB's default): a message sent is on disk, and so is a lease or an ack.

Layout (three named databases):

* ``items``: key = queue name (UTF-8) + ``b"\\0"`` + sequence (u64, big-endian), so a
  queue is one ordered key range and key order is FIFO order. Value = the message bytes.
* ``leases``: the same keys, for messages taken and not yet acked or released. Value =
  owner (pid, process start time from ``/proc/<pid>/stat``, lease id) + deadline (unix ms)
  + the message bytes. The start time tells a reused pid from the owner; the lease id
  tells two leases of one process on the same message apart (the first ran out).
* ``meta``: queue name -> next sequence (u64). Sequences are never reused, so a key names
  one message for good: an ack that finds its message back in ``items`` may delete it.

A message moves between ``items`` and ``leases`` under its original key, so a release or a
redelivery puts it back where it was: at the head, ahead of later messages.

Leases end three ways: ``ack`` (deleted), ``release`` (back to ``items``), or, lazily at
the next ``take`` on that queue by anyone, redelivery when the owner process is gone
(killed, crashed, or a zombie not yet reaped) or the deadline has passed. Liveness is read
from ``/proc`` (Linux), so every process sharing a directory must run on one host in one
pid namespace (LMDB needs one host anyway).

Threads and processes: one :class:`SharedQueues` may be used from any thread, one call
at a time per directory (a per-directory lock in each process); objects opened on the same
directory in one process share one LMDB environment, because LMDB forbids opening an
environment twice in a process. No environment crosses ``fork()``: a forked child can
neither use its parent's nor (py-lmdb refuses, while the inherited one exists) open the
directory again; open it after forking, or in processes started afresh (``subprocess``).
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from kestrelpy.errors import StoreError, StoreFullError

__all__ = ["DEFAULT_MAP_SIZE", "SharedQueues", "Taken", "owner_alive", "process_start", "unix_ms"]

DEFAULT_MAP_SIZE = 1024 * 1024 * 1024  # a sparse file: only used pages take disk space
_MAX_MAP_STEP = 1024 * 1024 * 1024  # grow by doubling, but by at most 1 GiB at a time
_ATTEMPTS = 32  # map growths and resizes seen by one call before it gives up
_SERVER_DB = b"queues"  # a database of kestrelpy.storage.lmdb_store: not a router's
_SEQ = struct.Struct(">Q")
_OWNER = struct.Struct(">IQQ")  # pid, process start (clock ticks after boot), lease id
_PROCESS = struct.Struct(">IQ")  # the owner's first two fields: which process
_LEASE = struct.Struct(">IQQQ")  # owner + deadline unix ms: the start of a leases value

T = TypeVar("T")


def unix_ms() -> int:
    """Wall-clock unix ms: lease deadlines are compared across processes, so not monotonic."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Taken:
    """A message leased to this process; ``key`` names it in ``items`` and ``leases``."""

    queue: str
    key: bytes
    owner: bytes  # this lease's owner bytes: ack and release act only while they match
    deadline_ms: int
    data: bytes


class SharedQueues:
    """The queues of one directory, as seen by one process.

    ``lease_ms`` is how long a take holds a message before any taker may take it again;
    ``map_size`` is the initial memory map (it doubles when full, and follows when another
    process grew it); ``clock`` returns unix ms and is the only time this class reads.
    """

    def __init__(
        self,
        path: Path,
        *,
        lease_ms: int,
        map_size: int = DEFAULT_MAP_SIZE,
        clock: Callable[[], int] = unix_ms,
    ) -> None:
        if lease_ms <= 0:
            raise ValueError(f"lease_ms must be positive, got {lease_ms}")
        self._path = path
        self._lease_ms = lease_ms
        self._clock = clock
        self._pid = os.getpid()
        start = process_start(self._pid)
        if start is None:
            raise StoreError(f"cannot read /proc/{self._pid}/stat: leases need Linux /proc")
        self._process = _PROCESS.pack(self._pid, start)
        self._shared = _acquire(path, map_size)
        self._closed = False

    # ---------------------------------------------------------------------- queue ops

    def put(self, queue: str, values: Sequence[bytes]) -> None:
        """Append ``values`` to ``queue`` in order, in one transaction; on disk on return."""
        prefix = self._prefix(queue)
        if not values:
            return

        def write(txn: Any, dbs: _Dbs) -> None:
            raw = txn.get(prefix, db=dbs.meta)
            seq = _SEQ.unpack(raw)[0] if raw is not None else 0
            for value in values:
                txn.put(prefix + _SEQ.pack(seq), value, db=dbs.items)
                seq += 1
            txn.put(prefix, _SEQ.pack(seq), db=dbs.meta)

        self._write(write)

    def take(self, queue: str) -> Taken | None:
        """Lease the first message of ``queue`` to this process, or None when it has none.

        First, in the same transaction, every lease on ``queue`` whose owner is gone or
        whose deadline has passed goes back to ``items`` (so it may be the one taken now).
        O(leases on the queue + log(items)); one /proc read per other owning process.
        """
        prefix = self._prefix(queue)
        now_ms = self._clock()
        owner = _OWNER.pack(*_PROCESS.unpack(self._process), next(_LEASE_IDS))
        deadline_ms = now_ms + self._lease_ms

        def write(txn: Any, dbs: _Dbs) -> tuple[bytes, bytes] | None:
            self._redeliver(txn, dbs, prefix, now_ms)
            with txn.cursor(db=dbs.items) as cursor:
                if not cursor.set_range(prefix):
                    return None
                key = cursor.key()
                if not key.startswith(prefix):
                    return None
                data = cursor.value()
                cursor.delete()
            txn.put(key, owner + _SEQ.pack(deadline_ms) + data, db=dbs.leases)
            return key, data

        found = self._write(write)
        if found is None:
            return None
        return Taken(queue, found[0], owner, deadline_ms, found[1])

    def ack(self, taken: Taken) -> bool:
        """Delete a processed message for good.

        True when this lease still held it, or when it had run out and the message was
        back in ``items`` untaken (deleted there: it was processed). False when another
        taker holds it or has acked it: it is, or was, processed twice (at-least-once).
        """

        self._check_usable()

        def write(txn: Any, dbs: _Dbs) -> bool:
            value = txn.get(taken.key, db=dbs.leases)
            if value is not None and value.startswith(taken.owner):
                return bool(txn.delete(taken.key, db=dbs.leases))
            return bool(txn.delete(taken.key, db=dbs.items))

        return self._write(write)

    def release(self, taken: Sequence[Taken]) -> int:
        """Put messages back at the head of their queues, in one transaction.

        Returns how many were still held by their lease. The others had run out: they
        are back in ``items`` already or with another taker, which is what a release
        wants, so that is not an error.
        """
        self._check_usable()
        if not taken:
            return 0

        def write(txn: Any, dbs: _Dbs) -> int:
            released = 0
            for lease in taken:
                value = txn.get(lease.key, db=dbs.leases)
                if value is not None and value.startswith(lease.owner):
                    txn.put(lease.key, value[_LEASE.size :], db=dbs.items)
                    txn.delete(lease.key, db=dbs.leases)
                    released += 1
            return released

        return self._write(write)

    def depth(self, queue: str) -> tuple[int, int]:
        """(messages ready, messages leased) on ``queue``: O(messages); for tests and tools."""
        prefix = self._prefix(queue)

        def read(txn: Any, dbs: _Dbs) -> tuple[int, int]:
            return _count(txn, dbs.items, prefix), _count(txn, dbs.leases, prefix)

        return self._run(read, write=False)

    def map_size_bytes(self) -> int:
        """This process's memory map of the directory (grows by doubling, or to follow
        another process that grew it)."""
        self._check_usable()
        with self._shared.lock:
            return int(self._shared.env.info()["map_size"])

    def close(self) -> None:
        """Leases still held stay held until they run out or this process ends; callers
        release theirs first. Closes the environment once its last user in this process
        has closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            _release(self._shared)

    # -------------------------------------------------------------------- internals

    def _redeliver(self, txn: Any, dbs: _Dbs, prefix: bytes, now_ms: int) -> None:
        """Move every lease on the queue of ``prefix`` whose owner is gone or whose
        deadline has passed back to ``items``, under its own key."""
        verdicts: dict[bytes, bool] = {self._process: True}  # owner process -> alive
        with txn.cursor(db=dbs.leases) as cursor:
            if not cursor.set_range(prefix):
                return
            while True:
                key = cursor.key()
                if not key or not key.startswith(prefix):
                    return  # past the queue, or unpositioned after deleting the last key
                value = cursor.value()
                pid, start, _lease_id, deadline_ms = _LEASE.unpack_from(value)
                process = value[: _PROCESS.size]
                alive = verdicts.get(process)
                if alive is None:
                    alive = verdicts[process] = owner_alive(pid, start)
                if alive and deadline_ms > now_ms:
                    if not cursor.next():
                        return
                    continue
                txn.put(key, value[_LEASE.size :], db=dbs.items)
                if not cursor.delete():  # moves to the next lease
                    return

    def _prefix(self, queue: str) -> bytes:
        self._check_usable()
        prefix = queue.encode() + b"\0"
        if not queue or "\0" in queue:
            raise ValueError(f"queue name {queue!r}: must be non-empty, without NUL")
        if len(prefix) + _SEQ.size > self._shared.max_key_size:
            raise ValueError(f"queue name {queue[:40]!r}...: longer than the store's keys allow")
        return prefix

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"shared queues in {self._path}: closed")
        if os.getpid() != self._pid:
            raise StoreError(
                f"shared queues in {self._path}: opened in process {self._pid}, used in "
                f"{os.getpid()} after fork(): an LMDB environment cannot cross fork(); open "
                "the queues only after forking, or in a process started afresh"
            )

    def _write(self, work: Callable[[Any, _Dbs], T]) -> T:
        return self._run(work, write=True)

    def _run(self, work: Callable[[Any, _Dbs], T], *, write: bool) -> T:
        dbs = self._shared.dbs
        return self._shared.run(lambda txn: work(txn, dbs), write=write)


@dataclass(frozen=True, slots=True)
class _Dbs:
    items: Any
    leases: Any
    meta: Any


class _SharedEnv:
    """One process's LMDB environment on one directory, shared by every
    :class:`SharedQueues` the process opened on it (LMDB breaks the locks of an
    environment opened twice in one process). ``lock`` serialises its transactions and
    map changes within the process; other processes are serialised by LMDB."""

    def __init__(self, key: str, path: Path, map_size: int) -> None:
        self.key = key
        self.where = f"shared queues in {path}"
        self.lock = threading.Lock()
        self.users = 0
        data_file = path / "data.mdb"
        try:
            path.mkdir(parents=True, exist_ok=True)
            used = data_file.stat().st_size if data_file.exists() else 0
        except OSError as err:
            raise StoreError(f"cannot open {self.where}: {err.strerror}") from err
        try:
            self.env = lmdb.open(
                str(path),
                map_size=max(map_size, used),
                max_dbs=3,
                sync=True,
                metasync=True,
                readahead=False,
            )
        except lmdb.Error as err:
            raise _store_error(err, f"cannot open {self.where}") from err
        try:
            self.env.reader_check()  # free the reader slots of dead processes
            self.max_key_size = int(self.env.max_key_size())
            self.dbs = self.run(self._open_dbs, write=True)
        except BaseException:
            self.env.close()
            raise

    def run(self, work: Callable[[Any], T], *, write: bool) -> T:
        """Run ``work`` in one transaction, committed on return, retried whole after a map
        change: ``work`` must have no effect outside the transaction.

        A map another process grew (MapResizedError on begin) is adopted; a full map
        (MapFullError) is doubled, at most +1 GiB at a time. Both need no transaction
        open in this process, which ``lock`` ensures.
        """
        with self.lock:
            for _attempt in range(_ATTEMPTS):
                try:
                    with self.env.begin(write=write) as txn:  # commits on exit, aborts on raise
                        return work(txn)
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)  # adopt the size the other process set
                except lmdb.MapFullError:
                    size = int(self.env.info()["map_size"])
                    self.env.set_mapsize(size + min(size, _MAX_MAP_STEP))
                except lmdb.Error as err:
                    raise _store_error(err, self.where) from err
        raise StoreFullError(f"{self.where}: map still full after {_ATTEMPTS} growths")

    def _open_dbs(self, txn: Any) -> _Dbs:
        if txn.get(_SERVER_DB) is not None:  # named databases are keys of the main one
            raise StoreError(
                f"cannot open {self.where}: it holds a kestrelpy server's store; "
                "give the router a directory of its own"
            )
        open_db = self.env.open_db
        return _Dbs(
            open_db(b"items", txn=txn), open_db(b"leases", txn=txn), open_db(b"meta", txn=txn)
        )


_OPEN: dict[str, _SharedEnv] = {}  # realpath -> environment, in this process
_OPEN_LOCK = threading.Lock()


def _acquire(path: Path, map_size: int) -> _SharedEnv:
    """This process's environment on ``path``, opened on first use (then ``map_size``
    is its initial map; later openers share whatever map it has by then)."""
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        shared = _OPEN.get(key)
        if shared is None:
            shared = _OPEN[key] = _SharedEnv(key, path, map_size)
        shared.users += 1
        return shared


def _release(shared: _SharedEnv) -> None:
    """One user fewer; the last one closes the environment."""
    with _OPEN_LOCK:
        shared.users -= 1
        if shared.users == 0:
            del _OPEN[shared.key]
            with shared.lock:
                shared.env.close()


_INHERITED: list[_SharedEnv] = []  # a parent's environments, kept alive in a forked child


def _forget_after_fork() -> None:
    """In a forked child: the parent's environments must not be used, nor closed.

    Not even by the garbage collector: closing one closes its lock file, and POSIX then
    drops every lock this process holds on that file, those of an environment the child
    opened on the same directory included. So they are kept alive, unused.
    """
    global _OPEN_LOCK
    _INHERITED.extend(_OPEN.values())
    _OPEN.clear()
    _OPEN_LOCK = threading.Lock()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot: ``/proc/<pid>/stat`` field
    22), or None when no such process is running."""
    stat = _read_stat(pid)
    return None if stat is None or stat[0] in _DEAD_STATES else stat[1]


def owner_alive(pid: int, start: int) -> bool:
    """Whether the process that took a lease still runs: same pid, same start time.

    A zombie counts as gone: it holds nothing, and its parent may not reap it for a while.
    """
    stat = _read_stat(pid)
    if stat is None:
        try:
            os.kill(pid, 0)
        except PermissionError:
            return True  # hidden from /proc (hidepid) yet running: assume it is the owner
        except ProcessLookupError:
            return False
        return False  # a process that appeared after the /proc read: a reused pid
    state, found = stat
    return state not in _DEAD_STATES and found == start


_DEAD_STATES = (b"Z", b"X")


def _read_stat(pid: int) -> tuple[bytes, int] | None:
    """(state, start time) of process ``pid`` from /proc, or None when it has no entry."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name in (...) may hold anything
    return fields[0], int(fields[19])


def _count(txn: Any, db: Any, prefix: bytes) -> int:
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(prefix):
            return 0
        count = 0
        for key in cursor.iternext(keys=True, values=False):
            if not key.startswith(prefix):
                break
            count += 1
        return count


def _store_error(err: Exception, where: str) -> StoreError:
    text = f"{where}: {err}"
    if "No space left" in str(err) or getattr(err, "errno", None) == errno.ENOSPC:
        return StoreFullError(text)
    return StoreError(text)


_LEASE_IDS = itertools.count(1)  # per process: next() is atomic under the GIL
os.register_at_fork(after_in_child=_forget_after_fork)
