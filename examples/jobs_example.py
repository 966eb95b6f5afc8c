"""Two job handlers, for ``kestrelpy consume --jobs examples.jobs_example``.

The PHP blog post's ``HelloWorld`` job, and one that retries with backoff before it gives
up. Run from the repository root (``--jobs`` imports with the current directory first on
``sys.path``, and ``examples`` is a namespace package, so no ``__init__.py`` is needed)::

    kestrelpy serve &
    kestrelpy produce -s 127.0.0.1:22133 -q hello_world -e development \\
        --job HelloWorld --instance dev '{"foo": "bar"}'
    kestrelpy consume -s 127.0.0.1:22133 -q hello_world -e development -d -m 2 \\
        --jobs examples.jobs_example

or enqueue a few of each from Python: ``python -m examples.jobs_example 127.0.0.1:22133``.

A handler is ``handler(data, job)``: return for success, raise for failure. Jobs are
delivered at least once (a worker killed mid-job runs it again elsewhere), so make them
safe to repeat.
"""

from __future__ import annotations

import sys
from typing import Any

from kestrelpy.client import Client
from kestrelpy.jobs import Job, Producer, job


@job("HelloWorld")
def hello_world(data: Any, job: Job) -> None:
    """No retry policy: a failure aborts the read, so the job is back at the head of its
    queue at once and runs again (the PHP consumer's behaviour)."""
    print(f"Hello, world! Here is my data: {data!r} (instance {job.instance})", flush=True)


@job("resize", max_retries=3, backoff_s=2.0)
def resize(data: Any, job: Job) -> None:
    """Up to 3 retries, 2 s then 4 s then 8 s apart, each at the tail of the queue; then
    the job goes to ``<queue>_errors`` with the reason, for a person to look at."""
    width = int(data["width"])  # a job without a width fails: KeyError, then retries
    if width <= 0:
        raise ValueError(f"width {width}: expected a positive number of pixels")
    print(f"resizing {data.get('path', '?')} to {width} px (attempt {job.attempts})", flush=True)


def main(servers: str = "127.0.0.1:22133") -> None:
    """Enqueue some demo jobs on ``development_hello_world``."""
    with Client(servers) as client:
        producer = Producer(client, env="development", instance="dev")
        producer.enqueue("hello_world", "HelloWorld", {"foo": "bar"})
        producer.enqueue_many("hello_world", "resize", [{"path": "a.png", "width": 64}, {}])


if __name__ == "__main__":
    main(*sys.argv[1:2])
