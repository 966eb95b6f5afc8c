"""A connection's one blocked read (``get q/t=N``, or ``monitor``): its waiter, its timeout.

While blocked, a connection is a :class:`~kestrelpy.queues.queue.Waiter` on one queue plus
one entry in the server's :class:`~kestrelpy.queues.deadlines.Deadlines`. The wait ends in
exactly one of three ways, each reported once to its :class:`ReadOwner` (the session): an
item is handed over (the waiter's ``deliver``), the time runs out (``read_timed_out``), or
the queue is deleted (``read_queue_deleted``). A ``monitor`` is a wait that takes up to
``monitor_left`` items, one waiter after another, under a single deadline. Reactor thread
only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kestrelpy.queues.deadlines import Deadline, Deadlines
from kestrelpy.queues.queue import Item, Queue, Waiter


class ReadOwner(Protocol):
    """Who is told how a blocked read ended without an item (the session)."""

    def read_timed_out(self, queue: Queue, was_monitor: bool) -> None:
        """The wait's time ran out (for a monitor: its batch ends)."""

    def read_queue_deleted(self) -> None:
        """The queue waited on was deleted: the read ends empty."""


class BlockedRead:
    """The blocked read of one session; idle (``waiter is None``) between waits."""

    __slots__ = (
        "_deadlines",
        "_owner",
        "_timer",
        "key",
        "monitor_left",
        "queue",
        "waiter",
        "with_cas",
    )

    def __init__(self, deadlines: Deadlines, owner: ReadOwner) -> None:
        self._deadlines = deadlines
        self._owner = owner  # an object, not two bound methods: idle readers are many
        self._timer: Deadline | None = None
        self.queue: Queue | None = None
        self.waiter: Waiter | None = None
        self.key = b""  # the get's key, echoed in the VALUE line
        self.with_cas = False
        self.monitor_left = 0  # items a blocked monitor may still open

    def begin(
        self,
        queue: Queue,
        mode: int,
        deliver: Callable[[Item], None],
        wait_ms: int,
        *,
        key: bytes = b"",
        with_cas: bool = False,
        monitor_left: int = 0,
    ) -> None:
        """Wait on ``queue`` for at most ``wait_ms``; ``deliver`` gets the item."""
        self.queue = queue
        self.key = key
        self.with_cas = with_cas
        self.monitor_left = monitor_left
        self.waiter = queue.add_waiter(mode, deliver, self._gone)
        self._timer = self._deadlines.add(wait_ms, self._timed_out)

    def wait_again(self, mode: int, deliver: Callable[[Item], None]) -> None:
        """A monitor took an item and may take more: wait for the next, same deadline."""
        assert self.queue is not None
        self.waiter = self.queue.add_waiter(mode, deliver, self._gone)

    def end(self) -> None:
        """Stop waiting (item handed over, or the connection is gone): no report."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiter = self.waiter
        if waiter is not None and waiter.active and self.queue is not None:
            self.queue.remove_waiter(waiter)  # not served (timeout, disconnect): leave the line
        self.waiter = None
        self.queue = None
        self.monitor_left = 0

    def _timed_out(self) -> None:
        self._timer = None
        queue = self.queue
        if queue is None or self.waiter is None:
            return
        was_monitor = self.monitor_left > 0
        self.end()
        self._owner.read_timed_out(queue, was_monitor)

    def _gone(self) -> None:
        """The queue was deleted (its waiters already released): the read ends empty."""
        if self.waiter is not None:
            self.end()
            self._owner.read_queue_deleted()
