"""/metrics: the series read the same counters as ``stats``, at scrape time, in Prometheus form.

A real server in the unit harness (LMDB in ``tmp_path``, a test Clock) is driven over
StringTransport connections; its exposition is parsed with prometheus-client's own parser
and checked value by value, and against the ``stats`` command. ``promtool`` lints it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HARNESS_EPOCH_S, Harness, ThreadClock
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from kestrelpy import __version__
from kestrelpy.commits.batch import Batch
from kestrelpy.commits.scheduler import CommitScheduler
from kestrelpy.commits.stats import CommitStats, Histogram
from kestrelpy.errors import StoreError
from kestrelpy.metrics import CONTENT_TYPE, MetricsExporter
from kestrelpy.storage.layout import encode_item, item_key
from kestrelpy.storage.lmdb_store import LmdbStorage
from kestrelpy.store import Store

MakeHarness = Callable[..., Harness]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PROMTOOL_TIMEOUT_S = 60
CONFIG = '[server]\nsync = "never"\nexpiration_timer_frequency = "never"\n'
QUEUE_LIMITS = '[queues."small"]\nmax_items = 1\ndiscard_old_when_full = true\n'


def scrape(h: Harness) -> Samples:
    """Render the harness server's /metrics and parse it back, sample by sample."""
    return parse(MetricsExporter(h.ctx, h.store).render())


def parse(text: bytes) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode("utf-8"))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _labels in samples}


def stat_lines(h: Harness) -> dict[str, str]:
    """The ``stats`` command's reply over a fresh connection, key -> value."""
    reply = h.connect().ask(b"stats\r\n").decode()
    return dict(line.split(" ", 2)[1:] for line in reply.splitlines() if line.startswith("STAT "))


def busy_server(kp: MakeHarness) -> Harness:
    """A server whose queues have every counter the per-queue series read above zero."""
    h = kp(CONFIG + QUEUE_LIMITS)
    writer = h.connect()
    writer.ask(b"set jobs 0 0 5\r\nhello\r\nset jobs 0 0 2\r\nhi\r\nset jobs 0 0 3\r\nabc\r\n")
    writer.ask(b"get jobs\r\nget jobs/open\r\nget idle\r\n")  # a hit, an open item, a miss
    writer.ask(b"set short 0 1 1\r\nx\r\nset small 0 0 1\r\na\r\nset small 0 0 1\r\nb\r\n")
    h.connect().ask(b"get idle/t=60000\r\n")  # a reader blocked on idle
    h.clock.advance(2.5)
    writer.ask(b"get short\r\n")  # expired 1.5 s ago: a miss, and one expired item
    return h


def test_queue_series_read_each_queue_counters(kp: MakeHarness) -> None:
    h = busy_server(kp)
    samples = scrape(h)
    assert value(samples, "kestrelpy_queue_items", queue="jobs") == 1
    assert value(samples, "kestrelpy_queue_bytes", queue="jobs") == 3
    assert value(samples, "kestrelpy_queue_oldest_item_age_seconds", queue="jobs") == 2.5
    assert value(samples, "kestrelpy_queue_oldest_item_age_seconds", queue="idle") == 0
    assert value(samples, "kestrelpy_queue_open_transactions", queue="jobs") == 1
    assert value(samples, "kestrelpy_queue_waiting_readers", queue="idle") == 1
    assert value(samples, "kestrelpy_queue_sets_total", queue="jobs") == 3
    assert value(samples, "kestrelpy_queue_gets_total", queue="jobs", result="hit") == 2
    assert value(samples, "kestrelpy_queue_gets_total", queue="idle", result="miss") == 1
    assert value(samples, "kestrelpy_queue_expired_items_total", queue="short") == 1
    assert value(samples, "kestrelpy_queue_discarded_items_total", queue="small") == 1
    assert value(samples, "kestrelpy_queue_series_dropped") == 0


