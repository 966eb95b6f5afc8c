"""parallel_disconnects: bursts of clients connect, read and vanish; the server must not care.

Each round opens ``--clients`` connections at once (non-blocking connects). Client i does
one of four things, by ``i % 4``:

0. ``get q/open``, reads the item, then disconnects holding it (the item must come back);
1. ``get q/open`` and disconnects without waiting for the reply (a race with the server);
2. ``get idle/t=WAIT`` and disconnects at once (a waiter dies before it is registered, or
   just after);
3. ``get idle/t=WAIT``, stays blocked until the end of the round, then disconnects.

All connections of a round close together, half with FIN and half with RST. Afterwards the
server must still answer, ``q`` must hold exactly its ``--items`` prefilled items (each read
back once), and items set into ``idle`` must all be readable: none may go to a dead waiter.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadtest._cli import (
    base_parser,
    base_report,
    header_line,
    positive_int,
    prepare,
    run_tag,
    run_tool,
    skipped_check,
)
from loadtest._client import SyncClient, connect, queue_stat
from loadtest._feed import Feeder
from loadtest._loop import Conn, Loop
from loadtest._proc import raise_fd_limit
from loadtest._proto import get_request, make_body, parse_get_reply
from loadtest._report import Progress, check_text, human, rate, table
from loadtest._tally import Tally, expected_map, merge_check

MODES = ("open_then_drop", "open_and_drop", "wait_and_drop", "wait_until_round_end")


class _Client(Conn):
    """One short-lived client: connect, send one read, then drop as its mode says."""

    __slots__ = ("buf", "connecting", "mode", "replied", "request")

    def __init__(self, loop: Loop, addr: tuple[str, int], mode: int, request: bytes) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise ConnectionError(f"connect failed: {errno.errorcode.get(err, err)}")
        super().__init__(loop, sock)
        self.mode = mode
        self.request = request
        self.buf = bytearray()
        self.replied = False
        self.connecting = True
        loop.want_write(self, True)

    def on_writable(self) -> None:
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise ConnectionError(f"connect failed: {errno.errorcode.get(err, err)}")
            self.connecting = False
            self.loop.want_write(self, False)
            self.send(self.request)
            if self.mode in (1, 2):
                self.close(abortive=self.fd % 2 == 0)  # gone before the server answers
            return
        super().on_writable()

    def on_readable(self) -> None:
        self.buf += self.recv()
        pos, _body = parse_get_reply(self.buf, 0)
        if pos:
            self.replied = True  # mode 0 has its item open; it drops it with the round

    @property
    def settled(self) -> bool:
        """Nothing more to wait for before the round's mass disconnect."""
        if self.closed:
            return True
        return not self.connecting and (self.mode != 0 or self.replied)


def _prefill(args: argparse.Namespace, tag: int) -> list[int]:
    """Set ``--items`` items into q (pipelined); returns the ids refused with NOT_STORED."""
    loop = Loop()
    sock = connect(args.server, args.timeout)
    feeder = Feeder(loop, sock, args.queue_bytes, tag, 16, (0, args.items), 32)
    feeder.fire()
    deadline = time.monotonic() + max(args.timeout, args.duration)
    while not feeder.done and time.monotonic() < deadline:
        loop.poll(0.1)
    loop.close()
    if not feeder.done:
        raise TimeoutError("prefill did not finish")
    return feeder.refused


def _round(args: argparse.Namespace, requests: list[bytes]) -> dict[str, int]:
    """One burst: connect all, send, wait for mode 0 replies and mode 3 to block, drop all."""
    loop = Loop()
    clients = [_Client(loop, args.server, i % 4, requests[i % 4]) for i in range(args.clients)]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not all(c.settled for c in clients):
        loop.poll(0.05)
    timed_out = sum(1 for c in clients if not c.settled)
    for c in clients:
        c.close(abortive=c.fd % 2 == 0)  # the parallel disconnect: all at once
    loop.close()
    return {"timed_out": timed_out, "replied": sum(c.replied for c in clients)}


def _settle(client: SyncClient, args: argparse.Namespace, idle: bytes) -> int | None:
    """Wait (bounded) until the server has returned every open item of the dropped clients.

    The pause is a server-side wait on the empty idle queue, so no item is consumed.
    Returns the final ``queue_<q>_items`` (None if the server has no such stat).
    """
    deadline = time.monotonic() + args.timeout
    items = None
    while True:
        stats = client.stats()
        items = queue_stat(stats, args.queue_bytes, "items")
        still_open = queue_stat(stats, args.queue_bytes, "open_transactions")
        if not still_open or time.monotonic() > deadline:
            return items
        client.get(idle + b"/t=50")


