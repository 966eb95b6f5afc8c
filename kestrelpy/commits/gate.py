"""The contract between a connection and group commit: when a reply to a write may leave."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

# Told once whether the batch it waits for reached the store (True) or failed (False).
CommitListener = Callable[[bool], None]


class CommitGate(Protocol):
    """Which commits a connection's replies wait for, and when those commits end.

    Writes are staged in batches that commit together (group commit); a ticket names one
    batch. Small writes, removals and records ride the one open small batch; large items
    ride batches of their own lane (see :mod:`kestrelpy.commits.lanes`). Every method runs
    on the reactor thread.

    Order of calls, within one reactor turn, by a connection that has just run a request
    that wrote (``STORED`` and the other replies that promise durability):

    1. ``take_write_tickets()``, after every such request and before the reactor turn
       ends. It answers for every write staged since the previous call (by anyone: the
       reactor runs one connection's requests at a time, so these are the caller's).
    2. ``when_committed(listener, ticket)`` for each ticket it returned, still in the
       same reactor turn (a ticket names a batch only while it is staged or committing).
       Hold the write's reply (and every reply after it) until each listener has been
       called; send ``SERVER_ERROR`` instead when one was called with ``False``.
    3. ``wait_also_for(tickets)`` when a blocked reader of this connection whose replies
       are still held (waiting for ``tickets``) is handed an item by another connection's
       write: that writer's next ``take_write_tickets()`` also returns those tickets, so
       its ``STORED`` cannot leave before the reader's commits (else a crash in between
       would lose an item both were told about).

    Guarantees:

    * A listener is called exactly once, on the reactor thread, never from inside
      ``when_committed`` (once the store is closed at shutdown nothing commits any more:
      a listener registered after that is never called, and its reply never sent).
      ``ok`` is True only after the storage's commit of its batch has returned (under
      ``sync = "always"``, fsynced too): its writes are in the store. On False none of
      its puts are (the rollback handler has been told which), and its removals ride the
      next batch.
    * Listeners are called in commit order per lane: in registration order within a
      batch, and batch after batch in ticket order.
    * A reply to a write follows the commit of every removal answered before it
      (docs/protocol.md §12): removals ride the small batch, ``take_write_tickets()``
      always names the open small batch when anything is staged or committing, and a
      large batch commits only after the small batch that was open when it was last
      written to. When that small batch fails, the large batches behind it fail too, so
      every reply of a pipeline is true: stored, or refused and not stored.
    """

    def take_write_tickets(self) -> tuple[int, ...]:
        """The batches to wait for so that every write staged since the last call (and
        every removal before it) has committed; ``()`` when nothing is staged or
        committing (the writes left nothing to store, say an item handed straight to a
        reader)."""
        ...

    def wait_also_for(self, tickets: Iterable[int]) -> None:
        """The next ``take_write_tickets()`` also returns those of ``tickets`` whose
        batches have not ended yet."""
        ...

    def when_committed(self, listener: Callable[[bool], None], ticket: int | None = None) -> None:
        """Call ``listener(ok)`` once the batch ``ticket`` has committed or failed (default:
        the open small batch); ``ticket`` must be staged or committing now."""
        ...
