"""many_clients: thousands of connections blocked in ``get q/t=WAIT`` while a producer feeds them.

Measures what a queue server does with many waiters: how long an item takes from ``set`` to
a waiting reader (delivery latency, from the send time stamped into the body), whether every
item reaches exactly one reader, and the delivery rate. Readers are spread over worker
processes, each one epoll loop over non-blocking sockets (no thread per connection); the
producer is its own process and paces itself with ``--rate``.

Against a plain cache readers ``get q`` (no wait exists) until the producer is done; the
latency is then that of an item's first sighting and no exactly-once check is made.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

from loadtest._cli import (
    add_workers_option,
    base_parser,
    base_report,
    header_line,
    non_negative_int,
    positive_int,
    prepare,
    run_tag,
    run_tool,
    skipped_check,
)
from loadtest._client import Address, SyncClient, connect
from loadtest._hist import Histogram, Recorder
from loadtest._loop import Conn, ConnectionLost, Loop, connect_many
from loadtest._pool import STOP, Pool, QuietQueue, WorkerContext, supervise
from loadtest._proc import raise_fd_limit
from loadtest._proto import (
    STAMPED_BYTES,
    body_stamp,
    get_request,
    make_stamped_body,
    parse_get_reply,
    parse_store_reply,
    set_head,
)
from loadtest._report import Progress, check_text, human, latency_summary, rate, table
from loadtest._tally import Tally, merge_check

SETS, REPLIES, ITEMS = 0, 1, 2
SLOTS = 3


@dataclass(frozen=True)
class Spec:
    """One worker: the producer (``clients == 0``) or a share of the readers."""

    addr: Address
    queue: bytes
    size: int
    items: int
    tag: int
    cache: bool
    clients: int
    wait_ms: int
    rate: int  # producer items/s, 0 = as fast as the server acknowledges
    duration: float
    timeout: float


class _Readers:
    """Counters shared by one worker's reader connections."""

    __slots__ = ("hits", "latency", "replies", "stopping", "tally")

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.latency = Recorder()
        self.replies = self.hits = 0
        self.stopping = False


class _Reader(Conn):
    """One blocked reader: a get in flight, re-issued as soon as it is answered."""

    __slots__ = ("buf", "inflight", "request", "st")

    def __init__(self, loop: Loop, sock: Any, st: _Readers, request: bytes) -> None:
        super().__init__(loop, sock)
        self.st = st
        self.request = request
        self.buf = bytearray()
        self.inflight = False

    def fire(self) -> None:
        self.inflight = True
        self.send(self.request)

    def on_readable(self) -> None:
        data = self.recv()
        now = monotonic_ns()
        buf = self.buf
        buf += data
        pos, body = parse_get_reply(buf, 0)
        if not pos:
            return
        del buf[:pos]
        st = self.st
        st.replies += 1
        self.inflight = False
        if body is not None:
            st.hits += 1
            if st.tally.add(body) >= 0:  # first delivery: its latency counts
                st.latency.add(now - body_stamp(body))
        if st.stopping:
            self.close()
        else:
            self.fire()


def _reader_work(ctx: WorkerContext) -> dict[str, Any]:
    """A reader worker: connect its share, block every connection in a get, serve replies."""
    spec: Spec = ctx.spec
    started = time.monotonic()
    socks = connect_many(spec.addr, spec.clients, spec.timeout, started + 4 * spec.timeout)
    connect_s = time.monotonic() - started
    loop = Loop()
    st = _Readers(Tally(spec.tag, spec.items))
    key = spec.queue if spec.cache else spec.queue + b"/t=%d" % spec.wait_ms
    readers = [_Reader(loop, sock, st, get_request(key)) for sock in socks]
    for reader in readers:
        reader.fire()
    ctx.ready(spec.timeout * 4)
    _serve_readers(ctx, loop, st, readers)
    return {
        "role": "readers",
        "clients": spec.clients,
        "connect_s": connect_s,
        "replies": st.replies,
        "hits": st.hits,
        "latency": st.latency.fold(),
        "tally": st.tally.state(),
    }