def _verify(args: argparse.Namespace, tag: int, refused: list[int], idle: bytes) -> dict[str, Any]:
    """The server answers; q holds its items exactly once; idle delivers every new item."""
    with SyncClient(args.server, args.timeout) as client:
        client.version()
        queued = _settle(client, args, idle)
        deadline = time.monotonic() + max(args.timeout, 1.0)
        main = Tally(tag, args.items)
        for body in client.drain(args.queue_bytes, args.items + 1, deadline):
            main.add(body)
        idle_tag = (tag + 1) & 0xFFFFFFFF
        for i in range(args.clients):
            client.set(idle, make_body(idle_tag, i, 16))
        fresh = Tally(idle_tag, args.clients)
        for body in client.drain(idle, args.clients + 1, deadline):
            fresh.add(body)
    wanted = expected_map(args.items, [(0, args.items)], refused)
    check = merge_check([main.state()], args.items, wanted, len(refused))
    check["queued"] = queued
    check["idle_set"] = args.clients
    check["idle_received"] = fresh.received
    idle_ok = fresh.received == args.clients and fresh.duplicated == 0 and not fresh.foreign
    count_ok = queued is None or queued == check["expected"]
    check["ok"] = check["ok"] and idle_ok and count_ok
    return check


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    raise_fd_limit(args.clients + 256)
    idle = args.queue_bytes + b"_idle"
    info = prepare(args, args.queue_bytes, idle)
    tag = run_tag()
    refused = _prefill(args, tag)
    requests = [
        get_request(args.queue_bytes + b"/open"),
        get_request(args.queue_bytes + b"/open"),
        get_request(idle + b"/t=%d" % args.wait_ms),
        get_request(idle + b"/t=%d" % args.wait_ms),
    ]
    progress = Progress("parallel_disconnects", args.rounds, not args.quiet)
    started = time.monotonic()
    deadline = started + args.duration
    rounds = timed_out = replied = 0
    while rounds < args.rounds and time.monotonic() < deadline:
        outcome = _round(args, requests)
        rounds += 1
        timed_out += outcome["timed_out"]
        replied += outcome["replied"]
        progress.update(rounds, f"round {rounds}/{args.rounds}")
    elapsed = time.monotonic() - started
    progress.finish()
    report = base_report("parallel_disconnects", args, info)
    report.update(
        params={
            "clients": args.clients,
            "rounds": args.rounds,
            "items": args.items,
            "wait_ms": args.wait_ms,
        },
        rounds=rounds,
        connections=rounds * args.clients,
        elapsed_s=round(elapsed, 3),
        connections_per_s=rate(rounds * args.clients, elapsed),
        timed_out=timed_out,
        replied=replied,
    )
    try:
        report["check"] = (
            _verify(args, tag, refused, idle) if info.is_queue else _cache_check(args, info)
        )
    except OSError as err:  # refused or reset: the server did not survive
        report["check"] = {"performed": True, "ok": False, "note": f"server unreachable: {err}"}
    report["ok"] = report["check"]["ok"] is not False and timed_out == 0
    for name in (args.queue_bytes, idle):
        _quiet_delete(args, name)
    return report, _text(report)


def _cache_check(args: argparse.Namespace, info: Any) -> dict[str, Any]:
    """A plain cache has no queue to count; it must still answer."""
    with SyncClient(args.server, args.timeout) as client:
        client.version()
    check = skipped_check(info)
    check["note"] += "; server still answers"
    return check


def _quiet_delete(args: argparse.Namespace, name: bytes) -> None:
    try:
        with SyncClient(args.server, args.timeout) as client:
            client.delete(name)
    except OSError:
        pass  # already reported: the server is gone


def _text(report: dict[str, Any]) -> str:
    p, check = report["params"], report["check"]
    per_mode = [(p["clients"] - i + 3) // 4 for i in range(4)]  # clients with i % 4 == mode
    rows = [[f"{i}: {mode}", f"{report['rounds'] * per_mode[i]:,}"] for i, mode in enumerate(MODES)]
    extra = ""
    if check.get("idle_set") is not None:
        extra = f"; idle queue: set {check['idle_set']}, read back {check['idle_received']}"
    lines = [
        header_line(report),
        f"{report['rounds']} rounds x {p['clients']} clients, {p['items']:,} items prefilled",
        "",
        table(("client mode", "connections"), rows),
        "",
        f"{report['connections']:,} connections in {report['elapsed_s']} s = "
        f"{human(report['connections_per_s'])}/s; open replies {report['replied']:,}, "
        f"clients that never settled {report['timed_out']}",
        check_text(check) + extra,
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("parallel_disconnects", __doc__.split("\n")[0], "disconnects", 60.0)
    parser.add_argument("--clients", "-c", type=positive_int, default=200, help="per round (200)")
    parser.add_argument("--rounds", type=positive_int, default=20, help="default 20")
    parser.add_argument("--items", "-n", type=positive_int, default=1000, help="prefill (1000)")
    parser.add_argument("--wait-ms", type=positive_int, default=5000, help="idle get /t= (5000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
