"""Prometheus metrics: the server's counters, read at scrape time and rendered as text.

Nothing here counts. :class:`ServerCollector` reads, when Prometheus scrapes, the tallies
that ``stats`` reads too: :class:`~kestrelpy.stats.ServerStats`, each queue's
:class:`~kestrelpy.queues.counters.QueueCounters`, the store's size and its
:class:`~kestrelpy.commits.stats.CommitStats`. So the hot path does no per-request metrics
work, and ``/metrics`` can never disagree with ``stats``.

A scrape runs on the reactor thread (the HTTP resource calls :meth:`MetricsExporter.render`)
and costs O(queues): the per-queue series are written as text directly (a few ms per 1,000
queues), during which the memcache connections wait. Above ``metrics_queue_series_limit``
queues the per-queue series are left out (the server-wide ones stay), which bounds both
the scrape and the number of series a busy server pushes into Prometheus.

Names follow Prometheus' conventions: the ``kestrelpy_`` prefix, counters ending in
``_total``, time in seconds and sizes in bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from kestrelpy import __version__
from kestrelpy.clock import now_ms
from kestrelpy.commits.stats import HistogramSnapshot
from kestrelpy.config import STATUSES

if TYPE_CHECKING:  # service.py builds the exporter: importing it here would be a cycle
    from kestrelpy.queues.queue import Queue
    from kestrelpy.service import ServerContext
    from kestrelpy.store import Store

__all__ = ["CONTENT_TYPE", "MetricsExporter", "ServerCollector"]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class MetricsExporter:
    """The ``/metrics`` body of one server: its own registry holding one collector.

    Its own registry, not prometheus-client's global one, so several servers in one
    process (tests) never mix their series, and no process or platform collectors run.
    """

    def __init__(self, ctx: ServerContext, store: Store) -> None:
        self._registry = CollectorRegistry()
        self._collector = ServerCollector(ctx, store)
        self._registry.register(self._collector)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``), collected now. Reactor thread."""
        body = prometheus_client.generate_latest(self._registry)
        queues, now, per_queue = self._collector.last_scrape
        if per_queue and queues:
            body += queue_series_text(queues, now).encode("utf-8")
        return body


class ServerCollector(Collector):
    """Yields every kestrelpy series from the live counters, on each collect.

    Reactor thread only: the counters it reads are the reactor thread's (the commit
    histograms lock for themselves).
    """

    def __init__(self, ctx: ServerContext, store: Store) -> None:
        self._ctx = ctx
        self._store = store
        # What the last collect saw: the queues, the time, and whether per-queue series go
        # out (MetricsExporter.render writes those itself, from the same reading).
        self.last_scrape: tuple[Sequence[Queue], int, bool] = ((), 0, False)

    def collect(self) -> Iterator[Metric]:
        ctx = self._ctx
        now = now_ms(ctx.clock)  # one reading: every age in this scrape is against it
        queues = ctx.collection.queues()
        limit = ctx.settings.metrics_queue_series_limit  # read per scrape: follows a reload
        yield from _server_families(ctx, queues)
        yield from _store_families(self._store)
        dropped = len(queues) if len(queues) > limit else 0
        yield _gauge(
            "kestrelpy_queue_series_dropped",
            "Queues whose per-queue series this scrape left out: there are more than "
            "[server] metrics_queue_series_limit queues (0 when every queue is exposed)",
            dropped,
        )
        self.last_scrape = (queues, now, not dropped)  # render() adds the per-queue text


