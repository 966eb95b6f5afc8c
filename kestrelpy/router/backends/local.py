"""The ``local`` backend: queues in a directory that processes on this host share.

Over :class:`~kestrelpy.storage.shared_queues.SharedQueues`: a message is one item
(``wire.pack``), on disk when ``send`` returns; ``take`` leases it to this process until
``ack``, ``release`` (back to the head), ``lease_s`` running out, or this process ending
(then the next take by any process has it again: redelivery after ``kill -9``).

```toml
[router.jobs]
implementation = "local"
path = "/var/lib/myapp/queues"   # a directory, created if missing; one per host
lease_s = 600                    # how long a taker may hold a message before others may take it
map_size = 1073741824            # bytes of address space to start with; grows when full
```

The store is opened on first use, not by :func:`open_backend` (the router opens backends
when an interface is added, with no I/O). So a backend made before ``fork()`` and first
used after it works in each child; one already used before refuses to work in the child
(an LMDB environment must not cross ``fork()``, and py-lmdb will not open a second one on
the same directory in that process): open the router again there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kestrelpy.errors import StoreError
from kestrelpy.router.backends.base import BackendError, checked_where
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import BadMessage, Message, pack, unpack
from kestrelpy.storage.shared_queues import DEFAULT_MAP_SIZE, SharedQueues, Taken, unix_ms

_KEYS = ("lease_s", "map_size", "path")
DEFAULT_LEASE_S = 600.0
MIN_MAP_SIZE = 1024 * 1024  # smaller maps would spend their first writes growing


class LeaseLost(BackendError):
    """An ack came after the lease ran out and another taker got the message: it is (or
    was) processed twice. Nothing is left to undo; the router reports it."""


class LocalLease:
    """One message taken from a local queue; ends with ``ack`` or ``release``, once."""

    def __init__(self, backend: LocalBackend, taken: Taken, message: Message) -> None:
        self._backend = backend
        self._taken = taken
        self._message = message

    @property
    def message(self) -> Message:
        return self._message

    def ack(self) -> None:
        self._backend.confirm(self._taken)

    def release(self) -> None:
        self._backend.give_back(self._taken)


class LocalBackend:
    """One interface's view of a directory of shared queues; for one thread.

    ``clock`` (unix ms) sets lease deadlines; tests pass a fake one to run a lease out.
    """

    network = False  # this host's disk: trusted = true may carry pickle

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        lease_ms: int,
        map_size: int = DEFAULT_MAP_SIZE,
        clock: Callable[[], int] = unix_ms,
    ) -> None:
        self._where = f"router interface {name!r}"
        self._path = path
        self._lease_ms = lease_ms
        self._map_size = map_size
        self._clock = clock
        self._queues: SharedQueues | None = None
        self._opened_by = 0  # the pid that opened _queues
        self._held: dict[bytes, Taken] = {}  # lease owner bytes -> lease, until it ends
        self._closed = False

    def send(self, queue: str, messages: Sequence[Message]) -> None:
        data = [pack(message) for message in messages]
        try:
            self._store().put(queue, data)
        except (StoreError, ValueError) as err:
            raise BackendError(f"{self._where}: {err}") from err

    def take(self, queue: str) -> LocalLease | None:
        try:
            taken = self._store().take(queue)
        except (StoreError, ValueError) as err:
            raise BackendError(f"{self._where}: {err}") from err
        if taken is None:
            return None
        self._held[taken.owner] = taken
        try:
            message = unpack(taken.data)
        except BadMessage:  # not ours after all: the body as it is, for on_error to judge
            message = Message({}, taken.data)
        return LocalLease(self, taken, message)

    def confirm(self, taken: Taken) -> None:
        """Ack: the message is gone for good (see :class:`LeaseLost` for a late ack)."""
        self._check_held(taken)
        try:
            acked = self._store().ack(taken)
        except StoreError as err:  # still held: close() releases it
            raise BackendError(f"{self._where}: {err}") from err
        del self._held[taken.owner]
        if not acked:
            raise LeaseLost(
                f"{self._where}: ack on queue {taken.queue!r} after the lease ran out "
                f"(lease_s = {self._lease_ms / 1000:g}): another taker got the message"
            )

    def give_back(self, taken: Taken) -> None:
        """Release: back at the head of its queue. A lease that ran out needs nothing:
        the message is back on the queue already, or with another taker."""
        self._check_held(taken)
        try:
            self._store().release([taken])
        except StoreError as err:  # still held: close() releases it
            raise BackendError(f"{self._where}: {err}") from err
        del self._held[taken.owner]

    def close(self) -> None:
        """Release every lease still held (one transaction) and close the store."""
        if self._closed:
            return
        self._closed = True
        queues, self._queues = self._queues, None
        held, self._held = list(self._held.values()), {}
        if queues is None or self._opened_by != os.getpid():
            return  # never opened, or by the parent before fork(): its leases are its own
        try:
            queues.release(held)
        except StoreError as err:
            raise BackendError(f"{self._where}: {err}") from err
        finally:
            queues.close()

    def _check_held(self, taken: Taken) -> None:
        if self._closed:
            raise BackendError(f"{self._where}: closed; its leases were released")
        if taken.owner not in self._held:
            raise BackendError(f"{self._where}: this lease was acked or released already")

    def _store(self) -> SharedQueues:
        """The store, opened in this process on first use."""
        if self._closed:
            raise BackendError(f"{self._where}: closed")
        if self._queues is None:
            try:
                self._queues = SharedQueues(
                    self._path, lease_ms=self._lease_ms, map_size=self._map_size, clock=self._clock
                )
            except StoreError as err:
                raise BackendError(f"{self._where}: {err}") from err
            self._opened_by = os.getpid()
        return self._queues


def open_backend(name: str, options: Mapping[str, Any]) -> LocalBackend:
    """Check the options (naming interface and key); opens nothing yet."""
    where = checked_where(name, "local", options, _KEYS)
    path = options.get("path")
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise RouterConfigError(f"{where}: path: expected a directory name, got {path!r}")
    lease_s = options.get("lease_s", DEFAULT_LEASE_S)
    if (
        isinstance(lease_s, bool)
        or not isinstance(lease_s, int | float)
        or not math.isfinite(lease_s)
        or lease_s < 0.001
    ):
        raise RouterConfigError(
            f"{where}: lease_s: expected a positive number of seconds, got {lease_s!r}"
        )
    map_size = options.get("map_size", DEFAULT_MAP_SIZE)
    if isinstance(map_size, bool) or not isinstance(map_size, int) or map_size < MIN_MAP_SIZE:
        raise RouterConfigError(
            f"{where}: map_size: expected bytes, at least {MIN_MAP_SIZE}, got {map_size!r}"
        )
    return LocalBackend(name, Path(path), lease_ms=round(lease_s * 1000), map_size=map_size)
