"""bench's harness: tolerating a server that fails, the results table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lt_harness import ROOT

from loadtest.bench import Metric, Outcome, cell, results_table, scenarios


def test_cells_show_value_ratio_and_failures() -> None:
    rate = Metric("ops", ("ops",), "ops/s", ratio=True)
    assert cell(Outcome({"ops": 45000.0, "ok": True}), rate, 90000.0) == "45.0k ops/s (0.50x)"
    assert cell(Outcome({"ops": 45000.0, "ok": False}), rate, None).endswith("CHECK FAILED")
    assert cell(Outcome(error="failed to start: exited"), rate, 1.0) == "failed to start"
    assert cell(Outcome(error="timed out after 5 s"), rate, 1.0) == "error"
    assert cell(Outcome({"other": 1}), rate, 1.0) == "-"
    assert cell(None, rate, 1.0) == "not run"


def test_table_has_a_row_per_metric() -> None:
    plan = scenarios(full=False, quick=True)
    table = results_table(plan, ["memcached"], {"memcached": {}})
    rows = table.splitlines()[2:]
    assert len(rows) == sum(len(s.metrics) for s in plan)
    assert all("not run" in row for row in rows)


def test_a_server_that_fails_to_start_is_reported(tmp_path: Path) -> None:
    output, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--quick",
            "--servers",
            "kestrelpy-always",
            "--scenarios",
            "flood10",
            "--kestrelpy-cmd",
            "/bin/false",
            "--output",
            str(output),
            "--raw-output",
            str(raw),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = output.read_text()
    assert "| flood, 10 conns (5+5), 64 B | set+get ops/s | failed to start |" in text
    assert "commit:" in text and "python:" in text and "machine:" in text
    assert raw.exists()
