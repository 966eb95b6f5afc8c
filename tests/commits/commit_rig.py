"""A commit scheduler over a plain-Python storage, for the tests of kestrelpy.commits.

:class:`FakeStorage` is a :class:`~kestrelpy.commits.scheduler.Committer` that stores
nothing: it logs each commit (``commit <ticket>``), fails the commits it is told to, and
can hold a commit until the test releases it (to look at the scheduler while the writer
thread is busy). :class:`Rig` logs each listener call (``heard <name> <ok>``) into the
same list, so a test reads one sequence of events in the order they happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from conftest import ThreadClock

from kestrelpy.commits.batch import Batch
from kestrelpy.commits.scheduler import CommitScheduler
from kestrelpy.config import SyncPolicy
from kestrelpy.errors import StoreError
from kestrelpy.payload import LARGE_ITEM
from kestrelpy.storage.layout import HEADER_SIZE, ITEM_KEY

SMALL = 64
BIG = 600 * 1024  # two do not fit one large batch (about 1 MiB), so each rides its own
QID = 7
WAIT_S = 10.0  # deadline for any wait on the writer thread


class FakeStorage:
    """Commits by remembering; ``fail`` queues errors for the next commits."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.committed: list[Batch] = []
        self.failures: list[StoreError] = []
        self.hold: threading.Event | None = None  # when set up, commits wait for it
        self.holding = threading.Event()  # a commit is waiting for ``hold``
        self.syncs = 0
        self.synced = threading.Event()

    def fail(self, text: str = "disk full", times: int = 1) -> None:
        self.failures.extend(StoreError(text) for _ in range(times))

    def commit(self, batch: Batch) -> StoreError | None:
        if self.hold is not None:
            self.holding.set()
            assert self.hold.wait(WAIT_S), "the test never released the commit"
        if self.failures:
            self.log.append(f"failed {batch.ticket}")
            return self.failures.pop(0)
        self.committed.append(batch)
        self.log.append(f"commit {batch.ticket}")
        return None

    def sync(self) -> bool:
        """An fsync happened (as the real storage answers when something was committed)."""
        self.syncs += 1
        self.synced.set()
        return True


class Rig:
    """A scheduler, its fake storage and its clock; helpers stage writes as Store does."""

    def __init__(self, sync: SyncPolicy = "never", sync_interval_ms: int = 50) -> None:
        self.sync = sync
        self.clock = ThreadClock()
        self.storage = FakeStorage()
        self.log = self.storage.log
        self.lost: list[tuple[int, int, int]] = []
        self.scheduler = CommitScheduler(
            self.storage, self.clock, sync=sync, sync_interval_ms=sync_interval_ms
        )
        self.scheduler.on_rollback(self.lost.extend)

    def put(self, item_id: int, size: int = SMALL) -> int:
        """Stage a put in the lane Store.put picks for ``size``; returns its batch's ticket."""
        scheduler = self.scheduler
        batch = scheduler.lanes.pending if size < LARGE_ITEM else scheduler.large_batch(size)
        batch.puts[ITEM_KEY.pack(QID, item_id)] = bytes(HEADER_SIZE + size)
        scheduler.schedule_commit()
        return batch.ticket

    def remove(self, item_id: int) -> int:
        """Stage the removal of a committed item, as Store.delete does; returns the ticket."""
        pending = self.scheduler.lanes.pending
        pending.deletes[ITEM_KEY.pack(QID, item_id)] = SMALL
        if not self.scheduler.commit_scheduled:
            self.scheduler.commit_soon()
        return pending.ticket

    def listen(self, name: object, ticket: int | None = None) -> None:
        """Log ``heard <name> <ok>`` when the batch ``ticket`` ends."""
        self.scheduler.when_committed(lambda ok: self.log.append(f"heard {name} {ok}"), ticket)

    def settle(self) -> None:
        """Run every commit due: move the clock to each scheduled call in turn, and wait
        (with a deadline, never a sleep) for the writer thread's results."""
        clock, lanes = self.clock, self.scheduler.lanes
        for _ in range(1000):
            clock.advance(0)
            clock.run_thread_calls()
            if lanes.in_flight is not None:
                clock.wait_for_thread_call(WAIT_S)
                continue
            calls = clock.getDelayedCalls()
            if not calls:
                return
            clock.advance(max(0.0, min(call.getTime() for call in calls) - clock.seconds()))
        raise AssertionError(f"still busy after 1000 rounds: {clock.getDelayedCalls()}")

    def close(self) -> None:
        if self.storage.hold is not None:
            self.storage.hold.set()
        self.scheduler.close()


@contextmanager
def rigs() -> Iterator[Callable[..., Rig]]:
    """A Rig factory; every rig it built is closed (its threads stopped) on the way out."""
    made: list[Rig] = []

    def make(sync: SyncPolicy = "never", sync_interval_ms: int = 50) -> Rig:
        made.append(Rig(sync, sync_interval_ms))
        return made[-1]

    try:
        yield make
    finally:
        for rig in made:
            rig.close()
