"""flood: P producers and C consumers hammer one queue; throughput, latency and exactly-once.

Producers ``set`` N uniquely numbered items of S bytes; consumers ``get q/t=WAIT`` (blocking
in the server, not spinning) until every item arrived, the queue stayed empty for two waits
after the last set (lost items never arrive), or the deadline passed. Each connection
has one request in flight (``--pipeline K``: K per write). Connections are spread over worker
processes so the client is not the bottleneck. After the run, items still queued are drained,
so a run cut short by the deadline is not mistaken for a loss.

Against a plain cache (memcached) consumers ``get q`` their share of N times and only the
rates are reported.
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
from loadtest._client import Address, SyncClient, connect
from loadtest._hist import Histogram, Recorder
from loadtest._loop import RECV_SIZE, Conn, ConnectionLost, Loop
from loadtest._pool import STOP, Pool, QuietQueue, WorkerContext, supervise
from loadtest._proto import (
    CRLF,
    END,
    FILLER,
    ID_BYTES,
    STORED,
    get_request,
    item_tag,
    parse_get_reply,
    parse_store_reply,
    set_head,
)
from loadtest._report import (
    LATENCY_HEADERS,
    Progress,
    check_text,
    human,
    latency_rows,
    op_summary,
    rate,
    table,
)
from loadtest._tally import Tally, expected_map, merge_check

VALUE = b"VALUE "
VALUE_TAIL = b"\r\nEND\r\n"

# Shared counter slots of each worker.
SETS, GETS, ITEMS = 0, 1, 2
SLOTS = 3


@dataclass(frozen=True)
class Spec:
    """One worker's share of the run (picklable; workers are forked with it)."""

    addr: Address
    queue: bytes
    size: int
    pipeline: int
    wait_ms: int
    cache: bool
    tag: int
    items: int
    producers: tuple[tuple[int, int], ...]  # [start, end) id range per producer connection
    consumers: tuple[int, ...]  # per consumer: gets to do (cache mode) or 0 (until stopped)
    duration: float
    timeout: float


class _Stats:
    """Per-worker counters the connections update; one object so updates are attribute adds."""

    __slots__ = (
        "first_ns",
        "get_add",
        "get_lat",
        "gets",
        "hits",
        "last_get_ns",
        "last_set_ns",
        "not_stored",
        "refused",
        "set_add",
        "set_lat",
        "sets",
        "stopping",
        "tally",
    )

    def __init__(self, tally: Tally | None) -> None:
        self.sets = self.gets = self.hits = self.not_stored = 0
        self.first_ns = self.last_get_ns = self.last_set_ns = 0
        self.set_lat = Recorder()
        self.get_lat = Recorder()
        self.set_add = self.set_lat.add  # bound array.append: one C call per sample
        self.get_add = self.get_lat.add
        self.refused: list[int] = []
        self.tally = tally
        self.stopping = False


def _format_template(head: bytes, tail: bytes) -> bytes:
    """``head + %08x + tail`` as one %-format (one operation per request, not three)."""
    return head.replace(b"%", b"%%") + b"%08x" + tail.replace(b"%", b"%%")