# metric -> the queue's key in ``stats`` (STAT queue_<name>_<key>)
SAME_AS_STATS = {
    "kestrelpy_queue_items": "items",
    "kestrelpy_queue_bytes": "bytes",
    "kestrelpy_queue_open_transactions": "open_transactions",
    "kestrelpy_queue_waiting_readers": "waiters",
    "kestrelpy_queue_sets_total": "total_items",
    "kestrelpy_queue_expired_items_total": "expired_items",
    "kestrelpy_queue_discarded_items_total": "discarded",
}


def test_every_series_agrees_with_the_stats_command(kp: MakeHarness) -> None:
    h = busy_server(kp)
    samples = scrape(h)
    stats = stat_lines(h)  # the stats command moves none of the counters compared
    queues = ["idle", "jobs", "short", "small"]
    assert value(samples, "kestrelpy_queues") == len(queues)
    for queue in queues:
        for metric, key in SAME_AS_STATS.items():
            assert value(samples, metric, queue=queue) == int(stats[f"queue_{queue}_{key}"])
        age_ms = int(stats[f"queue_{queue}_oldest_item_age_ms"])
        assert value(samples, "kestrelpy_queue_oldest_item_age_seconds", queue=queue) == (
            age_ms / 1000
        )
    assert value(samples, "kestrelpy_queued_items") == int(stats["curr_items"])
    assert value(samples, "kestrelpy_queued_bytes") == int(stats["bytes"])
    for command in ("get", "set", "peek"):
        assert value(samples, "kestrelpy_commands_total", command=command) == int(
            stats[f"cmd_{command}"]
        )
    assert value(samples, "kestrelpy_gets_total", result="hit") == int(stats["get_hits"])
    assert value(samples, "kestrelpy_gets_total", result="miss") == int(stats["get_misses"])
    assert value(samples, "kestrelpy_queues_created_total") == int(stats["queue_creates"])


def test_server_series(kp: MakeHarness) -> None:
    h = kp(CONFIG)
    first = h.connect()
    first.ask(b"set a 0 0 1\r\nx\r\nget a/peek\r\nset b 0 0 1\r\ny\r\ndelete b\r\n")
    h.connect().lose()
    h.ctx.set_status("readonly")
    stats = h.ctx.stats
    samples = scrape(h)
    assert value(samples, "kestrelpy_build_info", version=__version__) == 1
    assert value(samples, "kestrelpy_start_time_seconds") == HARNESS_EPOCH_S
    assert value(samples, "kestrelpy_status", status="readonly") == 1
    assert value(samples, "kestrelpy_status", status="up") == 0
    assert value(samples, "kestrelpy_connections") == 1
    assert value(samples, "kestrelpy_connections_total") == 2
    assert value(samples, "kestrelpy_commands_total", command="peek") == 1
    assert value(samples, "kestrelpy_received_bytes_total") == stats.bytes_read > 0
    assert value(samples, "kestrelpy_sent_bytes_total") == stats.bytes_written > 0
    assert value(samples, "kestrelpy_store_size_bytes") == h.store.store_bytes() > 0
    assert value(samples, "kestrelpy_store_map_size_bytes") >= 16 * 1024 * 1024
    assert value(samples, "kestrelpy_queues_created_total") == 2
    assert value(samples, "kestrelpy_queues_deleted_total") == 1


def test_above_the_series_limit_every_per_queue_series_is_dropped(kp: MakeHarness) -> None:
    h = kp(CONFIG + "metrics_queue_series_limit = 2\n")
    conn = h.connect()
    conn.ask(b"set a 0 0 1\r\nx\r\nset b 0 0 2\r\nxy\r\n")
    at_limit = scrape(h)
    assert value(at_limit, "kestrelpy_queue_items", queue="b") == 1
    conn.ask(b"set c 0 0 3\r\nxyz\r\n")
    over = scrape(h)
    assert not {name for name in names(over) if name.startswith("kestrelpy_queue_")} - {
        "kestrelpy_queue_series_dropped"
    }
    assert value(over, "kestrelpy_queue_series_dropped") == 3
    assert value(over, "kestrelpy_queued_items") == 3  # the server-wide series stay
    assert value(over, "kestrelpy_queued_bytes") == 6
    h.config_path.write_text(CONFIG + "metrics_queue_series_limit = 3\n", encoding="utf-8")
    h.ctx.reload()  # the limit is read at each scrape
    assert value(scrape(h), "kestrelpy_queue_items", queue="c") == 1


