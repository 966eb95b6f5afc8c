"""The Twisted side of a memcache connection: framing, reply order, commit-gated output.

Each ``dataReceived`` parses every complete request, runs them in order through the
:class:`~kestrelpy.handler.Session`, and answers the whole batch with one write. Output
that contains a reply to a write (``STORED`` …) is held until the commits carrying the
writes of its batch have finished (one, or two when large items ride their own lane, and
those may finish in either order); replies queued behind it wait too, so replies never
overtake each other. A blocked read (``/t=``) holds back the requests pipelined after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol

from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from kestrelpy.handler import (
    BLOCKED,
    CLOSE,
    COMMIT_FAILED,
    WROTE,
    Durable,
    ServerContext,
    Session,
)
from kestrelpy.wire.memcache import MemcacheParser, Request

_FLUSH_EVERY = 64  # in a long pipeline of reads, send replies every this many requests
_PAUSE_BACKLOG = 1024  # parsed requests queued behind a blocked read before we stop reading


class CommitGate(Protocol):
    """What a connection needs from the store: which batches its writes ride, and their end."""

    def take_write_tickets(self) -> tuple[int, ...]: ...

    def wait_also_for(self, tickets: Iterable[int]) -> None: ...

    def when_committed(self, listener: Any, ticket: int | None = None) -> None: ...


class _Hold:
    """Output before ``end`` waits for ``waiting`` more commits; ``ok`` unless one failed."""

    __slots__ = ("end", "ok", "tickets", "waiting")

    def __init__(self, tickets: tuple[int, ...], end: int) -> None:
        self.tickets = tickets
        self.end = end
        self.waiting = len(tickets)
        self.ok = True


class MemcacheConnection(TwistedProtocol):
    """One client connection. Reactor thread only."""

    _log = Logger()
    transport: Any  # a TCP transport: write, loseConnection, pause/resumeProducing

    def __init__(self, ctx: ServerContext, commits: CommitGate) -> None:
        self._ctx = ctx
        self._commits = commits
        settings = ctx.settings
        self._parser = MemcacheParser(
            max_line_length=settings.max_line_length,
            item_size_max=settings.item_size_max,
            honor_noreply=settings.honor_noreply,
            bare_errors=settings.bare_error_lines,
        )
        self._session = Session(ctx, self._resumed)
        self._out: list[Any] = []
        self._holds: deque[_Hold] = deque()
        self._backlog: deque[Request] = deque()
        self._blocked = False
        self._paused = False  # reading paused: too many requests behind a blocked read
        self._throttled = False  # reading paused: the client does not read its replies
        self._closing = False
        self._gone = False
        self._idle_timer: Any = None  # IDelayedCall when client_timeout is set

    def _start_idle_timer(self) -> None:
        timeout_ms = self._ctx.settings.client_timeout
        if timeout_ms is not None:
            self._idle_timer = self._ctx.clock.callLater(timeout_ms / 1000.0, self._idle)

    def _idle(self) -> None:
        """client_timeout: close a connection that sent nothing for that long.

        A connection blocked in a read is waiting for us, not idle: it gets more time.
        """
        if self._blocked:
            self._start_idle_timer()
            return
        self._idle_timer = None
        self.transport.loseConnection()

    def connectionMade(self) -> None:
        self._start_idle_timer()
        self.transport.registerProducer(self, True)
        # Replies are small and each is one write: Nagle would hold them for an ACK.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)  # absent on test doubles
        if set_no_delay is not None:
            set_no_delay(True)
        stats = self._ctx.stats
        stats.curr_connections += 1
        stats.total_connections += 1
        self._ctx.sessions.add(self._session)

    def dataReceived(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._idle_timer.reset(self._ctx.settings.client_timeout / 1000.0)  # type: ignore[operator]
        self._ctx.stats.bytes_read += len(data)
        requests = self._parser.feed(data)
        if self._blocked or self._backlog or self._closing or self._throttled:
            if not self._closing:
                self._backlog.extend(requests)
                if len(self._backlog) > _PAUSE_BACKLOG and not self._paused:
                    self._paused = True
                    self.transport.pauseProducing()
            return
        self._run(requests)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self._ctx.stats.curr_connections -= 1
        self._ctx.sessions.discard(self._session)
        self._session.end()

    # ------------------------------------------------------------------- running

    def _run(self, requests: Iterable[Request]) -> None:
        out = self._out
        execute = self._session.execute
        pending = iter(requests)
        countdown = _FLUSH_EVERY
        for request in pending:
            code = execute(request, out)
            countdown -= 1
            if not countdown:
                countdown = _FLUSH_EVERY
                if not self._holds:
                    # A long pipeline of reads: send what is ready, so that a client that
                    # does not read its replies makes the transport push back (below)
                    # before the replies pile up in memory.
                    self._send(len(out), True)
                    if self._throttled:
                        self._backlog.extend(pending)
                        break
            if not code:
                continue
            if code == WROTE:
                self._hold_for_write()
            elif code == BLOCKED:
                self._blocked = True
                self._backlog.extend(pending)
                break
            elif code == CLOSE:
                self._closing = True
                self._backlog.clear()
                break
        self._settle()

    def _hold_for_write(self) -> None:
        """Hold the output so far (ending with a write's reply) until that write commits.

        One hold per write, merged with the previous one when they wait for the same
        commits: a write then gets its own commit's verdict even when a neighbour in the
        same pipeline rode another lane whose commit failed.
        """
        tickets = self._commits.take_write_tickets()
        if not tickets:
            return
        holds = self._holds
        last = holds[-1] if holds else None
        if last is not None and last.tickets == tickets and last.waiting == len(tickets):
            last.end = len(self._out)  # the same commits are still ahead: wait with it
            return
        hold = _Hold(tickets, len(self._out))
        holds.append(hold)
        for ticket in tickets:
            self._commits.when_committed(partial(self._committed, hold), ticket)

    def _settle(self) -> None:
        """After a run: send the output now, unless it waits behind commits."""
        if not self._holds:
            self._send(len(self._out), True)
            self._close_if_closing()

    def _committed(self, hold: _Hold, ok: bool) -> None:
        """A commit ``hold`` waits for has ended: send what no longer waits for anything."""
        hold.waiting -= 1
        hold.ok = hold.ok and ok
        holds = self._holds
        while holds and not holds[0].waiting:
            done = holds.popleft()
            end = done.end if holds else len(self._out)
            self._send(end, done.ok)
            for later in holds:
                later.end -= end
        if not holds:
            self._close_if_closing()

    def _close_if_closing(self) -> None:
        """All output is sent: a connection that asked to close (quit, bad input) goes."""
        if self._closing and not self._gone:
            self.transport.loseConnection()

    def _send(self, end: int, ok: bool) -> None:
        if not end:
            return
        out = self._out
        if end == 1 and len(out) == 1:  # one request, one reply: the common case
            data = out.pop()
            if type(data) is Durable:
                data = data.ok if ok else COMMIT_FAILED
        else:
            parts = out[:end]
            del out[:end]
            for index, part in enumerate(parts):
                if type(part) is Durable:
                    parts[index] = part.ok if ok else COMMIT_FAILED
            data = b"".join(parts)
        if self._gone:
            return
        self._ctx.stats.bytes_written += len(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Send now when nothing is queued in the transport; else let it queue.

        Twisted's write only buffers and registers for writability, costing two
        epoll_ctl calls and a loop turn per reply; an idle socket nearly always takes
        a small reply whole, so try it first. Anything unsent goes through Twisted.
        """
        transport = self.transport
        sock = getattr(transport, "socket", None)
        if (
            sock is not None
            and transport.connected
            and not transport.disconnecting
            and not transport.dataBuffer
            and not transport._tempDataBuffer
        ):
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # Twisted's write path will see and report the error
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _resumed(self, replies: list[Any], code: int) -> None:
        """A blocked read sent something; ``code`` DONE means it ended (item, timeout or
        queue deleted) and the pipeline continues, BLOCKED that it goes on (monitor)."""
        self._out.extend(replies)
        if self._holds:
            # Our replies wait for commits: whoever handed us an item must not be told
            # STORED before we have it (else a crash in between loses an acked item).
            self._commits.wait_also_for(t for hold in self._holds for t in hold.tickets)
        if code == BLOCKED:
            self._settle()
            return
        self._blocked = False
        if self._backlog:
            # Not from inside the put that woke us: run the rest on a fresh stack.
            self._ctx.clock.callLater(0, self._drain_backlog)
        self._settle()

    def _drain_backlog(self) -> None:
        if self._gone or self._blocked or self._throttled:
            return
        backlog = self._backlog
        self._backlog = deque()
        self._run(backlog)
        if self._paused and not self._blocked and not self._gone and not self._throttled:
            self._paused = False
            self.transport.resumeProducing()

    # ------------------------------------------- push producer (output backpressure)

    def pauseProducing(self) -> None:
        """The transport's send buffer is full (the client is not reading): stop
        reading and running its requests until the buffer drains."""
        self._throttled = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._throttled = False
        if self._gone:
            return
        if not self._paused:
            self.transport.resumeProducing()
        if self._backlog and not self._blocked:
            self._ctx.clock.callLater(0, self._drain_backlog)

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleanup."""


class MemcacheFactory(Factory):
    """Builds a connection per client around the shared server context."""

    noisy = False  # no log line per listener start/stop

    def __init__(self, ctx: ServerContext, commits: CommitGate) -> None:
        self._ctx = ctx
        self._commits = commits

    def buildProtocol(self, addr: Any) -> MemcacheConnection:
        return MemcacheConnection(self._ctx, self._commits)
