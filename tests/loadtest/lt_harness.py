"""Servers for the load-tool tests: a real memcached and the in-memory fake Kestrel.

Not a conftest.py on purpose: the suite's other tests ``from conftest import ...`` the root
tests/conftest.py, and a second top-level ``conftest`` module would shadow it. Importing
this module also puts the repository root on sys.path, where the (not installed) loadtest
package lives; test modules import it before ``loadtest`` (isort keeps it first, in the
third-party section).

The session fixtures in test_tools_smoke.py start each server once on 127.0.0.1 and stop it
at the end, through loadtest/_servers.py (the helper the integration tests and the bench
use too): the fake binds port 0 and announces it, memcached gets a free port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the loadtest package lives at the repo root, not installed
    sys.path.insert(0, str(ROOT))

from loadtest._servers import Server  # noqa: E402  (needs ROOT on sys.path)

FAKE = Path(__file__).with_name("fake_kestrel.py")


def start_fake(*extra: str) -> Server:
    """fake_kestrel.py on a port it picks and announces; ``extra`` injects faults."""
    return Server([sys.executable, str(FAKE), "--port", "0", *extra], name="fake kestrel").start()


def run_quick_bench(
    tmp_path: Path, servers: str, scenarios: str, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """``python -m loadtest.bench --quick`` for ``servers`` x ``scenarios``, its output
    files in ``tmp_path``; returns the RESULTS.md text and each server's raw results."""
    output, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    argv = [sys.executable, "-m", "loadtest.bench", "--quick", "--servers", servers]
    argv += ["--scenarios", scenarios, "--output", str(output), "--raw-output", str(raw)]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(raw.read_text())["results"]
    return output.read_text(), results