class _Producer(Conn):
    """Sets ids ``[start, end)`` in order, ``batch`` per write, one batch in flight.

    Replies come in request order, so ``[start, acked)`` were answered, where ``acked`` =
    ``next_id - inflight`` (computed, not counted: one less update per request).

    ``on_readable`` has an inlined fast path for the common case (one request in flight,
    the reply is exactly ``STORED``): record, count and send the next request without
    another Python call. Everything else goes through ``_general``.
    """

    __slots__ = (
        "batch",
        "buf",
        "end",
        "inflight",
        "next_id",
        "recv_",
        "send_",
        "sent_ns",
        "simple",
        "st",
        "start",
        "template",
    )

    def __init__(self, loop: Loop, spec: Spec, st: _Stats, ids: tuple[int, int]) -> None:
        super().__init__(loop, connect(spec.addr, spec.timeout))
        self.st = st
        self.start = self.next_id = ids[0]
        self.end = ids[1]
        self.batch = spec.pipeline
        self.simple = spec.pipeline == 1
        self.inflight = 0
        self.sent_ns = 0
        self.buf = bytearray()
        self.recv_ = self.sock.recv
        self.send_ = self.sock.send
        head = set_head(spec.queue, spec.size) + item_tag(spec.tag)
        self.template = _format_template(head, FILLER * (spec.size - ID_BYTES) + CRLF)

    @property
    def acked(self) -> int:
        """First id without a reply yet."""
        return self.next_id - self.inflight

    def fire(self, now: int) -> bool:
        """Send the next batch (``now`` = its send time); False when done or stopping."""
        first = self.next_id
        count = min(self.batch, self.end - first)
        if count <= 0 or self.st.stopping:
            return False
        template = self.template
        request = b"".join([template % i for i in range(first, first + count)])
        self.inflight = count
        self.next_id = first + count
        self.sent_ns = now
        self.send(request)
        return True

    def on_readable(self) -> None:
        data = self.recv_(RECV_SIZE)
        now = perf_counter_ns()
        if data == STORED and self.simple and not self.buf:
            st = self.st
            st.set_add(now - self.sent_ns)
            st.sets += 1
            st.last_set_ns = now
            item = self.next_id
            if item < self.end and not st.stopping:
                request = self.template % item
                self.next_id = item + 1
                self.sent_ns = now
                sent = self.send_(request)  # the previous request was answered: nothing queued
                if sent != len(request):
                    self.send(memoryview(request)[sent:])
                return
            self.inflight = 0
            self.close()
            return
        self._general(data, now)

    def _general(self, data: bytes, now: int) -> None:
        """Any reply shape: partial, pipelined, NOT_STORED, EOF."""
        replies = self._parse(data)
        if not replies:
            return
        st = self.st
        st.set_lat.add_many(now - self.sent_ns, replies)
        st.sets += replies
        st.last_set_ns = now
        self.inflight -= replies
        if not self.inflight and not self.fire(now):
            self.close()

    def _parse(self, data: bytes) -> int:
        if not data:
            raise ConnectionLost("server closed a producer connection")
        buf = self.buf
        buf += data
        pos = replies = 0
        while replies < self.inflight:
            nxt, stored = parse_store_reply(buf, pos)
            if nxt == pos:
                break
            if not stored:
                self.st.not_stored += 1
                self.st.refused.append(self.acked + replies)
            pos = nxt
            replies += 1
        del buf[:pos]
        return replies


class _Consumer(Conn):
    """Gets ``batch`` per write until its quota is done (cache) or the run stops (queue).

    Like _Producer, ``on_readable`` inlines the common case (one get in flight, the reply
    is exactly ``END`` or one whole VALUE of our item size) and falls back to ``_general``.
    """

    __slots__ = (
        "batch",
        "buf",
        "inflight",
        "quota",
        "recv_",
        "request",
        "send_",
        "sent_ns",
        "simple",
        "size",
        "st",
    )

    def __init__(self, loop: Loop, spec: Spec, st: _Stats, quota: int) -> None:
        super().__init__(loop, connect(spec.addr, spec.timeout))
        self.st = st
        self.batch = spec.pipeline
        self.simple = spec.pipeline == 1
        self.quota = quota if spec.cache else -1  # -1: unbounded, until stopped
        key = spec.queue if spec.cache else spec.queue + b"/t=%d" % spec.wait_ms
        self.request = get_request(key)
        self.size = spec.size
        self.inflight = 0
        self.sent_ns = 0
        self.buf = bytearray()
        self.recv_ = self.sock.recv
        self.send_ = self.sock.send

    def fire(self, now: int) -> bool:
        """Send the next batch of gets; False when the quota is done or the run is stopping."""
        count = self.batch
        if self.quota >= 0:
            count = min(count, self.quota)
            self.quota -= count
        if count <= 0 or self.st.stopping:
            return False
        self.inflight = count
        self.sent_ns = now
        self.send(self.request * count)
        return True

    def on_readable(self) -> None:
        data = self.recv_(RECV_SIZE)
        now = perf_counter_ns()
        if self.simple and not self.buf:
            if data == END:
                hit = False  # the common miss when consumers outrun producers
            elif data.endswith(VALUE_TAIL) and data.startswith(VALUE):
                # One whole VALUE reply: our bodies hold no CR/LF, so the body is everything
                # between the first CRLF and the trailing CRLF END CRLF; its length confirms.
                body = data[data.find(CRLF) + 2 : -7]
                if len(body) != self.size:
                    self._general(data, now)
                    return
                hit = True
                if self.st.tally is not None:
                    self.st.tally.add(body)
            else:
                self._general(data, now)
                return
            st = self.st
            if not st.stopping:  # replies after the stop are tail waits, not throughput
                st.get_add(now - self.sent_ns)
                st.gets += 1
                st.last_get_ns = now
            if hit:
                st.hits += 1
            if self.quota and not st.stopping:  # quota -1: unbounded
                self.quota -= self.quota > 0
                self.sent_ns = now
                sent = self.send_(self.request)
                if sent != len(self.request):
                    self.send(memoryview(self.request)[sent:])
                return
            self.inflight = 0
            self.close()
            return
        self._general(data, now)

    def _general(self, data: bytes, now: int) -> None:
        """Any reply shape: partial, pipelined, foreign bodies, error lines, EOF."""
        replies, hits = self._parse(data)
        if not replies:
            return
        st = self.st
        if not st.stopping:
            st.get_lat.add_many(now - self.sent_ns, replies)
            st.gets += replies
            st.last_get_ns = now
        st.hits += hits
        self.inflight -= replies
        if not self.inflight and not self.fire(now):
            self.close()

    def _parse(self, data: bytes) -> tuple[int, int]:
        if not data:
            raise ConnectionLost("server closed a consumer connection")
        buf = self.buf
        buf += data
        tally = self.st.tally
        pos = replies = hits = 0
        while replies < self.inflight:
            nxt, body = parse_get_reply(buf, pos)
            if nxt == pos:
                break
            pos = nxt
            replies += 1
            if body is not None:
                hits += 1
                if tally is not None:
                    tally.add(body)
        del buf[:pos]
        return replies, hits


