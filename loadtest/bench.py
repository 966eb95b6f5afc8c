"""bench: the standard load scenarios against kestrelpy (each sync policy) and memcached.

``make bench`` runs this. For every server it starts a fresh process per scenario (so memory
and store sizes are not inherited from the previous scenario), pins the server to one CPU and
the load tools to another (``--server-cpu``/``--load-cpu``), runs the tool with ``--json``
and writes ``loadtest/RESULTS.md``: one table of scenario x server with throughput ratios to
memcached, plus the machine, the Python version, the git commit and the date. A server that
does not start is reported as "failed to start" and the others still run.

Sizes and counts are documented in loadtest/README.md; ``--full`` packs 1M items instead of
200k, ``--quick`` shrinks everything for a smoke run.

ref10 and ref100 measure with the C reference client (loadtest/ref_client.c, built with gcc
at run time), the yardstick of the performance targets, and also run against Redis
(``redis-always``: LPUSH/RPOP, AOF with ``appendfsync always``; ``redis-none``: no
persistence), the durable peer, and against ``bare-twisted`` (loadtest/bare_twisted.py: set
and get over in-memory deques on Twisted's epoll reactor, the CPython ceiling any server on
Twisted shares) and ``bare-twisted-log`` (the same with every set flushed to a log before its
reply, one ``fdatasync`` per group, at most one in flight: about the most a durable server on
CPython and Twisted reaches); all of them show "n/a" in every other scenario.

The celery scenario (kestrelpy only) runs Celery workers against the column's kestrelpy
and against a Redis it starts itself (loadtest/celery_bench.py), in the same run.

Two scenarios measure the HTTP listener (kestrelpy only): flood10 again with ``/metrics``
scraped every second by a thread of this process (compared with flood10, HTTP off), and
the time of one scrape of a server with 1,000 and then 10,000 queues, measured here too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest._client import connect, parse_address
from loadtest._proc import cpu_model, cpu_seconds, raise_fd_limit
from loadtest._servers import (
    MEMCACHED,
    REDIS_PERSISTENCE,
    REDIS_SERVER,
    Server,
    ServerError,
    bare_twisted_server,
    memcached_server,
    redis_server,
    serve_argv,
)

ROOT = Path(__file__).resolve().parent.parent
BARE_TWISTED = "bare-twisted"  # the CPython-on-Twisted ceiling (loadtest.bare_twisted)
BARE_TWISTED_LOG = "bare-twisted-log"  # the same, durable (--log): `always`'s ceiling
BARE_SERVERS = (BARE_TWISTED, BARE_TWISTED_LOG)
# kestrelpy-always-mypyc, kestrelpy-periodic-mypyc: the compiled build (setup.py) that
# `make compiled` installs into a venv of its own; ref rows only, like bare-twisted
COMPILED = "-mypyc"
COMPILED_PYTHON = ROOT / ".venv-compiled" / "bin" / "python"
COMPILED_BUILT = ROOT / ".venv-compiled" / ".installed"  # written once the compiled install ends
MB = 1024 * 1024

SYNC_CONFIGS = {
    "always": '[server]\nsync = "always"\n',
    "periodic": '[server]\nsync = "periodic"\nsync_interval_ms = 50\n',
}
COMPILED_SERVERS = tuple(f"kestrelpy-{sync}{COMPILED}" for sync in SYNC_CONFIGS)


def built_compiled_servers() -> tuple[str, ...]:
    """The ``-mypyc`` columns when ``make compiled`` has built them (run by default then)."""
    return COMPILED_SERVERS if COMPILED_BUILT.exists() else ()


def _venv_python() -> str:
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def start_kestrelpy(
    sync: str,
    cpu: int | None,
    command: Sequence[str],
    workdir: Path,
    http: bool = False,
    name: str = "",
) -> Server:
    """``kestrelpy serve --port 0`` on a fresh data dir in ``workdir``, pinned to ``cpu``;
    ``http``: with its HTTP listener on a free port (``server.http_url()``); ``name``: how
    errors name it (default ``kestrelpy-<sync>``)."""
    config = workdir / "server.conf"
    config.write_text(SYNC_CONFIGS[sync], encoding="utf-8")
    data_dir = workdir / "data"
    argv = serve_argv(command, data_dir, config, http="127.0.0.1:0" if http else "")
    label = name or f"kestrelpy-{sync}"
    server = Server(argv, name=label, cpu=cpu, cwd=workdir, data_dir=data_dir)
    return server.start()


@dataclass(frozen=True)
class Metric:
    """One row of the results table: where the number is in the tool's JSON, how to show it."""

    label: str
    path: tuple[str, ...]
    unit: str = ""
    scale: float = 1.0
    ratio: bool = False  # throughput: show the ratio to memcached
    baseline: str = ""  # show the ratio to this scenario's value on the same server instead


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    tool: str
    args: tuple[str, ...]
    metrics: tuple[Metric, ...]
    budget_s: float  # the tool's subprocess is killed after this long
    server_pid: bool = False
    data_dir: bool = False
    server_cpu: bool = False  # add the server's CPU time per request (ops.total) to the report
    http: bool = False  # kestrelpy with its HTTP listener on
    scrape_every_s: float = 0.0  # scrape /metrics this often while the tool runs (0: never)
    kestrelpy_only: bool = False  # memcached's cell says "n/a"
    # the peers' columns (Redis over RESP, bare Twisted) run it; elsewhere their cell is "n/a"
    redis_too: bool = False
    # measured in this process instead of by a tool: the server in, the report out
    inline: Callable[[Server], dict[str, Any]] | None = field(default=None, compare=False)


