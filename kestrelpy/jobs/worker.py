"""The consumer loop: take a job with a reliable read, run it, confirm it; in N threads.

Each job is read with Kestrel's ``open``: the server keeps the item reserved for this
connection until the worker ``close``s it (done) or ``abort``s it (back to the head of the
queue), and puts it back by itself if the connection drops. So a worker killed mid-job,
even by ``kill -9``, loses nothing: the job is delivered again to the next worker. That is
at-least-once delivery; a job should be safe to run twice.

After a job, by outcome and the runner's :class:`~kestrelpy.jobs.RetryPolicy`:

- success: the read is confirmed. The ``close`` rides on the next read of the queue
  (Kestrel's ``close/open``), so a busy worker pays one round trip per job, as the PHP
  consumer did; the last is sent when the worker ends.
- abort (no policy): back to the head of the queue, at once.
- retry: a copy with ``attempts + 1`` goes to the tail after the backoff, then the
  original is confirmed. Put before confirm: a crash in between duplicates the job rather
  than losing it.
- dead letter: the item, with an ``error`` key, goes to ``<queue>_errors``, then the
  original is confirmed. So do items that cannot be jobs at all (undecodable bytes, raw,
  as read; invalid envelopes for handler and registry runners): a retry cannot fix those.

Threads: each of ``concurrency`` threads has its own :class:`~kestrelpy.client.Client`
(own connections, own open reads: a client is not thread-safe). :meth:`Worker.stop` and
:meth:`Worker.stop_now` may be called from any thread (not from a signal handler).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from kestrelpy.client import Client, ClientError, DecodeError, NoServerAvailable
from kestrelpy.client.errors import ServerRefused, ServerUnavailable
from kestrelpy.client.protocol import queue_key
from kestrelpy.client.servers import parse_servers
from kestrelpy.jobs.envelope import Job, dead_letter, errors_queue, queue_name
from kestrelpy.jobs.errors import InvalidJob, JobConfigError
from kestrelpy.jobs.registry import Step
from kestrelpy.jobs.runners import PLAIN_JOB_NAME, Delivery, Failed, Runner

READ_TIMEOUT_MS = 500  # the PHP consumer's t=500: also the longest a stop waits for a read
MIN_RETRY_S = 0.05  # floor on the pause after "no server available", so it never spins

Report = Callable[[str], None]


class _Forced(Exception):
    """Raised inside a job's ``with`` block after :meth:`Worker.stop_now`: the read is
    aborted on the way out and the job's outcome is ignored."""


