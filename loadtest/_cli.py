"""Options and the run/exit-code contract every load tool shares.

Exit codes: 0 the run finished and every check passed; 1 an exactly-once / lost-item check
failed (the server misbehaved); 2 the run could not be done (bad option, server unreachable,
error reply, worker crash). Scripts can thus tell "server is wrong" from "test is broken".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from loadtest._client import ServerInfo, detect_server, parse_address, reset_queue
from loadtest._loop import ConnectionLost
from loadtest._proc import parse_cpus, pin
from loadtest._proto import ReplyError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR = 0, 1, 2
DEFAULT_SERVER = "127.0.0.1:22133"  # Kestrel's memcache port

Report = dict[str, Any]
Runner = Callable[[argparse.Namespace], tuple[Report, str]]


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def base_parser(
    prog: str, description: str, queue: str, duration: float
) -> argparse.ArgumentParser:
    """The options every tool has; tools add their own to the returned parser."""
    parser = argparse.ArgumentParser(prog=f"python -m loadtest.{prog}", description=description)
    parser.add_argument(
        "--server",
        type=parse_address,
        default=parse_address(DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"server to load (default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--queue", default=queue, help=f"queue (key) name, deleted before the run (default {queue})"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=duration,
        metavar="SECONDS",
        help=f"deadline: stop issuing requests after this long (default {duration:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--cpu",
        type=parse_cpus,
        default=None,
        metavar="LIST",
        help="pin the load generator to these CPUs (taskset syntax: 1, 0-1, 0,2; default: none)",
    )
    parser.add_argument(
        "--expect-queue",
        choices=("auto", "yes", "no"),
        default="auto",
        help="is the server a queue (exactly-once checks) or a plain cache? (default auto-detect)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="connect and setup/verification read timeout (default 5)",
    )
    parser.add_argument(
        "--no-reset",
        action="store_true",
        help="do not delete the queue before the run (leftover items then count as foreign)",
    )
    return parser


def add_workers_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--workers",
        "-W",
        type=non_negative_int,
        default=0,
        help=f"{what} processes (default: 2, or 1 when pinned to a single CPU)",
    )


def auto_workers() -> int:
    """Two processes keep the client from being the bottleneck, but only on two CPUs: two
    processes sharing one pinned CPU just preempt each other (more latency, less rate)."""
    return min(2, len(os.sched_getaffinity(0)))


def prepare(args: argparse.Namespace, *queues: bytes) -> ServerInfo:
    """Pin, size the worker pool, detect the server kind and empty the run's queues."""
    pin(args.cpu)
    if getattr(args, "workers", None) == 0:
        args.workers = auto_workers()
    info = detect_server(args.server, args.expect_queue, args.timeout)
    if not args.no_reset:
        for queue in queues:
            reset_queue(args.server, queue, args.timeout)
    return info


def base_report(tool: str, args: argparse.Namespace, info: ServerInfo) -> Report:
    """The keys every JSON report starts with."""
    host, port = args.server
    return {
        "tool": tool,
        "server": f"{host}:{port}",
        "server_kind": info.kind,
        "server_kind_reason": info.reason,
        "server_version": info.version,
        "queue": args.queue,
        "ok": True,
    }


def header_line(report: Report) -> str:
    kind = report["server_kind"]
    extra = "" if kind == "queue" else ": exactly-once checks skipped"
    return (
        f"{report['tool']} against {report['server']} "
        f"(version {report['server_version'] or '?'}; {kind}{extra})"
    )


def skipped_check(info: ServerInfo) -> dict[str, Any]:
    """The ``check`` part of a report when the server is a plain cache."""
    return {"performed": False, "ok": None, "note": f"server is a {info.reason}"}


def problems_check(problems: Sequence[str], when_none: str) -> dict[str, Any]:
    """The ``check`` part of a report that looked for ``problems`` (the first five named)."""
    return {"performed": True, "ok": not problems, "note": "; ".join(problems[:5]) or when_none}


def run_tool(parser: argparse.ArgumentParser, runner: Runner, argv: Sequence[str] | None) -> int:
    """Parse options, run, print the report; map failures to the exit codes above."""
    from loadtest._report import emit

    args = parser.parse_args(argv)
    args.queue_bytes = args.queue.encode()
    try:
        report, text = runner(args)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, RuntimeError, ReplyError, ConnectionLost, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    emit(report, args.json, text)
    return EXIT_OK if report.get("ok", True) else EXIT_CHECK_FAILED


def run_tag() -> int:
    """A 32-bit tag that marks this run's items (pid and time: distinct across runs)."""
    return (os.getpid() << 16 ^ time.time_ns() >> 10) & 0xFFFFFFFF
