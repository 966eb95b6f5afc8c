"""fairness: small sets must stay fast while other clients stream large items.

``--small`` clients set 64-byte items one at a time into ``<queue>_small`` while ``--big``
clients stream 1 MiB sets (one in flight each) into ``<queue>_big``. A server that handles a
large value in one blocking step, or buffers many of them in memory, shows it as a long tail
of small-set latency and a high peak RSS (sampled every 50 ms with ``--server-pid``).

The run ends at ``--duration`` or when the big clients have sent ``--big-max-mb``, whichever
comes first, so the disk use of a durable server stays bounded; both queues are deleted
afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from loadtest._cli import (
    base_parser,
    base_report,
    header_line,
    non_negative_int,
    positive_int,
    prepare,
    run_tool,
)
from loadtest._client import Address, SyncClient, connect
from loadtest._hist import Histogram, Recorder
from loadtest._loop import Conn, Loop
from loadtest._pool import STOP, Pool, WorkerContext, supervise
from loadtest._proc import proc_memory
from loadtest._proto import parse_store_reply, set_request
from loadtest._report import (
    LATENCY_HEADERS,
    Progress,
    latency_rows,
    op_summary,
    table,
)

MB = 1024 * 1024
SETS, BYTES = 0, 1
SLOTS = 2


@dataclass(frozen=True)
class Spec:
    """One worker: all small clients or all big clients."""

    addr: Address
    queue: bytes
    clients: int
    size: int
    duration: float
    timeout: float


class _Setter(Conn):
    """Sets one prebuilt request over and over, one in flight, recording each latency."""

    __slots__ = ("buf", "inflight", "request", "sent_ns", "totals")

    def __init__(self, loop: Loop, sock: Any, request: bytes, totals: _Totals) -> None:
        super().__init__(loop, sock)
        self.request = request  # big requests are sent from one shared buffer, never copied
        self.totals = totals
        self.buf = bytearray()
        self.inflight = False
        self.sent_ns = 0

    def fire(self) -> None:
        if self.totals.stopping:
            self.close()
            return
        self.inflight = True
        self.sent_ns = perf_counter_ns()
        self.send(self.request)

    def on_readable(self) -> None:
        self.buf += self.recv()
        pos, stored = parse_store_reply(self.buf, 0)
        if not pos:
            return
        del self.buf[:pos]
        now = perf_counter_ns()
        totals = self.totals
        totals.latency.add(now - self.sent_ns)
        totals.sets += 1
        totals.refused += not stored
        self.inflight = False
        self.fire()


class _Totals:
    __slots__ = ("latency", "refused", "sets", "stopping")

    def __init__(self) -> None:
        self.latency = Recorder()
        self.sets = self.refused = 0
        self.stopping = False


def work(ctx: WorkerContext) -> dict[str, Any]:
    """Run one class of clients until stopped, the deadline, or (hard) deadline + timeout."""
    spec: Spec = ctx.spec
    loop = Loop()
    totals = _Totals()
    body = (b"%x" % spec.size).ljust(spec.size, b"b" if spec.size > 4096 else b"s")
    request = set_request(spec.queue, body)
    setters = [
        _Setter(loop, connect(spec.addr, spec.timeout), request, totals)
        for _ in range(spec.clients)
    ]
    ctx.ready(spec.timeout * 4)
    started = time.monotonic()
    for setter in setters:
        setter.fire()
    deadline = started + spec.duration
    hard_deadline = deadline + spec.timeout * 4  # a big set in flight may take a while
    while loop.conns and time.monotonic() < hard_deadline:
        loop.poll(0.05)
        ctx.publish(SETS, totals.sets)
        ctx.publish(BYTES, totals.sets * spec.size)
        totals.latency.maybe_fold()
        if not totals.stopping and (ctx.shared[STOP] or time.monotonic() > deadline):
            totals.stopping = True
            for setter in setters:
                if not setter.inflight:
                    setter.close()
    elapsed = time.monotonic() - started
    loop.close()
    return {
        "sets": totals.sets,
        "refused": totals.refused,
        "latency": totals.latency.fold(),
        "elapsed_s": elapsed,
    }


_NO_BIG_CLIENTS: dict[str, Any] = {
    "sets": 0,
    "refused": 0,
    "latency": Histogram(),
    "elapsed_s": 0.0,
}


class _RssSampler:
    """Peak RSS / RssAnon of the server, sampled on every coordinator tick."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = self.peak_anon = 0
        self.samples = 0
        self.start = proc_memory(pid) if pid else {}

    def sample(self) -> None:
        if not self.pid:
            return
        mem = proc_memory(self.pid)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, mem.get("rss", 0))
        self.peak_anon = max(self.peak_anon, mem.get("rss_anon", 0))


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    small_q, big_q = args.queue_bytes + b"_small", args.queue_bytes + b"_big"
    info = prepare(args, small_q, big_q)
    specs = [
        Spec(args.server, small_q, args.small, args.small_size, args.duration, args.timeout),
        Spec(args.server, big_q, args.big, args.big_size, args.duration, args.timeout),
    ]
    if not args.big:
        specs.pop()
    pool = Pool(work, specs, SLOTS)
    pool.start(args.timeout * 4)
    sampler = _RssSampler(args.server_pid)
    progress = Progress("fairness", int(args.duration * 10), not args.quiet)
    began = time.monotonic()
    cap = args.big_max_mb * MB
    capped = False

    def tick() -> None:
        nonlocal capped
        sampler.sample()
        big_bytes = pool.value(1, BYTES) if args.big else 0
        progress.update(
            int((time.monotonic() - began) * 10),
            f"small sets {pool.value(0, SETS):,} big {big_bytes / MB:,.0f} MiB",
        )
        if cap and big_bytes >= cap and not capped:
            capped = True
            pool.request_stop()

    deadline = began + args.duration
    supervise(pool, tick, deadline, deadline + args.timeout * 6, interval=0.05)
    results = pool.collect(args.timeout * 2)
    progress.finish()
    report = _report(args, info, results, sampler, capped)
    if not args.keep:
        _cleanup(args, small_q, big_q, report)
    return report, _text(report)


