"""leaky_reader: reliable readers that often fail; every item must be confirmed exactly once.

Readers ``get q/t=WAIT/open`` an item, then ``get q/close`` it, or with probability
``--abort`` send ``get q/abort``, or with probability ``--disconnect`` drop the connection
(FIN or RST) and reconnect. Aborted and orphaned items must come back and be confirmed by
someone, once. At the end the queue is drained with plain gets; the check is that every
stored item was either confirmed once or drained once (never both, never neither).

One process, one epoll loop: the producer and the readers share it, so the interesting part
(the server's open/abort/disconnect bookkeeping) is what gets stressed, not the client.
Against a plain cache ``get q/open`` is an ordinary miss: only the request rate is reported.
"""

from __future__ import annotations

import argparse
import random
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
    probability,
    run_tag,
    run_tool,
    skipped_check,
)
from loadtest._client import SyncClient, connect, queue_stat
from loadtest._feed import Feeder
from loadtest._loop import Conn, Loop
from loadtest._proto import ID_BYTES, get_request, parse_get_reply
from loadtest._report import Progress, check_text, human, rate, table
from loadtest._tally import Tally, expected_map, merge_check

# What a reader does with an item it opened.
CLOSE, ABORT, DISCONNECT = "close", "abort", "disconnect"


class _Counts:
    """Shared by all readers of the run."""

    __slots__ = ("confirmed", "counts", "opened", "rng", "stopping")

    def __init__(self, tag: int, items: int, seed: int) -> None:
        self.confirmed = Tally(tag, items)  # ids whose close was answered
        self.opened = Tally(tag, items)  # ids handed out by open (repeats are redeliveries)
        self.counts = {"open": 0, "empty": 0, CLOSE: 0, ABORT: 0, DISCONNECT: 0}
        self.rng = random.Random(seed)
        self.stopping = False


class _Reader(Conn):
    """open -> close | abort | disconnect, forever (or ``quota`` opens against a cache)."""

    __slots__ = ("args", "buf", "holding", "open_req", "pending", "quota", "st")

    def __init__(self, loop: Loop, args: argparse.Namespace, st: _Counts, quota: int) -> None:
        super().__init__(loop, connect(args.server, args.timeout))
        self.args = args
        self.open_req = get_request(args.queue_bytes + b"/t=%d/open" % args.wait_ms)
        self.st = st
        self.quota = quota  # opens left; -1 = until stopped (queue server)
        self.buf = bytearray()
        self.holding: bytes | None = None  # body of the item this connection has open
        self.pending = ""  # request in flight: "open", CLOSE, ABORT or ""

    def fire(self) -> None:
        """Open the next item, unless the run is stopping or the quota is used up."""
        if self.st.stopping or self.quota == 0:
            self.pending = ""
            self.close()
            return
        if self.quota > 0:
            self.quota -= 1
        self.pending = "open"
        self.send(self.open_req)

    def on_readable(self) -> None:
        buf = self.buf
        buf += self.recv()
        pos, body = parse_get_reply(buf, 0)
        if not pos:
            return
        del buf[:pos]
        if self.pending == "open":
            self._opened(body)
            return
        if self.pending == CLOSE and self.holding is not None:
            self.st.confirmed.add(self.holding)  # the close was answered: confirmed
        self.holding = None  # after an answered abort the item is back in the queue
        self.fire()

    def _opened(self, body: bytes | None) -> None:
        st = self.st
        if body is None:
            st.counts["empty"] += 1
            self.fire()
            return
        st.counts["open"] += 1
        st.opened.add(body)
        self.holding = body
        draw = st.rng.random()
        p_abort, p_disconnect = self.args.abort, self.args.disconnect
        action = CLOSE
        if draw < p_abort:
            action = ABORT
        elif draw < p_abort + p_disconnect:
            action = DISCONNECT
        st.counts[action] += 1
        if action == DISCONNECT:
            self._reconnect()
            return
        self.pending = action
        self.send(get_request(self.args.queue_bytes + b"/" + action.encode()))

    def _reconnect(self) -> None:
        """Drop the connection with the item open (RST or FIN at random), then start over."""
        self.holding = None
        self.close(abortive=self.st.rng.random() < 0.5)
        _Reader(self.loop, self.args, self.st, self.quota).fire()


def _drain_all(args: argparse.Namespace, tag: int) -> tuple[Tally, int | None]:
    """Drain until the queue is empty and nothing is open any more (bounded by --timeout).

    Items of disconnected readers return when the server notices the disconnect, which may
    be after our first empty get; so keep draining until stats say nothing is open. The
    short server-side wait (``/t=50``) paces the loop and picks up a returning item at once.
    """
    drained = Tally(tag, args.items)
    still_open = None
    deadline = time.monotonic() + args.timeout
    with SyncClient(args.server, args.timeout) as client:
        while time.monotonic() < deadline:
            for body in client.drain(args.queue_bytes, args.items + 1, deadline):
                drained.add(body)
            stats = client.stats()
            still_open = queue_stat(stats, args.queue_bytes, "open_transactions")
            waiting = queue_stat(stats, args.queue_bytes, "items")
            if not still_open and not waiting:
                break
            late = client.get(args.queue_bytes + b"/t=50")
            if late is not None:
                drained.add(late)
    return drained, still_open


