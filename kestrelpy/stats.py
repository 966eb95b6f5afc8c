"""Server-wide counters: the one place they are kept (stats, dump_stats and metrics read them).

Per-queue counters live on each :class:`~kestrelpy.queues.queue.Queue`.
"""

from __future__ import annotations

import time


class ServerStats:
    """Plain integer attributes: incremented on the reactor thread, read anywhere."""

    __slots__ = (
        "bytes_read",
        "bytes_written",
        "cmd_get",
        "cmd_peek",
        "cmd_set",
        "curr_connections",
        "get_hits",
        "get_misses",
        "queue_creates",
        "queue_deletes",
        "queue_expires",
        "started",
        "total_connections",
    )

    def __init__(self) -> None:
        self.started = time.time()
        self.bytes_read = 0
        self.bytes_written = 0
        self.cmd_get = 0
        self.cmd_peek = 0
        self.cmd_set = 0
        self.curr_connections = 0
        self.total_connections = 0
        self.get_hits = 0
        self.get_misses = 0
        self.queue_creates = 0
        self.queue_deletes = 0
        self.queue_expires = 0

    def uptime_s(self) -> int:
        return int(time.time() - self.started)
