"""packing: fill one queue with a big backlog, drain it; throughput, memory and disk footprint.

Fills ``--items`` items of ``--size`` bytes with pipelined sets (``--pipeline`` in flight per
connection), then drains them with pipelined gets. With ``--server-pid`` the server's RSS and
RssAnon (anonymous memory: what a server keeps on its heap rather than in mapped files) are
read from /proc before, after the fill and after the drain; with ``--data-dir`` so is the
size of the store on disk. A queue server must hand back every item exactly once.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
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
from loadtest._feed import Drainer, Feeder
from loadtest._loop import Loop
from loadtest._proc import dir_usage, proc_memory
from loadtest._proto import ID_BYTES
from loadtest._report import Progress, check_text, human, rate, table
from loadtest._tally import Tally, expected_map, merge_check

MB = 1024 * 1024


def snapshot(args: argparse.Namespace) -> dict[str, int]:
    """Server memory (bytes) and store size (bytes) right now, as far as we can see them."""
    found: dict[str, int] = {}
    if args.server_pid:
        found.update(proc_memory(args.server_pid))
    if args.data_dir:
        usage = dir_usage(args.data_dir)
        found["store"] = usage["allocated"]
        found["store_apparent"] = usage["apparent"]
    if args.queue_stats:
        with SyncClient(args.server, args.timeout) as client:
            queued = queue_stat(client.stats(), args.queue_bytes, "items")
        if queued is not None:
            found["queued"] = queued
    return found


def _fill(args: argparse.Namespace, tag: int) -> tuple[list[Feeder], float]:
    loop = Loop()
    share, extra = divmod(args.items, args.connections)
    feeders, start = [], 0
    for i in range(args.connections):
        count = share + (i < extra)
        sock = connect(args.server, args.timeout)
        feeders.append(
            Feeder(
                loop, sock, args.queue_bytes, tag, args.size, (start, start + count), args.pipeline
            )
        )
        start += count
    elapsed = _run_phase(
        args, loop, "fill", args.items, feeders, lambda: sum(f.acked for f in feeders)
    )
    return feeders, elapsed


def _drain(args: argparse.Namespace, tally: Tally | None, limit: int) -> tuple[int, float]:
    loop = Loop()
    share, extra = divmod(limit, args.connections)
    drainers = [
        Drainer(
            loop,
            connect(args.server, args.timeout),
            args.queue_bytes,
            args.pipeline,
            share + (i < extra) if tally is None else limit + 1,  # queue: until empty
            tally,
        )
        for i in range(args.connections)
    ]
    elapsed = _run_phase(args, loop, "drain", limit, drainers, lambda: sum(d.got for d in drainers))
    return sum(d.got for d in drainers), elapsed


def _run_phase(
    args: argparse.Namespace,
    loop: Loop,
    name: str,
    total: int,
    conns: Sequence[Feeder] | Sequence[Drainer],
    done: Callable[[], int],
) -> float:
    """Start every connection, run the loop until all end or ``--duration`` passes, with a
    progress bar of ``done()`` out of ``total``; returns the seconds it took."""
    progress = Progress(name, total, not args.quiet)
    began = time.monotonic()
    for conn in conns:
        conn.fire()
    deadline = began + args.duration
    while loop.conns and time.monotonic() < deadline:
        loop.poll(0.1)
        progress.update(done())
    elapsed = time.monotonic() - began
    progress.finish()
    loop.close()
    return elapsed


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.size < ID_BYTES:
        raise ValueError(f"--size must be at least {ID_BYTES} (the item id)")
    info = prepare(args, args.queue_bytes)
    args.queue_stats = info.is_queue
    tag = run_tag()
    before = snapshot(args)
    feeders, fill_s = _fill(args, tag)
    acked = sum(f.acked - f.start for f in feeders)
    after_fill = snapshot(args)
    tally = Tally(tag, args.items) if info.is_queue else None
    drained, drain_s = _drain(args, tally, acked)
    after_drain = snapshot(args)
    refused = [i for f in feeders for i in f.refused]
    report = base_report("packing", args, info)
    report.update(
        params={
            "items": args.items,
            "size": args.size,
            "pipeline": args.pipeline,
            "connections": args.connections,
        },
        fill={
            "items": acked,
            "seconds": round(fill_s, 3),
            "items_per_s": rate(acked, fill_s),
            "mb_per_s": round(acked * args.size / MB / fill_s, 2) if fill_s else 0.0,
        },
        drain={
            "items": drained,
            "seconds": round(drain_s, 3),
            "items_per_s": rate(drained, drain_s),
            "mb_per_s": round(drained * args.size / MB / drain_s, 2) if drain_s else 0.0,
        },
        server_state={"before": before, "after_fill": after_fill, "after_drain": after_drain},
        not_stored=len(refused),
    )
    if tally is not None:
        ranges = [(f.start, f.acked) for f in feeders]
        check = merge_check(
            [tally.state()], args.items, expected_map(args.items, ranges, refused), len(refused)
        )
        check["queued"] = after_fill.get("queued")
        report["check"] = check
        report["ok"] = check["ok"]
    else:
        report["check"] = skipped_check(info)
    return report, _text(report)


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def _text(report: dict[str, Any]) -> str:
    p, srv = report["params"], report["server_state"]
    rows = [
        [name, f"{ph['items']:,}", ph["seconds"], human(ph["items_per_s"]), ph["mb_per_s"]]
        for name, ph in (("fill", report["fill"]), ("drain", report["drain"]))
    ]
    mem_rows = [
        [
            when,
            _mb(snap.get("rss")),
            _mb(snap.get("rss_anon")),
            _mb(snap.get("rss_peak")),
            _mb(snap.get("store")),
            f"{snap['queued']:,}" if "queued" in snap else "-",
        ]
        for when, snap in (
            ("before", srv["before"]),
            ("after fill", srv["after_fill"]),
            ("after drain", srv["after_drain"]),
        )
    ]
    lines = [
        header_line(report),
        f"{p['items']:,} items x {p['size']} B over {p['connections']} connection(s), "
        f"{p['pipeline']} in flight each",
        "",
        table(("phase", "items", "seconds", "items/s", "MB/s"), rows),
        "",
        table(("server", "RSS MB", "RssAnon MB", "peak MB", "store MB", "queued"), mem_rows),
        "",
        check_text(report["check"]),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("packing", __doc__.split("\n")[0], "packing", 600.0)
    parser.add_argument(
        "--items", "-n", type=positive_int, default=1_000_000, help="default 1000000"
    )
    parser.add_argument("--size", "-s", type=positive_int, default=64, help="item bytes (64)")
    parser.add_argument("--pipeline", type=positive_int, default=100, help="in flight (100)")
    parser.add_argument("--connections", type=positive_int, default=1, help="default 1")
    parser.add_argument("--server-pid", type=int, default=0, help="read RSS from /proc/PID")
    parser.add_argument("--data-dir", default="", help="measure the store's size (du)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
