"""One queue's counters: the single tally every per-queue stat and metric reads.

Named as Kestrel's per-queue stats. Sizes count payload bytes only; ages are milliseconds;
totals count since startup.
"""

from __future__ import annotations


class QueueCounters:
    """What a queue holds and has done; the queue and its readers update these, reports read.

    ``items``/``bytes`` count items waiting for a reader, not those open on a connection
    (``open_transactions``/``open_bytes``).
    """

    def __init__(self, items: int = 0, payload_bytes: int = 0) -> None:
        self.items = items  # waiting now
        self.bytes = payload_bytes  # payload of those waiting
        self.total_items = 0  # accepted by put
        self.expired_items = 0  # dropped at the head because they expired
        self.discarded = 0  # dropped to make room (discard_old_when_full)
        self.open_transactions = 0  # open on a connection now
        self.open_bytes = 0  # payload of those open
        self.transactions = 0  # items opened
        self.canceled_transactions = 0  # opened, then given back (abort, disconnect, timeout)
        self.total_flushes = 0
        self.age_ms = 0  # how long the last item handed out had waited
        self.get_hits = 0  # reads that returned an item (counted by the reader)
        self.get_misses = 0  # reads that returned none (counted by the reader)
        self.corrupt_items = 0  # read back from disk, failed their checksum, dropped

    def count_opened(self, size: int) -> None:
        """An item of ``size`` payload bytes is open on a connection now."""
        self.open_transactions += 1
        self.open_bytes += size
        self.transactions += 1

    def count_closed(self, size: int) -> None:
        """An open item is confirmed or given back: it no longer counts as open."""
        self.open_transactions -= 1
        self.open_bytes -= size
