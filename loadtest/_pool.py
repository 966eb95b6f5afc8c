"""Worker processes for the load tools: fork, start together, publish counters, stop, collect.

One Python process saturates one core long before a server does on many connections, so the
tools spread connections over forked workers. Coordination is deliberately cheap for the hot
loops: counters live in a lock-free shared int64 array (one writer per slot), the stop request
is slot 0 of the same array, and results travel once, at the end, through a pipe.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.sharedctypes import RawArray
from typing import Any

_CTX = multiprocessing.get_context("fork")  # cheap start, inherits the parent's pinning
STOP = 0  # shared[STOP] != 0: the coordinator asks every worker to wind down


class WorkerContext:
    """What a worker sees: its index, its spec and its slots of the shared counter array."""

    def __init__(self, index: int, spec: Any, shared: Any, slots: int, workers: int) -> None:
        self.index = index
        self.spec = spec
        self.shared = shared  # ctypes int64 array; hot loops index it directly
        self.base = 1 + index * slots
        self._slots = slots
        self._workers = workers
        self._barrier: Any = None

    def publish(self, slot: int, value: int) -> None:
        """Make a counter visible to the coordinator and the other workers."""
        self.shared[self.base + slot] = value

    def total(self, slot: int) -> int:
        """Sum of ``slot`` over all workers (a racy but monotonic snapshot)."""
        shared, step = self.shared, self._slots
        return sum(shared[1 + w * step + slot] for w in range(self._workers))

    def stop_requested(self) -> bool:
        return bool(self.shared[STOP])

    def ready(self, timeout: float) -> None:
        """Block until every worker and the coordinator are ready: all start measuring at once."""
        self._barrier.wait(timeout)


Target = Callable[[WorkerContext], dict[str, Any]]


class Pool:
    """Forked workers running ``target(ctx) -> result dict``, one per spec.

    Protocol: each worker connects, calls ``ctx.ready()``; the coordinator's ``start`` returns
    when all did (the barrier), then polls counters, may ``request_stop`` and ``collect``s.
    A worker that raises sends the traceback instead of a result and breaks the barrier, so
    the coordinator never waits out a timeout for a dead worker.
    """

    def __init__(self, target: Target, specs: Sequence[Any], slots: int) -> None:
        self._target = target
        self._specs = list(specs)
        self._slots = slots
        self.shared: Any = RawArray("q", 1 + slots * len(self._specs))
        self._barrier = _CTX.Barrier(len(self._specs) + 1)
        self._procs: list[Any] = []
        self._pipes: list[multiprocessing.connection.Connection] = []

    @property
    def workers(self) -> int:
        return len(self._specs)

    def start(self, timeout: float) -> None:
        """Fork the workers and wait until all are connected and ready."""
        for index, spec in enumerate(self._specs):
            receiver, sender = _CTX.Pipe(duplex=False)
            proc = _CTX.Process(target=self._run, args=(index, spec, sender), daemon=True)
            proc.start()
            sender.close()
            self._procs.append(proc)
            self._pipes.append(receiver)
        try:
            self._barrier.wait(timeout)
        except threading.BrokenBarrierError:
            errors = self._errors_so_far(timeout)
            self.terminate()
            raise RuntimeError("worker failed to start: " + (errors or "timeout")) from None

    def _run(self, index: int, spec: Any, pipe: multiprocessing.connection.Connection) -> None:
        ctx = WorkerContext(index, spec, self.shared, self._slots, len(self._specs))
        ctx._barrier = self._barrier
        gc.disable()  # hot loops make no cycles; a collection would only add latency spikes
        try:
            result = self._target(ctx)
        except BaseException:
            self._barrier.abort()
            result = {"error": traceback.format_exc(limit=8)}
        pipe.send(result)
        pipe.close()

    def value(self, worker: int, slot: int) -> int:
        """One worker's counter."""
        return int(self.shared[1 + worker * self._slots + slot])

    def total(self, slot: int) -> int:
        """Sum of ``slot`` over all workers."""
        shared, step = self.shared, self._slots
        return sum(shared[1 + w * step + slot] for w in range(self.workers))

    def request_stop(self) -> None:
        self.shared[STOP] = 1

    def alive(self) -> int:
        """How many workers have not delivered a result yet (pipe still silent)."""
        return sum(1 for pipe in self._pipes if not pipe.poll(0))

    def wait(self, timeout: float) -> None:
        """Return when a worker delivers its result or after ``timeout`` s (coordinator tick).

        Event-driven: the coordinator wakes at once when the last worker finishes instead of
        sleeping out its tick.
        """
        pending = [pipe for pipe in self._pipes if not pipe.poll(0)]
        if pending:
            multiprocessing.connection.wait(pending, timeout)

    def collect(self, timeout: float) -> list[dict[str, Any]]:
        """Every worker's result, in spec order; raises RuntimeError with worker tracebacks."""
        deadline = time.monotonic() + timeout
        results: list[dict[str, Any]] = []
        for pipe in self._pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                self.terminate()
                raise RuntimeError("a worker did not finish in time")
            results.append(pipe.recv())
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError("worker failed:\n" + "\n".join(errors))
        return results

    def _errors_so_far(self, timeout: float) -> str:
        found = []
        for pipe in self._pipes:
            if pipe.poll(min(timeout, 2.0)):
                result = pipe.recv()
                if "error" in result:
                    found.append(result["error"])
        return "\n".join(found)

    def terminate(self) -> None:
        """Kill our own workers (by process object, never by name) and reap them."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(2.0)


def supervise(
    pool: Pool,
    tick: Callable[[], None],
    deadline: float,
    hard_deadline: float,
    interval: float = 0.1,
) -> bool:
    """Coordinator loop: call ``tick`` about every ``interval`` s until all workers are done.

    At ``deadline`` (time.monotonic()) the workers are asked to stop; at ``hard_deadline`` the
    loop gives up waiting (``collect`` then kills the stragglers). Returns True if the
    deadline had to stop the run.
    """
    stopped_by_deadline = False
    while pool.alive() and time.monotonic() < hard_deadline:
        pool.wait(interval)
        tick()
        if not stopped_by_deadline and time.monotonic() >= deadline and pool.alive():
            stopped_by_deadline = True
            pool.request_stop()
    return stopped_by_deadline


class QuietQueue:
    """Notices that production has ended and no item arrived for ``span_s`` seconds.

    Items cannot appear after the last acknowledged set, so consumers that keep waiting
    (each ``get /t=`` empty) are waiting for items the server lost: stop and let the check
    count them, instead of sitting out the deadline. A premature stop (a very slow server)
    is harmless: the final drain still finds what is left.
    """

    def __init__(self, span_s: float) -> None:
        self._span_s = span_s
        self._since = 0.0
        self._hits = -1

    def quiet(self, produced: bool, hits: int, now: float) -> bool:
        if not produced:
            return False
        if hits != self._hits:
            self._hits, self._since = hits, now
            return False
        return now - self._since > self._span_s
