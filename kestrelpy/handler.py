"""Command handling: what each memcache request means for the queues.

A :class:`Session` belongs to one connection. It runs parsed requests against the
:class:`~kestrelpy.queues.collection.QueueCollection`, appends reply bytes to the
connection's output list, and owns the connection's open (reliable) reads, which go back
to their queues when the session ends. It never touches the store or the socket.

Replies that must wait for a commit (``STORED``, ``DELETED``, a flush's ``END``) are
appended as :class:`Durable` markers; the connection turns them into bytes once the
commit they rode has succeeded, or into ``SERVER_ERROR`` if it failed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twisted.logger import Logger

from kestrelpy import __version__
from kestrelpy.config import STATUSES, Config, ServerConfig, dump_config_lines
from kestrelpy.queues.collection import QueueCollection
from kestrelpy.queues.deadlines import Deadline, Deadlines
from kestrelpy.queues.queue import OPEN, PEEK, TAKE, Item, Queue, Waiter
from kestrelpy.stats import ServerStats
from kestrelpy.wire.memcache import (
    DELETED,
    END,
    NOT_STORED,
    STORED,
    Command,
    GetOptions,
    Invalid,
    ProtocolError,
    Request,
    Retrieve,
    Store,
    key_problem,
    parse_get_key,
    stat_lines,
    value_reply,
)

DONE, WROTE, BLOCKED, CLOSE = 0, 1, 2, 3
_KEY_CACHE_SIZE = 64


class Durable:
    """A reply that may be sent only after the commit holding its write succeeded."""

    __slots__ = ("ok",)

    def __init__(self, ok: bytes) -> None:
        self.ok = ok


STORED_DURABLE = Durable(STORED)
DELETED_DURABLE = Durable(DELETED)
END_DURABLE = Durable(END)
FLUSHED_DURABLE = Durable(b"Flushed all queues.\r\n")
COMMIT_FAILED = b"SERVER_ERROR store failure: write not committed\r\n"


@dataclass
class ServerContext:
    """What every session shares: the queues, settings, counters and server controls."""

    collection: QueueCollection
    stats: ServerStats
    clock: Any  # IReactorTime
    store_bytes: Callable[[], int]
    shutdown: Callable[[], None]
    reload: Callable[[], Config]
    deadlines: Deadlines
    status: str = "up"
    set_status: Callable[[str], None] = lambda status: None
    sessions: set[Session] = field(default_factory=set)

    @property
    def settings(self) -> ServerConfig:
        return self.collection.config.server


def now_ms() -> int:
    return int(time.time() * 1000)


class _OpenReads:
    """Items a connection holds open on one queue, oldest first, and that queue."""

    __slots__ = ("items", "queue")

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.items: deque[Item] = deque()


class Session:
    """One connection's view of the server. Reactor thread only."""

    _log = Logger()

    def __init__(self, ctx: ServerContext, resume: Callable[[list[Any], int], None]) -> None:
        self._ctx = ctx
        self._collection = ctx.collection
        self._stats = ctx.stats
        self._settings = ctx.settings
        self._resume = resume
        self._open: dict[str, _OpenReads] = {}
        self._key_cache: dict[bytes, GetOptions] = {}
        self._waiter: Waiter | None = None
        self._waiting_queue: Queue | None = None
        self._wait_timer: Deadline | None = None  # while blocked
        self._wait_key = b""
        self._wait_cas = False
        self._monitor_left = 0  # items a blocked ``monitor`` may still open
        self.closed = False

    # ------------------------------------------------------------------------ dispatch

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

    # -------------------------------------------------------------------------- set

    def _store(self, request: Store, out: list[Any]) -> int:
        stats = self._stats
        stats.cmd_set += 1
        name = request.key.decode("latin-1")
        if "/" in name:
            if not request.noreply:
                out.append(self._error(b"CLIENT_ERROR bad queue name"))
            return DONE
        if self._refused(out, writes=True):
            return CLOSE
        flags = request.flags if self._settings.preserve_flags else 0
        accepted = self._collection.put(name, flags, request.exptime, request.data, now_ms())
        if request.noreply:
            return WROTE if accepted else DONE
        if accepted:
            out.append(STORED_DURABLE)
            return WROTE
        out.append(NOT_STORED)
        return DONE

    # -------------------------------------------------------------------------- get

    def _retrieve(self, request: Retrieve, out: list[Any]) -> int:
        options = self._key_cache.get(request.key)
        if options is None:
            try:
                options = parse_get_key(request.key)
            except ProtocolError as err:
                out.append(self._error(err.reply[:-2]))
                return CLOSE
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[request.key] = options
        name = options.queue
        stats = self._stats
        if options.peek:
            stats.cmd_peek += 1
        else:
            stats.cmd_get += 1
        if name in self._collection.aliases:
            out.append(END)
            return DONE
        if options.abort:
            self._abort_one(name)
            out.append(END)
            return DONE
        if options.close:
            self._close_one(name)
            if not options.open:
                out.append(END)
                return DONE
        if self._refused(out, writes=False):
            return CLOSE
        return self._fetch(request, options, out)

    def _fetch(self, request: Retrieve, options: GetOptions, out: list[Any]) -> int:
        queue = self._collection.get_or_create(options.queue)
        held = self._held(options.queue)
        now = now_ms()
        if options.peek:
            item, mode = queue.peek(now), PEEK
        elif options.open:
            if held and len(held) >= self._settings.max_open_transactions:
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
            self._block(queue, mode, request, options.wait_ms)
            return BLOCKED
        self._stats.get_misses += 1
        queue.get_misses += 1
        out.append(END)
        return DONE

    def _found(
        self, queue: Queue, item: Item, mode: int, key: bytes, with_cas: bool, out: list[Any]
    ) -> None:
        self._stats.get_hits += 1
        queue.get_hits += 1
        if mode == OPEN:
            self._hold(queue, item)
        settings = self._settings
        echo = key if settings.echo_requested_key else queue.name.encode("latin-1")
        flags = item.flags if settings.preserve_flags else 0
        cas = item.item_id if with_cas and settings.gets_cas else None
        out.append(value_reply(echo, flags, item.data, cas))

    def _block(self, queue: Queue, mode: int, request: Retrieve, wait_ms: int) -> None:
        """Park this connection until an item arrives or ``wait_ms`` passes."""
        self._waiting_queue = queue
        self._wait_key = request.key
        self._wait_cas = request.with_cas
        self._waiter = queue.add_waiter(mode, self._delivered, self.queue_deleted)
        self._wait_timer = self._ctx.deadlines.add(wait_ms, self._timed_out)

    def _delivered(self, item: Item) -> None:
        """A put (or abort) handed this blocked reader an item."""
        queue, waiter = self._waiting_queue, self._waiter
        assert queue is not None and waiter is not None
        self._end_wait()
        out: list[Any] = []
        self._found(queue, item, waiter.mode, self._wait_key, self._wait_cas, out)
        self._resume(out, DONE)

    def _timed_out(self) -> None:
        queue, waiter = self._waiting_queue, self._waiter
        self._wait_timer = None
        if queue is None or waiter is None:
            return
        queue.remove_waiter(waiter)
        self._end_wait()
        if self._monitor_left:
            self._monitor_left = 0
            self._resume([END], DONE)  # the monitor batch ends; its items stay open
            return
        self._stats.get_misses += 1
        queue.get_misses += 1
        self._resume([END], DONE)

    def queue_deleted(self) -> None:
        """The queue this session waits on was deleted: the read ends empty."""
        if self._waiter is not None:
            self._end_wait()
            self._monitor_left = 0
            self._resume([END], DONE)

    def _end_wait(self) -> None:
        if self._wait_timer is not None and self._wait_timer.active():
            self._wait_timer.cancel()
        self._wait_timer = None
        self._waiter = None
        self._waiting_queue = None

    # ------------------------------------------------------------- open transactions

    def _held(self, name: str) -> deque[Item] | None:
        """The items this connection holds open on queue ``name``, if any.

        Open reads remember the queue object they came from: if that queue was deleted
        (even if a new one of the same name exists) there is nothing to close or return.
        """
        reads = self._open.get(name)
        if reads is None:
            return None
        if reads.queue.deleted:
            del self._open[name]
            return None
        return reads.items

    def _hold(self, queue: Queue, item: Item) -> None:
        """This connection now holds ``item`` open (until close, abort or disconnect)."""
        reads = self._open.get(queue.name)
        if reads is None or reads.queue is not queue:
            reads = self._open[queue.name] = _OpenReads(queue)
        reads.items.append(item)
        if queue.config.open_transaction_timeout is not None:
            queue.lease(item, now_ms(), partial(self._lease_expired, queue))

    def _lease_expired(self, queue: Queue, item_id: int) -> bool:
        """open_transaction_timeout passed: give the item back if still held."""
        reads = self._open.get(queue.name)
        if reads is None or reads.queue is not queue:
            return False
        for item in reads.items:
            if item.item_id == item_id:
                reads.items.remove(item)
                queue.abort_open(item, now_ms())
                return True
        return False

    def _close_one(self, name: str) -> None:
        if self._held(name):
            reads = self._open[name]
            reads.queue.close_open(reads.items.popleft())

    def _abort_one(self, name: str) -> None:
        if self._held(name):
            reads = self._open[name]
            reads.queue.abort_open(reads.items.popleft(), now_ms())

    def end(self) -> None:
        """Connection gone: cancel the wait; open items return to their queues' heads,
        in the order they were opened (PROTOCOL.md §12)."""
        if self.closed:
            return
        self.closed = True
        if self._waiter is not None and self._waiting_queue is not None:
            self._waiting_queue.remove_waiter(self._waiter)
        self._end_wait()
        now = now_ms()
        for reads in self._open.values():
            if reads.queue.deleted:
                continue
            reads.queue.abort_many(list(reads.items), now)
            reads.items.clear()
        self._open.clear()

    # ------------------------------------------------------------------ other commands

    def _command(self, request: Command, out: list[Any]) -> int:
        handler = _COMMANDS.get(request.verb)
        if handler is None:
            out.append(self._error(b"ERROR"))
            return DONE
        return handler(self, request, out)

    def _reply(self, request: Command, out: list[Any], reply: bytes | Durable) -> None:
        if not request.noreply:
            out.append(reply)

    def _queue_arg(self, request: Command, out: list[Any]) -> str | None:
        if not request.args:
            if not request.noreply:
                out.append(self._error(b"CLIENT_ERROR missing queue name"))
            return None
        return request.args[0].decode("latin-1")

    def _write_target(self, request: Command, out: list[Any], missing: int = DONE) -> str | int:
        """The queue a write command names, once the status allows writes.

        Otherwise the code the command must return (its error line is already in ``out``).
        """
        name = self._queue_arg(request, out)
        if name is None:
            return missing
        if self._refused(out, writes=True):
            return CLOSE
        return name

    def _cmd_delete(self, request: Command, out: list[Any]) -> int:
        name = self._write_target(request, out)
        if isinstance(name, int):
            return name
        if name in self._collection.aliases:
            self._reply(request, out, DELETED)
            return DONE
        for waiter in self._collection.delete(name):
            waiter.cancel()
        self._reply(request, out, DELETED_DURABLE)
        return WROTE

    def _cmd_flush(self, request: Command, out: list[Any]) -> int:
        name = self._write_target(request, out)
        if isinstance(name, int):
            return name
        self._collection.flush(name)
        self._reply(request, out, END_DURABLE)
        return WROTE

    def _cmd_flush_all(self, request: Command, out: list[Any]) -> int:
        if self._refused(out, writes=True):
            return CLOSE
        self._collection.flush_all()
        self._reply(request, out, FLUSHED_DURABLE)
        return WROTE

    def _cmd_flush_expired(self, request: Command, out: list[Any]) -> int:
        name = self._write_target(request, out, missing=CLOSE)  # Kestrel drops it there
        if isinstance(name, int):
            return name
        count = self._collection.flush_expired(name, now_ms())
        self._reply(request, out, b"%d\r\n" % count)
        return WROTE

    def _cmd_flush_all_expired(self, request: Command, out: list[Any]) -> int:
        count = self._collection.flush_all_expired(now_ms())
        self._reply(request, out, b"%d\r\n" % count)
        return WROTE

    def _cmd_version(self, request: Command, out: list[Any]) -> int:
        out.append(b"VERSION kestrelpy-%s\r\n" % __version__.encode())
        return DONE

    def _cmd_stats(self, request: Command, out: list[Any]) -> int:
        out.append(stat_lines(self._global_stats() + self._queue_stats()))
        return DONE

    def _cmd_dump_stats(self, request: Command, out: list[Any]) -> int:
        out.append(self._queue_blocks(request, self._dump_stats_lines))
        return DONE

    def _dump_stats_lines(self, name: str) -> list[str]:
        queue = self._collection.get(name)
        if queue is None:
            return [""]  # Kestrel's block for an unknown queue holds one blank line
        return [f"{key}={value}" for key, value in self._one_queue(queue)]

    def _cmd_dump_config(self, request: Command, out: list[Any]) -> int:
        config = self._collection.config
        out.append(self._queue_blocks(request, lambda n: dump_config_lines(config.queue_config(n))))
        return DONE

    def _queue_blocks(self, request: Command, body: Callable[[str], Iterable[str]]) -> bytes:
        """``queue 'name' {`` … ``}`` for each queue named (default: all), then END."""
        names = [a.decode("latin-1") for a in request.args] or self._collection.names()
        lines: list[str] = []
        for name in names:
            lines.append(f"queue '{name}' {{")
            lines.extend(f"  {line}" for line in body(name))
            lines.append("}")
        return "".join(line + "\r\n" for line in lines).encode("latin-1") + END

    def _cmd_monitor(self, request: Command, out: list[Any]) -> int:
        """``monitor q secs [max]``: open up to ``max`` items within ``secs`` seconds.

        Each item is sent as its own ``VALUE … END`` as soon as it is opened; a final
        ``END`` closes the batch. The items stay open until ``confirm`` (or go back to
        the queue when the connection ends). No pipelining while a monitor runs.
        """
        args = request.args
        if len(args) < 2 or not args[1].isdigit() or (len(args) > 2 and not args[2].isdigit()):
            out.append(self._error(b"CLIENT_ERROR usage: monitor <queue> <seconds> [max]"))
            return CLOSE
        name = args[0].decode("latin-1")
        if key_problem(args[0]) is not None or "/" in name:
            out.append(self._error(b"CLIENT_ERROR bad queue name"))
            return DONE
        if self._refused(out, writes=False):
            return CLOSE
        if name in self._collection.aliases:
            out.append(END)
            return DONE
        queue = self._collection.get_or_create(name)
        held = self._held(name)
        limit = int(args[2]) if len(args) > 2 else self._settings.max_open_transactions
        room = min(limit, self._settings.max_open_transactions - (len(held) if held else 0))
        now = now_ms()
        while room > 0:
            item = queue.open(now)
            if item is None:
                break
            self._hold(queue, item)
            out.append(self._monitor_value(queue, item))
            room -= 1
        seconds = int(args[1])
        if room <= 0 or seconds <= 0:
            out.append(END)
            return DONE
        self._monitor_left = room
        self._waiting_queue = queue
        self._waiter = queue.add_waiter(OPEN, self._monitor_delivered, self.queue_deleted)
        self._wait_timer = self._ctx.deadlines.add(seconds * 1000, self._timed_out)
        return BLOCKED

    def _monitor_value(self, queue: Queue, item: Item) -> bytes:
        self._stats.get_hits += 1
        queue.get_hits += 1
        flags = item.flags if self._settings.preserve_flags else 0
        return value_reply(queue.name.encode("latin-1"), flags, item.data, None)

    def _monitor_delivered(self, item: Item) -> None:
        queue = self._waiting_queue
        assert queue is not None
        self._hold(queue, item)
        reply = self._monitor_value(queue, item)
        self._monitor_left -= 1
        if self._monitor_left > 0:
            self._waiter = queue.add_waiter(OPEN, self._monitor_delivered, self.queue_deleted)
            self._resume([reply], BLOCKED)
            return
        self._end_wait()
        self._resume([reply, END], DONE)

    def _cmd_confirm(self, request: Command, out: list[Any]) -> int:
        """``confirm q n``: close the ``n`` oldest open items; ERROR if fewer are open."""
        args = request.args
        if len(args) < 2:
            out.append(self._error(b"CLIENT_ERROR usage: confirm <queue> <count>"))
            return DONE
        if not args[1].isdigit():
            out.append(self._error(b"CLIENT_ERROR bad count"))
            return CLOSE
        name, count = args[0].decode("latin-1"), int(args[1])
        held = self._held(name)
        if count == 0 or not held or count > len(held):
            out.append(self._error(b"ERROR"))
            return DONE
        for _ in range(count):
            self._close_one(name)
        out.append(END)
        return DONE

    def _cmd_shutdown(self, request: Command, out: list[Any]) -> int:
        self._ctx.clock.callLater(0, self._ctx.shutdown)
        return CLOSE

    def _cmd_quit(self, request: Command, out: list[Any]) -> int:
        return CLOSE

    def _cmd_reload(self, request: Command, out: list[Any]) -> int:
        try:
            self._ctx.reload()
        except Exception as err:  # a bad file keeps the running config
            out.append(b"SERVER_ERROR config error: %s\r\n" % str(err).encode("latin-1", "replace"))
            return DONE
        out.append(b"Reloaded config.\r\n")
        return DONE

    def _cmd_status(self, request: Command, out: list[Any]) -> int:
        if not request.args:
            out.append(self._ctx.status.upper().encode() + b"\r\n")
            return DONE
        wanted = request.args[0].decode("latin-1").lower()
        if wanted not in STATUSES:
            out.append(self._error(b"CLIENT_ERROR unknown status"))
            return CLOSE
        self._ctx.set_status(wanted)
        out.append(END)
        return DONE

    # ------------------------------------------------------------------------ helpers

    def _refused(self, out: list[Any], *, writes: bool) -> bool:
        """True, with a SERVER_ERROR line in ``out``, when the server status refuses this
        kind of request (the caller then closes).

        SERVER_ERROR because Kestrel clients retry on another server only for that reply.
        """
        status = self._ctx.status
        if status == "quiescent" or (writes and status == "readonly"):
            out.append(self._error(b"SERVER_ERROR server is " + status.encode()))
            return True
        settings = self._settings
        limit = (
            settings.connection_limit_refuse_writes
            if writes
            else settings.connection_limit_refuse_reads
        )
        if limit and self._stats.curr_connections > limit:
            out.append(self._error(b"SERVER_ERROR too many connections"))
            return True
        return False

    def _error(self, line: bytes) -> bytes:
        if self._settings.bare_error_lines:
            line = line.split(b" ", 1)[0]
        return line + b"\r\n"

    def _global_stats(self) -> list[tuple[str, object]]:
        stats = self._stats
        queues = self._collection.queues()
        return [
            ("uptime", stats.uptime_s()),
            ("time", int(time.time())),
            ("version", f"kestrelpy-{__version__}"),
            ("curr_items", sum(q.items for q in queues)),
            ("total_items", sum(q.total_items for q in queues)),
            ("bytes", sum(q.bytes for q in queues)),
            ("reserved_memory_ratio", "0.000"),
            ("curr_connections", stats.curr_connections),
            ("total_connections", stats.total_connections),
            ("cmd_get", stats.cmd_get),
            ("cmd_set", stats.cmd_set),
            ("cmd_peek", stats.cmd_peek),
            ("get_hits", stats.get_hits),
            ("get_misses", stats.get_misses),
            ("bytes_read", stats.bytes_read),
            ("bytes_written", stats.bytes_written),
            ("queue_creates", stats.queue_creates),
            ("queue_deletes", stats.queue_deletes),
            ("queue_expires", stats.queue_expires),
        ]

    def _queue_stats(self) -> list[tuple[str, object]]:
        pairs: list[tuple[str, object]] = []
        for queue in self._collection.queues():
            prefix = f"queue_{queue.name}_"
            pairs.extend((prefix + key, value) for key, value in self._one_queue(queue))
        collection = self._collection
        for alias in sorted(collection.aliases):
            prefix = f"queue_{alias}_"
            pairs.append((prefix + "put_items", collection.alias_put_items.get(alias, 0)))
            pairs.append((prefix + "put_bytes", collection.alias_put_bytes.get(alias, 0)))
            pairs.append((prefix + "children", ",".join(collection.aliases[alias])))
        return pairs

    def _one_queue(self, queue: Queue) -> list[tuple[str, object]]:
        now = now_ms()
        oldest = queue.oldest_age_ms(now)
        pairs: list[tuple[str, object]] = [
            ("items", queue.items),
            ("bytes", queue.bytes),
            ("total_items", queue.total_items),
            ("logsize", queue.bytes + queue.open_bytes),
            ("expired_items", queue.expired_items),
            ("mem_items", queue.mem_items),
            ("mem_bytes", queue.mem_bytes),
            ("age", queue.age_ms if queue.items else 0),
            ("discarded", queue.discarded),
            ("waiters", queue.waiters),
            ("open_transactions", queue.open_transactions),
            ("transactions", queue.transactions),
            ("canceled_transactions", queue.canceled_transactions),
            ("total_flushes", queue.total_flushes),
            ("journal_rewrites", 0),
            ("journal_rotations", 0),
            ("create_time", queue.create_time),
            ("age_msec", oldest),
            ("oldest_item_age_ms", oldest),
        ]
        children = self._collection.children_of(queue.name)
        if children:
            pairs.append(("children", ",".join(children)))
        return pairs


_COMMANDS: dict[bytes, Callable[[Session, Command, list[Any]], int]] = {
    b"delete": Session._cmd_delete,
    b"flush": Session._cmd_flush,
    b"flush_all": Session._cmd_flush_all,
    b"flush_expired": Session._cmd_flush_expired,
    b"flush_all_expired": Session._cmd_flush_all_expired,
    b"version": Session._cmd_version,
    b"stats": Session._cmd_stats,
    b"dump_stats": Session._cmd_dump_stats,
    b"dump_config": Session._cmd_dump_config,
    b"shutdown": Session._cmd_shutdown,
    b"quit": Session._cmd_quit,
    b"reload": Session._cmd_reload,
    b"status": Session._cmd_status,
    b"monitor": Session._cmd_monitor,
    b"confirm": Session._cmd_confirm,
}
