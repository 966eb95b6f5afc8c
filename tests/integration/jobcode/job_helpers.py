"""Jobs for the consume tests, in every form a worker runs: handlers
(``--handler job_helpers:NAME``), ``@job`` handlers (``--jobs job_helpers``) and, run as a
script, a job COMMAND (``python job_helpers.py MODE``). The consumer finds this module
through ``PYTHONPATH`` (this directory only, so nothing else here shadows anything).

Every run appends one JSON line to ``$JOB_OUT`` (one ``os.write`` on an ``O_APPEND`` file,
so concurrent jobs never interleave): how it ran, the job, its attempt, and its pid.

A *gated* job tells the test it has started by connecting to ``$JOB_GATE`` (host:port) and
sending its record, then blocks until the test answers ``go`` (run to the end, exit 0) or
drops the connection (exit 4 without recording a finish). So a test knows for certain that
a job is running, and decides when it ends, with no sleeps on either side.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from kestrelpy.jobs import Job, job

GATE_TIMEOUT_S = 60.0  # an orphaned job (its worker was kill -9ed) must not live forever


def record(via: str, job_name: str, data: Any, attempt: int, **extra: Any) -> dict[str, Any]:
    entry = {"via": via, "job_name": job_name, "data": data, "attempt": attempt}
    entry.update(extra, pid=os.getpid())
    fd = os.open(os.environ["JOB_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)
    return entry


def wait_at_gate(entry: dict[str, Any]) -> bool:
    """Announce this job at the test's gate; True when told to go, False if dropped."""
    host, port = os.environ["JOB_GATE"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=GATE_TIMEOUT_S) as sock:
        sock.sendall(json.dumps(entry).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                chunk = sock.recv(64)
            except OSError:
                return False
            if not chunk:
                return False
            reply += chunk
    return reply.strip() == b"go"


# -- --handler job_helpers:NAME ------------------------------------------------------------


def handle_record(data: Any, job: Job) -> None:
    record("handler", job.job_name, data, job.attempts, instance=job.instance)


def handle_fail(data: Any, job: Job) -> None:
    record("handler", job.job_name, data, job.attempts)
    raise RuntimeError("failed on purpose")


# -- --jobs job_helpers ---------------------------------------------------------------------


@job("record")
def job_record(data: Any, job: Job) -> None:
    record("registry", job.job_name, data, job.attempts)


@job("flaky", max_retries=1, backoff_s=0)
def job_flaky(data: Any, job: Job) -> None:
    """Fails its first run, succeeds on the retry: its registered policy at work."""
    record("registry", job.job_name, data, job.attempts)
    if job.attempts == 0:
        raise ValueError("first run fails")


# -- python job_helpers.py MODE -------------------------------------------------------------


def main(mode: str) -> int:
    """A job command: the item arrives on stdin, the rest in KESTRELPY_* variables."""
    item = json.loads(sys.stdin.read())
    name = os.environ["KESTRELPY_JOB_NAME"]
    attempt = int(os.environ["KESTRELPY_ATTEMPT"])
    env_item = json.loads(os.environ["KESTRELPY_JOB"])
    queue = os.environ["KESTRELPY_QUEUE"]
    if mode == "record":
        record("command", name, item, attempt, env_item=env_item, queue=queue)
        return 0
    if mode == "fail":
        record("command", name, item, attempt)
        return 3
    if mode == "fail-once":  # fails unless $JOB_MARKER exists, which the failing run creates
        marker = os.environ["JOB_MARKER"]
        failing = not os.path.exists(marker)
        record("command", name, item, attempt, failing=failing)
        if failing:
            open(marker, "w").close()
            return 1
        return 0
    if mode == "gated":
        entry = {"job_name": name, "data": item, "attempt": attempt, "pid": os.getpid()}
        if not wait_at_gate(entry):
            return 4
        record("command", name, item, attempt, finished=True)
        return 0
    print(f"job_helpers.py: unknown mode {mode!r}", file=sys.stderr)
    return 99


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
