"""Group commit: when each staged batch is committed, on which thread, and who is told.

Under ``sync="always"`` one writer thread commits with fsync while the reactor keeps
filling the next batch; under ``"periodic"`` and ``"never"`` the batch is committed inline
on the reactor thread at the end of the reactor turn (a commit without fsync costs less
than a thread hand-off), and ``"periodic"`` fsyncs from a timer thread. Every batch's
listeners are told, in commit order, whether it reached the store. A failed commit pauses
commits for ``_RETRY_PAUSE_S`` (retrying at once would spin on a full disk); its removals
ride the next batch (unless the storage committed them alone, in the room it keeps for
them: ``PutsRefusedError``), and its puts are reported to the rollback handler.

The storage is anything with the :class:`Committer` methods, so the scheduler runs in
tests on a ``twisted.internet.task.Clock`` over a plain Python object.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from time import perf_counter
from typing import Any, ClassVar, Protocol

from twisted.logger import Logger

from kestrelpy.commits.batch import Batch, RollbackHandler
from kestrelpy.commits.gate import CommitListener
from kestrelpy.commits.lanes import Lanes
from kestrelpy.commits.stats import CommitStats
from kestrelpy.commits.threads import PeriodicSyncer, Writer
from kestrelpy.config import SyncPolicy
from kestrelpy.errors import PutsRefusedError, StoreError

_RETRY_PAUSE_S = 0.5
_LAZY_COMMIT_S = 0.02  # removals alone wait this long for a write to ride along with


class Committer(Protocol):
    """What the scheduler needs from the storage. Calls never overlap: ``commit`` runs on
    the writer thread (``sync="always"``) or the reactor thread, ``sync`` on the fsync
    thread (``"periodic"``)."""

    def commit(self, batch: Batch) -> StoreError | None:
        """Write the batch in one transaction (a no-op when it is empty); the error, if
        any, says why nothing of it was written."""
        ...

    def sync(self) -> bool:
        """Make every commit so far durable; cheap when nothing was committed since.

        True when it did fsync (only those are timed, in ``CommitStats.fsync_seconds``).
        """
        ...


class CommitScheduler:
    """Commits the :class:`~kestrelpy.commits.lanes.Lanes` batch by batch; a
    :class:`~kestrelpy.commits.gate.CommitGate`.

    Reactor thread only, but for the threads of :mod:`kestrelpy.commits.threads`.
    ``commits`` counts the batches committed (failed ones not); ``stats`` times them.
    """

    _log: ClassVar[Logger] = Logger()  # a class attribute in the compiled build too

    def __init__(
        self, committer: Committer, clock: Any, *, sync: SyncPolicy, sync_interval_ms: int
    ) -> None:
        self._committer = committer
        self._clock: Any = clock  # IReactorTime + IReactorThreads
        self.lanes = Lanes()
        # Since take_write_tickets: batches besides the small one its caller must wait for
        # (the large batches it wrote to, and those a reader it handed an item to waits for).
        self._wait_also: list[int] = []
        self.commit_scheduled = False  # a commit turn is due at the end of this reactor turn
        self._backoff = False  # a commit failed: wait _RETRY_PAUSE_S before the next
        self.lazy_commit: Any = None  # IDelayedCall for a removals-only commit, when due
        self._rollback: RollbackHandler | None = None
        self._closed = False
        self.commits = 0
        self.stats = CommitStats()
        self._writer: Writer | None = None
        self._syncer: PeriodicSyncer | None = None
        if sync == "always":
            self._writer = Writer(self._commit, self._writer_done)
        elif sync == "periodic":
            timed_sync = partial(self.stats.timed_sync, committer.sync)
            self._syncer = PeriodicSyncer(timed_sync, max(sync_interval_ms, 1) / 1000.0)

    # ------------------------------------------------------------------- CommitGate

    def take_write_tickets(self) -> tuple[int, ...]:
        """See :meth:`CommitGate.take_write_tickets`: the open small batch, and the large
        batches written to (they commit after it anyway, so waiting for it costs nothing)."""
        lanes = self.lanes
        if not self._wait_also:
            if lanes.in_flight is None and lanes.pending.is_empty():
                return ()
            return (lanes.pending.ticket,)
        live = lanes.live_tickets()
        tickets = [lanes.pending.ticket]
        tickets += [t for t in dict.fromkeys(self._wait_also) if t in live and t not in tickets]
        self._wait_also = []
        return tuple(tickets)

    def wait_also_for(self, tickets: Iterable[int]) -> None:
        """See :meth:`CommitGate.wait_also_for`."""
        self._wait_also.extend(tickets)

    def when_committed(self, listener: CommitListener, ticket: int | None = None) -> None:
        """See :meth:`CommitGate.when_committed`."""
        batch = self.lanes.pending
        if ticket is not None and ticket != batch.ticket:
            batch = self.lanes.find(ticket)
        batch.listeners.append(listener)
        self.schedule_commit()

    def on_rollback(self, handler: RollbackHandler) -> None:
        """Who to tell which (queue id, item id, size) puts were lost when a commit failed."""
        self._rollback = handler

    # ---------------------------------------------------------- staging (the Store)

    def large_batch(self, size: int) -> Batch:
        """The batch a large put rides; its caller's next tickets include it."""
        batch = self.lanes.large_batch(size)
        if batch.ticket not in self._wait_also:
            self._wait_also.append(batch.ticket)
        return batch

    def schedule_commit(self) -> None:
        """Commit what is staged at the end of this reactor turn."""
        if self.commit_scheduled or self._closed:
            return
        self.commit_scheduled = True
        self._clock.callLater(0, self._commit_turn)

    def commit_soon(self) -> None:
        """A removal was staged. Nobody waits for it: let it ride the next write's
        commit, or commit it alone shortly. A crash before then redelivers, never loses."""
        if self.lazy_commit is None and not self.commit_scheduled:
            self.lazy_commit = self._clock.callLater(_LAZY_COMMIT_S, self._lazy_turn)

    # ------------------------------------------------------------------- shutdown

    def commit_now(self) -> None:
        """Commit everything staged, synchronously (shutdown and tests)."""
        if self._writer is not None:
            self._writer.drain()
            self._deliver_writer_results(resubmit=False)
        while (batch := self.lanes.next_batch()) is not None:
            error = self._commit(batch)
            self._finish(batch, error)
            if error is not None:
                break  # not retried here; the large batches that were to follow it failed too

    def close(self) -> None:
        """Commit what is staged and stop the threads; nothing is scheduled after this."""
        if self._closed:
            return
        self.commit_now()
        if self._writer is not None:
            self._writer.stop()
        if self._syncer is not None:
            self._syncer.stop()
        self._closed = True

    # ---------------------------------------------------------------------- internals

    def _lazy_turn(self) -> None:
        self.lazy_commit = None
        self.schedule_commit()

    def _commit_turn(self) -> None:
        """End of a reactor turn: commit what this turn staged (or hand it to the writer)."""
        self.commit_scheduled = False
        if self._backoff:
            return  # after a failed commit, _end_backoff schedules the retry
        lanes = self.lanes
        if self._writer is None:
            # At most one batch of each lane per turn: the small writes first, then up to
            # ~1 MiB of large items; more large batches wait for the next turn.
            for _lane in range(2):
                batch = lanes.next_batch()
                if batch is None:
                    return
                self._finish(batch, self._commit(batch))
                if self._backoff:
                    return
            if lanes.has_work():
                self.schedule_commit()
        elif lanes.in_flight is None:
            self._submit_next()

    def _commit(self, batch: Batch) -> StoreError | None:
        """The storage's commit, timed into ``batch.commit_s``.

        Runs where the commit runs (the writer thread, or the reactor thread inline). The
        batch is not touched by anyone else until its result is handed back, and
        ``_finish`` reads the duration after that hand-off, on the reactor thread.
        """
        began = perf_counter()
        error = self._committer.commit(batch)
        batch.commit_s = perf_counter() - began
        return error

    def _writer_done(self) -> None:
        """Runs in the writer thread: wake the reactor to deliver the results."""
        self._clock.callFromThread(self._deliver_writer_results)

    def _deliver_writer_results(self, resubmit: bool = True) -> None:
        assert self._writer is not None
        lanes = self.lanes
        for batch, error in self._writer.results():
            if batch is lanes.in_flight:
                lanes.in_flight = None
            self._finish(batch, error)
        if resubmit and not self._backoff and lanes.in_flight is None and not self._closed:
            self._submit_next()

    def _submit_next(self) -> None:
        assert self._writer is not None
        batch = self.lanes.next_batch()
        if batch is not None:
            self.lanes.in_flight = batch
            self._writer.submit(batch)

    def _finish(self, batch: Batch, error: StoreError | None) -> None:
        """The storage's commit of ``batch`` returned: tell its listeners (and, when it
        failed, the rollback handler and the large batches that were to follow it).

        A commit that wrote something is timed here, once per batch, on the reactor thread.
        """
        if error is None:
            self.commits += 1
            writes = batch.write_count()
            if writes:
                self.stats.record_commit(batch.commit_s, writes)
        else:
            self.stats.failures += 1
            self._log.error(
                "commit failed, {count} writes refused: {error}",
                count=len(batch.puts),
                error=str(error),
            )
            if not isinstance(error, PutsRefusedError):  # its removals were committed
                self.lanes.pending.carry_over_from(batch)
            if batch.puts and self._rollback is not None:
                self._rollback(batch.lost_puts())
            self._pause()
        for listener in batch.listeners:
            listener(error is None)
        if error is not None and not batch.is_large:
            self._fail_large_after(batch, error)

    def _fail_large_after(self, failed: Batch, error: StoreError) -> None:
        """Large batches that were to commit after a failed small one fail with it.

        Their writers may share a reply batch with writes of the failed one; failing them
        too keeps every reply of a client's batch true (stored, or refused and not stored).
        """
        for batch in self.lanes.take_large_after(failed.ticket):
            self._finish(batch, error)

    def _pause(self) -> None:
        """After a failure, pause commits (retrying at once would spin on a full disk)."""
        if self._closed or self._backoff:
            return
        self._backoff = True
        self._clock.callLater(_RETRY_PAUSE_S, self._end_backoff)

    def _end_backoff(self) -> None:
        self._backoff = False
        self.schedule_commit()
