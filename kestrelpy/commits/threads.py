"""The threads group commit runs beside the reactor: the writer, and the periodic fsync.

Neither touches anything but the storage callable it was given and the batch it was
handed; results go back to the reactor thread through ``callFromThread`` (the scheduler's
``notify``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from queue import SimpleQueue

from kestrelpy.commits.batch import Batch
from kestrelpy.errors import StoreError

_JOIN_TIMEOUT_S = 30.0  # shutdown waits this long for a commit or an fsync in progress


class Writer:
    """The one thread that commits (and fsyncs) batches under ``sync="always"``.

    At most one batch is submitted at a time (the scheduler waits for its result), so
    commits never overlap and finish in submission order.
    """

    def __init__(
        self, commit: Callable[[Batch], StoreError | None], notify: Callable[[], None]
    ) -> None:
        self._commit = commit
        self._notify = notify  # runs on this thread after each commit: wake the reactor
        self._inbox: SimpleQueue[Batch | None] = SimpleQueue()
        self._done: SimpleQueue[tuple[Batch, StoreError | None]] = SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="kestrelpy-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        self._idle.clear()
        self._inbox.put(batch)

    def results(self) -> Iterator[tuple[Batch, StoreError | None]]:
        """The batches committed since the last call, each with its error (or None)."""
        while not self._done.empty():
            yield self._done.get()

    def drain(self, timeout_s: float = _JOIN_TIMEOUT_S) -> None:
        """Wait for the batch in flight (shutdown): at most one is ever submitted."""
        self._idle.wait(timeout_s)

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=_JOIN_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            batch = self._inbox.get()
            if batch is None:
                return
            error = self._commit(batch)
            self._done.put((batch, error))
            self._idle.set()
            self._notify()


class PeriodicSyncer:
    """Calls ``sync`` every interval under ``sync="periodic"`` (it fsyncs only when
    something was committed since the last time)."""

    def __init__(self, sync: Callable[[], None], interval_s: float) -> None:
        self._sync = sync
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kestrelpy-fsync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=_JOIN_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._sync()
