"""What a session hands its connection: reply parts, and a code saying what happens next.

A session appends reply parts to the connection's output list: plain ``bytes``, or a
:class:`Durable` marker for a reply that may only be sent once the commit holding its write
has succeeded (``STORED``, ``DELETED``, a flush's ``END``). The connection's
:class:`~kestrelpy.output.CommitGatedOutput` turns each marker into its ``ok`` bytes, or
into :data:`COMMIT_FAILED` when that commit failed.

Each request returns one of five codes (plain ints: they are compared on every request):

* ``DONE``: replied (or nothing to reply); run the next request.
* ``WROTE``: also staged a write; the replies so far wait for its commit.
* ``BLOCKED``: a read waits (``/t=``, ``monitor``); later requests wait behind it.
* ``CLOSE``: send what is queued, then close (``quit``, or framing is lost).
* ``STREAM``: the last part is a :class:`Stream`, a report too big to build at once
  (``stats``, ``dump_stats`` over many queues); the connection takes it off and sends its
  pieces one per reactor turn, as fast as the client reads them; later requests wait.
"""

from __future__ import annotations

from collections.abc import Iterator

from kestrelpy.wire.memcache import DELETED, END, STORED

DONE, WROTE, BLOCKED, CLOSE, STREAM = 0, 1, 2, 3, 4


class Durable:
    """A reply that may be sent only after the commit holding its write succeeded."""

    __slots__ = ("ok",)

    def __init__(self, ok: bytes) -> None:
        self.ok = ok


STORED_DURABLE = Durable(STORED)
DELETED_DURABLE = Durable(DELETED)
END_DURABLE = Durable(END)
FLUSHED_DURABLE = Durable(b"Flushed all queues.\r\n")
# SERVER_ERROR, not CLIENT_ERROR: Kestrel clients retry a write elsewhere only on this.
COMMIT_FAILED = b"SERVER_ERROR store failure: write not committed\r\n"


class Stream:
    """A reply in pieces: built one piece at a time as the client takes them, so that a
    report over 100,000 queues neither holds the reactor for seconds nor sits whole in
    memory behind a client that does not read it."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