def _server_families(ctx: ServerContext, queues: Sequence[Queue]) -> Iterator[Metric]:
    stats = ctx.stats
    yield _info(
        "kestrelpy_build",
        "The kestrelpy version serving (always 1)",
        {"version": __version__},
    )
    yield _gauge(
        "kestrelpy_start_time_seconds",
        "When the server started, in unix seconds (stats: time - uptime)",
        stats.started_s,
    )
    status = GaugeMetricFamily(
        "kestrelpy_status",
        "The status in force: 1 for the current one (up, readonly, quiescent, writeavoid)",
        labels=["status"],
    )
    for name in STATUSES:
        status.add_metric([name], 1 if name == ctx.status else 0)
    yield status
    yield _gauge("kestrelpy_connections", "Client connections open now", stats.curr_connections)
    yield _counter(
        "kestrelpy_connections_total", "Client connections accepted", stats.total_connections
    )
    commands = CounterMetricFamily(
        "kestrelpy_commands_total",
        "Commands run, by type (stats cmd_get, cmd_set, cmd_peek)",
        labels=["command"],
    )
    commands.add_metric(["get"], stats.cmd_get)
    commands.add_metric(["set"], stats.cmd_set)
    commands.add_metric(["peek"], stats.cmd_peek)
    yield commands
    yield _hits_and_misses(
        CounterMetricFamily(
            "kestrelpy_gets_total",
            "Reads by result: hit (an item was returned) or miss (none was)",
            labels=["result"],
        ),
        [],
        stats.get_hits,
        stats.get_misses,
    )
    yield _counter("kestrelpy_received_bytes_total", "Bytes read from clients", stats.bytes_read)
    yield _counter("kestrelpy_sent_bytes_total", "Bytes written to clients", stats.bytes_written)
    yield _gauge("kestrelpy_queues", "Queues (fanout children included)", len(queues))
    yield _gauge(
        "kestrelpy_queued_items",
        "Items waiting in all queues (stats curr_items)",
        sum(queue.items for queue in queues),
    )
    yield _gauge(
        "kestrelpy_queued_bytes",
        "Payload bytes of the items waiting in all queues (stats bytes)",
        sum(queue.bytes for queue in queues),
    )
    yield _counter(
        "kestrelpy_queues_created_total", "Queues created since startup", stats.queue_creates
    )
    yield _counter(
        "kestrelpy_queues_deleted_total", "Queues deleted since startup", stats.queue_deletes
    )
    yield _counter(
        "kestrelpy_queues_expired_total",
        "Queues deleted because they outlived max_queue_age",
        stats.queue_expires,
    )


def _store_families(store: Store) -> Iterator[Metric]:
    commits = store.commit_stats
    yield _gauge(
        "kestrelpy_store_size_bytes",
        "Bytes the store's pages occupy in its data file",
        store.store_bytes(),
    )
    yield _gauge(
        "kestrelpy_store_map_size_bytes",
        "The store's map size: its data file may grow to this before the map doubles",
        store.map_size_bytes(),
    )
    yield _histogram(
        "kestrelpy_commit_duration_seconds",
        "Time to commit one batch to the store, once per commit that wrote something; "
        'under sync = "always" it includes the fsync',
        commits.commit_seconds.snapshot(),
    )
    yield _histogram(
        "kestrelpy_commit_batch_writes",
        "Writes (puts, deletes, truncations, queue and record changes) per commit",
        commits.batch_writes.snapshot(),
    )
    yield _histogram(
        "kestrelpy_fsync_duration_seconds",
        'Time of one fsync of the store by the periodic syncer (sync = "periodic"); '
        'empty under sync = "always", where the fsync is part of each commit '
        '(kestrelpy_commit_duration_seconds), and under sync = "never"',
        commits.fsync_seconds.snapshot(),
    )
    yield _counter(
        "kestrelpy_commit_failures_total",
        "Batches refused: commits the store failed (disk full, say), and the large-item "
        "batches that were to follow them; their writers got SERVER_ERROR",
        commits.failures,
    )


