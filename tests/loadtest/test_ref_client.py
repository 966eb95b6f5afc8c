"""The C reference client: built by gcc at run time, run against real servers.

memcache mode against a real kestrelpy (started the way the bench starts it), redis mode
against a real ``redis-server`` (appendfsync always, as the bench's Redis column), and the
bench's ref rows with a Redis column. One-second runs: these check that the client builds,
speaks each protocol and reports, not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lt_harness import ROOT, run_quick_bench

from loadtest._servers import Server, bare_twisted_server, redis_server
from loadtest.bench import BARE_SERVERS, applies, scenarios, start_kestrelpy

RUN_TIMEOUT_S = 90  # gcc, connecting, a 1 s run and exit on a busy 2-core machine


def run_ref_client(server: Server, *extra: str) -> dict[str, Any]:
    """``python -m loadtest.ref_client`` for 1 s over 4 connections; its JSON report."""
    argv = [sys.executable, "-m", "loadtest.ref_client", "--server", server.address]
    argv += ["--connections", "4", "--duration", "1", "--json", *extra]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr + server.log()
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def assert_sane(report: dict[str, Any], protocol: str) -> None:
    """A positive rate, both halves served, every read answered as a hit or a miss."""
    assert report["protocol"] == protocol and report["connections"] == 4
    assert report["ok"] is True and report["errors"] == 0, report["first_error"]
    ops = report["ops"]
    assert ops["total"]["ops_per_s"] > 0
    assert ops["set"]["count"] > 0 and ops["get"]["count"] > 0
    assert ops["total"]["count"] == ops["set"]["count"] + ops["get"]["count"]
    assert report["hits"] + report["misses"] == ops["get"]["count"]
    assert ops["total"]["latency"]["count"] == ops["total"]["count"]


def test_memcache_mode_against_kestrelpy(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kestrelpy"]
    server = start_kestrelpy("always", None, command, tmp_path)
    try:
        report = run_ref_client(server)
    finally:
        server.stop()
    assert_sane(report, "memcache")
    assert report["hits"] > 0  # an item set is an item a get can take


def test_redis_mode_against_redis_server(tmp_path: Path) -> None:
    server = redis_server(tmp_path, persistence="always").start()
    try:
        report = run_ref_client(server, "--protocol", "redis")
    finally:
        server.stop()
    assert_sane(report, "redis")
    assert (tmp_path / "appendonlydir").is_dir()  # it really ran with its AOF on


def test_redis_runs_the_ref_scenarios_only() -> None:
    plan = {s.key: s for s in scenarios(full=False, quick=True)}
    assert {key for key, s in plan.items() if applies(s, "redis-always")} == {"ref10", "ref100"}
    assert all(applies(s, "kestrelpy-always") for s in plan.values())
    assert applies(plan["ref10"], "memcached") and not applies(plan["client"], "memcached")


def test_bench_shows_redis_in_the_ref_rows_and_na_elsewhere(tmp_path: Path) -> None:
    text, results = run_quick_bench(tmp_path, "redis-always", "flood10,ref10", RUN_TIMEOUT_S)
    run = results["redis-always"]
    assert run["ref10"]["error"] == "", run["ref10"]["error"]
    assert run["ref10"]["report"]["protocol"] == "redis"
    assert run["ref10"]["report"]["server_cpu_us_per_op"] > 0
    assert "| scenario | metric | Redis (always) |" in text
    assert "| flood, 10 conns (5+5), 64 B | set+get ops/s | n/a |" in text
    assert "| C ref client, 10 conns (5+5), 64 B set/get (Redis: LPUSH/RPOP) | ops/s | " in text


@pytest.mark.parametrize(
    ("write", "durable"), [("prompt", False), ("twisted", False), ("prompt", True)]
)
def test_bare_twisted_serves_the_ref_load_and_runs_only_the_ref_rows(
    write: str, durable: bool, tmp_path: Path
) -> None:
    log_dir = tmp_path if durable else None
    server = bare_twisted_server(sys.executable, write=write, log_dir=log_dir).start()
    try:
        report = run_ref_client(server)
    finally:
        server.stop()
    assert_sane(report, "memcache")
    assert report["hits"] > 0
    if durable:
        assert (tmp_path / "bare.log").read_bytes()[:1] in (b"+", b"-")  # a record, not zeros
    plan = {s.key: s for s in scenarios(full=False, quick=True)}
    for name in BARE_SERVERS:
        assert {key for key, s in plan.items() if applies(s, name)} == {"ref10", "ref100"}
