"""Which function runs a job, and what happens when it fails.

A :class:`JobRegistry` maps job names to handlers, each with its :class:`RetryPolicy`.
Handlers register with a decorator on the module-level default registry::

    from kestrelpy.jobs import job

    @job("resize", max_retries=3)
    def resize(data, job):
        ...

and ``kestrelpy consume --jobs mymodule`` imports the module and dispatches by name.
No I/O here: a policy only says what to do; the worker does it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kestrelpy.jobs.envelope import Job
from kestrelpy.jobs.errors import JobConfigError

Handler = Callable[[Any, Job], object]
"""``handler(data, job)``: returning is success, raising is failure. The return value is
ignored (a handler's result has nowhere to go: results belong on another queue)."""

H = TypeVar("H", bound=Handler)


class Step(enum.Enum):
    """What a worker does with a failed job."""

    ABORT = "abort"  # give the read back: the item returns to the head of its queue
    RETRY = "retry"  # put a copy with attempts + 1 on the tail, close the original
    DEAD_LETTER = "dead_letter"  # put it on <queue>_errors, close the original


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed job is retried.

    ``max_retries=None`` is Kestrel's (and the PHP consumer's) behaviour: the failed read
    is aborted, so the job is back at the head of its queue at once and is tried again
    forever, in order, with no delay and no count. Right for transient failures; a job
    that always fails blocks its queue.

    ``max_retries=N`` bounds that: a failed job with fewer than N failed attempts behind it
    waits ``min(backoff_s * 2**attempts, backoff_max_s)`` seconds (holding its read, so a
    worker crash in the wait still returns it), then goes to the tail of its queue with
    ``attempts + 1``; after N retries it is dead-lettered. ``N=0``: dead-letter on the
    first failure.
    """

    max_retries: int | None = None
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise JobConfigError(f"max_retries={self.max_retries!r}: expected None or >= 0")
        for name in ("backoff_s", "backoff_max_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise JobConfigError(f"{name}={value!r}: expected a number of seconds >= 0")

    def next_step(self, attempts: int) -> Step:
        """What to do with a job that just failed with ``attempts`` failures before it."""
        if self.max_retries is None:
            return Step.ABORT
        return Step.RETRY if attempts < self.max_retries else Step.DEAD_LETTER

    def delay_s(self, attempts: int) -> float:
        """Seconds to wait before retrying a job that failed with ``attempts`` failures
        before it: doubling from ``backoff_s``, capped at ``backoff_max_s``."""
        if attempts >= 64:  # 2**64 overflows a float multiply long after any cap applies
            return self.backoff_max_s
        return float(min(self.backoff_s * 2**attempts, self.backoff_max_s))


@dataclass(frozen=True, slots=True)
class RegisteredJob:
    """A job name's handler and policy, as :meth:`JobRegistry.lookup` returns it."""

    name: str
    handler: Handler
    policy: RetryPolicy


class JobRegistry:
    """Job names to handlers. Filled at import time, read by worker threads afterwards:
    registration is not locked, so register before a worker starts."""

    def __init__(self) -> None:
        self._jobs: dict[str, RegisteredJob] = {}

    def job(
        self,
        name: str,
        *,
        max_retries: int | None = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> Callable[[H], H]:
        """Decorator: register ``handler(data, job)`` as job ``name`` and return it
        unchanged, so it stays an ordinary function (call it directly in tests).

        A name registered twice with different functions raises :class:`JobConfigError`:
        the second would silently win, which is almost always a copy-paste mistake.
        """
        if not isinstance(name, str) or not name:
            raise JobConfigError(f"job name {name!r}: expected a non-empty string")
        policy = RetryPolicy(max_retries, backoff_s, backoff_max_s)

        def register(handler: H) -> H:
            if not callable(handler):
                raise JobConfigError(f"job {name!r}: {handler!r} is not callable")
            existing = self._jobs.get(name)
            if existing is not None and existing.handler is not handler:
                raise JobConfigError(
                    f"job {name!r} is already registered to {_describe(existing.handler)}"
                )
            self._jobs[name] = RegisteredJob(name, handler, policy)
            return handler

        return register

    def lookup(self, name: str) -> RegisteredJob | None:
        """The registered job called ``name``, or None."""
        return self._jobs.get(name)

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[RegisteredJob]:
        return iter(list(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)


def _describe(handler: Handler) -> str:
    module = getattr(handler, "__module__", None) or "?"
    return f"{module}.{getattr(handler, '__qualname__', repr(handler))}"


default_registry = JobRegistry()
"""The registry ``@job`` fills and ``kestrelpy consume --jobs MODULE`` dispatches on."""

job = default_registry.job
