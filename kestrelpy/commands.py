"""The commands that act on the server or on whole queues, not on one connection's reads.

``delete``, ``flush*``, ``stats``, ``dump_*``, ``status``, ``reload``, ``shutdown``,
``version`` and ``quit``: each a function ``(ctx, request, out) -> code`` that appends its
reply to ``out`` and returns a :mod:`~kestrelpy.replies` code. They hold no per-connection
state; the session dispatches to them through :data:`COMMANDS`. Also the two reply helpers
every command shares: the status refusal and the error line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from kestrelpy import __version__
from kestrelpy.clock import now_ms
from kestrelpy.config import STATUSES, ServerConfig, dump_config_lines
from kestrelpy.replies import (
    CLOSE,
    DELETED_DURABLE,
    DONE,
    END_DURABLE,
    FLUSHED_DURABLE,
    STREAM,
    WROTE,
    Durable,
    Stream,
)
from kestrelpy.stats import ServerStats, dump_stats_lines, queue_pairs_in_pieces, server_pairs
from kestrelpy.wire.memcache import DELETED, END, Command, is_queue_name, stat_body

if TYPE_CHECKING:
    from kestrelpy.service import ServerContext

Out = list[Any]  # reply parts: bytes, or Durable markers
# (server context, the connection's settings, request, reply parts) -> code. The settings
# are the connection's own: fixed when it opened, so a reload does not change the rules
# (status refusals, error lines) halfway through a client's conversation.
CommandFunction = Callable[["ServerContext", ServerConfig, Command, Out], int]

# Queues per piece of a streamed report: ~170 KB of stats lines, a few ms of work.
REPORT_PIECE_QUEUES = 256


def error_line(settings: ServerConfig, line: bytes) -> bytes:
    """An error reply; only its first word under ``bare_error_lines`` (old clients)."""
    if settings.bare_error_lines:
        line = line.split(b" ", 1)[0]
    return line + b"\r\n"


def refused(
    status: str, settings: ServerConfig, stats: ServerStats, out: Out, *, writes: bool
) -> bool:
    """True, with a SERVER_ERROR line in ``out``, when the server ``status`` (or the
    connection limit) refuses this kind of request; the caller then closes.

    SERVER_ERROR because Kestrel clients retry on another server only for that reply.
    Plain values, not the context: a session calls this for every get and set.
    """
    if status == "quiescent" or (writes and status == "readonly"):
        out.append(error_line(settings, b"SERVER_ERROR server is " + status.encode()))
        return True
    limit = (
        settings.connection_limit_refuse_writes
        if writes
        else settings.connection_limit_refuse_reads
    )
    if limit and stats.curr_connections > limit:
        out.append(error_line(settings, b"SERVER_ERROR too many connections"))
        return True
    return False


# CLIENT_ERROR, not SERVER_ERROR: retrying cannot help, and a Kestrel client answers
# SERVER_ERROR by trying the same command on another server of the cluster.
_ADMIN_DISABLED: Final = (
    b"CLIENT_ERROR admin commands are disabled on this port (admin_commands = false)"
)


def _admin_refused(settings: ServerConfig, out: Out, *, silent: bool = False) -> bool:
    """True, with a CLIENT_ERROR line in ``out`` unless ``silent`` (noreply), when
    ``admin_commands = false`` forbids ``shutdown``, ``flush_all``, ``reload`` and setting
    the status here. The connection is kept: nothing about its framing is in doubt.
    """
    if settings.admin_commands:
        return False
    if not silent:
        out.append(error_line(settings, _ADMIN_DISABLED))
    return True


def _refused_write(ctx: ServerContext, settings: ServerConfig, out: Out) -> bool:
    return refused(ctx.status, settings, ctx.stats, out, writes=True)


class MonitorArgs(NamedTuple):
    """``monitor <queue> <seconds> [max]``, checked."""

    queue: str
    seconds: int
    limit: int | None  # None: as many as max_open_transactions allows


def parse_monitor(args: Sequence[bytes]) -> MonitorArgs | tuple[bytes, int]:
    """The arguments of ``monitor``, or (error line without CRLF, code) to answer."""
    if len(args) < 2 or not args[1].isdigit() or (len(args) > 2 and not args[2].isdigit()):
        return b"CLIENT_ERROR usage: monitor <queue> <seconds> [max]", CLOSE
    if not is_queue_name(args[0]):
        return b"CLIENT_ERROR bad queue name", DONE
    return MonitorArgs(
        args[0].decode("latin-1"), int(args[1]), int(args[2]) if len(args) > 2 else None
    )


def _reply(request: Command, out: Out, reply: bytes | Durable) -> None:
    if not request.noreply:
        out.append(reply)


def _queue_arg(settings: ServerConfig, request: Command, out: Out) -> str | None:
    if not request.args:
        if not request.noreply:
            out.append(error_line(settings, b"CLIENT_ERROR missing queue name"))
        return None
    return request.args[0].decode("latin-1")


def _write_target(
    ctx: ServerContext, settings: ServerConfig, request: Command, out: Out, missing: int = DONE
) -> str | int:
    """The queue a write command names, once the status allows writes.

    Otherwise the code the command must return (its error line is already in ``out``).
    """
    name = _queue_arg(settings, request, out)
    if name is None:
        return missing
    if _refused_write(ctx, settings, out):
        return CLOSE
    return name


def delete(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    name = _write_target(ctx, settings, request, out)
    if isinstance(name, int):
        return name
    if name in ctx.collection.aliases:
        _reply(request, out, DELETED)
        return DONE
    for waiter in ctx.collection.delete(name):
        waiter.on_queue_deleted()
    _reply(request, out, DELETED_DURABLE)
    return WROTE


def flush(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    name = _write_target(ctx, settings, request, out)
    if isinstance(name, int):
        return name
    ctx.collection.flush(name)
    _reply(request, out, END_DURABLE)
    return WROTE


def flush_all(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    if _admin_refused(settings, out, silent=request.noreply):
        return DONE
    if _refused_write(ctx, settings, out):
        return CLOSE
    ctx.collection.flush_all()
    _reply(request, out, FLUSHED_DURABLE)
    return WROTE


def flush_expired(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    name = _write_target(ctx, settings, request, out, missing=CLOSE)  # Kestrel drops it there
    if isinstance(name, int):
        return name
    count = ctx.collection.flush_expired(name, now_ms(ctx.clock))
    _reply(request, out, b"%d\r\n" % count)
    return WROTE


def flush_all_expired(
    ctx: ServerContext, settings: ServerConfig, request: Command, out: Out
) -> int:
    count = ctx.collection.flush_all_expired(now_ms(ctx.clock))
    _reply(request, out, b"%d\r\n" % count)
    return WROTE


def version(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    out.append(b"VERSION kestrelpy-%s\r\n" % __version__.encode())
    return DONE


def stats(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    now = now_ms(ctx.clock)
    collection = ctx.collection
    head = stat_body(server_pairs(ctx.stats, collection, now))
    queues = queue_pairs_in_pieces(collection, now, REPORT_PIECE_QUEUES)
    pieces = chain((head,), map(stat_body, queues), (END,))
    return _answer(out, pieces, len(collection))


def dump_stats(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    now = now_ms(ctx.clock)
    names = _names(ctx, request)
    blocks = _queue_blocks(
        ctx, request, names, lambda name: dump_stats_lines(ctx.collection, name, now)
    )
    return _answer(out, blocks, len(names))


def dump_config(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    config = ctx.collection.config
    names = _names(ctx, request)
    blocks = _queue_blocks(
        ctx, request, names, lambda name: dump_config_lines(config.queue_config(name))
    )
    return _answer(out, blocks, len(names))


def _answer(out: Out, pieces: Iterator[bytes], queues: int) -> int:
    """A report over few queues is one reply part; over many it is a :class:`Stream`,
    built piece by piece as the client reads it (see :mod:`kestrelpy.replies`)."""
    if queues <= REPORT_PIECE_QUEUES:
        out.append(b"".join(pieces))
        return DONE
    out.append(Stream(pieces))
    return STREAM


def _names(ctx: ServerContext, request: Command) -> list[str]:
    return [a.decode("latin-1") for a in request.args] or ctx.collection.names()


def _queue_blocks(
    ctx: ServerContext, request: Command, names: list[str], body: Callable[[str], Iterable[str]]
) -> Iterator[bytes]:
    """``queue 'name' {`` … ``}`` for each queue in ``names``, then END, in pieces of
    :data:`REPORT_PIECE_QUEUES` queues. Without names in the request every queue is
    reported, less those deleted while the report streams."""
    collection = ctx.collection
    every_queue = not request.args
    for start in range(0, len(names), REPORT_PIECE_QUEUES):
        lines: list[str] = []
        for name in names[start : start + REPORT_PIECE_QUEUES]:
            if every_queue and collection.get(name) is None:
                continue
            lines.append(f"queue '{name}' {{")
            lines.extend(f"  {line}" for line in body(name))
            lines.append("}")
        yield "".join(line + "\r\n" for line in lines).encode("latin-1")
    yield END


def shutdown(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    if _admin_refused(settings, out):
        return DONE
    ctx.clock.callLater(0, ctx.shutdown)
    return CLOSE


def quit_connection(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    return CLOSE


def reload(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    if _admin_refused(settings, out):
        return DONE
    try:
        ctx.reload()
    except Exception as err:  # a bad file keeps the running config
        out.append(b"SERVER_ERROR config error: %s\r\n" % str(err).encode("latin-1", "replace"))
        return DONE
    out.append(b"Reloaded config.\r\n")
    return DONE


def status(ctx: ServerContext, settings: ServerConfig, request: Command, out: Out) -> int:
    if not request.args:
        out.append(ctx.status.upper().encode() + b"\r\n")
        return DONE
    if _admin_refused(settings, out):  # the query above stays allowed
        return DONE
    wanted = request.args[0].decode("latin-1").lower()
    if wanted not in STATUSES:
        out.append(error_line(settings, b"CLIENT_ERROR unknown status"))
        return CLOSE
    ctx.set_status(wanted)
    out.append(END)
    return DONE


COMMANDS: dict[bytes, CommandFunction] = {
    b"delete": delete,
    b"flush": flush,
    b"flush_all": flush_all,
    b"flush_expired": flush_expired,
    b"flush_all_expired": flush_all_expired,
    b"version": version,
    b"stats": stats,
    b"dump_stats": dump_stats,
    b"dump_config": dump_config,
    b"shutdown": shutdown,
    b"quit": quit_connection,
    b"reload": reload,
    b"status": status,
}