def _cleanup(
    args: argparse.Namespace, small_q: bytes, big_q: bytes, report: dict[str, Any]
) -> None:
    """Delete both queues; a slow delete of a big backlog is noted, not fatal."""
    try:
        with SyncClient(args.server, args.timeout * 6) as client:
            client.delete(small_q)
            client.delete(big_q)
    except OSError as err:
        report["cleanup_error"] = str(err)


def _report(
    args: argparse.Namespace,
    info: Any,
    results: list[dict[str, Any]],
    sampler: _RssSampler,
    capped: bool,
) -> dict[str, Any]:
    small = results[0]
    big = results[1] if len(results) > 1 else _NO_BIG_CLIENTS
    report = base_report("fairness", args, info)
    report.update(
        params={
            "small_clients": args.small,
            "small_size": args.small_size,
            "big_clients": args.big,
            "big_size": args.big_size,
            "big_max_mb": args.big_max_mb,
        },
        elapsed_s=round(small["elapsed_s"], 3),
        stopped_by_big_cap=capped,
        ops={
            "small_set": op_summary(small["sets"], small["elapsed_s"], small["latency"]),
            "big_set": op_summary(big["sets"], big["elapsed_s"], big["latency"]),
        },
        big_mb_per_s=round(big["sets"] * args.big_size / MB / big["elapsed_s"], 1)
        if big["elapsed_s"]
        else 0.0,
        not_stored={"small": small["refused"], "big": big["refused"]},
        server_memory=_memory(sampler),
        check={"performed": False, "ok": None, "note": "fairness has no exactly-once check"},
    )
    return report


def _memory(sampler: _RssSampler) -> dict[str, Any]:
    if not sampler.pid:
        return {}
    end = proc_memory(sampler.pid)
    return {
        "rss_start": sampler.start.get("rss", 0),
        "rss_peak_sampled": sampler.peak_rss,
        "rss_anon_peak_sampled": sampler.peak_anon,
        "rss_end": end.get("rss", 0),
        "rss_peak_lifetime": end.get("rss_peak", 0),  # VmHWM: includes anything before the run
        "samples": sampler.samples,
    }


def _text(report: dict[str, Any]) -> str:
    p, mem = report["params"], report["server_memory"]
    lines = [
        header_line(report),
        f"{p['small_clients']} clients setting {p['small_size']} B items while "
        f"{p['big_clients']} clients stream {p['big_size'] / MB:g} MiB items",
        "",
        table(LATENCY_HEADERS, latency_rows(report["ops"])),
        "",
        f"elapsed {report['elapsed_s']} s, big items {report['big_mb_per_s']} MiB/s"
        + (f" (stopped at the {p['big_max_mb']} MiB cap)" if report["stopped_by_big_cap"] else ""),
    ]
    if mem:
        mib = {k: f"{v / MB:.1f}" for k, v in mem.items()}
        lines.append(
            f"server RSS MiB: start {mib['rss_start']}, sampled peak {mib['rss_peak_sampled']}"
            f" (anon {mib['rss_anon_peak_sampled']}), end {mib['rss_end']},"
            f" lifetime peak {mib['rss_peak_lifetime']}"
        )
    refused = report["not_stored"]
    if refused["small"] or refused["big"]:
        lines.append(f"NOT_STORED: small {refused['small']:,}, big {refused['big']:,}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("fairness", __doc__.split("\n")[0], "fairness", 10.0)
    parser.add_argument("--small", type=positive_int, default=10, help="small clients (10)")
    parser.add_argument("--big", type=non_negative_int, default=10, help="big clients (10)")
    parser.add_argument("--small-size", type=positive_int, default=64, help="bytes (64)")
    parser.add_argument("--big-size", type=positive_int, default=MB, help="bytes (1048576)")
    parser.add_argument(
        "--big-max-mb",
        type=non_negative_int,
        default=2048,
        help="stop when the big clients sent this much, 0 = no cap (2048)",
    )
    parser.add_argument("--server-pid", type=int, default=0, help="sample RSS from /proc/PID")
    parser.add_argument("--keep", action="store_true", help="do not delete the queues afterwards")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
