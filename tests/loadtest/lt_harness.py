"""Servers for the load-tool tests: a real memcached and the in-memory fake Kestrel.

Not a conftest.py on purpose: the suite's other tests ``from conftest import ...`` the root
tests/conftest.py, and a second top-level ``conftest`` module would shadow it. Importing
this module also puts the repository root on sys.path, where the (not installed) loadtest
package lives; test modules import it before ``loadtest`` (isort keeps it first, in the
third-party section).

The session fixtures in test_tools_smoke.py start each server once on a free 127.0.0.1
port and stop it (by its own pid) at the end. Readiness is event-driven: memcached ``-vv``
announces "server listening" after its listen(2), the fake prints "listening on
127.0.0.1:PORT"; we block on the pipe (with a timeout), never sleep. A drain thread keeps
reading the servers' output so they can never block on a full pipe.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the loadtest package lives at the repo root, not installed
    sys.path.insert(0, str(ROOT))

FAKE = Path(__file__).with_name("fake_kestrel.py")
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunningServer:
    address: str  # host:port
    pid: int


def _read_until(proc: subprocess.Popen[bytes], pattern: re.Pattern[bytes]) -> re.Match[bytes]:
    """Read the child's stderr until ``pattern`` matches (bounded by START_TIMEOUT_S).

    Raw ``os.read`` on the fd, not a buffered readline: a buffered reader could hold the
    line we wait for while select() sees nothing new on the fd.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # EOF: the process died
        seen += chunk
        if match := pattern.search(seen):
            return match
    proc.kill()
    proc.wait(5)
    pytest.fail(f"server did not start: {seen.decode(errors='replace')[-500:]!r}")


def _drain(fd: int) -> None:
    """Discard the rest of a child's output so it never blocks on a full pipe."""
    while os.read(fd, 65536):
        pass


def _free_port() -> int:
    """A port that was free a moment ago: memcached cannot report a port it picked."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_memcached() -> tuple[subprocess.Popen[bytes], RunningServer]:
    """Debian's memcached, one thread, 2 MB item limit (fairness sends big items)."""
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    if not os.path.exists(binary):
        pytest.fail(
            "memcached is not installed: run `make system-deps` (apt-get install memcached)"
        )
    port = _free_port()
    argv = [binary, "-vv", "-t", "1", "-p", str(port), "-l", "127.0.0.1", "-U", "0"]
    argv += ["-c", "4096", "-I", "2m"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _read_until(proc, re.compile(rb"server listening"))
    assert proc.stderr is not None
    threading.Thread(target=_drain, args=(proc.stderr.fileno(),), daemon=True).start()
    return proc, RunningServer(f"127.0.0.1:{port}", proc.pid)


def start_fake(*extra: str) -> tuple[subprocess.Popen[bytes], RunningServer]:
    """fake_kestrel.py on a port it picks and announces; ``extra`` injects faults."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", "0", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    match = _read_until(proc, re.compile(rb"listening on 127\.0\.0\.1:(\d+)"))
    assert proc.stderr is not None
    threading.Thread(target=_drain, args=(proc.stderr.fileno(),), daemon=True).start()
    return proc, RunningServer(f"127.0.0.1:{int(match.group(1))}", proc.pid)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server we started (by its Popen, i.e. its pid): TERM, then KILL."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