def _serve_readers(ctx: WorkerContext, loop: Loop, st: _Readers, readers: list[_Reader]) -> None:
    """Until every item was set and received (or stop/deadline); then wind down.

    When every item has arrived, nothing is left to deliver, so connections with a get in
    flight are closed at once. On a deadline or stop, in-flight gets are answered first (an
    item handed to a closing connection would be lost), bounded by the wait plus a timeout.
    """
    spec: Spec = ctx.spec
    shared, base = ctx.shared, ctx.base
    deadline = time.monotonic() + spec.duration
    hard_deadline = deadline + spec.wait_ms / 1000 + spec.timeout
    quiet = QuietQueue(2 * spec.wait_ms / 1000 + 0.1)
    while loop.conns and time.monotonic() < hard_deadline:
        loop.poll(0.05)
        shared[base + REPLIES] = st.replies
        shared[base + ITEMS] = st.hits
        st.latency.maybe_fold()
        if st.stopping:
            continue
        produced = ctx.total(SETS) >= spec.items
        delivered = spec.cache or ctx.total(ITEMS) >= spec.items
        if produced and (delivered or quiet.quiet(produced, st.hits, time.monotonic())):
            st.stopping = True
            for reader in readers:
                reader.close()  # all delivered, or none for 2 waits: nothing to lose
        elif shared[STOP] or time.monotonic() > deadline:
            st.stopping = True
            for reader in readers:
                if not reader.inflight:
                    reader.close()
    loop.close()


def _producer_work(ctx: WorkerContext) -> dict[str, Any]:
    """The producer: one connection, one set in flight, paced to ``rate`` items/s."""
    spec: Spec = ctx.spec
    sock = connect(spec.addr, spec.timeout)
    sock.settimeout(spec.timeout)
    head = set_head(spec.queue, spec.size)
    buf = bytearray()
    ctx.ready(spec.timeout * 4)
    start = time.monotonic()
    deadline = start + spec.duration
    interval = 1.0 / spec.rate if spec.rate else 0.0
    sent = refused = 0
    while sent < spec.items and not ctx.stop_requested() and time.monotonic() < deadline:
        due = start + sent * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 0.05))  # pacing the producer, not synchronisation
            continue
        body = make_stamped_body(spec.tag, sent, monotonic_ns(), spec.size)
        sock.sendall(head + body + b"\r\n")
        refused += not _read_store_reply(sock, buf)
        sent += 1
        ctx.publish(SETS, sent)
    sock.close()
    return {
        "role": "producer",
        "sets": sent,
        "not_stored": refused,
        "elapsed_s": time.monotonic() - start,
    }


def _read_store_reply(sock: Any, buf: bytearray) -> bool:
    while True:
        pos, stored = parse_store_reply(buf, 0)
        if pos:
            del buf[:pos]
            return stored
        data = sock.recv(4096)
        if not data:
            raise ConnectionLost("server closed the producer connection")
        buf += data


def work(ctx: WorkerContext) -> dict[str, Any]:
    spec: Spec = ctx.spec
    return _reader_work(ctx) if spec.clients else _producer_work(ctx)


