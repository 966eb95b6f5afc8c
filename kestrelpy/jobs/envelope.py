"""A job as it travels on a queue: the envelope, its wire form, and queue names.

The wire form is one JSON object (through the client's json codec)::

    {"instance": "dev", "job_name": "resize", "data": {...}, "attempts": 1}

It copies the PHP producer that kestrelpy's jobs follow (``{instance, jobName, data}``), so
keys with nothing to say are left out: ``data`` when None (PHP did that), ``instance`` when
None, ``attempts`` when 0. Readers accept the PHP spelling ``jobName`` too, so queues fed by
the old producers drain through the new workers unchanged.

No I/O here: plain values in, plain values out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kestrelpy.jobs.errors import InvalidJob

ERRORS_SUFFIX = "_errors"


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work. ``attempts`` counts the failed runs before this one, so a job's
    first run sees 0; only retries under a :class:`~kestrelpy.jobs.RetryPolicy` raise it."""

    job_name: str
    data: Any = None
    instance: str | None = None
    attempts: int = 0

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to put on a queue (keys with default values left out)."""
        wire: dict[str, Any] = {}
        if self.instance is not None:
            wire["instance"] = self.instance
        wire["job_name"] = self.job_name
        if self.data is not None:
            wire["data"] = self.data
        if self.attempts:
            wire["attempts"] = self.attempts
        return wire

    @classmethod
    def from_wire(cls, item: Any) -> Job:
        """The job an item read from a queue describes. Unknown keys are ignored (a dead
        letter's ``error`` among them, so a dead letter can be put back as it is).

        Raises :class:`InvalidJob` naming what is wrong; the reason ends up in the dead
        letter, where a person reads it.
        """
        if not isinstance(item, Mapping):
            raise InvalidJob(f"not a JSON object but {_json_type(item)}")
        name = item.get("job_name", item.get("jobName"))
        if name is None:
            raise InvalidJob("no job name (job_name or jobName)")
        if not isinstance(name, str):
            raise InvalidJob(f"job name is {_json_type(name)}, not a string")
        if not name:
            raise InvalidJob("job name is empty")
        instance = item.get("instance")
        if instance is not None and not isinstance(instance, str):
            raise InvalidJob(f"instance is {_json_type(instance)}, not a string")
        attempts = item.get("attempts", 0)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise InvalidJob(f"attempts is {attempts!r}, not a whole number >= 0")
        return cls(name, item.get("data"), instance, attempts)

    def retried(self) -> Job:
        """The copy a retry puts back on the queue: one more failed attempt behind it."""
        return replace(self, attempts=self.attempts + 1)


def dead_letter(item: Any, reason: str, attempts: int | None = None) -> dict[str, Any]:
    """What goes on the errors queue for ``item``: the item with an ``error`` key saying
    why (and, for a job, ``attempts`` always present, 0 included, so a reader need not know
    the omission rule). An item that is not a JSON object has nowhere to put the key, so
    it is wrapped: ``{"item": ..., "error": ...}``."""
    if isinstance(item, Job):
        letter = item.to_wire()
    elif isinstance(item, Mapping):
        letter = dict(item)
    else:
        letter = {"item": item}
    letter["error"] = reason
    if attempts is not None:
        letter["attempts"] = attempts
    return letter


def queue_name(queue: str, env: str | None = None) -> str:
    """The queue jobs really go on: ``{env}_{queue}`` with an environment, so one server
    can hold the queues of several deployments (the PHP producer prefixed a project name
    the same way); ``queue`` itself without one."""
    return f"{env}_{queue}" if env else queue


def errors_queue(full_queue: str) -> str:
    """Where a queue's dead letters go: ``<queue>_errors``, next to it on the same
    servers, so ``kestrelpy stats`` shows both together."""
    return full_queue + ERRORS_SUFFIX


def _json_type(value: Any) -> str:
    """A value's JSON type in words, for reasons a person reads."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__
