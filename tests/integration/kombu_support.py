"""What the kombu transport and Celery tests share: the broker URL of running servers, and
filling a queue through kombu before a test reads it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu import Connection

import kestrelpy.kombu  # noqa: F401  (registers kestrelpy://)

from .conftest import ServerProcess


def broker_url(*servers: ServerProcess) -> str:
    """``kestrelpy://h:p//``, or with several servers ``kestrelpy://h1:p1;h2:p2//``."""
    return "kestrelpy://" + ";".join(f"{s.host}:{s.port}" for s in servers) + "//"


def publish(url: str, queue_name: str, bodies: Iterable[Any]) -> None:
    """Put each body on ``queue_name`` through kombu's SimpleQueue, on a connection of its
    own that is closed before the test reads."""
    with Connection(url) as producer:
        queue = producer.SimpleQueue(queue_name)
        for body in bodies:
            queue.put(body)
        queue.close()
