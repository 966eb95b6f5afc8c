"""The staged batches in their two lanes, and which of them commits next.

Large items (``LARGE_ITEM`` bytes and up) travel in a lane of their own: batches of at
most ``_BATCH_LARGE_BYTES`` (or one item), committed in turn with the batch of everything
else, so a 64-byte set waits for at most one large batch (loadtest ``fairness``). On the
large lane's turn, a small batch that is ready rides the large batch's commit rather than
waiting for it and then committing alone: one fsync instead of two before its replies.
A large batch commits only after the batch of small writes that was open when it was last written to
(``Batch.after``), which keeps docs/protocol.md §12: a reply to a write follows the commit
of every removal answered before it.
"""

from __future__ import annotations

from collections import deque

from kestrelpy.commits.batch import Batch
from kestrelpy.storage.layout import MAX_ID

_BATCH_LARGE_BYTES = 1024 * 1024
_LARGE_BACKLOG_BYTES = 32 * 1024 * 1024  # beyond this, merge large batches to catch up


class Lanes:
    """The open small batch, the queue of large batches, and the batch committing now.

    Reactor thread only. Tickets come from one counter, so a ticket names one batch of
    either lane; within a lane, ticket order is commit order.
    """

    def __init__(self) -> None:
        self.pending = Batch(ticket=0)  # small writes, removals, records
        self.large: deque[Batch] = deque()  # batches of large puts, in commit order
        self.in_flight: Batch | None = None  # handed to the writer thread, not yet done
        self._ticket = 0
        self._large_turn = False  # the last batch taken was a small one: a large goes next

    @property
    def has_staged(self) -> bool:
        """Writes wait to be committed (listeners alone do not count)."""
        return not self.pending.is_empty() or bool(self.large)

    # ------------------------------------------------------------------------ staging

    def large_batch(self, size: int) -> Batch:
        """The batch a large put of ``size`` bytes rides: the newest large one while it
        has room, else a new one; it now commits after the open small batch."""
        batch = self.large[-1] if self.large else None
        if batch is None or (batch.large_bytes and batch.large_bytes + size > _BATCH_LARGE_BYTES):
            self._ticket += 1
            batch = Batch(ticket=self._ticket)
            batch.is_large = True
            self.large.append(batch)
        batch.after = self.pending.ticket  # removals answered so far commit first
        batch.large_bytes += size
        return batch

    def cancel_large_put(self, key: bytes, payload_size: int) -> bool:
        """Forget a staged large put; False when no large batch holds ``key``."""
        for batch in self.large:
            if batch.puts.pop(key, None) is not None:
                batch.large_bytes -= payload_size
                return True
        return False

    def drop_puts(self, prefix: bytes, from_id: int = 0, below_id: int = MAX_ID) -> None:
        """Forget staged puts of one queue (``prefix``) with ids in [from_id, below_id)."""
        for batch in (self.pending, *self.large):
            batch.drop_puts(prefix, from_id, below_id)

    def staged_puts(self) -> list[dict[bytes, bytes]]:
        """The puts of every batch not committed yet (reads merge them with the store's)."""
        staged = [self.pending.puts, *(batch.puts for batch in self.large)]
        if self.in_flight is not None:
            staged.append(self.in_flight.puts)
        return staged

    # ------------------------------------------------------------------------ tickets

    def find(self, ticket: int) -> Batch:
        """The batch ``ticket``, staged or committing now (it must be one of them)."""
        if ticket == self.pending.ticket:
            return self.pending
        if self.in_flight is not None and self.in_flight.ticket == ticket:
            return self.in_flight
        return next(batch for batch in self.large if batch.ticket == ticket)

    def live_tickets(self) -> set[int]:
        """Tickets of the large batches not ended yet (nor merged into another), and of the
        batch committing now."""
        live = {batch.ticket for batch in self.large}
        if self.in_flight is not None:
            live.add(self.in_flight.ticket)
        return live

    # ---------------------------------------------------------------- commit order

    def has_work(self) -> bool:
        return bool(self.large) or self._small_ready()

    def next_batch(self) -> Batch | None:
        """Take the batch to commit next, alternating the lanes when both have one."""
        pending = self.pending
        small_ready = self._small_ready()
        large_ready = bool(self.large) and self._may_commit(self.large[0])
        if large_ready and (self._large_turn or not small_ready):
            self._large_turn = False
            large = self._take_large()
            if not small_ready:
                return large
            self._open_next_small()
            pending.absorb(large)  # the small writes share this commit instead of waiting
            return pending
        if small_ready:
            self._large_turn = True
            self._open_next_small()
            return pending
        return None

    def _open_next_small(self) -> None:
        self._ticket += 1
        self.pending = Batch(ticket=self._ticket)

    def take_large_after(self, ticket: int) -> list[Batch]:
        """Take out the large batches that were to commit after the small batch ``ticket``."""
        taken = [batch for batch in self.large if batch.after <= ticket]
        for batch in taken:
            self.large.remove(batch)
        return taken

    def _small_ready(self) -> bool:
        pending = self.pending
        return bool(pending.listeners) or not pending.is_empty()

    def _may_commit(self, large: Batch) -> bool:
        """A large batch goes after the small batch open when it was written to, if that
        one holds anything (a removal answered before the large set arrived, say)."""
        return large.after < self.pending.ticket or not self._small_ready()

    def _take_large(self) -> Batch:
        batch = self.large.popleft()
        backlog = sum(later.large_bytes for later in self.large)
        while backlog > _LARGE_BACKLOG_BYTES and self._may_commit(self.large[0]):
            later = self.large.popleft()  # a backlog: commit more per batch to catch up
            backlog -= later.large_bytes
            batch.absorb(later)
        return batch
