"""put_many: producers set items into a growing backlog (no consumers); rate over time.

A queue that slows down as its backlog grows (journal growth, in-memory structures, page
cache pressure) shows it here: the set rate is reported per time slice, from an empty queue
to ``--items`` queued. Against a queue server the backlog is then checked: ``stats`` must
count every acknowledged item (``--drain``: every item is read back exactly once). The queue
is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadtest import flood
from loadtest._cli import (
    add_workers_option,
    base_parser,
    base_report,
    header_line,
    positive_int,
    prepare,
    run_tag,
    run_tool,
    skipped_check,
)
from loadtest._client import ServerInfo, SyncClient, queue_stat
from loadtest._hist import Histogram
from loadtest._pool import Pool, supervise
from loadtest._proto import ID_BYTES
from loadtest._report import Progress, check_text, human, op_summary, rate, table
from loadtest._tally import Tally, expected_map, merge_check


class _Slicer:
    """Samples the shared set counter and closes a slice every ``slice_s`` seconds."""

    def __init__(self, pool: Pool, slice_s: float) -> None:
        self._pool = pool
        self._slice_s = slice_s
        self._start = time.monotonic()
        self._next = self._start + slice_s
        self._last_t = self._start
        self._last_count = 0
        self.slices: list[dict[str, float]] = []

    def tick(self) -> int:
        """Returns the current count; records a slice when its time is up."""
        count = self._pool.total(flood.SETS)
        now = time.monotonic()
        if now >= self._next:
            self.close_slice(now, count)
        return count

    def close_slice(self, now: float, count: int) -> None:
        span = now - self._last_t
        if span <= 0 or (count == self._last_count and self.slices):
            return
        self.slices.append(
            {
                "end_s": round(now - self._start, 3),
                "sets": count - self._last_count,
                "backlog": count,
                "ops_per_s": rate(count - self._last_count, span),
            }
        )
        self._last_t, self._last_count = now, count
        self._next = now + self._slice_s


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.size < ID_BYTES:
        raise ValueError(f"--size must be at least {ID_BYTES} (the item id)")
    args.consumers, args.wait_ms = 0, 0
    info = prepare(args, args.queue_bytes)
    tag = run_tag()
    pool = Pool(flood.work, flood.make_specs(args, not info.is_queue, tag), flood.SLOTS)
    pool.start(args.timeout * 4)
    progress = Progress("put_many", args.items, not args.quiet)
    slicer = _Slicer(pool, args.slice)

    def tick() -> None:
        count = slicer.tick()
        progress.update(count, f"backlog {count:,}")

    deadline = time.monotonic() + args.duration
    cut = supervise(pool, tick, deadline, deadline + 2 * args.timeout)
    results = pool.collect(args.timeout * 2)
    slicer.close_slice(time.monotonic(), sum(r["sets"] for r in results))
    progress.finish()
    report = _report(args, info, results, slicer.slices, cut)
    if info.is_queue:
        report["check"] = _check_backlog(args, tag, results)
        report["ok"] = report["check"]["ok"]
    else:
        report["check"] = skipped_check(info)
    if not args.keep:
        with SyncClient(args.server, args.timeout) as client:
            client.delete(args.queue_bytes)
    return report, _text(report)


def _check_backlog(
    args: argparse.Namespace, tag: int, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every acknowledged set must be queued: by ``stats`` count, or by draining (--drain)."""
    refused = [i for r in results for i in r["refused"]]
    expected = expected_map(args.items, [rng for r in results for rng in r["acked"]], refused)
    with SyncClient(args.server, args.timeout) as client:
        queued = queue_stat(client.stats(), args.queue_bytes, "items")
        if not args.drain:
            want = expected.count(1)
            return {
                "performed": True,
                "ok": queued == want,
                "expected": want,
                "queued": queued,
                "not_stored": len(refused),
                "note": "count from stats; --drain reads every item back",
            }
        tally = Tally(tag, args.items)
        deadline = time.monotonic() + max(args.timeout, args.duration)
        for body in client.drain(args.queue_bytes, args.items + 1, deadline):
            tally.add(body)
    check = merge_check([tally.state()], args.items, expected, len(refused))
    check["queued"] = queued
    return check


def _report(
    args: argparse.Namespace,
    info: ServerInfo,
    results: list[dict[str, Any]],
    slices: list[dict[str, float]],
    cut: bool,
) -> dict[str, Any]:
    hist = Histogram.merged(r["set_hist"] for r in results)
    sets = sum(r["sets"] for r in results)
    start = min(r["first_ns"] for r in results)
    seconds = (max(r["last_set_ns"] for r in results) - start) / 1e9
    rates = [s["ops_per_s"] for s in slices] or [0.0]
    report = base_report("put_many", args, info)
    report.update(
        params={
            "items": args.items,
            "size": args.size,
            "producers": args.producers,
            "workers": len(results),
            "pipeline": args.pipeline,
            "slice_s": args.slice,
        },
        elapsed_s=round(seconds, 3),
        stopped_by_deadline=cut,
        not_stored=sum(r["not_stored"] for r in results),
        ops={"set": op_summary(sets, seconds, hist)},
        slices=slices,
        slice_rates={
            "first": rates[0],
            "last": rates[-1],
            "min": min(rates),
            "max": max(rates),
        },
    )
    return report


def _text(report: dict[str, Any]) -> str:
    p, op = report["params"], report["ops"]["set"]
    lat = latency_summary_text(op["latency"])
    rows = [[s["end_s"], f"{s['backlog']:,}", human(s["ops_per_s"])] for s in report["slices"]]
    lines = [
        header_line(report),
        f"{p['producers']} producers over {p['workers']} workers, {p['items']:,} items x "
        f"{p['size']} B, pipeline {p['pipeline']}",
        "",
        table(("t (s)", "backlog", "sets/s"), rows),
        "",
        f"total {op['count']:,} sets in {report['elapsed_s']} s = {human(op['ops_per_s'])}/s; "
        f"latency {lat}",
        check_text(report["check"]),
    ]
    return "\n".join(lines)


def latency_summary_text(lat: dict[str, Any]) -> str:
    return (
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, p99.9 {lat['p999_ms']} ms, "
        f"max {lat['max_ms']} ms"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("put_many", __doc__.split("\n")[0], "put_many", 120.0)
    parser.add_argument("--producers", "-P", type=positive_int, default=10, help="default 10")
    add_workers_option(parser, "load")
    parser.add_argument("--items", "-n", type=positive_int, default=200_000, help="default 200000")
    parser.add_argument("--size", "-s", type=positive_int, default=64, help="item bytes (64)")
    parser.add_argument("--pipeline", type=positive_int, default=1, help="sets per write (1)")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per rate slice (1)")
    parser.add_argument("--drain", action="store_true", help="read the backlog back and check ids")
    parser.add_argument("--keep", action="store_true", help="leave the backlog on the server")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
