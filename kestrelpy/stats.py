"""Server-wide counters, and the reports every stats reader builds from them.

The counters are kept in one place: :class:`ServerStats` for the server, attributes of
each :class:`~kestrelpy.queues.queue.Queue` for a queue. ``stats``, ``dump_stats`` (and the
metrics and admin API to come) are the functions below over those same counters, never a
second tally. Reports take the time as an argument: the caller reads its clock once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from kestrelpy import __version__

if TYPE_CHECKING:
    from kestrelpy.queues.collection import QueueCollection
    from kestrelpy.queues.queue import Queue

StatPairs = list[tuple[str, object]]


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
        "started_s",
        "total_connections",
    )

    def __init__(self, started_s: float) -> None:
        self.started_s = started_s  # unix seconds, from the server's clock
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


def server_report(stats: ServerStats, collection: QueueCollection, now_ms: int) -> StatPairs:
    """The ``stats`` command: server counters, then every queue's and alias's."""
    return server_pairs(stats, collection, now_ms) + _queues_pairs(collection, now_ms)


def server_pairs(stats: ServerStats, collection: QueueCollection, now_ms: int) -> StatPairs:
    """The server's own counters (``stats`` without the queue lines)."""
    queues = collection.queues()
    now_s = now_ms // 1000
    return [
        ("uptime", int(now_ms / 1000 - stats.started_s)),
        ("time", now_s),
        ("version", f"kestrelpy-{__version__}"),
        ("curr_items", sum(q.items for q in queues)),
        ("total_items", sum(q.total_items for q in queues)),
        ("bytes", sum(q.bytes for q in queues)),
        ("reserved_memory_ratio", "0.000"),
        ("curr_connections", stats.curr_connections),
        ("total_connections", stats.total_connections),
        ("cmd_get", stats.cmd_get),
        ("cmd_set", stats.cmd_set),
        ("cmd_peek", stats.cmd_peek),
        ("get_hits", stats.get_hits),
        ("get_misses", stats.get_misses),
        ("bytes_read", stats.bytes_read),
        ("bytes_written", stats.bytes_written),
        ("queue_creates", stats.queue_creates),
        ("queue_deletes", stats.queue_deletes),
        ("queue_expires", stats.queue_expires),
    ]


def _queues_pairs(collection: QueueCollection, now_ms: int) -> StatPairs:
    pieces = queue_pairs_in_pieces(collection, now_ms, max(1, len(collection)))
    return [pair for piece in pieces for pair in piece]


def queue_pairs_in_pieces(
    collection: QueueCollection, now_ms: int, queues_per_piece: int
) -> Iterator[StatPairs]:
    """The queue lines of ``stats``, ``queues_per_piece`` queues at a time, then the
    aliases' lines if there are aliases.

    The pieces may be read across reactor turns while clients change the queues: each
    queue's lines are read when its piece is built, and a queue deleted before then is
    left out.
    """
    names = collection.names()  # names, not queues: a paused report pins no queue
    for start in range(0, len(names), queues_per_piece):
        piece: StatPairs = []
        for name in names[start : start + queues_per_piece]:
            queue = collection.get(name)
            if queue is None:
                continue  # deleted since the report began
            prefix = f"queue_{name}_"
            piece.extend(
                (prefix + key, value) for key, value in queue_report(collection, queue, now_ms)
            )
        yield piece
    aliases: StatPairs = []
    for alias in sorted(collection.aliases):
        prefix = f"queue_{alias}_"
        aliases.append((prefix + "put_items", collection.alias_put_items.get(alias, 0)))
        aliases.append((prefix + "put_bytes", collection.alias_put_bytes.get(alias, 0)))
        aliases.append((prefix + "children", ",".join(collection.aliases[alias])))
    if aliases:
        yield aliases


def queue_report(collection: QueueCollection, queue: Queue, now_ms: int) -> StatPairs:
    """One queue's counters, in Kestrel's order and names (``stats``, ``dump_stats``)."""
    oldest = queue.oldest_age_ms(now_ms)
    pairs: StatPairs = [
        ("items", queue.items),
        ("bytes", queue.bytes),
        ("total_items", queue.total_items),
        ("logsize", queue.bytes + queue.open_bytes),
        ("expired_items", queue.expired_items),
        ("mem_items", queue.mem_items),
        ("mem_bytes", queue.mem_bytes),
        ("age", queue.age_ms if queue.items else 0),
        ("discarded", queue.discarded),
        ("waiters", queue.waiters),
        ("open_transactions", queue.open_transactions),
        ("transactions", queue.transactions),
        ("canceled_transactions", queue.canceled_transactions),
        ("total_flushes", queue.total_flushes),
        ("journal_rewrites", 0),
        ("journal_rotations", 0),
        ("create_time", queue.create_time),
        ("age_msec", oldest),
        ("oldest_item_age_ms", oldest),
    ]
    children = collection.children_of(queue.name)
    if children:
        pairs.append(("children", ",".join(children)))
    return pairs


def dump_stats_lines(collection: QueueCollection, name: str, now_ms: int) -> list[str]:
    """The body of one ``dump_stats`` block: ``key=value`` lines of the queue's report."""
    queue = collection.get(name)
    if queue is None:
        return [""]  # Kestrel's block for an unknown queue holds one blank line
    return [f"{key}={value}" for key, value in queue_report(collection, queue, now_ms)]