def _run_loop(args: argparse.Namespace, tag: int, cache: bool) -> dict[str, Any]:
    """Producer and readers in one loop until every item is confirmed or the deadline."""
    loop = Loop()
    st = _Counts(tag, args.items, args.seed)
    sock = connect(args.server, args.timeout)
    ids = (0, args.items)
    feeder = Feeder(loop, sock, args.queue_bytes, tag, args.size, ids, args.pipeline)
    share, extra = divmod(args.items, args.readers)
    readers = [
        _Reader(loop, args, st, share + (i < extra) if cache else -1) for i in range(args.readers)
    ]
    for reader in readers:
        reader.fire()
    feeder.fire()
    progress = Progress("leaky_reader", args.items, not args.quiet)
    started = time.monotonic()
    deadline = started + args.duration
    hard_deadline = deadline + args.wait_ms / 1000 + args.timeout
    while loop.conns and time.monotonic() < hard_deadline:
        loop.poll(0.05)
        counts = st.counts
        done = counts["open"] + counts["empty"] if cache else st.confirmed.received
        progress.update(done, f"confirmed {st.confirmed.received:,} opens {counts['open']:,}")
        finished = not cache and feeder.done and st.confirmed.received >= args.items
        if not st.stopping and (finished or time.monotonic() > deadline):
            _stop(st, feeder, loop)
    elapsed = time.monotonic() - started
    progress.finish()
    loop.close()  # readers still holding an item (deadline) drop it: the server must return it
    return {"st": st, "feeder": feeder, "elapsed": elapsed, "cut": time.monotonic() > deadline}


def _stop(st: _Counts, feeder: Feeder, loop: Loop) -> None:
    """Stop now. Reads are reliable (open), so a reader closed while waiting or holding an
    item cannot lose it: the server gives it back and the final drain finds it. Only a
    ``close`` in flight is awaited: the server may already have confirmed that item, and
    only its reply tells us."""
    st.stopping = True
    feeder.stop()
    for conn in list(loop.conns.values()):
        if isinstance(conn, _Reader) and conn.pending != CLOSE:
            conn.close()
    if feeder.done:
        feeder.close()


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.size < ID_BYTES:
        raise ValueError(f"--size must be at least {ID_BYTES} (the item id)")
    if args.abort + args.disconnect > 1:
        raise ValueError("--abort plus --disconnect must not exceed 1")
    info = prepare(args, args.queue_bytes)
    tag = run_tag()
    outcome = _run_loop(args, tag, not info.is_queue)
    st: _Counts = outcome["st"]
    feeder: Feeder = outcome["feeder"]
    report = base_report("leaky_reader", args, info)
    requests = st.counts["open"] + st.counts["empty"] + st.counts[CLOSE] + st.counts[ABORT]
    report.update(
        params={
            "items": args.items,
            "size": args.size,
            "readers": args.readers,
            "abort": args.abort,
            "disconnect": args.disconnect,
            "wait_ms": args.wait_ms,
            "seed": args.seed,
        },
        elapsed_s=round(outcome["elapsed"], 3),
        stopped_by_deadline=outcome["cut"],
        sets=feeder.acked,
        actions=dict(st.counts),
        redelivered=st.opened.duplicated,
        requests=requests,
        requests_per_s=rate(requests, outcome["elapsed"]),
    )
    if info.is_queue:
        drained, still_open = _drain_all(args, tag)
        expected = expected_map(args.items, [(0, feeder.acked)], feeder.refused)
        check = merge_check(
            [st.confirmed.state(), drained.state()], args.items, expected, len(feeder.refused)
        )
        check["confirmed"] = st.confirmed.received
        check["drained"] = drained.received
        check["still_open"] = still_open
        check["ok"] = check["ok"] and not still_open and st.confirmed.duplicated == 0
        report["check"] = check
        report["ok"] = check["ok"]
    else:
        report["check"] = skipped_check(info)
    return report, _text(report)


def _text(report: dict[str, Any]) -> str:
    p, a = report["params"], report["actions"]
    rows = [[name, f"{count:,}"] for name, count in a.items()]
    rows.append(["redelivered", f"{report['redelivered']:,}"])
    check = report["check"]
    extra = ""
    if check.get("performed"):
        extra = f" [confirmed {check['confirmed']:,}, drained at the end {check['drained']:,}]"
    lines = [
        header_line(report),
        f"{p['readers']} readers, {p['items']:,} items x {p['size']} B, abort p={p['abort']}, "
        f"disconnect p={p['disconnect']}, open wait {p['wait_ms']} ms, seed {p['seed']}",
        "",
        table(("action", "count"), rows),
        "",
        f"{report['requests']:,} reader requests in {report['elapsed_s']} s = "
        f"{human(report['requests_per_s'])}/s"
        + (" (stopped by the deadline)" if report["stopped_by_deadline"] else ""),
        check_text(check) + extra,
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("leaky_reader", __doc__.split("\n")[0], "leaky_reader", 60.0)
    parser.add_argument("--items", "-n", type=positive_int, default=20_000, help="default 20000")
    parser.add_argument("--size", "-s", type=positive_int, default=64, help="item bytes (64)")
    parser.add_argument("--readers", "-r", type=positive_int, default=10, help="default 10")
    parser.add_argument(
        "--abort", type=probability, default=0.1, help="P(abort an opened item) (0.1)"
    )
    parser.add_argument(
        "--disconnect", type=probability, default=0.1, help="P(disconnect holding it) (0.1)"
    )
    parser.add_argument("--wait-ms", type=positive_int, default=250, help="open wait /t= (250)")
    parser.add_argument("--pipeline", type=positive_int, default=8, help="producer window (8)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
