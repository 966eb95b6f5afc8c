"""Command handling for one connection: what each parsed request means for the queues.

A :class:`Session` belongs to one connection. It runs parsed requests against the
:class:`~kestrelpy.queues.collection.QueueCollection` and appends reply parts to the
connection's output list (see :mod:`kestrelpy.replies` for the parts and the codes it
returns). It owns what is the connection's own: its open reads
(:class:`~kestrelpy.open_reads.OpenReads`) and its blocked read
(:class:`~kestrelpy.blocked_read.BlockedRead`). Commands that act on the server or whole
queues live in :mod:`kestrelpy.commands`. It never touches the store or the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from twisted.logger import Logger

from kestrelpy.blocked_read import BlockedRead
from kestrelpy.clock import now_ms
from kestrelpy.commands import COMMANDS, MonitorArgs, error_line, parse_monitor, refused
from kestrelpy.errors import CorruptItemError, StoreError, TooManyQueuesError
from kestrelpy.open_reads import OpenReads
from kestrelpy.queues.queue import OPEN, PEEK, TAKE, Item, Queue
from kestrelpy.replies import BLOCKED, CLOSE, DONE, STORED_DURABLE, WROTE
from kestrelpy.wire.memcache import (
    END,
    NOT_STORED,
    Command,
    GetOptions,
    Invalid,
    ProtocolError,
    Request,
    Retrieve,
    Store,
    parse_get_key,
    value_reply,
)

if TYPE_CHECKING:
    from kestrelpy.service import ServerContext

_GET_KEYS_MAX = 1024
# The options of recently seen get keys, shared by every session: ``parse_get_key`` is a
# pure function of the key, and a per-session cache cost each idle connection a dict, its
# key and a GetOptions (about 300 bytes) for the one key it blocks on. Bounded: a client
# that sends ever new keys clears it, which costs others a re-parse, never memory.
_get_keys: dict[bytes, GetOptions] = {}


class ReadResumer(Protocol):
    """Who is sent what a blocked read produces after its request ran: the connection.

    An object rather than a callback: a bound method is 64 more bytes on every
    connection, and idle readers are many.
    """

    def resume(self, replies: list[Any], code: int) -> None:
        """``replies`` of the blocked read; ``code`` DONE if it ended, BLOCKED if it goes
        on (a monitor that sent an item)."""


class _Released:
    """The resumer of a released session: its connection is gone, replies go nowhere."""

    __slots__ = ()

    def resume(self, replies: list[Any], code: int) -> None:
        pass


_RELEASED = _Released()


class Session:
    """One connection's view of the server. Reactor thread only."""

    __slots__ = (
        "_clock",
        "_collection",
        "_ctx",
        "_open_reads",
        "_resumer",
        "_settings",
        "_stats",
        "_status",
        "_wait",
        "closed",
    )
    __deletable__ = ("_wait",)  # release() deletes it; the compiled build must be told
    _log: ClassVar[Logger] = Logger()  # a class attribute in the compiled build too

    def __init__(self, ctx: ServerContext, resumer: ReadResumer) -> None:
        self._ctx = ctx
        self._collection = ctx.collection
        self._stats = ctx.stats
        self._settings = ctx.settings
        self._clock = ctx.clock
        self._status = ctx.status_keeper  # read on every get and set: no property between
        self._resumer = resumer  # a blocked read's replies, when it ends or a monitor item
        self._open_reads: OpenReads | None = None  # made at the first open read
        self._wait = BlockedRead(ctx.deadlines, self)
        self.closed = False

    def execute(self, request: Request, out: list[Any]) -> int:
        """Run one request, append its reply to ``out``; returns DONE/WROTE/BLOCKED/CLOSE."""
        kind = type(request)
        if kind is Retrieve:
            return self._retrieve(request, out)  # type: ignore[arg-type]
        if kind is Store:
            return self._store(request, out)  # type: ignore[arg-type]
        if kind is Invalid:
            if not request.noreply:  # type: ignore[union-attr]
                out.append(request.reply)  # type: ignore[union-attr]
            return CLOSE if request.close else DONE  # type: ignore[union-attr]
        return self._command(request, out)  # type: ignore[arg-type]

    def end(self) -> None:
        """Connection gone: stop waiting; open items return to their queues' heads."""
        if self.closed:
            return
        self.closed = True
        self._wait.end()
        if self._open_reads is not None:
            self._open_reads.abort_all()

    def release(self) -> None:
        """The connection is gone for good: :meth:`end`, then drop the references that
        close cycles (the resumer is the connection, which refers to this session;
        the blocked read refers back to this session), so that refcounting frees a closed
        connection at once instead of at the next full collection: a burst of closed
        connections otherwise lingers and ratchets the heap. Nothing runs on the session
        afterwards."""
        self.end()
        self._resumer = _RELEASED
        del self._wait

    def _store(self, request: Store, out: list[Any]) -> int:
        self._stats.cmd_set += 1
        name = request.key.decode("latin-1")
        if "/" in name:
            if not request.noreply:
                out.append(self._error(b"CLIENT_ERROR bad queue name"))
            return DONE
        if refused(self._status.current, self._settings, self._stats, out, writes=True):
            return CLOSE
        flags = request.flags if self._settings.preserve_flags else 0
        now = now_ms(self._clock)
        try:
            accepted = self._collection.put(name, flags, request.exptime, request.data, now)
        except TooManyQueuesError as err:  # the block is already read: the connection stays usable
            if not request.noreply:
                out.append(self._error(err.wire_line))
            return DONE
        except StoreError as failure:  # making room (discard_old_when_full) met a damaged page
            if not request.noreply:
                out.append(self._read_failed(name, failure))
            return DONE
        if request.noreply:
            return WROTE if accepted else DONE
        if accepted:
            out.append(STORED_DURABLE)
            return WROTE
        out.append(NOT_STORED)
        return DONE

    def _retrieve(self, request: Retrieve, out: list[Any]) -> int:
        options = _get_keys.get(request.key)
        if options is None:
            try:
                options = parse_get_key(request.key)
            except ProtocolError as bad_key:
                out.append(self._error(bad_key.reply[:-2]))
                return CLOSE
            if len(_get_keys) >= _GET_KEYS_MAX:
                _get_keys.clear()
            _get_keys[request.key] = options
        name = options.queue
        if options.peek:
            self._stats.cmd_peek += 1
        else:
            self._stats.cmd_get += 1
        if name in self._collection.aliases:
            out.append(END)
            return DONE
        if options.abort:
            if self._open_reads is not None:
                self._open_reads.abort_oldest(name)
            out.append(END)
            return DONE
        if options.close:
            if self._open_reads is not None:
                self._open_reads.close_oldest(name)
            if not options.open:
                out.append(END)
                return DONE
        if refused(self._status.current, self._settings, self._stats, out, writes=False):
            return CLOSE
        try:
            return self._fetch(request, options, out)
        except StoreError as err:
            out.append(self._read_failed(options.queue, err))
            return DONE

    def _read_failed(self, queue: str, err: StoreError) -> bytes:
        """The reply to a read that met a damaged page (nothing moved: the next read tries
        again) or an item that failed its checksum (dropped: the next read goes on)."""
        if isinstance(err, CorruptItemError):
            return self._error(b"SERVER_ERROR item failed its checksum and was dropped")
        self._log.error("read failed on {queue}: {error}", queue=queue, error=err)
        return self._error(b"SERVER_ERROR store read failed")

    def _fetch(self, request: Retrieve, options: GetOptions, out: list[Any]) -> int:
        try:
            queue = self._collection.get_or_create(options.queue)
        except TooManyQueuesError as err:
            out.append(self._error(err.wire_line))
            return DONE
        held = self._held(options.queue)
        now = now_ms(self._clock)
        if options.peek:
            item, mode = queue.peek(now), PEEK
        elif options.open:
            if held and held >= self._settings.max_open_transactions:
                out.append(self._error(b"ERROR"))
                return CLOSE
            item, mode = queue.open(now), OPEN
        else:
            if held:
                out.append(self._error(b"ERROR"))  # Kestrel: a plain get while holding an open read
                return CLOSE
            item, mode = queue.take(now), TAKE
        if item is not None:
            self._found(queue, item, mode, request.key, request.with_cas, out)
            return DONE
        if options.wait_ms:
            self._wait.begin(
                queue,
                mode,
                self._delivered,
                options.wait_ms,
                key=request.key,
                with_cas=request.with_cas,
            )
            return BLOCKED
        self._count_miss(queue)
        out.append(END)
        return DONE

    def _held(self, name: str) -> int:
        """Items this session holds open on queue ``name`` (asked on every get)."""
        reads = self._open_reads
        return 0 if reads is None else reads.count(name)

    def _found(
        self, queue: Queue, item: Item, mode: int, key: bytes, with_cas: bool, out: list[Any]
    ) -> None:
        self._stats.get_hits += 1
        queue.get_hits += 1
        if mode == OPEN:
            reads = self._open_reads
            if reads is None:
                reads = self._open_reads = OpenReads(self._clock)
            reads.add(queue, item)
        settings = self._settings
        echo = key if settings.echo_requested_key else queue.name.encode("latin-1")
        flags = item.flags if settings.preserve_flags else 0
        cas = item.item_id if with_cas and settings.gets_cas else None
        out.append(value_reply(echo, flags, item.data, cas))

    def _count_miss(self, queue: Queue) -> None:
        self._stats.get_misses += 1
        queue.get_misses += 1

    def _delivered(self, item: Item) -> None:
        """A put (or abort) handed this blocked reader an item."""
        wait = self._wait
        queue, waiter = wait.queue, wait.waiter
        assert queue is not None and waiter is not None
        key, with_cas = wait.key, wait.with_cas
        wait.end()
        out: list[Any] = []
        self._found(queue, item, waiter.mode, key, with_cas, out)
        self._resumer.resume(out, DONE)

    def read_timed_out(self, queue: Queue, was_monitor: bool) -> None:
        """The blocked read's time ran out: it ends with END."""
        if not was_monitor:  # a monitor batch just ends; its items stay open
            self._count_miss(queue)
        self._resumer.resume([END], DONE)

    def read_queue_deleted(self) -> None:
        """The queue this session waits on was deleted: the read ends empty."""
        self._resumer.resume([END], DONE)

    def _monitor(self, request: Command, out: list[Any]) -> int:
        """``monitor q secs [max]``: open up to ``max`` items within ``secs`` seconds.

        Each item is sent as its own ``VALUE … END`` as soon as it is opened; a final
        ``END`` closes the batch. The items stay open until ``confirm`` (or go back to
        the queue when the connection ends). No pipelining while a monitor runs.
        """
        parsed = parse_monitor(request.args)
        if not isinstance(parsed, MonitorArgs):
            out.append(self._error(parsed[0]))
            return parsed[1]
        name, seconds, limit = parsed
        if refused(self._status.current, self._settings, self._stats, out, writes=False):
            return CLOSE
        if name in self._collection.aliases:
            out.append(END)
            return DONE
        try:
            queue = self._collection.get_or_create(name)
        except TooManyQueuesError as err:
            out.append(self._error(err.wire_line))
            return DONE
        most = self._settings.max_open_transactions
        room = min(most if limit is None else limit, most - self._held(name))
        now = now_ms(self._clock)
        while room > 0:
            try:
                item = queue.open(now)
            except CorruptItemError:
                continue  # dropped and counted: the batch goes on with the next item
            except StoreError as failure:
                out.append(self._read_failed(name, failure))
                return DONE
            if item is None:
                break
            self._found(queue, item, OPEN, queue.name.encode("latin-1"), False, out)
            room -= 1
        if room <= 0 or seconds <= 0:
            out.append(END)
            return DONE
        self._wait.begin(queue, OPEN, self._monitor_delivered, seconds * 1000, monitor_left=room)
        return BLOCKED

    def _monitor_delivered(self, item: Item) -> None:
        """A put handed a blocked monitor an item: it is held open and sent at once."""
        wait = self._wait
        queue = wait.queue
        assert queue is not None
        replies: list[Any] = []
        self._found(queue, item, OPEN, queue.name.encode("latin-1"), False, replies)
        wait.monitor_left -= 1
        if wait.monitor_left > 0:
            wait.wait_again(OPEN, self._monitor_delivered)
            self._resumer.resume(replies, BLOCKED)
            return
        wait.end()
        replies.append(END)
        self._resumer.resume(replies, DONE)

    def _confirm(self, request: Command, out: list[Any]) -> int:
        """``confirm q n``: close the ``n`` oldest open items; ERROR if fewer are open."""
        args = request.args
        if len(args) < 2:
            out.append(self._error(b"CLIENT_ERROR usage: confirm <queue> <count>"))
            return DONE
        if not args[1].isdigit():
            out.append(self._error(b"CLIENT_ERROR bad count"))
            return CLOSE
        reads = self._open_reads
        confirmed = reads is not None and reads.confirm(args[0].decode("latin-1"), int(args[1]))
        out.append(END if confirmed else self._error(b"ERROR"))
        return DONE

    def _command(self, request: Command, out: list[Any]) -> int:
        own = _SESSION_COMMANDS.get(request.verb)
        if own is not None:
            return own(self, request, out)
        command = COMMANDS.get(request.verb)
        if command is None:
            out.append(self._error(b"ERROR"))
            return DONE
        return command(self._ctx, self._settings, request, out)

    def _error(self, line: bytes) -> bytes:
        return error_line(self._settings, line)


# Commands that act on the connection's own reads; the rest are in kestrelpy.commands.
_SESSION_COMMANDS: dict[bytes, Callable[[Session, Command, list[Any]], int]] = {
    b"monitor": Session._monitor,
    b"confirm": Session._confirm,
}
