"""The Twisted side of a memcache connection: framing, request order, flow control.

Each ``dataReceived`` parses every complete request, runs them in order through the
:class:`~kestrelpy.handler.Session`, and answers the whole batch with one write through
the connection's :class:`~kestrelpy.output.CommitGatedOutput` (which holds replies to
writes until their commits end). A blocked read (``/t=``) holds back the requests
pipelined after it.

A connection is in one of four states:

========  =============================================  ==================================
state     meaning                                        leaves for
========  =============================================  ==================================
RUNNING   requests run as they arrive                    WAITING (a read blocks), CLOSING
                                                         (``quit``, lost framing), GONE
WAITING   a read waits, or a report streams; later       RUNNING (the read or the report
          requests queue (backlog)                       ended), GONE
CLOSING   the output is sent, then the socket closed;    GONE
          input is ignored
GONE      the transport is lost; nothing is run or sent  (final)
========  =============================================  ==================================

Reading is paused (``transport.pauseProducing``) while any of three reasons holds, and
resumed when none does: ``BACKLOG``, more than ``_PAUSE_BACKLOG`` requests queued behind a
blocked read; ``OUTPUT``, the transport's send buffer is full because the client does not
read its replies; ``HELD``, over ``_OUTPUT_BOUND`` bytes of replies wait for a commit.
Under ``OUTPUT`` or ``HELD`` requests are not run either, and the bound is checked after
every request, not every batch: a connection's unsent replies stay within about
``_OUTPUT_BOUND`` plus one reply plus the transport's buffer, however many it pipelines.

A report over many queues (``stats``, ``dump_stats``) is a
:class:`~kestrelpy.replies.Stream`: one piece is built per reactor turn, and only while
the client keeps up (no ``OUTPUT`` or ``HELD``), so it neither stalls other clients nor
piles up behind one that does not read.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.interfaces import ILoggingContext, IProtocol, IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements  # type: ignore[import-untyped]

from kestrelpy.commits import CommitGate
from kestrelpy.handler import Session
from kestrelpy.malloc_tuning import HeapTrimmer
from kestrelpy.output import CommitGatedOutput
from kestrelpy.reactor import write_promptly
from kestrelpy.replies import BLOCKED, CLOSE, STREAM, WROTE, Stream
from kestrelpy.wire.memcache import MemcacheParser, Request

if TYPE_CHECKING:
    from kestrelpy.service import ServerContext

_SEND_EVERY = 64  # in a long pipeline of reads, send replies every this many requests
_PAUSE_BACKLOG = 1024  # parsed requests queued behind a blocked read before we stop reading
_OUTPUT_BOUND = 2 << 20  # bytes of unsent replies after which no more are built (per connection)
BACKLOG, OUTPUT, HELD = 1, 2, 4  # reasons reading is paused (bits of ``_paused_by``)
_STOPPED = OUTPUT | HELD  # reasons that also stop running requests


class State(Enum):
    """Where a connection is in its life (see the module docstring's table)."""

    RUNNING = "running"
    WAITING = "waiting"
    CLOSING = "closing"
    GONE = "gone"


RUNNING, WAITING, CLOSING, GONE = State.RUNNING, State.WAITING, State.CLOSING, State.GONE


class MemcacheConnection:
    """One client connection. Reactor thread only.

    It provides Twisted's ``IProtocol`` itself rather than subclass ``Protocol``, which
    has no ``__slots__``: slotted, a connection has no instance dict (idle readers are
    many: about 40 B each). The interfaces are declared after the class, not with
    ``@implementer``: mypyc compiles a class with a decorator as a plain Python class, and
    as a native one the compiled build serves 2-16% more requests per second (its calls
    into the connection skip the method lookup by name; issue 19, loadtest/RESULTS.md).
    """

    __slots__ = (
        # As Twisted's protocols have (tests watch a connection get freed); the compiled
        # build has no weak references to native classes, and nothing at run time makes one.
        "__weakref__",
        "_backlog",
        "_ctx",
        "_idle_timer",
        "_output",
        "_parser",
        "_paused_by",
        "_report",
        "_report_turn",
        "_session",
        "_trimmer",
        "state",
        "transport",
    )
    __deletable__ = ("_output",)  # connectionLost breaks the cycle through it
    _log: ClassVar[Logger] = Logger()  # a class attribute in the compiled build too

    def __init__(
        self, ctx: ServerContext, commits: CommitGate, trimmer: HeapTrimmer | None = None
    ) -> None:
        self.transport: Any = None  # a TCP transport once made: write, loseConnection, ...
        self._ctx = ctx
        self._trimmer = trimmer
        settings = ctx.settings
        self._parser = MemcacheParser(
            max_line_length=settings.max_line_length,
            item_size_max=settings.item_size_max,
            honor_noreply=settings.honor_noreply,
            bare_errors=settings.bare_error_lines,
        )
        self._session = Session(ctx, self)  # an object, not a bound method: readers are many
        self._output = CommitGatedOutput(commits, self)
        # Requests queued behind a blocked read or a stop; None while there are none (a
        # list is made for the first, and dropped when drained: idle connections are many).
        self._backlog: list[Request] | None = None
        self.state = RUNNING
        self._paused_by = 0  # BACKLOG | OUTPUT | HELD
        self._idle_timer: Any = None  # IDelayedCall when client_timeout is set
        self._report: Stream | None = None  # a report being streamed (state WAITING)
        self._report_turn: Any = None  # IDelayedCall of its next piece, while one is due

    # ------------------------------------------------------------------ Twisted events

    def makeConnection(self, transport: Any) -> None:
        """The transport is ready (as Twisted's ``BaseProtocol.makeConnection``)."""
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        """How Twisted names this connection in log lines (as ``Protocol`` does)."""
        return self.__class__.__name__

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
            self._reset_idle_timer()
        self._ctx.stats.bytes_read += len(data)
        requests = self._parser.feed(data)
        if self.state is not RUNNING or self._backlog or self._paused_by & _STOPPED:
            if self.state is not CLOSING and self._hold_back(requests) > _PAUSE_BACKLOG:
                self._pause_reading(BACKLOG)
            return
        self._run(requests)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.state is GONE:
            return  # once only: the references below are dropped
        self.state = GONE
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self._report = None
        self._ctx.stats.curr_connections -= 1
        self._ctx.sessions.discard(self._session)
        # Break the cycles through this connection (session -> resume -> connection,
        # output -> sink -> connection) so that refcounting frees it now, with its
        # buffers, rather than the next full collection. Nothing of either runs later:
        # a commit still under way reaches the output, whose sink checks GONE.
        self._session.release()
        del self._output
        if self._trimmer is not None:
            self._trimmer.connection_closed(self._parser.bytes_read)

    # ------------------------------------------------------------------- running

    def _run(self, requests: Iterable[Request]) -> None:
        output = self._output
        out = output.parts
        execute = self._session.execute
        pending = iter(requests)
        countdown = _SEND_EVERY
        bound = _OUTPUT_BOUND
        size = output.size  # bytes in ``out``, counted up to ``counted`` parts
        counted = len(out)
        for request in pending:
            code = execute(request, out)
            while counted < len(out):  # nearly always one part, often none (noreply)
                part = out[counted]
                counted += 1
                if type(part) is bytes:
                    size += len(part)
            if code:
                if code == WROTE:
                    output.after_write()  # before anything is sent: its reply waits
                elif code == BLOCKED:
                    self.state = WAITING
                    self._hold_back(pending)
                    break
                elif code == CLOSE:
                    self.state = CLOSING
                    self._backlog = None
                    break
                elif code == STREAM:
                    self._report = out.pop()
                    self.state = WAITING
                    self._hold_back(pending)
                    self._next_report_piece()
                    break
            countdown -= 1
            if size > bound or not countdown:
                # A long pipeline, or big replies: send what is ready, so that a client
                # that does not read its replies makes the transport push back (OUTPUT)
                # before they pile up in memory; if they wait for a commit, wait with them.
                countdown = _SEND_EVERY
                output.size = size
                if not output.held:
                    output.send_ready()
                    size = counted = 0
                    if self._paused_by & OUTPUT:
                        self._hold_back(pending)
                        break
                elif size > bound:
                    self._pause_reading(HELD)  # until output_drained
                    self._hold_back(pending)
                    break
        output.size = size
        output.settle()

    def _hold_back(self, requests: Iterable[Request]) -> int:
        """Queue ``requests`` to run later, after those already queued; returns how many
        are queued. The backlog list is made only when there is something to queue."""
        backlog = self._backlog
        if backlog is None:
            backlog = list(requests)
            if not backlog:
                return 0
            self._backlog = backlog
        else:
            backlog.extend(requests)
        return len(backlog)

    def resume(self, replies: list[Any], code: int) -> None:
        """A blocked read sent something; ``code`` DONE means it ended (item, timeout or
        queue deleted) and the pipeline continues, BLOCKED that it goes on (monitor)."""
        if code != BLOCKED and self.state is WAITING:
            self._wait_ended()
        self._output.add_from_reader(replies)  # sent now unless held behind commits

    def _wait_ended(self) -> None:
        """The blocked read or the streamed report ended: the requests queued behind it
        run next, on a fresh stack (not from inside the put that woke a reader)."""
        self.state = RUNNING
        if self._backlog:
            self._ctx.clock.callLater(0, self._drain_backlog)

    def _drain_backlog(self) -> None:
        if self.state is not RUNNING or self._paused_by & _STOPPED:
            return
        backlog = self._backlog
        self._backlog = None
        self._run(backlog or ())
        if self._paused_by == BACKLOG and self.state is not WAITING:
            self._resume_reading(BACKLOG)

    def _next_report_piece(self) -> None:
        """The report's next piece is built on the next reactor turn (once, however
        many events ask for it), so other connections run in between."""
        if self._report_turn is None:
            self._report_turn = self._ctx.clock.callLater(0, self._stream_report)

    def _stream_report(self) -> None:
        """Send the next piece of the report; come back next turn while the client keeps
        up, or once it has read (``resumeProducing``, ``output_drained``)."""
        self._report_turn = None
        report = self._report
        if report is None or self.state is GONE or self._paused_by & _STOPPED:
            return
        output = self._output
        try:
            piece = next(report.pieces, None)
        except Exception:  # a damaged store page, say: a report cut short cannot be ended
            self._log.failure("report failed; closing the connection")
            self._report = None
            self.state = CLOSING
            self._backlog = None
            output.settle()  # what was sent stays sent; then the socket closes
            return
        if piece is None:  # the report is complete: the pipeline goes on
            self._report = None
            self._wait_ended()
            output.settle()
            return
        output.parts.append(piece)
        output.size += len(piece)
        if not output.held:
            output.send_ready()
        elif output.size > _OUTPUT_BOUND:
            self._pause_reading(HELD)  # until output_drained
            return
        if not self._paused_by & OUTPUT:
            self._next_report_piece()

    def transmit(self, data: bytes) -> None:
        """Ready output (from the commit-gated output) goes on the wire."""
        if self.state is GONE:
            return
        self._ctx.stats.bytes_written += len(data)
        write_promptly(self.transport, data)

    def output_drained(self) -> None:
        """All output is sent: a connection that asked to close (quit, bad input) goes;
        one that stopped for replies held behind a commit (HELD) goes on."""
        if self.state is CLOSING:
            self.transport.loseConnection()
        elif self._paused_by & HELD:
            self.resumeProducing(HELD)

    # ------------------------------------------------------------------- idle timeout

    def _start_idle_timer(self) -> None:
        timeout_ms = self._ctx.settings.client_timeout
        if timeout_ms is not None:
            self._idle_timer = self._ctx.clock.callLater(timeout_ms / 1000.0, self._idle)

    def _reset_idle_timer(self) -> None:
        """The client sent something: its idle time starts again (a reload may have
        changed ``client_timeout``, or turned it off)."""
        timeout_ms = self._ctx.settings.client_timeout
        if timeout_ms is None:
            self._idle_timer.cancel()
            self._idle_timer = None
        else:
            self._idle_timer.reset(timeout_ms / 1000.0)

    def _idle(self) -> None:
        """client_timeout: close a connection that sent nothing for that long.

        A connection blocked in a read, or being sent a report it reads, is waiting for
        us, not idle: it gets more time. One that stopped reading its report does not.
        """
        if self.state is WAITING and not (self._report is not None and self._paused_by & OUTPUT):
            self._start_idle_timer()
            return
        self._idle_timer = None
        self.transport.loseConnection()

    # ------------------------------------------------- flow control (reading paused)

    def _pause_reading(self, reason: int) -> None:
        if not self._paused_by:
            self.transport.pauseProducing()
        self._paused_by |= reason

    def _resume_reading(self, reason: int) -> None:
        self._paused_by &= ~reason
        if not self._paused_by and self.state is not GONE:
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """The transport's send buffer is full (the client is not reading): stop
        reading and running its requests until the buffer drains."""
        self._pause_reading(OUTPUT)

    def resumeProducing(self, reason: int = OUTPUT) -> None:
        """The transport's send buffer drained (or, ``HELD``, the commits held replies
        waited for ended): read again, and run what queued meanwhile."""
        self._resume_reading(reason)
        if self._report is not None:
            self._next_report_piece()
        elif self._backlog and self.state is RUNNING:
            self._ctx.clock.callLater(0, self._drain_backlog)

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleanup."""


classImplements(MemcacheConnection, IProtocol, IPushProducer, ILoggingContext)


class MemcacheFactory(Factory):
    """Builds a connection per client around the shared server context."""

    noisy = False  # no log line per listener start/stop

    def __init__(self, ctx: ServerContext, commits: CommitGate) -> None:
        self._ctx = ctx
        self._commits = commits
        self.trimmer = HeapTrimmer(ctx.clock)  # returns the heap after bursts of clients

    # Twisted types its protocols as ones that keep a ``factory`` attribute, which a
    # slotted connection does not need (this factory sets none).
    def buildProtocol(self, addr: Any) -> MemcacheConnection:  # type: ignore[override]
        return MemcacheConnection(self._ctx, self._commits, self.trimmer)

    def stopFactory(self) -> None:
        self.trimmer.stop()
