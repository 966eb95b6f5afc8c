"""idle_readers: thousands of readers blocked on an empty queue; what do they cost the server?

Opens ``--clients`` connections, each blocked in ``get q/t=WAIT`` on an empty queue, waits
until the server reports them as waiters (or at least connected), then measures the server's
CPU use over ``--hold`` seconds (from /proc/PID/stat) and its RSS, before and during. An idle
waiter should cost a few hundred bytes and no CPU: no per-waiter timer work, no polling.
Needs ``--server-pid`` for the CPU and memory figures (it still checks the server survives
without it). Against a plain cache every get is answered at once and the connections are
simply idle.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadtest._cli import base_parser, base_report, header_line, positive_int, prepare, run_tool
from loadtest._client import ServerInfo, SyncClient, queue_stat
from loadtest._loop import Conn, Loop, connect_many
from loadtest._proc import cpu_seconds, proc_memory, raise_fd_limit
from loadtest._proto import get_request, parse_get_reply
from loadtest._report import Progress, check_text, table

MB = 1024 * 1024


class _Idle(Conn):
    """A reader that sends one blocking get and then just counts whatever comes back."""

    __slots__ = ("buf", "counter")

    def __init__(self, loop: Loop, sock: Any, counter: list[int]) -> None:
        super().__init__(loop, sock)
        self.buf = bytearray()
        self.counter = counter  # [replies, items]: shared by all readers of the run

    def on_readable(self) -> None:
        self.buf += self.recv()
        while True:
            pos, body = parse_get_reply(self.buf, 0)
            if not pos:
                return
            del self.buf[:pos]
            self.counter[0] += 1
            self.counter[1] += body is not None


def _settle(args: argparse.Namespace, info: ServerInfo, loop: Loop) -> tuple[float, int | None]:
    """Wait until the server shows every reader as a waiter (queue) or connection (cache).

    Bounded by --timeout; returns the time it took and the last waiter count seen.
    """
    began = time.monotonic()
    waiters = None
    with SyncClient(args.server, args.timeout) as client:
        while time.monotonic() - began < args.timeout:
            stats = client.stats()
            waiters = queue_stat(stats, args.queue_bytes, "waiters")
            connected = int(stats.get("curr_connections", "0"))
            if waiters is not None and waiters >= args.clients:
                break
            if (waiters is None or not info.is_queue) and connected >= args.clients:
                break
            loop.poll(0.05)  # serve early replies while the server catches up
    return time.monotonic() - began, waiters


def _hold(args: argparse.Namespace, loop: Loop, progress: Progress) -> dict[str, float]:
    """Sit idle for --hold seconds, measuring the server's CPU and memory."""
    pid = args.server_pid
    began = time.monotonic()
    cpu_start = cpu_seconds(pid) if pid else 0.0
    while (elapsed := time.monotonic() - began) < args.hold:
        loop.poll(min(0.2, max(0.0, args.hold - elapsed)))
        progress.update(int(elapsed * 10))
    held = time.monotonic() - began
    found = {"hold_s": round(held, 3)}
    if pid:
        used = cpu_seconds(pid) - cpu_start
        found["server_cpu_s"] = round(used, 3)
        found["server_cpu_percent"] = round(100 * used / held, 2)
        found.update({f"{k}_during": v for k, v in proc_memory(pid).items()})
    return found


def _after_close(args: argparse.Namespace) -> tuple[bool, int | None]:
    """Does the server survive the mass close, and does it drop the dead waiters?

    Polls ``queue_<q>_waiters`` until 0, bounded by --timeout (a short pause between polls;
    a server that cancels waiters on disconnect gets there at once).
    """
    try:
        with SyncClient(args.server, args.timeout) as client:
            client.version()
            deadline = time.monotonic() + args.timeout
            while True:
                left = queue_stat(client.stats(), args.queue_bytes, "waiters")
                if not left or time.monotonic() > deadline:
                    return True, left
                time.sleep(0.05)
    except OSError:
        return False, None


def _check(alive: bool, left: int | None) -> dict[str, Any]:
    if not alive:
        return {"performed": True, "ok": False, "note": "server did not answer after the close"}
    if left:
        return {"performed": True, "ok": False, "note": f"{left} waiters left after the close"}
    return {"performed": True, "ok": True, "note": "server answers; no waiter left behind"}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    raise_fd_limit(args.clients + 256)
    args.hold = min(args.hold, args.duration)  # --duration bounds every tool's run
    info = prepare(args, args.queue_bytes)
    before = proc_memory(args.server_pid) if args.server_pid else {}
    began = time.monotonic()
    socks = connect_many(args.server, args.clients, args.timeout, began + 6 * args.timeout)
    connect_s = time.monotonic() - began
    loop = Loop()
    counter = [0, 0]
    request = get_request(args.queue_bytes + b"/t=%d" % args.wait_ms)
    for sock in socks:
        _Idle(loop, sock, counter).send(request)
    settle_s, waiters = _settle(args, info, loop)
    progress = Progress("idle_readers", int(args.hold * 10), not args.quiet)
    held = _hold(args, loop, progress)
    progress.finish()
    loop.close()
    alive, left = _after_close(args)
    report = base_report("idle_readers", args, info)
    report.update(
        params={"clients": args.clients, "wait_ms": args.wait_ms, "hold_s": args.hold},
        connect_s=round(connect_s, 3),
        settle_s=round(settle_s, 3),
        waiters=waiters,
        early_replies=counter[0],
        items_received=counter[1],
        server_answers_after=alive,
        waiters_after_close=left,
        rss_before=before.get("rss"),
        rss_anon_before=before.get("rss_anon"),
        **held,
        check=_check(alive, left),
    )
    report["ok"] = report["check"]["ok"] is not False
    if "rss_during" in report and report["rss_before"]:
        report["rss_per_client"] = round(
            (report["rss_during"] - report["rss_before"]) / args.clients
        )
    return report, _text(report)


def _text(report: dict[str, Any]) -> str:
    p = report["params"]

    def mib(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else f"{value / MB:.1f}"

    rows = [
        ["server CPU over hold", f"{report.get('server_cpu_percent', '-')} %"],
        ["RSS before / during", f"{mib('rss_before')} / {mib('rss_during')} MiB"],
        ["RssAnon before / during", f"{mib('rss_anon_before')} / {mib('rss_anon_during')} MiB"],
        ["RSS per client", f"{report.get('rss_per_client', '-')} B"],
        ["waiters reported", report["waiters"] if report["waiters"] is not None else "-"],
        ["replies during hold", report["early_replies"]],
    ]
    left = report["waiters_after_close"]
    rows.append(["waiters after close", "-" if left is None else left])
    lines = [
        header_line(report),
        f"{p['clients']:,} readers in get /t={p['wait_ms']}, held {report['hold_s']} s "
        f"(connected in {report['connect_s']} s, settled in {report['settle_s']} s)",
        "",
        table(("measure", "value"), rows),
        "",
        check_text(report["check"]),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("idle_readers", __doc__.split("\n")[0], "idle_readers", 120.0)
    parser.add_argument("--clients", "-c", type=positive_int, default=10_000, help="(10000)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to measure (10)")
    parser.add_argument("--wait-ms", type=positive_int, default=60_000, help="get /t= (60000)")
    parser.add_argument("--server-pid", type=int, default=0, help="server for CPU/RSS (/proc)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