def work(ctx: WorkerContext) -> dict[str, Any]:
    """One worker process: open its connections, wait for the start, run until done."""
    spec: Spec = ctx.spec
    loop = Loop()
    st = _Stats(None if spec.cache else Tally(spec.tag, spec.items))
    producers = [_Producer(loop, spec, st, ids) for ids in spec.producers]
    consumers = [_Consumer(loop, spec, st, quota) for quota in spec.consumers]
    conns: list[_Producer | _Consumer] = [*producers, *consumers]
    ctx.ready(spec.timeout * 4)
    st.first_ns = now = perf_counter_ns()
    for conn in conns:
        if not conn.fire(now):  # nothing to do (e.g. more producers than items)
            conn.close()
    _run_loop(ctx, loop, st, consumers)
    return _result(st, producers)


def _run_loop(ctx: WorkerContext, loop: Loop, st: _Stats, consumers: list[_Consumer]) -> None:
    """Poll until every connection finished; stop on request, deadline or all items seen."""
    spec: Spec = ctx.spec
    shared, base = ctx.shared, ctx.base
    deadline = time.monotonic() + spec.duration
    hard_deadline = deadline + spec.wait_ms / 1000 + spec.timeout
    poll, conns, monotonic = loop.poll, loop.conns, time.monotonic
    quiet = QuietQueue(2 * spec.wait_ms / 1000 + 0.1)
    turn = 0
    while conns:
        if poll(0.05) and (turn := turn + 1) & 7:
            continue  # busy: bookkeeping every 8th busy turn is plenty (and saves µs/op)
        shared[base + SETS] = st.sets
        shared[base + GETS] = st.gets
        shared[base + ITEMS] = st.hits
        st.set_lat.maybe_fold()
        st.get_lat.maybe_fold()
        if st.stopping:
            if monotonic() > hard_deadline:
                break  # abandon in-flight requests; the report shows what was cut
            continue
        # Stop when every item was set and as many were received (duplicates included:
        # items they displaced are found by the final drain, not waited for here), or when
        # the queue stayed empty after the last set (lost items never arrive).
        produced = not spec.cache and ctx.total(SETS) >= spec.items
        all_seen = produced and ctx.total(ITEMS) >= spec.items
        if all_seen or quiet.quiet(produced, st.hits, monotonic()):
            st.stopping = True
        if st.stopping or shared[STOP] or monotonic() > deadline:
            st.stopping = True
            for conn in consumers:
                if not conn.inflight:
                    conn.close()
    loop.close()


def _result(st: _Stats, producers: list[_Producer]) -> dict[str, Any]:
    return {
        "sets": st.sets,
        "gets": st.gets,
        "hits": st.hits,
        "not_stored": st.not_stored,
        "refused": st.refused,
        "acked": [(p.start, p.acked) for p in producers],
        "set_hist": st.set_lat.fold(),
        "get_hist": st.get_lat.fold(),
        "first_ns": st.first_ns,
        "last_set_ns": st.last_set_ns,
        "last_get_ns": st.last_get_ns,
        "tally": st.tally.state() if st.tally else None,
    }