def applies(scenario: Scenario, server: str) -> bool:
    """Whether ``scenario`` runs on the server column ``server`` (else its cell is "n/a").

    Redis speaks RESP, not memcache: it only runs the scenarios whose tool speaks both. The
    bare Twisted server is a yardstick for the same rows and knows only set and get; the
    compiled build is measured against it there.
    """
    if server.startswith("redis-") or server in BARE_SERVERS or server.endswith(COMPILED):
        return scenario.redis_too
    return not (scenario.kestrelpy_only and server == "memcached")


def client_cpu(what: str, loop: str) -> Metric:
    """The client's CPU per operation in one loop of client_bench."""
    return Metric(f"client CPU per {what}", ("loops", loop, "cpu_us_per_op"), "us")


def scenarios(full: bool, quick: bool) -> list[Scenario]:
    """The standard set. Counts are in loadtest/README.md; keep the two in step."""
    run_s = "3" if quick else "10"
    pack = "20000" if quick else "1000000" if full else "200000"
    idle = "1000" if quick else "10000"
    ops = Metric("set+get ops/s", ("ops", "total", "ops_per_s"), "ops/s", ratio=True)
    p99_set = Metric("set p99", ("ops", "set", "latency", "p99_ms"), "ms")
    p99_get = Metric("get p99", ("ops", "get", "latency", "p99_ms"), "ms")
    cpu = Metric("server CPU per request", ("server_cpu_us_per_op",), "us")
    flood = ("--items", "3000000", "--size", "64", "--duration", run_s)
    return [
        Scenario(
            "flood10",
            "flood, 10 conns (5+5), 64 B",
            "flood",
            (*flood, "-P", "5", "-C", "5"),
            (ops, p99_set, p99_get, cpu),
            180,
            server_cpu=True,
        ),
        Scenario(
            "flood10_metrics",
            "flood10 with HTTP on, /metrics scraped every 1 s; (Nx) = vs flood10",
            "flood",
            (*flood, "-P", "5", "-C", "5"),
            (
                Metric("set+get ops/s", ops.path, ops.unit, baseline="flood10"),
                Metric(cpu.label, cpu.path, cpu.unit, baseline="flood10"),
                Metric("slowest scrape", ("scrapes", "max_ms"), "ms"),
            ),
            180,
            server_cpu=True,
            http=True,
            scrape_every_s=1.0,
            kestrelpy_only=True,
        ),
        Scenario(
            "scrape10k",
            "one /metrics scrape, 1,000 then 10,000 queues",
            "",
            (),
            (
                Metric("1,000 queues (per-queue series)", ("at_limit", "scrape_ms"), "ms"),
                Metric("10,000 queues (over the limit)", ("over_limit", "scrape_ms"), "ms"),
            ),
            120,
            http=True,
            kestrelpy_only=True,
            inline=scrape_many_queues,
        ),
        Scenario(
            "flood100",
            "flood, 100 conns (50+50), 64 B",
            "flood",
            (*flood, "-P", "50", "-C", "50"),
            (ops, p99_set, p99_get),
            180,
        ),
        *(ref_scenario(conns, run_s) for conns in (10, 100)),
        Scenario(
            "fairness",
            "fairness, 10 x 64 B sets vs 10 x 1 MiB",
            "fairness",
            ("--duration", run_s),
            (
                Metric("small set p99", ("ops", "small_set", "latency", "p99_ms"), "ms"),
                Metric("small set p99.9", ("ops", "small_set", "latency", "p999_ms"), "ms"),
                Metric("big MiB/s", ("big_mb_per_s",), "MiB/s", ratio=True),
                Metric("server peak RSS", ("server_memory", "rss_peak_sampled"), "MiB", 1 / MB),
            ),
            240,
            server_pid=True,
        ),
        Scenario(
            "packing",
            f"packing, {int(pack):,} x 64 B",
            "packing",
            ("--items", pack, "--duration", "900"),
            (
                Metric("fill items/s", ("fill", "items_per_s"), "items/s", ratio=True),
                Metric("drain items/s", ("drain", "items_per_s"), "items/s", ratio=True),
                Metric("RSS after fill", ("server_state", "after_fill", "rss"), "MiB", 1 / MB),
                Metric(
                    "RssAnon after fill", ("server_state", "after_fill", "rss_anon"), "MiB", 1 / MB
                ),
                Metric("store after fill", ("server_state", "after_fill", "store"), "MiB", 1 / MB),
            ),
            1200,
            server_pid=True,
            data_dir=True,
        ),
        Scenario(
            "many_clients",
            "many_clients, 2000 blocked readers, 2000 items/s",
            "many_clients",
            (
                "--clients",
                "2000",
                "--items",
                "2000" if quick else "10000",
                "--rate",
                "2000",
                "--duration",
                "60",
            ),
            (
                Metric("delivery p50", ("delivery", "p50_ms"), "ms"),
                Metric("delivery p99", ("delivery", "p99_ms"), "ms"),
            ),
            180,
        ),
        Scenario(
            "client",
            "client: kestrelpy.client vs bare pymemcache, 1 conn each, 10 B "
            "(x: ratio to the pymemcache loop, same run)",
            "client_bench",
            ("--rounds", "2", "--ops", "500") if quick else ("--rounds", "6", "--ops", "5000"),
            (
                Metric("pymemcache set", ("loops", "set", "ops_per_s"), "ops/s"),
                Metric("Client.put", ("ratios", "put"), "x"),
                Metric("Client.put_many (batches of 100), items", ("ratios", "put_many"), "x"),
                Metric("pymemcache get close/open", ("loops", "get_open", "ops_per_s"), "ops/s"),
                Metric("Client.reliable", ("ratios", "reliable"), "x"),
                client_cpu("pymemcache set", "set"),
                client_cpu("put", "put"),
                client_cpu("put_many item", "put_many"),
                client_cpu("pymemcache get", "get_open"),
                client_cpu("reliable read", "reliable"),
            ),
            300,
            kestrelpy_only=True,
        ),
        Scenario(
            "celery",
            "celery: tasks/s, kestrelpy vs Redis as Celery's broker, same worker, same run "
            "(x: ratio to Redis)",
            "celery_bench",
            ("--rounds", "1", "--tasks", "300") if quick else ("--rounds", "3", "--tasks", "2000"),
            (
                Metric("Redis tasks/s", ("brokers", "redis", "tasks_per_s"), "tasks/s"),
                Metric("kestrelpy tasks/s", ("brokers", "kestrelpy", "tasks_per_s"), "tasks/s"),
                Metric("kestrelpy vs Redis", ("ratio",), "x"),
            ),
            240,
            server_pid=True,  # Redis is pinned to the kestrelpy server's CPU
            kestrelpy_only=True,
        ),
        Scenario(
            "idle",
            f"{int(idle):,} idle blocking readers, {run_s} s",
            "idle_readers",
            ("--clients", idle, "--hold", run_s, "--wait-ms", "60000"),
            (
                Metric("server CPU", ("server_cpu_percent",), "%"),
                Metric("server RSS", ("rss_during",), "MiB", 1 / MB),
                Metric("RSS per reader", ("rss_per_client",), "B"),
            ),
            240,
            server_pid=True,
        ),
    ]