# The per-queue families, written as text directly: at 1,000 queues prometheus-client's
# family objects cost about 45 ms a scrape on the reactor; these lines cost a few ms.
# (name, help, type, value of a queue); the gets family, labelled by result, follows.
_QUEUE_FAMILIES: tuple[tuple[str, str, str, Callable[[Queue, int], float]], ...] = (
    ("kestrelpy_queue_items", "Items waiting", "gauge", lambda q, now: q.items),
    (
        "kestrelpy_queue_bytes",
        "Payload bytes of the items waiting",
        "gauge",
        lambda q, now: q.bytes,
    ),
    (
        "kestrelpy_queue_oldest_item_age_seconds",
        "Age of the oldest waiting item (0 when none waits)",
        "gauge",
        lambda q, now: q.oldest_age_ms(now) / 1000.0,
    ),
    (
        "kestrelpy_queue_open_transactions",
        "Items open on a connection (read, not yet closed or aborted)",
        "gauge",
        lambda q, now: q.open_transactions,
    ),
    (
        "kestrelpy_queue_waiting_readers",
        "Readers blocked on the queue (/t=)",
        "gauge",
        lambda q, now: q.waiters,
    ),
    (
        "kestrelpy_queue_sets_total",
        "Items added since startup (stats total_items: sets, fanout and alias copies)",
        "counter",
        lambda q, now: q.total_items,
    ),
)
_QUEUE_TAIL_FAMILIES: tuple[tuple[str, str, str, Callable[[Queue, int], float]], ...] = (
    (
        "kestrelpy_queue_expired_items_total",
        "Items dropped because they expired (stats expired_items)",
        "counter",
        lambda q, now: q.expired_items,
    ),
    (
        "kestrelpy_queue_discarded_items_total",
        "Items dropped to make room (discard_old_when_full; stats discarded)",
        "counter",
        lambda q, now: q.discarded,
    ),
    (
        "kestrelpy_queue_corrupt_items_total",
        "Items read back from disk that failed their checksum and were dropped",
        "counter",
        lambda q, now: q.corrupt_items,
    ),
)
_GETS = "kestrelpy_queue_gets_total"
_GETS_HELP = "Reads since startup by result: hit (an item was returned) or miss (none was)"


def queue_series_text(queues: Sequence[Queue], now: int) -> str:
    """The per-queue series in the text exposition format, labelled ``queue``: O(queues)."""
    labels = [_label_value(queue.name) for queue in queues]
    lines: list[str] = []
    _write_families(lines, _QUEUE_FAMILIES, queues, labels, now)
    _family_head(lines, _GETS, _GETS_HELP, "counter")
    for queue, label in zip(queues, labels, strict=True):
        lines.append(f'{_GETS}{{queue="{label}",result="hit"}} {_number(queue.get_hits)}')
        lines.append(f'{_GETS}{{queue="{label}",result="miss"}} {_number(queue.get_misses)}')
    _write_families(lines, _QUEUE_TAIL_FAMILIES, queues, labels, now)
    lines.append("")
    return "\n".join(lines)


def _write_families(
    lines: list[str],
    families: Sequence[tuple[str, str, str, Callable[[Queue, int], float]]],
    queues: Sequence[Queue],
    labels: Sequence[str],
    now: int,
) -> None:
    """Each family's head, then one sample per queue (label ``queue`` only)."""
    for name, help_text, kind, value in families:
        _family_head(lines, name, help_text, kind)
        lines.extend(
            f'{name}{{queue="{label}"}} {_number(value(queue, now))}'
            for queue, label in zip(queues, labels, strict=True)
        )


def _family_head(lines: list[str], name: str, help_text: str, kind: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _label_value(text: str) -> str:
    """A label value escaped as the text format wants (backslash, quote, newline)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """As prometheus-client writes a sample value (``3.0``, ``0.25``, ``+Inf``)."""
    if type(value) is int:
        return f"{value}.0"
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _hits_and_misses(
    family: CounterMetricFamily, labels: list[str], hits: int, misses: int
) -> CounterMetricFamily:
    family.add_metric([*labels, "hit"], hits)
    family.add_metric([*labels, "miss"], misses)
    return family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _info(name: str, help_text: str, labels: dict[str, str]) -> GaugeMetricFamily:
    """An info metric, ``<name>_info{...} 1``, as a gauge (the text format has no info type)."""
    family = GaugeMetricFamily(name + "_info", help_text, labels=list(labels))
    family.add_metric(list(labels.values()), 1)
    return family


def _histogram(name: str, help_text: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    bounds = [*map(floatToGoString, snapshot.bounds), "+Inf"]
    buckets = list(zip(bounds, snapshot.cumulative, strict=True))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=snapshot.sum)