def _split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal shares (the first ones one larger)."""
    if parts <= 0:
        return []
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def make_specs(args: argparse.Namespace, cache: bool, tag: int) -> list[Spec]:
    """Deal producer id ranges and consumer quotas round-robin over the worker processes.

    ``args`` needs items, size, producers, consumers (may be 0), workers, pipeline, wait_ms,
    duration, timeout, server and queue_bytes.
    """
    workers = max(1, min(args.workers, args.producers + args.consumers))
    ranges, start = [], 0
    for share in _split(args.items, args.producers):
        ranges.append((start, start + share))
        start += share
    quotas = _split(args.items, args.consumers) if cache else [0] * args.consumers
    return [
        Spec(
            addr=args.server,
            queue=args.queue_bytes,
            size=args.size,
            pipeline=args.pipeline,
            wait_ms=args.wait_ms,
            cache=cache,
            tag=tag,
            items=args.items,
            producers=tuple(ranges[w::workers]),
            consumers=tuple(quotas[w::workers]),
            duration=args.duration,
            timeout=args.timeout,
        )
        for w in range(workers)
    ]


def _drain_leftovers(args: argparse.Namespace, tag: int) -> dict[str, Any]:
    """Items still queued after the run (deadline hit): delivered late, not lost."""
    tally = Tally(tag, args.items)
    with SyncClient(args.server, args.timeout) as client:
        deadline = time.monotonic() + args.timeout
        for body in client.drain(args.queue_bytes, args.items + 1, deadline):
            tally.add(body)
    return tally.state()


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.size < ID_BYTES:
        raise ValueError(f"--size must be at least {ID_BYTES} (the item id)")
    info = prepare(args, args.queue_bytes)
    tag = run_tag()
    specs = make_specs(args, not info.is_queue, tag)
    pool = Pool(work, specs, SLOTS)
    pool.start(args.timeout * 4)
    progress = Progress("flood", 2 * args.items, not args.quiet)

    def tick() -> None:
        sets, gets = pool.total(SETS), pool.total(GETS)
        done = sets + (gets if not info.is_queue else pool.total(ITEMS))
        progress.update(done, f"sets {sets:,} gets {gets:,}")

    deadline = time.monotonic() + args.duration
    hard = deadline + args.wait_ms / 1000 + 2 * args.timeout
    cut = supervise(pool, tick, deadline, hard)
    results = pool.collect(args.timeout * 2)
    progress.finish()
    report = _report(args, info, results, cut)
    if info.is_queue:
        states = [r["tally"] for r in results]
        leftovers = _drain_leftovers(args, tag)
        refused = [i for r in results for i in r["refused"]]
        ranges = [rng for r in results for rng in r["acked"]]
        check = merge_check(
            [*states, leftovers],
            args.items,
            expected_map(args.items, ranges, refused),
            report["not_stored"],
        )
        check["left_in_queue"] = leftovers["received"] + leftovers["foreign"]
        report["check"] = check
        report["ok"] = check["ok"]
    else:
        report["check"] = skipped_check(info)
    return report, _text(report)


def _report(
    args: argparse.Namespace, info: Any, results: list[dict[str, Any]], cut: bool
) -> dict[str, Any]:
    set_hist = Histogram.merged(r["set_hist"] for r in results)
    get_hist = Histogram.merged(r["get_hist"] for r in results)
    sets = sum(r["sets"] for r in results)
    gets = sum(r["gets"] for r in results)
    start = min(r["first_ns"] for r in results)
    set_s = max((r["last_set_ns"] for r in results), default=start) - start
    get_s = max((r["last_get_ns"] for r in results), default=start) - start
    total_s = max(set_s, get_s, 0) / 1e9
    report = base_report("flood", args, info)
    report.update(
        params={
            "items": args.items,
            "size": args.size,
            "producers": args.producers,
            "consumers": args.consumers,
            "workers": len(results),
            "pipeline": args.pipeline,
            "wait_ms": args.wait_ms,
        },
        elapsed_s=round(total_s, 3),
        stopped_by_deadline=cut,
        hits=sum(r["hits"] for r in results),
        not_stored=sum(r["not_stored"] for r in results),
        ops={
            "set": op_summary(sets, set_s / 1e9, set_hist),
            "get": op_summary(gets, get_s / 1e9, get_hist),
            "total": {"count": sets + gets, "ops_per_s": rate(sets + gets, total_s)},
        },
    )
    return report


def _text(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        header_line(report),
        f"{p['producers']} producers + {p['consumers']} consumers over {p['workers']} workers, "
        f"{p['items']:,} items x {p['size']} B, pipeline {p['pipeline']}, "
        f"consumer wait {p['wait_ms']} ms",
        "",
        table(LATENCY_HEADERS, latency_rows(report["ops"])),
        "",
        f"elapsed {report['elapsed_s']} s, combined {human(report['ops']['total']['ops_per_s'])}"
        f" ops/s, get hits {report['hits']:,}"
        + (" (stopped by the deadline)" if report["stopped_by_deadline"] else ""),
        check_text(report["check"]),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("flood", __doc__.split("\n")[0], "flood", 60.0)
    parser.add_argument("--producers", "-P", type=positive_int, default=5, help="default 5")
    parser.add_argument("--consumers", "-C", type=positive_int, default=5, help="default 5")
    add_workers_option(parser, "load")
    parser.add_argument("--items", "-n", type=positive_int, default=200_000, help="N (200000)")
    parser.add_argument("--size", "-s", type=positive_int, default=64, help="item bytes (64)")
    parser.add_argument(
        "--pipeline", type=positive_int, default=1, help="requests per write per conn (1)"
    )
    parser.add_argument(
        "--wait-ms", type=positive_int, default=250, help="consumer get q/t=WAIT (250)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