def _specs(args: argparse.Namespace, cache: bool, tag: int) -> list[Spec]:
    workers = max(1, min(args.workers, args.clients))
    shares = [args.clients // workers + (i < args.clients % workers) for i in range(workers)]
    return [
        Spec(
            addr=args.server,
            queue=args.queue_bytes,
            size=args.size,
            items=args.items,
            tag=tag,
            cache=cache,
            clients=clients,
            wait_ms=args.wait_ms,
            rate=args.rate,
            duration=args.duration,
            timeout=args.timeout,
        )
        for clients in [0, *shares]
    ]


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.size < STAMPED_BYTES:
        raise ValueError(f"--size must be at least {STAMPED_BYTES} (id and send time)")
    raise_fd_limit(args.clients + 256)
    info = prepare(args, args.queue_bytes)
    tag = run_tag()
    pool = Pool(work, _specs(args, not info.is_queue, tag), SLOTS)
    pool.start(args.timeout * 8)
    progress = Progress("many_clients", args.items, not args.quiet)

    def tick() -> None:
        progress.update(pool.total(ITEMS), f"set {pool.total(SETS):,} got {pool.total(ITEMS):,}")

    deadline = time.monotonic() + args.duration
    cut = supervise(pool, tick, deadline, deadline + args.wait_ms / 1000 + 2 * args.timeout)
    results = pool.collect(args.timeout * 2)
    progress.finish()
    report = _report(args, info, results, cut)
    if info.is_queue:
        leftovers = Tally(tag, args.items)
        with SyncClient(args.server, args.timeout) as client:
            end = time.monotonic() + args.timeout
            for body in client.drain(args.queue_bytes, args.items + 1, end):
                leftovers.add(body)
        producer = results[0]
        states = [r["tally"] for r in results[1:]]
        expected = bytes([1]) * producer["sets"] + bytes(args.items - producer["sets"])
        check = merge_check(
            [*states, leftovers.state()], args.items, expected, producer["not_stored"]
        )
        check["left_in_queue"] = leftovers.received + leftovers.foreign
        report["check"] = check
        report["ok"] = check["ok"]
    else:
        report["check"] = skipped_check(info)
    return report, _text(report)


def _report(
    args: argparse.Namespace, info: Any, results: list[dict[str, Any]], cut: bool
) -> dict[str, Any]:
    producer, readers = results[0], results[1:]
    latency = Histogram.merged(r["latency"] for r in readers)
    report = base_report("many_clients", args, info)
    report.update(
        params={
            "clients": args.clients,
            "items": args.items,
            "size": args.size,
            "rate": args.rate,
            "wait_ms": args.wait_ms,
            "workers": len(readers),
        },
        connect_s=round(max(r["connect_s"] for r in readers), 3),
        elapsed_s=round(producer["elapsed_s"], 3),
        stopped_by_deadline=cut,
        sets=producer["sets"],
        not_stored=producer["not_stored"],
        replies=sum(r["replies"] for r in readers),
        hits=sum(r["hits"] for r in readers),
        set_rate=rate(producer["sets"], producer["elapsed_s"]),
        delivery=latency_summary(latency),
    )
    return report


def _text(report: dict[str, Any]) -> str:
    p, d = report["params"], report["delivery"]
    pace = f"{p['rate']:,}/s" if p["rate"] else "unpaced"
    rows = [
        ["delivery", d["count"], d["p50_ms"], d["p99_ms"], d["p999_ms"], d["max_ms"]],
    ]
    how = f"get /t={p['wait_ms']}" if report["server_kind"] == "queue" else "plain get, spinning"
    lines = [
        header_line(report),
        f"{p['clients']:,} readers over {p['workers']} workers ({how}), "
        f"{p['items']:,} items x {p['size']} B, producer {pace}",
        f"connected in {report['connect_s']} s; {report['sets']:,} sets in "
        f"{report['elapsed_s']} s ({human(report['set_rate'])}/s); "
        f"{report['replies']:,} replies, {report['hits']:,} with an item",
        "",
        table(("latency", "items", "p50 ms", "p99 ms", "p99.9 ms", "max ms"), rows),
        "",
        check_text(report["check"])
        + (" (stopped by the deadline)" if report["stopped_by_deadline"] else ""),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("many_clients", __doc__.split("\n")[0], "many_clients", 60.0)
    parser.add_argument("--clients", "-c", type=positive_int, default=2000, help="default 2000")
    parser.add_argument("--items", "-n", type=positive_int, default=10_000, help="default 10000")
    parser.add_argument("--size", "-s", type=positive_int, default=64, help="item bytes (64)")
    parser.add_argument(
        "--rate", type=non_negative_int, default=2000, help="producer items/s, 0 = unpaced (2000)"
    )
    parser.add_argument("--wait-ms", type=positive_int, default=1000, help="get /t= (1000)")
    add_workers_option(parser, "reader")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
