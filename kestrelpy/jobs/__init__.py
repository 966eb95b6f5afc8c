"""Background jobs over kestrelpy queues: a producer, handlers, and a worker.

A job is an envelope, ``{"instance", "job_name", "data", "attempts"}``, put on a queue by a
:class:`Producer` (or :func:`enqueue`, or ``kestrelpy produce``) and run by a
:class:`Worker` (or ``kestrelpy consume``) that takes it with a reliable read, runs it (a
command, a function, or a handler registered with :func:`job`), and confirms it only when
it is done: a worker that dies mid-job loses nothing. See the module docstrings of
:mod:`~kestrelpy.jobs.worker` and :mod:`~kestrelpy.jobs.registry` for the guarantees.

::

    from kestrelpy.client import Client
    from kestrelpy.jobs import Producer, job

    @job("resize", max_retries=3)
    def resize(data, job):
        ...

    with Client("127.0.0.1:22133") as client:
        Producer(client, env="dev").enqueue("images", "resize", {"path": "a.png"})
"""

from kestrelpy.jobs.envelope import Job, dead_letter, errors_queue, queue_name
from kestrelpy.jobs.errors import InvalidJob, JobConfigError, JobError
from kestrelpy.jobs.producer import Producer, enqueue
from kestrelpy.jobs.registry import (
    JobRegistry,
    RegisteredJob,
    RetryPolicy,
    Step,
    default_registry,
    job,
)
from kestrelpy.jobs.runners import (
    Delivery,
    Failed,
    HandlerRunner,
    RegistryRunner,
    Runner,
    SubprocessRunner,
)
from kestrelpy.jobs.worker import Worker

__all__ = [
    "Delivery",
    "Failed",
    "HandlerRunner",
    "InvalidJob",
    "Job",
    "JobConfigError",
    "JobError",
    "JobRegistry",
    "Producer",
    "RegisteredJob",
    "RegistryRunner",
    "RetryPolicy",
    "Runner",
    "Step",
    "SubprocessRunner",
    "Worker",
    "dead_letter",
    "default_registry",
    "enqueue",
    "errors_queue",
    "job",
    "queue_name",
]
