"""Smoke runs of every load tool, as users run them: ``python -m loadtest.NAME ... --json``.

Tiny counts against a real memcached (plain cache: rates only, exactly-once skipped) and the
fake Kestrel (queue: exactly-once checked), asserting the stable JSON keys and sane values;
one run against a lossy queue proves a failed check exits 1. Every run has a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from lt_harness import ROOT, start_fake

from loadtest._servers import Server, memcached_server

COMMON_KEYS = {
    "tool",
    "server",
    "server_kind",
    "server_kind_reason",
    "server_version",
    "queue",
    "ok",
    "check",
}
LATENCY_KEYS = {"count", "p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"}
RUN_TIMEOUT_S = 30


@pytest.fixture(scope="session")
def memcached() -> Iterator[Server]:
    """A real memcached (plain cache) for the whole session."""
    server = memcached_server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_kestrel() -> Iterator[Server]:
    """A correct in-memory queue server (see fake_kestrel.py)."""
    server = start_fake()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lossy_kestrel() -> Iterator[Server]:
    """A queue server that acknowledges every 50th set and drops it."""
    server = start_fake("--lose-every", "50")
    yield server
    server.stop()


def run_tool(tool: str, server: Server, *args: str) -> tuple[int, dict[str, Any]]:
    """Run one tool to completion; returns its exit code and its JSON report."""
    argv = [sys.executable, "-m", f"loadtest.{tool}", "--server", server.address]
    argv += ["--json", "--quiet", "--timeout", "5", "--duration", "20", *args]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert done.stdout.strip(), f"{tool} printed no report; stderr: {done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    assert report.keys() >= COMMON_KEYS
    assert report["tool"] == tool
    assert report["server"] == server.address
    return done.returncode, report


def assert_exactly_once(report: dict[str, Any], kind: str, items: int) -> None:
    check = report["check"]
    if kind == "cache":
        assert check["performed"] is False and check["ok"] is None
        return
    assert check["performed"] is True, check
    assert check["ok"] is True, check
    assert check["expected"] == items
    assert check["missing"] == 0 and check["duplicated"] == 0 and check["foreign"] == 0


def check_flood(report: dict[str, Any], kind: str) -> None:
    ops = report["ops"]
    assert ops["set"]["count"] == 200
    assert ops["get"]["count"] >= 200 if kind == "cache" else ops["get"]["count"] > 0
    assert report["hits"] == 200
    for name in ("set", "get"):
        assert ops[name]["latency"].keys() >= LATENCY_KEYS
        assert ops[name]["ops_per_s"] > 0
        lat = ops[name]["latency"]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["p999_ms"] <= lat["max_ms"]
    assert ops["total"]["count"] == ops["set"]["count"] + ops["get"]["count"]
    assert report["params"]["producers"] == 5 and report["params"]["consumers"] == 5
    assert_exactly_once(report, kind, 200)


def check_put_many(report: dict[str, Any], kind: str) -> None:
    assert report["ops"]["set"]["count"] == 200
    assert report["slices"] and report["slices"][-1]["backlog"] == 200
    assert set(report["slice_rates"]) == {"first", "last", "min", "max"}
    assert_exactly_once(report, kind, 200)


def check_many_clients(report: dict[str, Any], kind: str) -> None:
    assert report["sets"] == 200
    assert report["delivery"].keys() >= LATENCY_KEYS
    assert report["delivery"]["count"] > 0
    assert report["params"]["clients"] == 10
    if kind == "queue":
        assert report["delivery"]["count"] == 200  # one first delivery per item
    assert_exactly_once(report, kind, 200)


def check_leaky_reader(report: dict[str, Any], kind: str) -> None:
    actions = report["actions"]
    assert set(actions) == {"open", "empty", "close", "abort", "disconnect"}
    if kind == "queue":
        assert actions["close"] + report["check"]["drained"] == 200
        assert actions["open"] == actions["close"] + actions["abort"] + actions["disconnect"]
    else:
        assert actions["empty"] == 200  # memcached: `get q/open` is just a missing key
    assert_exactly_once(report, kind, 200)


def check_parallel_disconnects(report: dict[str, Any], kind: str) -> None:
    assert report["rounds"] == 3 and report["connections"] == 60
    assert report["timed_out"] == 0
    if kind == "queue":
        assert report["check"]["queued"] == 50
        assert report["check"]["idle_received"] == report["check"]["idle_set"] == 20
    assert_exactly_once(report, kind, 50)


def check_packing(report: dict[str, Any], kind: str) -> None:
    assert report["fill"]["items"] == 2000 and report["drain"]["items"] == 2000
    assert report["fill"]["items_per_s"] > 0 and report["drain"]["items_per_s"] > 0
    for when in ("before", "after_fill", "after_drain"):
        assert report["server_state"][when]["rss"] > 0
        assert report["server_state"][when]["rss_anon"] > 0
    if kind == "queue":
        assert report["server_state"]["after_fill"]["queued"] == 2000
    assert_exactly_once(report, kind, 2000)


def check_fairness(report: dict[str, Any], kind: str) -> None:
    small, big = report["ops"]["small_set"], report["ops"]["big_set"]
    assert small["count"] > 0 and big["count"] > 0
    assert small["latency"].keys() >= LATENCY_KEYS
    assert report["server_memory"]["rss_peak_sampled"] > 0
    assert report["not_stored"] == {"small": 0, "big": 0}


def check_idle_readers(report: dict[str, Any], kind: str) -> None:
    assert report["server_answers_after"] is True
    assert report["server_cpu_percent"] >= 0 and report["rss_during"] > 0
    if kind == "queue":
        assert report["waiters"] == 20 and report["early_replies"] == 0
        assert report["waiters_after_close"] == 0
    else:
        assert report["early_replies"] == 20  # a cache answers the miss at once
    assert report["check"]["ok"] is True


Check = Callable[[dict[str, Any], str], None]
PID = "{pid}"  # replaced by the server's pid
CASES: dict[str, tuple[tuple[str, ...], Check]] = {
    "flood": (("--items", "200", "-P", "5", "-C", "5", "--wait-ms", "100"), check_flood),
    "put_many": (("--items", "200", "--producers", "4", "--drain"), check_put_many),
    "many_clients": (
        ("--clients", "10", "--items", "200", "--rate", "0", "--wait-ms", "200"),
        check_many_clients,
    ),
    "leaky_reader": (("--items", "200", "--readers", "10", "--wait-ms", "100"), check_leaky_reader),
    "parallel_disconnects": (
        ("--clients", "20", "--rounds", "3", "--items", "50", "--wait-ms", "2000"),
        check_parallel_disconnects,
    ),
    "packing": (("--items", "2000", "--server-pid", PID), check_packing),
    "fairness": (
        (
            "--duration",
            "0.5",
            "--small",
            "2",
            "--big",
            "2",
            "--big-size",
            "65536",
            "--server-pid",
            PID,
        ),
        check_fairness,
    ),
    "idle_readers": (
        ("--clients", "20", "--hold", "0.2", "--wait-ms", "20000", "--server-pid", PID),
        check_idle_readers,
    ),
}


@pytest.mark.parametrize("server_name", ["memcached", "fake_kestrel"])
@pytest.mark.parametrize("tool", sorted(CASES))
def test_tool_smoke(tool: str, server_name: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(server_name)
    args, check = CASES[tool]
    args = tuple(str(server.pid) if a == PID else a for a in args)
    code, report = run_tool(tool, server, "--queue", f"smoke_{tool}", *args)
    kind = "cache" if server_name == "memcached" else "queue"
    assert report["server_kind"] == kind
    check(report, kind)
    assert code == 0 and report["ok"] is True


def test_lost_items_fail_the_check(lossy_kestrel: Server) -> None:
    """A server that drops acknowledged items makes flood exit 1 and name the count."""
    code, report = run_tool("flood", lossy_kestrel, "--items", "200", "--wait-ms", "50")
    assert code == 1
    assert report["ok"] is False and report["check"]["ok"] is False
    assert report["check"]["missing"] == 4  # every 50th of 200 sets was dropped
    assert report["check"]["duplicated"] == 0


def test_text_summary_and_bad_server(memcached: Server) -> None:
    """Without --json the summary is a table; an unreachable server exits 2 with one line."""
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.flood", "--server", memcached.address, "--items", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0
    assert "ops/s" in done.stdout and "exactly-once check skipped" in done.stdout
    assert "\r" not in done.stderr  # not a TTY: no progress bar
    dead = subprocess.run(
        [sys.executable, "-m", "loadtest.flood", "--server", "127.0.0.1:1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert dead.returncode == 2
    assert dead.stdout == "" and len(dead.stderr.strip().splitlines()) == 1