def ref_scenario(connections: int, run_s: str) -> Scenario:
    """ref10 / ref100: the C reference client (loadtest/ref_client.c), the issue's yardstick;
    memcache set/get, or LPUSH/RPOP on the Redis columns. Server CPU per request, and the
    client's own CPU, show which side was the limit."""
    return Scenario(
        f"ref{connections}",
        f"C ref client, {connections} conns ({connections // 2}+{connections // 2}), 64 B "
        "set/get (Redis: LPUSH/RPOP)",
        "ref_client",
        ("--connections", str(connections), "--duration", run_s),
        (
            Metric("ops/s", ("ops", "total", "ops_per_s"), "ops/s", ratio=True),
            Metric("p99", ("ops", "total", "latency", "p99_ms"), "ms"),
            Metric("server CPU per request", ("server_cpu_us_per_op",), "us"),
            Metric("client CPU", ("client_cpu_percent",), "%"),
        ),
        120,
        server_cpu=True,
        redis_too=True,
    )


@dataclass
class Outcome:
    """One tool run: its JSON report, or why there is none."""

    report: dict[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    not_applicable: bool = False  # a kestrelpy-only scenario on memcached, or not RESP on Redis

    @property
    def check_failed(self) -> bool:
        return self.report is not None and self.report.get("ok") is False


def run_scenario(server: Server, scenario: Scenario, load_cpu: int | None) -> Outcome:
    """Run one scenario against ``server``: its tool as a subprocess (exit 1 still carries
    a report) while /metrics is scraped if asked, or its inline measurement."""
    if scenario.inline is not None:
        began = time.monotonic()
        try:
            report = scenario.inline(server)
        except (OSError, ServerError, ValueError) as err:
            return Outcome(error=str(err).splitlines()[0], seconds=time.monotonic() - began)
        return Outcome(report, seconds=time.monotonic() - began)
    scraper = None
    if scenario.scrape_every_s:
        scraper = Scraper(server.http_url() + "/metrics", scenario.scrape_every_s)
    cpu_before = cpu_seconds(server.pid) if scenario.server_cpu else 0.0
    with scraper or contextlib.nullcontext():
        outcome = _run_tool(server, scenario, load_cpu)
    if outcome.report is not None and scenario.server_cpu:
        requests = outcome.report.get("ops", {}).get("total", {}).get("count") or 0
        used_s = cpu_seconds(server.pid) - cpu_before
        outcome.report["server_cpu_us_per_op"] = used_s * 1e6 / requests if requests else None
    if outcome.report is not None and scraper is not None:
        outcome.report["scrapes"] = scraper.report()
        if scraper.errors:
            outcome.report["ok"] = False  # a failed scrape is a failed run
    return outcome


def _run_tool(server: Server, scenario: Scenario, load_cpu: int | None) -> Outcome:
    argv = [_venv_python(), "-m", f"loadtest.{scenario.tool}", "--server", server.address]
    argv += ["--json", "--quiet", *scenario.args]
    if server.name.startswith("redis-"):
        argv += ["--protocol", "redis"]  # only redis_too scenarios reach a Redis
    if load_cpu is not None:
        argv += ["--cpu", str(load_cpu)]
    if scenario.server_pid:
        argv += ["--server-pid", str(server.pid)]
    if scenario.data_dir and server.data_dir is not None:
        argv += ["--data-dir", str(server.data_dir)]
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=scenario.budget_s, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return Outcome(error=f"timed out after {scenario.budget_s:g} s")
    seconds = time.monotonic() - began
    if done.returncode in (0, 1) and done.stdout.strip():
        return Outcome(json.loads(done.stdout), seconds=seconds)
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return Outcome(error=(lines[-1] if lines else f"exit {done.returncode}"), seconds=seconds)


SCRAPE_TIMEOUT_S = 10.0


class Scraper:
    """GETs a URL every ``every_s`` on a thread while the load runs, as Prometheus would.

    Counts scrapes and failures and keeps each scrape's time; the thread is stopped, and
    joined with a deadline, when the ``with`` block ends.
    """

    def __init__(self, url: str, every_s: float) -> None:
        self.url = url
        self.every_s = every_s
        self.durations_ms: list[float] = []
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(SCRAPE_TIMEOUT_S + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.durations_ms.append(timed_get(self.url)[0])
            except OSError as err:
                self.errors += 1
                self.last_error = str(err)

    def report(self) -> dict[str, Any]:
        done = self.durations_ms
        return {
            "count": len(done),
            "errors": self.errors,
            "last_error": self.last_error,
            "max_ms": max(done, default=None),
            "mean_ms": sum(done) / len(done) if done else None,
        }


def timed_get(url: str) -> tuple[float, bytes]:
    """(milliseconds, body) of one GET: request sent to the last byte of the answer read."""
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
        body: bytes = reply.read()
    return (time.perf_counter() - began) * 1000.0, body


QUEUES_AT_LIMIT = 1_000  # the default [server] metrics_queue_series_limit
QUEUES_OVER_LIMIT = 10_000


def scrape_many_queues(server: Server) -> dict[str, Any]:
    """One scrape at 1,000 queues (every queue's series) and one at 10,000 (over the
    limit: the per-queue series are left out), each timed alone on an idle server."""
    url = server.http_url() + "/metrics"
    create_queues(server.address, 0, QUEUES_AT_LIMIT)
    at_limit_ms, at_limit = timed_get(url)
    create_queues(server.address, QUEUES_AT_LIMIT, QUEUES_OVER_LIMIT - QUEUES_AT_LIMIT)
    over_limit_ms, over_limit = timed_get(url)
    ok = (
        b"kestrelpy_queue_series_dropped 0.0" in at_limit
        and at_limit.count(b"kestrelpy_queue_items{") == QUEUES_AT_LIMIT
        and b"kestrelpy_queues %d.0" % QUEUES_OVER_LIMIT in over_limit
        and b"kestrelpy_queue_items{" not in over_limit
    )
    return {
        "ok": ok,
        "at_limit": {"queues": QUEUES_AT_LIMIT, "scrape_ms": at_limit_ms, "bytes": len(at_limit)},
        "over_limit": {
            "queues": QUEUES_OVER_LIMIT,
            "scrape_ms": over_limit_ms,
            "bytes": len(over_limit),
        },
    }


def create_queues(address: str, first: int, count: int, batch: int = 1000) -> None:
    """Queues ``q<first>`` .. by ``get`` (a miss creates the queue), pipelined ``batch``
    at a time; each reply is ``END``."""
    with connect(parse_address(address), SCRAPE_TIMEOUT_S) as sock:
        for start in range(first, first + count, batch):
            names = range(start, min(start + batch, first + count))
            sock.sendall(b"".join(b"get q%d\r\n" % n for n in names))
            expected = b"END\r\n" * len(names)
            got = bytearray()
            while len(got) < len(expected):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ServerError("the server closed the connection while creating queues")
                got += chunk
            if got != expected:
                raise ServerError(f"unexpected reply to get: {bytes(got[:80])!r}")


def start_server(
    name: str, args: argparse.Namespace, workdir: Path, scenario: Scenario | None = None
) -> Server:
    if name == "memcached":
        # sized for the idle-readers scenario: 10,000 readers and some spare
        return memcached_server(connections=10_000 + 1024, cpu=args.server_cpu).start()
    if name.startswith("redis-"):
        persistence = name.removeprefix("redis-")
        return redis_server(workdir, persistence=persistence, cpu=args.server_cpu).start()
    if name in BARE_SERVERS:
        log_dir = workdir if name == BARE_TWISTED_LOG else None
        return bare_twisted_server(_venv_python(), cpu=args.server_cpu, log_dir=log_dir).start()
    sync = name.removeprefix("kestrelpy-").removesuffix(COMPILED)
    http = scenario is not None and scenario.http
    command = args.kestrelpy_cmd
    if name.endswith(COMPILED):
        if not COMPILED_BUILT.exists():
            raise ServerError("no compiled build in .venv-compiled: `make compiled` builds it")
        command = [str(COMPILED_PYTHON), "-m", "kestrelpy"]  # run in workdir: not the sources
    return start_kestrelpy(sync, args.server_cpu, command, workdir, http=http, name=name)


def run_all(args: argparse.Namespace, plan: list[Scenario]) -> dict[str, dict[str, Outcome]]:
    """Every scenario on every server, each on a fresh server process."""
    results: dict[str, dict[str, Outcome]] = {}
    for name in args.servers:
        results[name] = {}
        for scenario in plan:
            if not applies(scenario, name):
                results[name][scenario.key] = Outcome(not_applicable=True)
                continue
            _log(f"{name}: {scenario.key} ...")
            with tempfile.TemporaryDirectory(prefix=f"kpbench-{name}-") as workdir:
                try:
                    server = start_server(name, args, Path(workdir), scenario)
                except (ServerError, OSError) as err:
                    _log(f"{name}: failed to start: {err}")
                    why = err.summary() if isinstance(err, ServerError) else str(err)
                    for rest in plan:
                        results[name].setdefault(rest.key, Outcome(error=f"failed to start: {why}"))
                    break
                try:
                    outcome = run_scenario(server, scenario, args.load_cpu)
                finally:
                    server.stop()
            results[name][scenario.key] = outcome
            _log(f"{name}: {scenario.key} {_status(outcome)} ({outcome.seconds:.1f} s)")
    return results


def _status(outcome: Outcome) -> str:
    if outcome.error:
        return f"error: {outcome.error}"
    return "check FAILED" if outcome.check_failed else "ok"


def _log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _value(outcome: Outcome | None, metric: Metric) -> float | None:
    if outcome is None or outcome.report is None:
        return None
    node: Any = outcome.report
    for key in metric.path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return float(node) * metric.scale


def _number(value: float) -> str:
    if abs(value) >= 100_000:
        return f"{value / 1000:,.0f}k"
    if abs(value) >= 10_000:
        return f"{value / 1000:.1f}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value else "0"


def cell(outcome: Outcome | None, metric: Metric, reference: float | None) -> str:
    """One table cell: the value with its unit, the ratio to memcached, failure marks."""
    if outcome is None:
        return "not run"
    if outcome.not_applicable:
        return "n/a"
    if outcome.report is None:
        return outcome.error.split(":")[0] if outcome.error.startswith("failed") else "error"
    value = _value(outcome, metric)
    if value is None:
        return "-"
    text = f"{_number(value)} {metric.unit}".strip()
    if (metric.ratio or metric.baseline) and reference:
        text += f" ({value / reference:.2f}x)"
    if outcome.check_failed:
        text += " CHECK FAILED"
    return text


def results_table(
    plan: list[Scenario], servers: list[str], results: dict[str, dict[str, Outcome]]
) -> str:
    header = ["scenario", "metric", *(_column(name) for name in servers)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in plan:
        for i, metric in enumerate(scenario.metrics):
            ref = _value(results.get("memcached", {}).get(scenario.key), metric)
            cells = [
                cell(
                    results[name].get(scenario.key),
                    metric,
                    _value(results[name].get(metric.baseline), metric) if metric.baseline else ref,
                )
                for name in servers
            ]
            title = scenario.title if i == 0 else ""
            lines.append("| " + " | ".join([title, metric.label, *cells]) + " |")
    return "\n".join(lines)


def _column(name: str) -> str:
    if name == BARE_TWISTED:
        return "bare Twisted (ceiling)"
    if name == BARE_TWISTED_LOG:
        return "bare Twisted (durable ceiling)"
    if name.startswith("redis-"):
        persistence = name.removeprefix("redis-")
        return "Redis (no persistence)" if persistence == "none" else f"Redis ({persistence})"
    return f"kestrelpy ({name.removeprefix('kestrelpy-')})" if name != "memcached" else name


def _git(*argv: str) -> str:
    try:
        done = subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine() -> dict[str, str]:
    """What the numbers depend on: CPUs, kernel, Python, memcached, commit, load, date."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain"):
        commit += " (with uncommitted changes)"
    version = subprocess.run(
        [
            _venv_python(),
            "-c",
            "import platform; print(platform.python_implementation(), platform.python_version())",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.strip()
    memcached = ""
    if os.path.exists(MEMCACHED):
        memcached = subprocess.run(
            [MEMCACHED, "-V"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    redis = ""
    if os.path.exists(REDIS_SERVER):
        redis = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split(" sha=")[0]
    return {
        "redis": redis or "redis-server not installed",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": version,
        "memcached": memcached or "not installed",
        "commit": commit,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def write_results(
    path: Path,
    args: argparse.Namespace,
    plan: list[Scenario],
    results: dict[str, dict[str, Outcome]],
    info: dict[str, str],
) -> None:
    pinning = (
        f"servers on CPU {args.server_cpu}, load tools on CPU {args.load_cpu}"
        if args.server_cpu is not None
        else "none (fewer than 2 CPUs)"
    )
    text = f"""# Load test results

Written by `make bench` (`python -m loadtest.bench{" --full" if args.full else ""}\
{" --quick" if args.quick else ""}`); sizes and counts are in `loadtest/README.md`.

- date: {info["date"]}
- machine: {info["nproc"]} CPUs, {info["cpu"]}, {info["kernel"]}; load average at start \
{info["loadavg"]}
- python: {info["python"]}; {info["memcached"]}; {info["redis"]}
- commit: {info["commit"]}
- pinning: {pinning}; every scenario on a fresh server process (kestrelpy: fresh data dir)

{results_table(plan, args.servers, results)}

(Nx) is the ratio to memcached `-t 1` in the same run, for throughput rows (higher is better).
CHECK FAILED marks a run whose exactly-once / lost-item check failed. memcached has no
blocking reads: in many_clients its readers spin on plain gets, so its "delivery" figures
(first sighting of each item) are not comparable. Absolute numbers drift between runs and
machines; compare ratios, as the project's performance reference does. The ref rows use the
C client (loadtest/ref_client.c); on Redis its load is LPUSH/RPOP on one list, "n/a" elsewhere.
{_notes(results)}{_kept_tail(path)}"""
    path.write_text(text, encoding="utf-8")


KEEP_MARKER = "<!-- make bench keeps everything below this line -->"


def _kept_tail(path: Path) -> str:
    """Hand-written history (earlier runs, before/after) survives a new bench run."""
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    start = old.find(KEEP_MARKER)
    return "\n" + old[start:] if start >= 0 else ""


def _notes(results: dict[str, dict[str, Outcome]]) -> str:
    """Why cells say "error" or "failed to start" (one line per distinct failure)."""
    seen: dict[str, list[str]] = {}
    for name, runs in results.items():
        for key, outcome in runs.items():
            if outcome.error:
                seen.setdefault(f"{name}: {outcome.error}", []).append(key)
    if not seen:
        return ""
    lines = [f"- {what} ({', '.join(keys)})" for what, keys in seen.items()]
    return "\nErrors:\n\n" + "\n".join(lines) + "\n"


def _raw_dump(results: dict[str, dict[str, Outcome]], info: dict[str, str]) -> dict[str, Any]:
    return {
        "machine": info,
        "results": {
            name: {
                key: {"report": o.report, "error": o.error, "seconds": round(o.seconds, 1)}
                for key, o in runs.items()
            }
            for name, runs in results.items()
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="packing with 1,000,000 items")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument(
        "--servers",
        type=lambda text: [s for s in text.split(",") if s],
        default=None,
        help="comma list of kestrelpy-always, kestrelpy-periodic, memcached, redis-always, "
        "redis-none, bare-twisted, bare-twisted-log, kestrelpy-always-mypyc, "
        "kestrelpy-periodic-mypyc (default: all but redis-none, the -mypyc ones when `make "
        "compiled` has built them; Redis, the bare-twisted ones and the -mypyc columns run "
        "the ref scenarios only)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: text.split(","),
        default=None,
        help="comma list of flood10, flood10_metrics, scrape10k, flood100, ref10, ref100, "
        "fairness, packing, many_clients, client, celery, idle",
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "loadtest" / "RESULTS.md", help="results file"
    )
    parser.add_argument(
        "--raw-output",
        type=Path,
        default=ROOT / "loadtest" / "out" / "bench.json",
        help="every tool's JSON report (default loadtest/out/bench.json, git-ignored)",
    )
    parser.add_argument(
        "--kestrelpy-cmd",
        type=lambda text: text.split(),
        default=None,
        help="command that runs kestrelpy (default: <venv python> -m kestrelpy)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.kestrelpy_cmd = args.kestrelpy_cmd or [_venv_python(), "-m", "kestrelpy"]
    if args.servers is None:
        args.servers = ["kestrelpy-always", "kestrelpy-periodic"]
        args.servers += ["memcached"] if os.path.exists(MEMCACHED) else []
        args.servers += BARE_SERVERS  # the CPython ceilings, in memory and durable; ref rows only
        args.servers += built_compiled_servers()
        if os.path.exists(REDIS_SERVER):
            args.servers.append("redis-always")  # the durable peer, ref rows only
        else:
            _log(
                f"{REDIS_SERVER} not found: the ref rows run without their Redis "
                "(appendfsync always) column; `make system-deps` or apt-get install redis-server"
            )
    plan = scenarios(args.full, args.quick)
    known_servers = [f"kestrelpy-{sync}" for sync in SYNC_CONFIGS] + ["memcached"]
    known_servers += [f"redis-{persistence}" for persistence in REDIS_PERSISTENCE]
    known_servers += BARE_SERVERS
    known_servers += COMPILED_SERVERS
    unknown = [s for s in args.servers if s not in known_servers]
    unknown += [k for k in args.scenarios or () if k not in {s.key for s in plan}]
    if unknown:
        print(f"bench: unknown server or scenario: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.scenarios:
        # a row compared with another scenario brings that scenario along
        wanted = set(args.scenarios)
        wanted |= {m.baseline for s in plan if s.key in wanted for m in s.metrics if m.baseline}
        plan = [s for s in plan if s.key in wanted]
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    args.server_cpu, args.load_cpu = (0, 1) if two_cpus else (None, None)
    raise_fd_limit(20_000)  # servers inherit it: 10,000 idle readers need the descriptors
    info = machine()
    results = run_all(args, plan)
    write_results(args.output, args, plan, results, info)
    args.raw_output.parent.mkdir(parents=True, exist_ok=True)
    args.raw_output.write_text(json.dumps(_raw_dump(results, info), indent=1))
    _log(f"wrote {args.output} (raw reports in {args.raw_output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