class Worker:
    """Runs the jobs of one queue until stopped, ``max_jobs`` are done, or an error that
    retrying cannot cure (a server refusing a write, a bug).

    ``servers``: ``"host:port[,host:port...]"`` or a list, as for
    :class:`~kestrelpy.client.Client`. ``queue`` and ``env``: as
    :func:`~kestrelpy.jobs.queue_name`. ``read_timeout_ms``: how long one read waits on the
    server for an item (bounds how long :meth:`stop` takes when idle). ``max_jobs``: items
    taken in total over all threads, whatever their outcome. ``on_job``: called with one
    line per item taken (the CLI's ``-d``). ``on_notice``: called with one line when
    servers become unreachable and again when they are back.

    Raises :class:`JobConfigError` (or the client's ``UsageError`` for a bad server list or
    queue name) at construction, before any connection is made.
    """

    def __init__(
        self,
        servers: str | Iterable[str],
        queue: str,
        runner: Runner,
        *,
        env: str | None = None,
        concurrency: int = 1,
        read_timeout_ms: int = READ_TIMEOUT_MS,
        max_jobs: int | None = None,
        codec: str = "json",
        on_job: Report | None = None,
        on_notice: Report | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servers = servers if isinstance(servers, str) else list(servers)
        parse_servers(self._servers)
        self.queue = queue_name(queue, env)
        self.errors_queue = errors_queue(self.queue)
        queue_key(self.errors_queue)  # the longer name: if it is fine, so is the queue's
        if concurrency < 1:
            raise JobConfigError(f"concurrency={concurrency}: expected at least 1")
        if read_timeout_ms < 0:
            raise JobConfigError(f"read_timeout_ms={read_timeout_ms}: expected >= 0")
        if max_jobs is not None and max_jobs < 1:
            raise JobConfigError(f"max_jobs={max_jobs}: expected None or at least 1")
        self.runner = runner
        self.concurrency = concurrency
        self._read_timeout_ms = read_timeout_ms
        self._codec = codec
        self._on_job = on_job
        self._on_notice = on_notice
        self._clock = clock
        self._lock = threading.Lock()  # guards the counters below
        self._tickets = max_jobs  # items still to take; None = no limit
        self._sequence = itertools.count(1)  # job numbers in -d lines
        self._running = 0
        self._live_threads = 0
        self._error: BaseException | None = None
        self._unreachable = False
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._forced = False
        self._started = False

    # -- control (any thread) -----------------------------------------------------------------

    def run(self) -> None:
        """Block until the worker is done. Returns after :meth:`stop` (running jobs
        finished and confirmed) or ``max_jobs``; at once after :meth:`stop_now`. Raises the
        first error that ended a thread, after the other threads drained."""
        if self._started:
            raise JobConfigError("a Worker runs once; make a new one")
        self._started = True
        threads = [
            threading.Thread(target=self._thread_main, name=f"kestrelpy-worker-{n}", daemon=True)
            for n in range(self.concurrency)
        ]  # daemons: after stop_now, a handler stuck in Python code must not hold the exit
        self._live_threads = len(threads)
        for thread in threads:
            thread.start()
        self._done.wait()
        if self._forced:
            return
        for thread in threads:
            thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Take no new jobs; let running ones finish and confirm them. Idempotent. From any
        thread, but not from inside a signal handler: ``Event.set`` takes a lock the
        interrupted code may hold (kestrelpy.jobs.cli reads signals from a pipe instead)."""
        self._stopping.set()

    def stop_now(self) -> None:
        """Stop without waiting: cancel running jobs where the runner can (subprocesses
        are killed), and make :meth:`run` return. Their reads go back on the queue when the
        connections close."""
        self._forced = True
        self._stopping.set()
        self.runner.cancel()
        self._done.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def running_jobs(self) -> int:
        return self._running

    # -- one thread ---------------------------------------------------------------------------

    def _thread_main(self) -> None:
        client: Client | None = None
        try:
            client = Client(self._servers, codec=self._codec)
            while not self._stopping.is_set() and self._take_ticket():
                if not self._take_one(client):
                    self._give_back_ticket()
        except BaseException as err:  # ends this thread: run() re-raises it
            self._fail(err)
        finally:
            if client is not None:
                with suppress(ClientError):  # a server gone takes its reads back itself
                    client.disconnect()  # sends the last close
            self._thread_finished()

    def _take_one(self, client: Client) -> bool:
        """One reliable read and, if it got an item, its job. True if an item was taken."""
        taken = False
        try:
            with client.reliable(self.queue, self._read_timeout_ms) as item:
                self._reachable()
                if item is None:
                    return False
                if self._stopping.is_set():  # the stop came while the read waited
                    client.abort(self.queue)
                    return False
                taken = True
                server = client.engine.held_server(self.queue) or "?"
                self._handle(client, item, self._next_number(), server)
        except DecodeError as err:
            self._dead_letter_undecodable(client, err)
            return True
        except _Forced:
            pass  # the read was aborted on the way out of the with block
        except (NoServerAvailable, ServerUnavailable) as err:
            # Reads the lost connection held are back on their queue, server side.
            self._unreachable_now(err)
        except ServerRefused as err:
            if taken or not err.reply.startswith("SERVER_ERROR"):
                raise
            # Refusing reads for now (status quiescent, say, for maintenance): a worker
            # waits and tries again, as for a server that is down, instead of exiting.
            self._unreachable_now(err)
        return taken

    def _handle(self, client: Client, item: Any, number: int, server: str) -> None:
        try:
            job, plain = Job.from_wire(item), False
        except InvalidJob as err:
            if not self.runner.takes_plain_items:
                reason = f"invalid job: {err.reason}"
                client.put(self.errors_queue, dead_letter(item, reason))
                self._report(number, Job(PLAIN_JOB_NAME), server, f"{reason}, {self._to_errors}")
                return
            job, plain = Job(PLAIN_JOB_NAME, item), True
        started = self._clock()
        failed = self._run(Delivery(self.queue, item, job, plain))
        if self._forced:
            raise _Forced
        if failed is None:
            elapsed_ms = round((self._clock() - started) * 1000)
            self._report(number, job, server, f"ok in {elapsed_ms} ms")
            return
        outcome = self._after_failure(client, item, job, plain, failed)
        self._report(number, job, server, f"failed ({failed.reason}), {outcome}")

    def _run(self, delivery: Delivery) -> Failed | None:
        with self._lock:
            self._running += 1
        try:
            return self.runner.run(delivery)
        finally:
            with self._lock:
                self._running -= 1

    def _after_failure(
        self, client: Client, item: Any, job: Job, plain: bool, failed: Failed
    ) -> str:
        """Abort, retry or dead-letter a failed job; returns what was done, in words."""
        policy = self.runner.policy(job)
        step = Step.DEAD_LETTER if failed.final else policy.next_step(job.attempts)
        reason = failed.reason
        if step is Step.RETRY and plain:
            step = Step.DEAD_LETTER  # a plain item has nowhere to count its attempts
            reason += "; not a job envelope, so its retries cannot be counted"
        if step is Step.ABORT:
            client.abort(self.queue)
            return "aborted"
        if step is Step.RETRY:
            delay_s = policy.delay_s(job.attempts)
            self._stopping.wait(delay_s)  # holding the read; a stop cuts the wait short
            if self._forced:
                raise _Forced
            client.put(self.queue, retry_copy(item, job))
            return f"retried as attempt {job.attempts + 1} after {delay_s:g} s"
        client.put(self.errors_queue, dead_letter(item, reason, None if plain else job.attempts))
        return self._to_errors

    def _dead_letter_undecodable(self, client: Client, err: DecodeError) -> None:
        """The read is open (the client holds it; only decoding failed): put the bytes as
        read on the errors queue, then confirm. If the put fails, give the item back."""
        server = client.engine.held_server(self.queue) or "?"
        number = self._next_number()
        try:
            client.put(self.errors_queue, err.body, codec="raw")  # as read, not re-encoded
        except BaseException:
            with suppress(ClientError):
                client.abort(self.queue)
            raise
        with suppress(ServerUnavailable):  # the read was lost with its connection: the
            client.close(self.queue)  # item comes back, and is dead-lettered once more
        self._report(number, Job(PLAIN_JOB_NAME), server, f"undecodable ({err}), {self._to_errors}")

    @property
    def _to_errors(self) -> str:
        return f"dead-lettered to {self.errors_queue}"

    # -- shared state (locked) ----------------------------------------------------------------

    def _take_ticket(self) -> bool:
        with self._lock:
            if self._tickets is None:
                return True
            if self._tickets <= 0:
                return False
            self._tickets -= 1
            return True

    def _give_back_ticket(self) -> None:
        with self._lock:
            if self._tickets is not None:
                self._tickets += 1

    def _next_number(self) -> int:
        with self._lock:
            return next(self._sequence)

    def _fail(self, err: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = err
        self._stopping.set()

    def _thread_finished(self) -> None:
        with self._lock:
            self._live_threads -= 1
            last = self._live_threads == 0
        if last:
            self._done.set()

    def _unreachable_now(self, err: ClientError) -> None:
        with self._lock:
            first, self._unreachable = not self._unreachable, True
        if first and self._on_notice is not None:
            self._on_notice(f"cannot read {self.queue}: {err}; retrying")
        retry_in_s = err.retry_in_s if isinstance(err, NoServerAvailable) else 0.0
        self._stopping.wait(max(retry_in_s, MIN_RETRY_S))

    def _reachable(self) -> None:
        if not self._unreachable:  # unlocked fast path: a stale read only delays the notice
            return
        with self._lock:
            was, self._unreachable = self._unreachable, False
        if was and self._on_notice is not None:
            self._on_notice(f"reading {self.queue} again")

    def _report(self, number: int, job: Job, server: str, outcome: str) -> None:
        if self._on_job is None:
            return
        instance = f"instance {job.instance}, " if job.instance is not None else ""
        self._on_job(
            f"job {number} {job.job_name} ({instance}attempt {job.attempts}) on {server}: {outcome}"
        )


def retry_copy(item: Any, job: Job) -> Any:
    """The item a retry puts back: as read, with ``attempts`` one higher. Keys this worker
    does not know, and the producer's spelling (``jobName``), are kept: a PHP consumer may
    share the queue."""
    if isinstance(item, dict):
        return {**item, "attempts": job.attempts + 1}
    return job.retried().to_wire()
