"""``kestrelpy consume`` and ``kestrelpy produce``: the jobs layer from a shell.

kestrelpy/cli.py declares the arguments (all as plain strings) and calls :func:`consume`
or :func:`produce`; everything about their values is checked here, before any connection
is made, so a mistake is one :class:`CommandLineError` line naming the flag (exit 2) and
never a half-done run. Failures at run time are one line naming the server and its reply
(exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import select
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import suppress
from types import FrameType, ModuleType
from typing import IO, Any

from kestrelpy.client import Client, ClientError, NoServerAvailable, ServerRefused
from kestrelpy.client.errors import UsageError as ClientUsageError
from kestrelpy.client.protocol import queue_key
from kestrelpy.client.servers import parse_servers
from kestrelpy.jobs.envelope import Job, errors_queue, queue_name
from kestrelpy.jobs.errors import JobError
from kestrelpy.jobs.registry import Handler, JobRegistry, RetryPolicy, default_registry
from kestrelpy.jobs.runners import HandlerRunner, RegistryRunner, Runner, SubprocessRunner
from kestrelpy.jobs.worker import READ_TIMEOUT_MS, Worker

BATCH_ITEMS = 500  # produce: items per put_many (one write, one server commit)
BATCH_BYTES = 1 << 20  # ...or fewer, once their JSON text reaches this many bytes


class CommandLineError(JobError):
    """A command-line mistake: kestrelpy/cli.py prints it as one usage line, exit 2."""


# -- consume ----------------------------------------------------------------------------------


def consume(args: argparse.Namespace, *, stdout: IO[str] | None = None) -> int:
    """Run a worker until a signal, ``-m`` jobs, or a fatal server reply. Returns the exit
    status: 0 when stopped or done, 1 after a server error (one line on stderr), 128 + the
    signal number after a second stop signal (running jobs were cancelled)."""
    out = stdout or sys.stdout
    servers = _servers(args.server)
    queue = _queue(args.queue, args.env)
    max_jobs = _whole(args.max_jobs, "-m/--max-jobs", 1)
    concurrency = _whole(args.concurrency, "--concurrency", 1)
    timeout_ms = _whole(args.timeout_ms, "--timeout-ms", 1)  # 0 would poll in a busy loop
    runner = _runner(args)  # last: it may import the user's module
    print_lock = threading.Lock()

    def print_job(line: str) -> None:
        with print_lock:
            print(line, file=out, flush=True)

    def notice(line: str) -> None:
        with print_lock:
            print(f"kestrelpy consume: {line}", file=sys.stderr, flush=True)

    worker = Worker(
        servers,
        queue,
        runner,
        concurrency=concurrency or 1,
        read_timeout_ms=READ_TIMEOUT_MS if timeout_ms is None else timeout_ms,
        max_jobs=max_jobs,
        on_job=print_job if args.debug else None,
        on_notice=notice,
    )
    with _SignalPipe() as signals:
        return _run_until_done(worker, signals, notice)


def _run_until_done(worker: Worker, signals: _SignalPipe, notice: Callable[[str], None]) -> int:
    """Run the worker in a thread while this (main) thread answers stop signals.

    SIGTERM/SIGINT: the first stops taking jobs and lets running ones finish (what
    supervisord and systemd send, then wait ``stopwaitsecs``/``TimeoutStopSec``); a second
    stops now: job subprocesses are killed and their items go back on the queue.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as err:  # handed to the main thread below
            failure.append(err)
        finally:
            signals.wake()

    threading.Thread(target=run, name="kestrelpy-worker", daemon=True).start()
    forced_by = 0
    for signum in signals.received():
        name = signal.Signals(signum).name
        running = worker.running_jobs
        if not worker.stopping:
            worker.stop()
            if running:
                notice(f"{name}: finishing {_jobs(running)}, then exiting (signal again: now)")
            else:
                notice(f"{name}: exiting")
        elif not forced_by:
            forced_by = signum
            notice(f"{name}: second stop signal, stopping now; {_jobs(running)} back on the queue")
            worker.stop_now()
    if forced_by:
        return 128 + forced_by
    if failure:
        if isinstance(failure[0], ClientError):
            notice(str(failure[0]))
            return 1
        raise failure[0]
    return 0


