"""Commit-gated output: a connection's replies, sent in order once the commits they report on end.

A session appends reply parts to :attr:`CommitGatedOutput.parts` (plain bytes, or
:class:`~kestrelpy.replies.Durable` markers). After each request that staged a write the
connection calls :meth:`~CommitGatedOutput.after_write`: the output so far is held until
the commits carrying that write have ended (one, or two when large items ride their own
lane, in either order), and each marker then becomes its ``ok`` bytes or, if one of those
commits failed, :data:`~kestrelpy.replies.COMMIT_FAILED`. Replies queued behind a hold
wait too, so replies never overtake each other.

The order of calls against the :class:`~kestrelpy.commits.CommitGate` is the one it
documents: ``take_write_tickets()`` after every write, ``when_committed`` for each ticket,
``wait_also_for`` when a blocked reader gets an item while its own replies are held.

Needs no transport: it talks to an :class:`OutputSink` (the connection), so it is tested
with plain objects.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any, Protocol

from kestrelpy.commits import CommitGate
from kestrelpy.replies import COMMIT_FAILED, Durable


class OutputSink(Protocol):
    """Where ready output goes: the connection."""

    def transmit(self, data: bytes) -> None:
        """Put ``data`` on the wire (after everything transmitted before)."""

    def output_drained(self) -> None:
        """Nothing is held any more: all output so far has been transmitted."""


class _Hold:
    """Output before ``end`` waits for ``waiting`` more commits; ``ok`` unless one failed."""

    __slots__ = ("end", "ok", "tickets", "waiting")

    def __init__(self, tickets: tuple[int, ...], end: int) -> None:
        self.tickets = tickets
        self.end = end
        self.waiting = len(tickets)
        self.ok = True


class CommitGatedOutput:
    """One connection's pending replies and the holds on them. Reactor thread only."""

    __slots__ = ("_commits", "_holds", "_sink", "parts", "size")

    def __init__(self, commits: CommitGate, sink: OutputSink) -> None:
        self._commits = commits
        self._sink = sink  # an object, not two bound methods: idle connections are many
        self._holds: deque[_Hold] | None = None  # made on the first write (readers have none)
        self.parts: list[Any] = []  # appended to by the session; bytes or Durable
        # Bytes in ``parts`` (markers not counted): the connection adds what each request
        # appended, and stops running requests while it is over a bound (see server.py).
        self.size = 0

    @property
    def held(self) -> bool:
        """Some output waits for a commit."""
        return bool(self._holds)

    def after_write(self) -> None:
        """Hold the output so far (ending with a write's reply) until that write commits.

        One hold per write, merged with the previous one when they wait for the same
        commits: a write then gets its own commit's verdict even when a neighbour in the
        same pipeline rode another lane whose commit failed.
        """
        tickets = self._commits.take_write_tickets()
        if not tickets:
            return  # nothing staged or committing: the write is already as durable as it gets
        holds = self._holds
        if holds is None:
            holds = self._holds = deque()
        last = holds[-1] if holds else None
        if last is not None and last.tickets == tickets and last.waiting == len(tickets):
            last.end = len(self.parts)  # the same commits are still ahead: wait with it
            return
        hold = _Hold(tickets, len(self.parts))
        holds.append(hold)
        for ticket in tickets:
            self._commits.when_committed(partial(self._committed, hold), ticket)

    def send_ready(self) -> None:
        """Send everything now if nothing is held (a long pipeline of reads, mid-run)."""
        if not self._holds:
            self._release(len(self.parts), True)

    def settle(self) -> None:
        """After a run of requests: send the output now, unless it waits behind commits."""
        if not self._holds:
            self._release(len(self.parts), True)
            self._sink.output_drained()

    def add_from_reader(self, replies: list[Any]) -> None:
        """A blocked read's replies (its item, or END) join the output, and settle.

        If replies ahead of them wait for commits, whoever handed this reader an item must
        not be told STORED before those commits either (else a crash in between loses an
        acknowledged item): the gate makes the next writer wait for them too.
        """
        self.parts.extend(replies)
        self.size += sum(len(part) for part in replies if type(part) is bytes)
        holds = self._holds
        if holds:
            self._commits.wait_also_for(t for hold in holds for t in hold.tickets)
        else:
            self._release(len(self.parts), True)
            self._sink.output_drained()

    def _committed(self, hold: _Hold, ok: bool) -> None:
        """A commit ``hold`` waits for has ended: send what no longer waits for anything."""
        hold.waiting -= 1
        hold.ok = hold.ok and ok
        holds = self._holds
        assert holds is not None
        while holds and not holds[0].waiting:
            done = holds.popleft()
            end = done.end if holds else len(self.parts)
            self._release(end, done.ok)
            for later in holds:
                later.end -= end
        if not holds:
            self._sink.output_drained()

    def _release(self, end: int, ok: bool) -> None:
        """Send ``parts[:end]``, markers resolved by ``ok``, as one write."""
        if not end:
            return
        parts = self.parts
        if end == 1 and len(parts) == 1:  # one request, one reply: the common case
            data = parts.pop()
            if type(data) is Durable:
                data = data.ok if ok else COMMIT_FAILED
        else:
            ready = parts[:end]
            del parts[:end]
            for index, part in enumerate(ready):
                if type(part) is Durable:
                    ready[index] = part.ok if ok else COMMIT_FAILED
            data = b"".join(ready)
        # Markers were not counted but are now bytes: by so much the size runs low, until
        # the output is empty again.
        self.size = self.size - len(data) if parts else 0
        self._sink.transmit(data)