def histogram_count(samples: Samples, name: str) -> float:
    return value(samples, name + "_count")


def test_histograms_count_one_observation_per_commit(kp: MakeHarness) -> None:
    h = kp(CONFIG)
    conn = h.connect()
    conn.ask(b"".join(b"set q 0 0 1\r\n%d\r\n" % (i % 10) for i in range(100)))
    samples = scrape(h)
    assert h.store.commits == 1
    assert histogram_count(samples, "kestrelpy_commit_duration_seconds") == 1
    assert histogram_count(samples, "kestrelpy_commit_batch_writes") == 1
    assert value(samples, "kestrelpy_commit_batch_writes_sum") == 101  # 100 puts, 1 queue
    assert value(samples, "kestrelpy_commit_batch_writes_bucket", le="100.0") == 0
    assert value(samples, "kestrelpy_commit_batch_writes_bucket", le="200.0") == 1
    assert value(samples, "kestrelpy_commit_duration_seconds_sum") > 0
    conn.ask(b"get q\r\nget q\r\n")
    h.run_until_idle()  # the removals commit together, a little later
    samples = scrape(h)
    assert histogram_count(samples, "kestrelpy_commit_batch_writes") == h.store.commits == 2
    assert value(samples, "kestrelpy_commit_batch_writes_sum") == 103
    assert histogram_count(samples, "kestrelpy_fsync_duration_seconds") == 0  # sync "never"


def test_the_writer_thread_times_commits_that_include_their_fsync(
    open_store: Callable[..., Store], clock: ThreadClock
) -> None:
    store = open_store(sync="always")
    store.put(store.create_queue("q", 0), 1, 0, 0, 0, b"data")
    clock.advance(0)  # end of the turn: the batch goes to the writer thread
    clock.wait_for_thread_call()
    clock.run_thread_calls()
    stats = store.commit_stats
    assert store.commits == 1
    assert stats.commit_seconds.snapshot().count == 1
    assert stats.batch_writes.snapshot().sum == 2  # the put and the queue's registration
    assert stats.fsync_seconds.snapshot().count == 0  # inside the commit under "always"


def test_only_real_fsyncs_are_timed(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path, sync="periodic")
    stats = CommitStats()
    try:
        stats.timed_sync(storage.sync)
        assert stats.fsync_seconds.snapshot().count == 0  # nothing committed yet
        batch = Batch(1)
        batch.puts[item_key(1, 1)] = encode_item(0, 0, 0, b"x")
        assert storage.commit(batch) is None
        stats.timed_sync(storage.sync)
        stats.timed_sync(storage.sync)  # nothing committed since the last fsync
        snapshot = stats.fsync_seconds.snapshot()
        assert snapshot.count == 1
        assert snapshot.sum > 0
    finally:
        storage.close()


class SyncCounter:
    """A Committer whose every sync fsyncs; says when the periodic thread synced twice."""

    def __init__(self) -> None:
        self.syncs = 0
        self.synced_twice = threading.Event()

    def commit(self, batch: Batch) -> StoreError | None:
        return None

    def sync(self) -> bool:
        self.syncs += 1
        if self.syncs == 2:
            self.synced_twice.set()
        return True


def test_the_periodic_syncer_times_every_fsync() -> None:
    storage = SyncCounter()
    scheduler = CommitScheduler(storage, Clock(), sync="periodic", sync_interval_ms=1)
    try:
        assert storage.synced_twice.wait(10.0), "the fsync thread never ran"
    finally:
        scheduler.close()  # joins the fsync thread: no sync runs after this
    assert scheduler.stats.fsync_seconds.snapshot().count == storage.syncs >= 2


