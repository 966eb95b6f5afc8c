"""The deadlines of one queue's open reads (``open_transaction_timeout``), oldest first.

Kestrel 2.4.7 aborts an open item that outlived its timeout lazily: a transactional read
on the queue first gives back the oldest expired one, then reads. No timer runs meanwhile,
so a lease costs one deque entry. Leases are kept in the order they were taken; with one
timeout per queue that is deadline order too (after a reload shortened the timeout, a later
lease may fall due first and then waits for the ones ahead of it). Reactor thread only.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable

_NEVER = sys.maxsize  # next_due_ms while no lease is held

# ``expire(item_id)`` asks the holder to give the item back; False if it no longer holds it.
GiveBack = Callable[[int], bool]


class Leases:
    """Open items of one queue with a deadline; ``next_due_ms`` is the earliest held."""

    __slots__ = ("_held", "next_due_ms")

    def __init__(self) -> None:
        self._held: deque[tuple[int, int, GiveBack]] = deque()
        self.next_due_ms = _NEVER  # so a read checks one int, not the deque, while none is due

    def add(self, due_ms: int, item_id: int, expire: GiveBack) -> None:
        """Lease ``item_id`` until ``due_ms`` (unix ms)."""
        if not self._held:
            self.next_due_ms = due_ms
        self._held.append((due_ms, item_id, expire))

    def expire(self, now_ms: int) -> None:
        """Give back the oldest item due by ``now_ms`` whose holder still holds it.

        Leases due whose holder answers False (the item was closed or given back since)
        are dropped on the way; one item given back ends the call, as in Kestrel.
        """
        held = self._held
        while held and held[0][0] <= now_ms:
            _due_ms, item_id, expire = held.popleft()
            if expire(item_id):
                break
        self.next_due_ms = held[0][0] if held else _NEVER
