"""How a worker runs one job: a command, a function, or a registry of functions.

A :class:`Runner` turns a :class:`Delivery` into success (None) or a :class:`Failed`
saying why; what happens next (abort, retry, dead letter) is the worker's business, by the
runner's :class:`~kestrelpy.jobs.RetryPolicy`. Runners are called from several worker
threads at once, so they keep no per-job state outside the call (the subprocess runner's
set of children is locked).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from kestrelpy.jobs.envelope import Job
from kestrelpy.jobs.registry import JobRegistry, RetryPolicy

PLAIN_JOB_NAME = "-"  # the job name a plain (non-envelope) item runs under
ENV_VALUE_MAX_BYTES = 64 * 1024  # Linux refuses to exec with one env string over 128 KiB


@dataclass(frozen=True, slots=True)
class Delivery:
    """One item taken from a queue, as a runner sees it.

    ``item`` is the decoded value as read (the PHP ``jobName`` spelling and unknown keys
    included); ``job`` is its envelope, or for a ``plain`` item (a value that is not an
    envelope, which only subprocess runners take) ``Job("-", item)``.
    """

    queue: str
    item: Any
    job: Job
    plain: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """A job failed. ``reason`` is one line for logs and dead letters. ``final``: running
    it again cannot help (no handler for its name), so it is dead-lettered whatever the
    policy says."""

    reason: str
    final: bool = False


class Runner(Protocol):
    """Runs jobs for a :class:`~kestrelpy.jobs.Worker`.

    ``run`` is called from worker threads, several at once with ``--concurrency``, and
    blocks until the job is over; it reports failure by its return value and never raises
    for a job's own failure. ``cancel`` may be called from the main thread at any time
    (a second stop signal) and ends running jobs where that is possible.
    """

    @property
    def takes_plain_items(self) -> bool:
        """True: items that are not envelopes run too (as job ``-``); False: they are
        dead-lettered unrun, since a handler could only fail on them."""

    def policy(self, job: Job) -> RetryPolicy: ...

    def run(self, delivery: Delivery) -> Failed | None: ...

    def cancel(self) -> None: ...


class SubprocessRunner:
    """Runs ``argv`` once per job, as the PHP consumer ran its batch-job script.

    The item goes in as JSON text on stdin (one line) and in ``KESTRELPY_JOB`` (left out
    above 64 KiB: Linux cannot exec with a larger environment string), with
    ``KESTRELPY_JOB_NAME``, ``KESTRELPY_QUEUE``, ``KESTRELPY_ATTEMPT`` and, when the job
    has one, ``KESTRELPY_INSTANCE``. Exit status 0 is success. stdout and stderr are the
    worker's.

    Each child gets its own process group, so a Ctrl-C at the terminal stops the worker
    (which lets the job finish) rather than the job itself; :meth:`cancel` kills the
    groups.
    """

    def __init__(
        self,
        argv: Sequence[str],
        policy: RetryPolicy | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("SubprocessRunner needs a command")
        self.argv = list(argv)
        self._policy = policy or RetryPolicy()
        self._env = env
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    @property
    def takes_plain_items(self) -> bool:
        return True

    def policy(self, job: Job) -> RetryPolicy:
        return self._policy

    def run(self, delivery: Delivery) -> Failed | None:
        text = json.dumps(delivery.item, ensure_ascii=False) + "\n"
        try:
            child = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                env=self._child_env(delivery, text),
                process_group=0,
            )
        except OSError as err:
            return Failed(f"cannot run {self.argv[0]}: {err.strerror or err}")
        with self._lock:
            self._children.add(child)
            cancelled = self._cancelled
        if cancelled:  # cancel() ran between our check and the spawn: it missed this one
            _kill_group(child)
        try:
            child.communicate(text.encode())  # a child that ignores stdin is fine: EPIPE
        finally:
            with self._lock:
                self._children.discard(child)
        return _exit_failure(child.returncode)

    def _child_env(self, delivery: Delivery, text: str) -> dict[str, str]:
        env = dict(os.environ if self._env is None else self._env)
        job = delivery.job
        env["KESTRELPY_JOB_NAME"] = job.job_name
        env["KESTRELPY_QUEUE"] = delivery.queue
        env["KESTRELPY_ATTEMPT"] = str(job.attempts)
        env.pop("KESTRELPY_INSTANCE", None)
        if job.instance is not None:
            env["KESTRELPY_INSTANCE"] = job.instance
        env.pop("KESTRELPY_JOB", None)
        if len(text.encode()) <= ENV_VALUE_MAX_BYTES:
            env["KESTRELPY_JOB"] = text.rstrip("\n")
        return env

    def cancel(self) -> None:
        """Kill every running child's process group (SIGKILL: the worker is going now)."""
        with self._lock:
            self._cancelled = True
            children = list(self._children)
        for child in children:
            _kill_group(child)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _exit_failure(returncode: int) -> Failed | None:
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Failed(f"killed by {name}")
    return Failed(f"exit status {returncode}")


class HandlerRunner:
    """Calls ``handler(data, job)`` in the worker thread; an exception is a failure,
    whatever it is (``SystemExit`` too: a handler must not end a worker thread)."""

    def __init__(
        self, handler: Callable[[Any, Job], object], policy: RetryPolicy | None = None
    ) -> None:
        self.handler = handler
        self._policy = policy or RetryPolicy()

    @property
    def takes_plain_items(self) -> bool:
        return False

    def policy(self, job: Job) -> RetryPolicy:
        return self._policy

    def run(self, delivery: Delivery) -> Failed | None:
        return call_handler(self.handler, delivery.job)

    def cancel(self) -> None:
        """Nothing to do: a Python thread cannot be stopped from outside."""


class RegistryRunner:
    """Dispatches on the job name; each job runs under the policy it registered with. An
    unknown name fails as final (dead-lettered at once): no retry can add a handler."""

    def __init__(self, registry: JobRegistry) -> None:
        self.registry = registry

    @property
    def takes_plain_items(self) -> bool:
        return False

    def policy(self, job: Job) -> RetryPolicy:
        registered = self.registry.lookup(job.job_name)
        return registered.policy if registered is not None else RetryPolicy()

    def run(self, delivery: Delivery) -> Failed | None:
        registered = self.registry.lookup(delivery.job.job_name)
        if registered is None:
            known = ", ".join(self.registry.names()) or "none"
            return Failed(f"unknown job {delivery.job.job_name!r} (registered: {known})", True)
        return call_handler(registered.handler, delivery.job)

    def cancel(self) -> None:
        """Nothing to do: a Python thread cannot be stopped from outside."""


def call_handler(handler: Callable[[Any, Job], object], job: Job) -> Failed | None:
    """Run one handler; any exception becomes the failure reason ``Type: message``."""
    try:
        handler(job.data, job)
    except BaseException as err:  # a job's failure, whatever its kind
        text = " ".join(str(err).split())  # one line: it goes into logs and dead letters
        return Failed(f"{type(err).__name__}: {text}" if text else type(err).__name__)
    return None
