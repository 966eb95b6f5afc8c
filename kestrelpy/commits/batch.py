"""One commit's staged writes, already encoded for the store, and who waits for that commit."""

from __future__ import annotations

from collections.abc import Callable

from kestrelpy.commits.gate import CommitListener
from kestrelpy.payload import LARGE_ITEM
from kestrelpy.storage.layout import HEADER_SIZE, MAX_ID, QUEUE_RECORD, key_fields

# A commit failed: the (queue id, item id, payload size) of each put it lost.
RollbackHandler = Callable[[list[tuple[int, int, int]]], None]


class Batch:
    """Writes that will commit in one transaction, and who waits for that commit.

    A plain slotted class: one is made per commit, on the hot path. Filled on the reactor
    thread; once handed to the storage's ``commit`` it is only read until that returns.
    """

    __slots__ = (
        "after",
        "commit_s",
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
        self.puts: dict[bytes, bytes] = {}  # item key -> header + payload
        self.deletes: dict[bytes, int] = {}  # item key -> payload size
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
        self.commit_s = 0.0  # how long the storage's commit took (set by the scheduler)

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

    def write_count(self) -> int:
        """Writes this batch makes: one per put, delete, truncation, queue and record."""
        return (
            len(self.puts)
            + len(self.deletes)
            + len(self.truncations)
            + len(self.dropped_queues)
            + len(self.new_queues)
            + len(self.records)
        )

    def carry_over_from(self, failed: Batch) -> None:
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
            if QUEUE_RECORD.unpack(record)[0] not in dropped_since  # deleted meanwhile
        }
        merged_new.update(self.new_queues)
        self.new_queues = merged_new
        merged_records = dict(failed.records)
        merged_records.update(self.records)
        self.records = merged_records
        if self.next_qid is None:
            self.next_qid = failed.next_qid

    def absorb(self, later: Batch) -> None:
        """Take over the next batch of large puts (to catch up with a backlog)."""
        self.puts.update(later.puts)
        self.large_bytes += later.large_bytes
        self.listeners.extend(later.listeners)
        self.after = max(self.after, later.after)

    def drop_puts(self, prefix: bytes, from_id: int = 0, below_id: int = MAX_ID) -> None:
        """Forget staged puts of one queue (``prefix``) with ids in [from_id, below_id)."""
        for key in [k for k in self.puts if k.startswith(prefix)]:
            if from_id <= key_fields(key)[1] < below_id:
                size = len(self.puts.pop(key)) - HEADER_SIZE
                if size >= LARGE_ITEM:
                    self.large_bytes -= size

    def lost_puts(self) -> list[tuple[int, int, int]]:
        """(queue id, item id, payload size) of every put, for the rollback handler."""
        return [(*key_fields(key), len(value) - HEADER_SIZE) for key, value in self.puts.items()]
