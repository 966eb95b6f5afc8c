"""The line of readers blocked on one queue (``get q/t=N``), served oldest first.

Joining, leaving and being served are O(1) amortized. A reader that leaves (its wait timed
out, its connection closed) is only marked; the line drops marked entries as it reaches
them, empties itself when the last reader leaves, and compacts itself once marked entries
outnumber live ones by ``_COMPACT_SLACK``, so a flood of short waits costs no O(n) removal
each. What a served reader gets is the queue's business.
Reactor thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from kestrelpy.storage.layout import StoredItem as Item

TAKE, OPEN, PEEK = 0, 1, 2  # what a blocked reader wants: the item, an open read, a look
_COMPACT_SLACK = 64


class Waiter:
    """A reader blocked in ``get q/t=N``: a few slots, no timer work while it waits."""

    __slots__ = ("active", "deliver", "mode", "on_queue_deleted")

    def __init__(
        self, mode: int, deliver: Callable[[Item], None], on_queue_deleted: Callable[[], None]
    ) -> None:
        self.mode = mode
        self.deliver = deliver  # called with the item handed over
        self.on_queue_deleted = on_queue_deleted  # the wait ends without an item
        self.active = True  # in line: neither served, nor gone, nor released


class WaiterLine:
    """Blocked readers of one queue in arrival order; ``count`` of them still waiting."""

    __slots__ = ("_dead", "_line", "count")

    def __init__(self) -> None:
        self._line: deque[Waiter] = deque()
        self._dead = 0  # entries of readers who left, not yet dropped
        self.count = 0

    def join(
        self, mode: int, deliver: Callable[[Item], None], on_queue_deleted: Callable[[], None]
    ) -> Waiter:
        """A new reader waits behind everyone already waiting."""
        waiter = Waiter(mode, deliver, on_queue_deleted)
        self._line.append(waiter)
        self.count += 1
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Timeout or disconnect: O(1) now; a waiter already served or released is ignored."""
        if not waiter.active:
            return
        waiter.active = False
        self.count -= 1
        self._dead += 1
        if not self.count:  # nobody waits: keep no entry (its callbacks pin a session)
            self._line.clear()
            self._dead = 0
        elif self._dead > self.count + _COMPACT_SLACK:
            self._line = deque(w for w in self._line if w.active)
            self._dead = 0

    def next_taker(self, item: Item) -> Waiter | None:
        """Who gets ``item``: the oldest reader who takes or opens it, out of the line now.

        Peeking readers ahead of that one are shown ``item`` on the way and leave the line.
        The taker is returned undelivered (the queue accounts for the item first); None
        when nobody but peekers waited.
        """
        line = self._line
        while line:
            waiter = line.popleft()
            if not waiter.active:
                self._dead -= 1
                continue
            waiter.active = False
            self.count -= 1
            if waiter.mode != PEEK:
                return waiter
            waiter.deliver(item)
        return None

    def release_all(self) -> list[Waiter]:
        """Empty the line (queue deleted or server stopping); the readers still waiting."""
        live = [w for w in self._line if w.active]
        for waiter in live:
            waiter.active = False
        self._line.clear()
        self._dead = 0
        self.count = 0
        return live
