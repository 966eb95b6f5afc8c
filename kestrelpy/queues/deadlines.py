"""Timeouts of blocked reads, with one reactor timer for all of them.

A flood of consumers in ``get q/t=250`` creates and cancels a timeout for nearly every
read; a reactor ``DelayedCall`` each (a heap push, and a heap rebuild every so many
cancellations) costs more than the read. Reads that wait the same time expire in the
order they started, so each distinct wait length is one FIFO lane, and only the
earliest lane head needs a reactor timer. The lane heads are kept in a heap, so a timeout
touches only the lanes that are due: 10,000 readers each waiting a different time cost
O(log n) per timeout, not a pass over every lane. Cancelling is O(1) (a flag); cancelled
entries are dropped when they reach their lane's head. Idle: no timer at all.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

_COMPACT_AT = 1024  # cancelled entries tolerated before a compaction is considered


def _nothing() -> None:
    pass


class Deadline:
    """One pending timeout; the same ``active``/``cancel`` shape as a DelayedCall."""

    __slots__ = ("_live", "_owner", "callback", "due")

    def __init__(self, due: float, callback: Callable[[], None], owner: Deadlines) -> None:
        self.due = due
        self.callback = callback
        self._owner = owner
        self._live = True

    def active(self) -> bool:
        return self._live

    def cancel(self) -> None:
        """O(1); drops the callback at once so a long wait pins no session in memory."""
        if self._live:
            self._live = False
            self.callback = _nothing
            self._owner.cancelled += 1


class Deadlines:
    """All blocked-read timeouts of a server. Reactor thread only.

    Each non-empty lane has exactly one entry ``(due, wait_ms)`` in ``_heads``: the due
    time of its head. Heads leave only through the heap (or a compaction, which rebuilds
    it), so the heap's top is always the earliest entry of all; a cancelled entry is
    dropped when it comes due, or at a compaction.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._lanes: dict[int, deque[Deadline]] = {}
        self._heads: list[tuple[float, int]] = []  # heap: one entry per non-empty lane
        self._timer: Any = None  # the one IDelayedCall, for the earliest head
        self._timer_due = float("inf")
        self.cancelled = 0  # cancelled entries still in lanes
        self._held = 0  # entries in lanes, live or cancelled

    def add(self, wait_ms: int, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` in ``wait_ms`` unless cancelled first."""
        due = self._clock.seconds() + wait_ms / 1000.0
        deadline = Deadline(due, callback, self)
        if self.cancelled > _COMPACT_AT and self.cancelled * 2 > self._held:
            self._compact()
        lane = self._lanes.get(wait_ms)
        if lane is None:
            lane = self._lanes[wait_ms] = deque()
            heapq.heappush(self._heads, (due, wait_ms))
        lane.append(deadline)
        self._held += 1
        if due < self._timer_due:
            self._arm(due)
        return deadline

    def _compact(self) -> None:
        """Drop cancelled entries (long waits would keep them for their whole length)."""
        for wait_ms in list(self._lanes):
            lane = deque(d for d in self._lanes[wait_ms] if d.active())
            if lane:
                self._lanes[wait_ms] = lane
            else:
                del self._lanes[wait_ms]
        self._heads = [(lane[0].due, wait_ms) for wait_ms, lane in self._lanes.items()]
        heapq.heapify(self._heads)
        self._held -= self.cancelled
        self.cancelled = 0

    def _arm(self, due: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._clock.callLater(max(due - self._clock.seconds(), 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_due = float("inf")
        now = self._clock.seconds()
        expired: list[Deadline] = []
        heads = self._heads
        lanes = self._lanes
        while heads and heads[0][0] <= now:  # a merge of the lanes, earliest head first
            wait_ms = heads[0][1]
            lane = lanes[wait_ms]
            head = lane.popleft()
            self._held -= 1
            if head.active():
                head._live = False
                expired.append(head)
            else:
                self.cancelled -= 1
            if lane:
                heapq.heapreplace(heads, (lane[0].due, wait_ms))
            else:
                heapq.heappop(heads)
                del lanes[wait_ms]
        if heads:
            self._arm(heads[0][0])
        for deadline in expired:
            deadline.callback()

    def pending(self) -> int:
        """Entries still held (live or cancelled but not yet dropped)."""
        return self._held
