"""Putting jobs on queues: the envelope around the data, the environment prefix on the name.

Works over any client with the blocking ``put``/``put_many`` of
:class:`kestrelpy.client.Client` (a test can pass a plain object). A write that no server
takes raises the client's error (:class:`~kestrelpy.client.ServerRefused`,
:class:`~kestrelpy.client.NoServerAvailable`): nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from kestrelpy.jobs.envelope import Job, queue_name


class QueueWriter(Protocol):
    """What a producer needs of a client (:class:`kestrelpy.client.Client` has it)."""

    def put(self, queue: str, data: Any, expiry_s: int = 0) -> None: ...

    def put_many(self, queue: str, items: Iterable[Any], expiry_s: int = 0) -> int: ...


class Producer:
    """Enqueues jobs for one deployment: ``env`` prefixes every queue name (see
    :func:`~kestrelpy.jobs.queue_name`) and ``instance`` is stamped on every job unless a
    call gives its own. Not thread-safe, because its client is not."""

    def __init__(
        self, client: QueueWriter, *, env: str | None = None, instance: str | None = None
    ) -> None:
        self.client = client
        self.env = env
        self.instance = instance

    def enqueue(
        self, queue: str, job_name: str, data: Any = None, *, instance: str | None = None
    ) -> None:
        """Put one job on ``queue``; durable when this returns (the server's ``sync``)."""
        job = Job(job_name, data, instance if instance is not None else self.instance)
        self.client.put(queue_name(queue, self.env), job.to_wire())

    def enqueue_many(
        self,
        queue: str,
        job_name: str,
        datas: Iterable[Any],
        *,
        instance: str | None = None,
    ) -> int:
        """Put one job per item of ``datas``, all in one write to one server (one round
        trip, and the server commits them together). Returns how many."""
        stamp = instance if instance is not None else self.instance
        jobs = (Job(job_name, data, stamp).to_wire() for data in datas)
        return self.client.put_many(queue_name(queue, self.env), jobs)


def enqueue(
    client: QueueWriter,
    queue: str,
    job_name: str,
    data: Any = None,
    *,
    env: str | None = None,
    instance: str | None = None,
) -> None:
    """One job, without keeping a :class:`Producer` around."""
    Producer(client, env=env, instance=instance).enqueue(queue, job_name, data)
