"""client_bench, end to end: the bench's ``client`` scenario against a real kestrelpy.

Tiny counts (``--quick``: 2 rounds x 500 operations per loop), so this checks that the
scenario runs, its checks pass and its rows reach RESULTS.md, not how fast anything is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lt_harness import ROOT, run_quick_bench

from loadtest._servers import memcached_server
from loadtest.client_bench import LOOPS

RUN_TIMEOUT_S = 120


def test_the_client_scenario_runs_end_to_end(tmp_path: Path) -> None:
    text, results = run_quick_bench(tmp_path, "kestrelpy-periodic", "client", RUN_TIMEOUT_S)
    run = results["kestrelpy-periodic"]["client"]
    assert run["error"] == "", run["error"]
    report = run["report"]
    assert report["tool"] == "client_bench" and report["server_kind"] == "queue"
    assert report["ok"] is True and report["check"]["ok"] is True, report["check"]
    assert report["params"] == {
        "rounds": 2,
        "ops": 500,
        "batch": 100,
        "size": 10,
        "connections_per_client": 1,
    }
    for loop in LOOPS:
        summary = report["loops"][loop]
        assert summary["rounds"] == 2 and len(summary["per_round_ops_per_s"]) == 2
        assert summary["ops_per_s"] > 0 and summary["cpu_us_per_op"] > 0
    assert set(report["goals"]) == {"put", "put_many", "reliable"}
    assert all(report["ratios"][loop] > 0 for loop in report["goals"])

    assert "| client: kestrelpy.client vs bare pymemcache" in text
    assert "| Client.reliable | " in text and "| client CPU per put | " in text


def test_a_plain_cache_is_refused_in_one_line() -> None:
    """memcached has no reliable reads: exit 2 with one line on stderr, no report."""
    server = memcached_server().start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "loadtest.client_bench", "--server", server.address, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    finally:
        server.stop()
    assert done.returncode == 2
    assert done.stdout == ""
    assert "needs a queue server" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