class _SignalPipe:
    """SIGTERM and SIGINT as bytes on a pipe (the self-pipe trick), so the main thread
    handles them as ordinary code.

    A Python signal handler runs between two bytecodes of the main thread, wherever it is,
    so one that stops the worker (an ``Event.set``) or prints (a lock) can deadlock on a
    lock the interrupted code holds. The handlers here do nothing; ``set_wakeup_fd`` makes
    the interpreter write each signal's number to the pipe, and :meth:`received` reads
    them. Installed explicitly, even for SIGINT: a shell starts background jobs with SIGINT
    ignored. Main thread only (``signal`` requires it).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    _DONE = 0  # not a signal number: the worker thread has finished

    def __enter__(self) -> _SignalPipe:
        self._lock = threading.Lock()  # wake() vs __exit__: never write to a closed fd
        self._closed = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _no_op) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        with self._lock:  # after a stop_now the worker's thread may still be running
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)

    def wake(self) -> None:
        """End :meth:`received` (from the worker's thread, when the worker returns)."""
        with self._lock:
            if not self._closed:  # else the fd number may already belong to another file
                os.write(self._write_fd, bytes([self._DONE]))

    def received(self) -> Iterator[int]:
        """The stop signals as they arrive, until :meth:`wake`."""
        while True:
            for byte in os.read(self._read_fd, 64):
                if byte == self._DONE:
                    return
                if byte in self.SIGNALS:
                    yield byte


def _no_op(signum: int, frame: FrameType | None) -> None:
    """The work is done by the main thread when it reads the signal from the pipe."""


def _jobs(count: int) -> str:
    return f"{count} running job" + ("" if count == 1 else "s")


def _runner(args: argparse.Namespace) -> Runner:
    """The one runner the arguments ask for; its policy from the retry flags."""
    command: list[str] = args.command
    chosen = [bool(command), args.handler is not None, args.jobs is not None]
    if sum(chosen) != 1:
        what = "not more than one" if sum(chosen) > 1 else "one is required"
        raise CommandLineError(
            f"give -- COMMAND..., --handler MODULE:FUNCTION or --jobs MODULE ({what})"
        )
    max_retries = _whole(args.max_retries, "--max-retries", 0)
    backoff_s = _seconds(args.backoff_s, "--backoff-s")
    if args.jobs is not None:
        if max_retries is not None or backoff_s is not None:
            raise CommandLineError(
                "--max-retries and --backoff-s apply to COMMAND and --handler; "
                "with --jobs, each @job(...) sets its own"
            )
        return RegistryRunner(load_registry(args.jobs))
    if backoff_s is not None and max_retries is None:
        raise CommandLineError(
            "--backoff-s needs --max-retries (without it a failed job is aborted)"
        )
    policy = RetryPolicy(max_retries, 1.0 if backoff_s is None else backoff_s)
    if args.handler is not None:
        return HandlerRunner(load_handler(args.handler), policy)
    if shutil.which(command[0]) is None:
        raise CommandLineError(f"COMMAND {command[0]!r}: not found or not executable")
    return SubprocessRunner(command, policy)


# -- handlers ---------------------------------------------------------------------------------


def load_handler(spec: str) -> Handler:
    """``module:function`` (or ``module:Class.method``) as a callable handler."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandLineError(f"--handler {spec!r}: expected MODULE:FUNCTION")
    module = _import(module_name, f"--handler {spec}")
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CommandLineError(f"--handler {spec}: module {module_name} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CommandLineError(f"--handler {spec}: {attr} is not callable")
    handler: Handler = target
    return handler


def load_registry(spec: str) -> JobRegistry:
    """``module``: import it and use the default registry its ``@job`` decorators fill;
    ``module:name``: the :class:`JobRegistry` called ``name`` in it."""
    module_name, sep, attr = spec.partition(":")
    if not module_name or (sep and not attr):
        raise CommandLineError(f"--jobs {spec!r}: expected MODULE or MODULE:REGISTRY")
    module = _import(module_name, f"--jobs {spec}")
    registry = getattr(module, attr, None) if sep else default_registry
    if not isinstance(registry, JobRegistry):
        raise CommandLineError(f"--jobs {spec}: {module_name}.{attr} is not a JobRegistry")
    if not len(registry):
        raise CommandLineError(
            f"--jobs {spec}: no jobs registered (decorate handlers with @job from kestrelpy.jobs)"
        )
    return registry


def _import(name: str, what: str) -> ModuleType:
    """Import a user's module, the current directory first on ``sys.path`` as with
    ``python -m`` (the console script's own directory is there instead, which is never
    where the user's code is). Any failure is one line: where and why."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise CommandLineError(f"{what}: no module named {name!r}") from None
        raise CommandLineError(f"{what}: importing {name} failed: {err}") from None
    except Exception as err:
        raise CommandLineError(f"{what}: importing {name} raised {_where(err)}") from None


def _where(err: BaseException) -> str:
    text = " ".join(str(err).split())
    frames = traceback.extract_tb(err.__traceback__)
    place = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {text}{place}"


# -- produce ----------------------------------------------------------------------------------


def produce(args: argparse.Namespace, *, stdin: IO[bytes] | None = None) -> int:
    """Put DATA (or each JSON line of stdin) on the queue, wrapped in a job envelope with
    ``--job``. Returns 0, or 1 after a server refused or could not be reached (one line on
    stderr naming the server and its reply, and how many items were stored before)."""
    servers = _servers(args.server)
    queue = _queue(args.queue, args.env)
    if args.instance is not None and args.job is None:
        raise CommandLineError("--instance needs --job (only a job envelope has an instance)")
    if args.job is not None and not args.job:
        raise CommandLineError("--job: the job name is empty")
    if args.data is not None and args.data != "-":
        batches: Iterator[list[Any]] = iter([[_json(args.data.encode(), "DATA")]])
    else:
        batches = _stdin_batches(stdin or sys.stdin.buffer)

    def wrap(value: Any) -> Any:
        return value if args.job is None else Job(args.job, value, args.instance).to_wire()

    stored = 0
    with Client(servers) as client:
        try:
            for batch in batches:
                stored += client.put_many(queue, [wrap(value) for value in batch])
        except ClientError as err:
            if isinstance(err, ServerRefused | NoServerAvailable):
                stored += err.stored  # the part of the failed batch that was stored
            print(f"kestrelpy produce: {_failure(err)} ({_items(stored)} stored)", file=sys.stderr)
            return 1
        except CommandLineError as err:
            raise CommandLineError(f"{err} ({_items(stored)} before it were stored)") from None
    return 0


def _stdin_batches(stream: IO[bytes]) -> Iterator[list[Any]]:
    """One JSON value per line, blank lines skipped, in batches for ``put_many``. A batch
    also ends when no more input is ready, so a slow pipe (``tail -f``) is sent as it
    comes instead of waiting for a full batch. A line that is not JSON raises
    :class:`CommandLineError` once the lines before it have been yielded."""
    batch: list[Any] = []
    size = 0
    for number, line in enumerate(iter(stream.readline, b""), start=1):
        if line.strip():
            try:
                batch.append(_json(line, f"stdin line {number}"))
            except CommandLineError:
                if batch:  # every line before a bad one is sent, whatever the batching
                    yield batch
                raise
            size += len(line)
        if batch and (len(batch) >= BATCH_ITEMS or size >= BATCH_BYTES or not _ready(stream)):
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ready(stream: IO[bytes]) -> bool:
    """Whether more input can be read without waiting (True when we cannot tell)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return True
    with suppress(OSError, ValueError):
        return bool(select.select([fd], [], [], 0)[0])
    return True


def _json(text: bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise CommandLineError(f"{what} is not JSON: {err}") from None


def _failure(err: ClientError) -> str:
    """The error in words; a one-shot command has no "next retry", so that part goes."""
    if isinstance(err, NoServerAvailable):
        return f"no server available ({'; '.join(err.failures)})"
    return str(err)


def _items(count: int) -> str:
    return f"{count} item" + ("" if count == 1 else "s")


# -- shared checks ----------------------------------------------------------------------------


def _servers(text: str | None) -> str:
    if text is None:
        raise CommandLineError("-s/--server is required")
    try:
        parse_servers(text)
    except ClientUsageError as err:
        raise CommandLineError(f"-s/--server: {err}") from None
    return text


def _queue(queue: str | None, env: str | None) -> str:
    """The full queue name (``ENV_QUEUE`` with ``-e``), checked with its errors queue."""
    if queue is None:
        raise CommandLineError("-q/--queue is required")
    full = queue_name(queue, env)
    try:
        queue_key(errors_queue(full))  # the longest name we will use
    except ClientUsageError as err:
        flag = "-q/--queue" if env is None else "-q/--queue with -e/--env"
        raise CommandLineError(f"{flag}: {err}") from None
    return full


def _whole(text: str | None, flag: str, minimum: int) -> int | None:
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise CommandLineError(f"{flag} {text!r}: expected a whole number >= {minimum}")
    return number


def _seconds(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not math.isfinite(number) or number < 0:
        raise CommandLineError(f"{flag} {text!r}: expected a number of seconds >= 0")
    return number
