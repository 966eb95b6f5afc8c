"""A Celery app on kestrelpy for tests/integration/test_celery.py, started by ``celery -A``.

Settings come from the environment, so one module serves every test: the broker URL
(``KESTRELPY_BROKER``) and a directory where tasks leave traces (``KESTRELPY_TRACE_DIR``:
one line per run in ``runs.log``, which is how the tests see what ran, and how often).
Results go through the rpc backend, which also travels on kestrelpy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

import kestrelpy.kombu  # noqa: F401  (registers the kestrelpy:// scheme with kombu)

app = Celery(
    "celeryapp", broker=os.environ.get("KESTRELPY_BROKER", "kestrelpy://127.0.0.1:22133//")
)
app.conf.update(
    result_backend="rpc://",
    task_acks_late=True,  # acked when done: a worker killed mid-task gives it back
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

HANG_S = 60.0  # longer than any test waits: the test kills the worker first


def _trace(line: str) -> int:
    """Append ``line`` to runs.log; return how many times it was there before."""
    path = Path(os.environ["KESTRELPY_TRACE_DIR"]) / "runs.log"
    before = path.read_text().splitlines().count(line) if path.exists() else 0
    with path.open("a") as log:
        log.write(line + "\n")
    return before


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def pause(ms: int) -> None:
    """Keeps a worker busy: a backlog of these is work that outlasts a remote-control call."""
    time.sleep(ms / 1000)


@app.task
def record(token: str) -> str:
    _trace(f"record {token}")
    return token


@app.task
def hang_first_time(token: str) -> str:
    """Hangs on its first run (the test kills that worker), returns on the next."""
    if _trace(f"hang {token}") == 0:
        time.sleep(HANG_S)
        return "not killed"
    return f"{token} redelivered"


@app.task(autoretry_for=(ValueError,), max_retries=3, default_retry_delay=0, retry_backoff=False)
def fail_twice(token: str) -> str:
    """Raises on its first two runs; Celery's autoretry publishes it again each time."""
    runs = _trace(f"fail {token}")
    if runs < 2:
        raise ValueError(f"run {runs + 1} of {token} fails on purpose")
    return f"{token} after {runs + 1} runs"