class RefusingStorage:
    """A Committer that refuses every commit, as a full disk would."""

    def commit(self, batch: Batch) -> StoreError | None:
        return StoreError("disk full") if not batch.is_empty() else None

    def sync(self) -> bool:
        return False


def test_a_refused_commit_is_counted_and_not_timed() -> None:
    scheduler = CommitScheduler(RefusingStorage(), Clock(), sync="never", sync_interval_ms=50)
    scheduler.lanes.pending.puts[item_key(1, 1)] = encode_item(0, 0, 0, b"x")
    scheduler.commit_now()
    assert scheduler.stats.failures == 1
    assert scheduler.stats.commit_seconds.snapshot().count == 0


def test_histogram_buckets_are_cumulative_upper_bounds() -> None:
    histogram = Histogram((1, 2))
    for observed in (1.0, 1.5, 3.0, 0.5):
        histogram.observe(observed)
    snapshot = histogram.snapshot()
    assert snapshot.bounds == (1.0, 2.0)
    assert snapshot.cumulative == (2, 3, 4)  # le=1 holds 1 itself; 3 only in +Inf
    assert (snapshot.count, snapshot.sum) == (4, 6.0)


def test_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=")


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> None:
    """Run ``promtool``; a failed test (with its output) unless it exits 0."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found on PATH: install prometheus (make deps)")
    done = subprocess.run(
        [binary, *args],
        input=stdin,
        capture_output=True,
        timeout=PROMTOOL_TIMEOUT_S,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode("utf-8", "replace")


def test_promtool_check_metrics_passes(kp: MakeHarness) -> None:
    h = busy_server(kp)
    h.store.commit_now()
    promtool("check", "metrics", stdin=MetricsExporter(h.ctx, h.store).render())


# ------------------------------------------------------------- contrib/prometheus

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "prometheus"
SERIES_NAME = re.compile(r"\bkestrelpy_[a-z_]+")


def test_shipped_alert_rules_pass_promtool() -> None:
    promtool("check", "rules", "alerts.yml", cwd=CONTRIB)
    promtool("test", "rules", "alerts_test.yml", cwd=CONTRIB)
    promtool("check", "config", "prometheus.yml", cwd=CONTRIB)


def test_shipped_rules_and_dashboard_name_only_series_we_expose(kp: MakeHarness) -> None:
    h = busy_server(kp)
    h.store.commit_now()
    exposed = names(scrape(h))
    dashboard = json.loads((CONTRIB / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for text in [(CONTRIB / "alerts.yml").read_text(encoding="utf-8"), *exprs]:
        assert set(SERIES_NAME.findall(text)) <= exposed, text
    used = set(SERIES_NAME.findall(" ".join(exprs)))
    for shown in ("kestrelpy_queue_items", "kestrelpy_queue_oldest_item_age_seconds"):
        assert shown in used
    assert {"kestrelpy_queue_sets_total", "kestrelpy_queue_gets_total"} <= used
    assert "kestrelpy_commit_duration_seconds_bucket" in used


def test_queue_names_with_quotes_and_backslashes_are_escaped_labels(kp: MakeHarness) -> None:
    h = kp()
    odd = 'we"ird\\q+ch'
    h.collection.put(odd, 0, 0, b"abc", HARNESS_EPOCH_S * 1000)
    h.collection.put("plain", 0, 0, b"x", HARNESS_EPOCH_S * 1000)
    samples = scrape(h)
    assert value(samples, "kestrelpy_queue_items", queue=odd) == 1
    assert value(samples, "kestrelpy_queue_bytes", queue=odd) == 3
    assert value(samples, "kestrelpy_queue_gets_total", queue=odd, result="miss") == 0
    assert value(samples, "kestrelpy_queue_items", queue="plain") == 1
