"""``kestrelpy`` command line: ``serve``, ``stats``, ``top``, ``dump-store``, ``consume``,
``produce``.

The only module that imports the global reactor. A user error prints one line on stderr
and exits 2, never a traceback. ``consume`` and ``produce`` run under supervisors and in
scripts, whose logs keep only what a line says: their argument errors are one line too,
with a short usage in place of argparse's multi-line one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from kestrelpy import __version__
from kestrelpy.errors import KestrelpyError


class UsageError(KestrelpyError):
    """A mistake on the command line or in the environment the user can fix."""


CONSUME_USAGE = (
    "kestrelpy consume -s HOST:PORT[,...] -q QUEUE [options] "
    "(-- COMMAND... | --handler MODULE:FUNCTION | --jobs MODULE)"
)
ROUTER_RUN_USAGE = (
    "kestrelpy router run --interface NAME --config FILE [--queue Q]... [--mode flush|consume|all]"
)
PRODUCE_USAGE = (
    "kestrelpy produce -s HOST:PORT[,...] -q QUEUE [-e ENV] [--job NAME [--instance I]] [DATA | -]"
)


class _Parser(argparse.ArgumentParser):
    """A subcommand parser; with ``one_line_usage``, an argument error is one stderr line
    ending in that usage (exit 2) instead of argparse's usage block."""

    def __init__(self, *args: Any, one_line_usage: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_line_usage = one_line_usage

    def error(self, message: str) -> NoReturn:
        if self.one_line_usage is None:
            super().error(message)
        self.exit(2, f"{self.prog}: {message} (usage: {self.one_line_usage})\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = _parse(parser, argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except KestrelpyError as err:
        print(f"kestrelpy: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, except that a subcommand's unknown arguments are reported by the
    subcommand's parser (argparse reports them from the top one, with its usage)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        message = "unrecognized arguments: " + " ".join(extras)  # argparse's own wording
        sub: argparse.ArgumentParser = getattr(args, "parser", parser)
        if getattr(args, "command", None):
            message += " (put -- before a COMMAND that has options)"
        sub.error(message)
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kestrelpy", description="A durable, Kestrel-compatible message queue server."
    )
    parser.add_argument("--version", action="version", version=f"kestrelpy {__version__}")
    commands = parser.add_subparsers(title="commands", parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="memcache port (default 22133; 0 = any free)")
    serve.add_argument("--data-dir", type=Path, help="store directory (default ./data)")
    serve.add_argument("--config", type=Path, help="server.conf (TOML)")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help='HTTP listener: metrics, admin API, dashboard (default 127.0.0.1:2223; "" = off)',
    )
    serve.add_argument(
        "--reactor",
        choices=("epoll", "twisted-epoll", "asyncio", "uvloop"),
        default="epoll",
        help="event loop (default epoll: Twisted's, minus its per-event log context, the "
        "fastest here; twisted-epoll: the stock one; uvloop needs the uvloop package)",
    )
    serve.set_defaults(run=cmd_serve)

    stats = commands.add_parser("stats", help="print a running server's stats")
    stats.add_argument("--server", default="127.0.0.1:22133", help="host:port")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(run=cmd_stats)

    top = commands.add_parser("top", help="a live view of a running server's queues")
    top.add_argument("--server", default="127.0.0.1:22133", help="host:port (memcache)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.set_defaults(run=cmd_top)

    dump = commands.add_parser("dump-store", help="list queues in a store, offline, read-only")
    dump.add_argument("--data-dir", type=Path, required=True)
    dump.add_argument("--json", action="store_true", help="one JSON object")
    dump.set_defaults(run=cmd_dump_store)

    _add_consume(commands)
    _add_produce(commands)
    _add_router(commands)
    return parser


def _add_consume(commands: Any) -> None:
    """Values are plain strings here; kestrelpy.jobs.cli checks them, naming the flag."""
    consume = commands.add_parser(
        "consume",
        help="run jobs from a queue (a worker)",
        one_line_usage=CONSUME_USAGE,
        usage="%(prog)s -s HOST:PORT[,...] -q QUEUE [-e ENV] [-m N] [-d] [--concurrency N]\n"
        "         [--timeout-ms MS] [--max-retries N [--backoff-s S]]\n"
        "         (-- COMMAND... | --handler MODULE:FUNCTION | --jobs MODULE)",
        description="Take jobs from QUEUE with reliable reads and run each with COMMAND, a "
        "Python function, or the @job handlers of a module. A job is confirmed only when it "
        "is done: a worker that dies mid-job loses nothing, the job is delivered again.",
        epilog="COMMAND gets the item as JSON on stdin and in $KESTRELPY_JOB, with "
        "$KESTRELPY_JOB_NAME, $KESTRELPY_QUEUE, $KESTRELPY_ATTEMPT (and $KESTRELPY_INSTANCE); "
        "exit status 0 is success. MODULE is imported with the current directory first on "
        "sys.path. SIGTERM or SIGINT: finish running jobs, then exit 0; a second one: kill "
        "them and exit now (their items go back on the queue).",
    )
    consume.add_argument("-s", "--server", metavar="HOST:PORT[,...]", help="servers (required)")
    consume.add_argument("-q", "--queue", help="queue to read (required)")
    consume.add_argument("-e", "--env", metavar="ENV", help="read ENV_QUEUE instead of QUEUE")
    consume.add_argument("-m", "--max-jobs", metavar="N", help="exit 0 after N jobs")
    consume.add_argument("-d", "--debug", action="store_true", help="one line per job on stdout")
    consume.add_argument(
        "--concurrency", metavar="N", help="jobs run at once, each on its own connection (1)"
    )
    consume.add_argument("--timeout-ms", metavar="MS", help="how long a read waits (500)")
    consume.add_argument(
        "--max-retries",
        metavar="N",
        help="retry a failed job N times (at the tail, after a backoff), then put it on "
        "QUEUE_errors; without it a failed job is aborted: back at the head, retried forever",
    )
    consume.add_argument(
        "--backoff-s", metavar="S", help="first retry delay, doubling per retry up to 60 (1)"
    )
    runner = consume.add_mutually_exclusive_group()
    runner.add_argument("--handler", metavar="MODULE:FUNCTION", help="call FUNCTION(data, job)")
    runner.add_argument("--jobs", metavar="MODULE", help="dispatch to MODULE's @job handlers")
    consume.add_argument("command", nargs="*", metavar="COMMAND", help="after --: run per job")
    consume.set_defaults(run=cmd_consume, parser=consume)


def _add_router(commands: Any) -> None:
    router = commands.add_parser("router", help="the message router (kestrelpy.router)")
    actions = router.add_subparsers(title="router commands", parser_class=_Parser)
    run = actions.add_parser(
        "run",
        help="one processing run of an interface (what send.on_exit starts at exit)",
        one_line_usage=ROUTER_RUN_USAGE,
    )
    run.add_argument("--interface", required=True, help="the interface to run")
    run.add_argument("--config", type=Path, help="a TOML file with a [router] table")
    run.add_argument("--config-json", help=argparse.SUPPRESS)  # the at-exit child's config
    run.add_argument("--delete-config", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--queue", action="append", help="a queue to run (repeatable)")
    run.add_argument(
        "--mode",
        choices=("flush", "consume", "all"),
        help="what to do (default: the interface's send.on_exit)",
    )
    run.set_defaults(run=cmd_router_run, parser=run)


def _add_produce(commands: Any) -> None:
    produce = commands.add_parser(
        "produce",
        help="put jobs (or plain JSON values) on a queue",
        one_line_usage=PRODUCE_USAGE,
        usage="%(prog)s -s HOST:PORT[,...] -q QUEUE [-e ENV] [--job NAME [--instance I]]\n"
        "         [DATA | -]",
        description="Put DATA, or each line of stdin (one JSON value per line, blank lines "
        "skipped), on QUEUE. With --job, each value becomes the data of a job envelope.",
    )
    produce.add_argument("-s", "--server", metavar="HOST:PORT[,...]", help="servers (required)")
    produce.add_argument("-q", "--queue", help="queue to write (required)")
    produce.add_argument("-e", "--env", metavar="ENV", help="write ENV_QUEUE instead of QUEUE")
    produce.add_argument("--job", metavar="NAME", help="wrap each value in a job envelope")
    produce.add_argument("--instance", metavar="I", help="the envelope's instance")
    produce.add_argument("data", nargs="?", metavar="DATA", help="JSON text; - or none: stdin")
    produce.set_defaults(run=cmd_produce, parser=produce)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the config, check the data dir, run until SIGTERM/SIGINT or ``shutdown``."""
    _install_reactor(args.reactor)
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from kestrelpy.config import load_config
    from kestrelpy.malloc_tuning import keep_freed_memory
    from kestrelpy.service import make_service

    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0..65535")
    config = load_config(
        args.config, host=args.host, port=args.port, data_dir=args.data_dir, http=args.http
    )
    _check_data_dir(config.server.data_dir)
    keep_freed_memory()
    reactor: Any = global_reactor
    # Before the listeners start: once "listening on" is logged, a SIGTERM must be a clean
    # stop (a supervisor or a test may send one at once), not the default kill (-15).
    _stop_on_signals(reactor)
    service = make_service(config, reactor)
    try:
        service.startService()
    except CannotListenError as err:
        service.store.close()
        raise UsageError(f"cannot listen on {err.interface}:{err.port}: {err.socketError}") from err
    # Only now: until both listeners are bound, log lines wait in Twisted's buffer, so a
    # busy port (memcache or HTTP) is one line on stderr and nothing else.
    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    stderr_observer: Any = textFileLogObserver(sys.stderr)
    observer: Any = FilteringLogObserver(stderr_observer, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    # Twisted would install its own SIGINT/SIGTERM handlers, and put back the defaults
    # when the reactor stops: a second SIGTERM during shutdown then killed the process
    # (exit -15) instead of being a no-op. Ours stay installed until the process exits.
    reactor.run(installSignalHandlers=False)
    # Stopped; the store is closed. Python's finalisation resets signals that have Python
    # handlers to their defaults (not ignored ones), so from here a late SIGTERM is ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


def _install_reactor(name: str) -> None:
    """Choose the event loop before anything imports the global reactor."""
    if name == "epoll":
        from kestrelpy.reactor import install

        install()  # falls back to the stock reactor (on first import) if it cannot
        return
    if name == "twisted-epoll":
        return
    import asyncio

    from twisted.internet import asyncioreactor

    loop: asyncio.AbstractEventLoop
    if name == "uvloop":
        try:
            import uvloop
        except ImportError as err:
            raise UsageError("--reactor uvloop: the uvloop package is not installed") from err
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)  # type: ignore[no-untyped-call]


def _stop_on_signals(reactor: Any) -> None:
    """SIGINT and SIGTERM stop the server cleanly; a repeat is a no-op.

    Installed explicitly: a shell starts background jobs with SIGINT ignored, and
    Twisted then leaves it ignored.
    """

    def stop(signum: int, frame: object) -> None:
        reactor.callFromThread(_stop_once, reactor)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _stop_once(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()


def _check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"data dir {path}: cannot create: {err.strerror}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"data dir {path}: not writable")


def cmd_stats(args: argparse.Namespace) -> int:
    from kestrelpy.admin import print_stats

    return print_stats(args.server, as_json=args.json)


def cmd_top(args: argparse.Namespace) -> int:
    from kestrelpy.top import run_top

    return run_top(args.server, interval_s=args.interval)


def cmd_dump_store(args: argparse.Namespace) -> int:
    from kestrelpy.admin import print_store

    return print_store(args.data_dir, as_json=args.json)


def cmd_consume(args: argparse.Namespace) -> int:
    from kestrelpy.jobs.cli import CommandLineError, consume

    try:
        return consume(args)
    except CommandLineError as err:
        parser: _Parser = args.parser
        parser.error(str(err))


def cmd_produce(args: argparse.Namespace) -> int:
    from kestrelpy.jobs.cli import CommandLineError, produce

    try:
        return produce(args)
    except CommandLineError as err:
        parser: _Parser = args.parser
        parser.error(str(err))


def cmd_router_run(args: argparse.Namespace) -> int:
    from kestrelpy.router.cli import run_command

    return run_command(args)
