"""client_bench: the bundled client (``kestrelpy.client.Client``) against a bare pymemcache loop.

One connection per client, one request in flight, 10-byte items, against one queue server.
The loops, each ``--ops`` operations per round:

- ``set``: ``pymemcache.client.base.Client(..., default_noreply=False).set(q, data)``, the
  yardstick for the three producer loops (pymemcache's defaults otherwise: no socket
  timeout, so no ``poll`` before each send and receive; the bundled client always has one);
- ``put``: ``client.put(q, data)`` (raw codec: the same 10 bytes on the wire as ``set``);
- ``put_json``: the same with the default JSON codec (``"bench-01"`` encodes to the same
  10 bytes);
- ``put_many``: ``client.put_many(q, items)`` in batches of ``--batch`` (100) items;
- ``get_open``: pymemcache ``get("q/close/open")`` per item and one ``get("q/close")`` at
  the end, the yardstick for the two consumer loops;
- ``reliable``: ``with client.reliable(q) as job:`` per item and ``client.flush_closes()``
  at the end (raw codec);
- ``reliable_json``: the same with the JSON codec.

The measurement is noisy (±10 % from run to run on a shared VM), so the loops are
interleaved in ``--rounds`` short rounds, the order reversed every other round so a drift
favours no loop, and each comparison is the median of its per-round ratios (the two loops
ran seconds apart). Each loop's client CPU per operation is ``time.process_time`` over the
loop, which is this process only: pin it (``--cpu``) away from the server.

The issue's goals, as ratios in the same run: ``put`` at least 0.9x ``set``, ``put_many``
items/s at least 3x ``set``, ``reliable`` at least 0.9x ``get_open``. A missed goal is
reported, not a failed run; the run fails (exit 1) only when its checks fail: every
producer loop must leave exactly its items queued, every consumer loop must get an item on
every read and leave the queue empty with nothing open.

Needs pymemcache and kestrelpy importable (run it with the project's venv) and a queue
server (kestrelpy or Kestrel): plain memcached has no reliable reads.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest._cli import (
    base_parser,
    base_report,
    header_line,
    positive_int,
    prepare,
    problems_check,
    run_tool,
)
from loadtest._client import Address, SyncClient, connect, queue_stat
from loadtest._report import human, table

BODY = b'"bench-01"'  # 10 bytes; also valid JSON, so the JSON loops move the same bytes
DATA_RAW = BODY
DATA_JSON = "bench-01"
GOALS = {"put": ("set", 0.9), "put_many": ("set", 3.0), "reliable": ("get_open", 0.9)}
BASELINES = {  # each client loop is compared with the pymemcache loop of its kind
    "put": "set",
    "put_json": "set",
    "put_many": "set",
    "reliable": "get_open",
    "reliable_json": "get_open",
}
PRODUCERS = ("set", "put", "put_json", "put_many")
CONSUMERS = ("get_open", "reliable", "reliable_json")
LOOPS = PRODUCERS + CONSUMERS
WARMUP_OPS = 200


@dataclass
class Clients:
    """The two clients under test, each one connection opened before the first round."""

    pymemcache: Any
    raw: Any  # kestrelpy.client.Client(codec="raw")
    json: Any  # kestrelpy.client.Client() (JSON, the default)
    put_queue: str
    get_queue: str
    batch: int


def _set_loop(c: Clients, n: int) -> int:
    set_ = c.pymemcache.set
    q = c.put_queue
    for _ in range(n):
        set_(q, DATA_RAW)
    return n


def _put_loop(c: Clients, n: int) -> int:
    put = c.raw.put
    q = c.put_queue
    for _ in range(n):
        put(q, DATA_RAW)
    return n


def _put_json_loop(c: Clients, n: int) -> int:
    put = c.json.put
    q = c.put_queue
    for _ in range(n):
        put(q, DATA_JSON)
    return n


def _put_many_loop(c: Clients, n: int) -> int:
    put_many = c.raw.put_many
    q = c.put_queue
    items = [DATA_RAW] * c.batch
    for _ in range(n // c.batch):
        put_many(q, items)
    return n // c.batch * c.batch


def _get_open_loop(c: Clients, n: int) -> int:
    get = c.pymemcache.get
    key = c.get_queue + "/close/open"
    hits = 0
    for _ in range(n):
        if get(key) is not None:
            hits += 1
    get(c.get_queue + "/close")
    return hits


def _reliable_loop(c: Clients, n: int) -> int:
    return _reliable(c.raw, c.get_queue, n)


def _reliable_json_loop(c: Clients, n: int) -> int:
    return _reliable(c.json, c.get_queue, n)


def _reliable(client: Any, queue: str, n: int) -> int:
    reliable = client.reliable
    hits = 0
    for _ in range(n):
        with reliable(queue) as job:
            if job is not None:
                hits += 1
    client.flush_closes()
    return hits


LOOP_BODIES: dict[str, Callable[[Clients, int], int]] = {
    "set": _set_loop,
    "put": _put_loop,
    "put_json": _put_json_loop,
    "put_many": _put_many_loop,
    "get_open": _get_open_loop,
    "reliable": _reliable_loop,
    "reliable_json": _reliable_json_loop,
}


@dataclass
class Sample:
    """One loop in one round."""

    ops: int
    wall_s: float
    cpu_s: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_s * 1e6 / self.ops if self.ops else 0.0


def timed(loop: Callable[[Clients, int], int], clients: Clients, n: int) -> tuple[Sample, int]:
    """Run one loop; its sample (wall and this process's CPU) and what it returned."""
    gc.collect()  # a collection owed by the previous loop must not land in this one
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = loop(clients, n)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    return Sample(n, wall1 - wall0, cpu1 - cpu0), result


def fill(addr: Address, queue: str, count: int, timeout: float, batch: int = 500) -> None:
    """``count`` items of BODY with flags 0 (no codec mark: each client decodes with its
    own codec), pipelined ``batch`` at a time; every reply must be STORED."""
    request = b"set %s 0 0 %d\r\n%s\r\n" % (queue.encode(), len(BODY), BODY)
    with connect(addr, timeout) as sock:
        left = count
        while left:
            step = min(batch, left)
            sock.sendall(request * step)
            expected = b"STORED\r\n" * step
            got = bytearray()
            while len(got) < len(expected):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection while filling")
                got += chunk
            if got != expected:
                raise RuntimeError(f"unexpected reply while filling: {bytes(got[:60])!r}")
            left -= step


def queue_state(addr: Address, queue: str, timeout: float) -> tuple[int | None, int | None]:
    """(items, open_transactions) of ``queue`` from ``stats``."""
    with SyncClient(addr, timeout) as client:
        stats = client.stats()
    name = queue.encode()
    return queue_stat(stats, name, "items"), queue_stat(stats, name, "open_transactions")


def drop_queue(addr: Address, queue: str, timeout: float) -> None:
    with SyncClient(addr, timeout) as client:
        client.delete(queue.encode())


def open_clients(args: argparse.Namespace) -> Clients:
    """One pymemcache client and two kestrelpy clients (raw, JSON), each connected."""
    from pymemcache.client.base import Client as PymemcacheClient

    from kestrelpy.client import Client

    host, port = args.server
    server = f"{host}:{port}"
    clients = Clients(
        pymemcache=PymemcacheClient((host, port), default_noreply=False),
        raw=Client(server, codec="raw", timeout_s=args.timeout),
        json=Client(server, timeout_s=args.timeout),
        put_queue=f"{args.queue}_put",
        get_queue=f"{args.queue}_get",
        batch=args.batch,
    )
    return clients


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    put_queue, get_queue = f"{args.queue}_put", f"{args.queue}_get"
    info = prepare(args, put_queue.encode(), get_queue.encode())
    if not info.is_queue:
        raise ValueError(f"client_bench needs a queue server, not a {info.reason}")
    if args.ops < args.batch:
        raise ValueError(f"--ops ({args.ops}) must be at least --batch ({args.batch})")
    from pymemcache.exceptions import MemcacheError

    from kestrelpy.client import ClientError

    clients = open_clients(args)
    problems: list[str] = []
    samples: dict[str, list[Sample]] = {loop: [] for loop in LOOPS}
    deadline = time.monotonic() + args.duration
    cut = False
    try:
        for loop in LOOPS:  # connect, import lazily-imported modules, warm caches
            run_loop(args, clients, loop, min(WARMUP_OPS, args.ops), problems, None)
        for round_no in range(args.rounds):
            if time.monotonic() > deadline:
                cut = True  # the rounds done so far still make a (smaller) report
                break
            order = LOOPS if round_no % 2 == 0 else LOOPS[::-1]
            for loop in order:
                run_loop(args, clients, loop, args.ops, problems, samples[loop])
    except (ClientError, MemcacheError) as err:  # a client failed: the run cannot be done
        raise RuntimeError(f"{type(err).__name__}: {err}") from err
    finally:
        clients.pymemcache.close()
        clients.raw.disconnect()
        clients.json.disconnect()
    for queue in (put_queue, get_queue):
        drop_queue(args.server, queue, args.timeout)
    report = _report(args, info, samples, problems)
    report["stopped_by_deadline"] = cut
    return report, _text(report)


def run_loop(
    args: argparse.Namespace,
    clients: Clients,
    loop: str,
    n: int,
    problems: list[str],
    into: list[Sample] | None,
) -> None:
    """One loop of ``n`` operations with its setup (consumers: a queue of exactly ``n``
    items) and its check (stats after it); ``into``: where its sample goes (None: warm-up)."""
    if loop in CONSUMERS:
        fill(args.server, clients.get_queue, n, args.timeout)
    sample, result = timed(LOOP_BODIES[loop], clients, n)
    if into is not None:
        into.append(sample)
    queue = clients.put_queue if loop in PRODUCERS else clients.get_queue
    items, open_now = queue_state(args.server, queue, args.timeout)
    if loop in PRODUCERS:
        if items != result:
            problems.append(f"{loop}: {result} items put, {items} queued")
        drop_queue(args.server, queue, args.timeout)  # every producer loop starts empty
    elif result != n or items != 0 or open_now != 0:
        problems.append(f"{loop}: {result} of {n} reads got an item; {items} left, {open_now} open")


def _loop_summary(samples: list[Sample]) -> dict[str, Any]:
    rates = [s.ops_per_s for s in samples]
    cpus = [s.cpu_us_per_op for s in samples]
    return {
        "rounds": len(samples),
        "ops_per_round": samples[0].ops if samples else 0,
        "ops_per_s": round(statistics.median(rates), 1) if rates else None,
        "ops_per_s_min": round(min(rates), 1) if rates else None,
        "ops_per_s_max": round(max(rates), 1) if rates else None,
        "cpu_us_per_op": round(statistics.median(cpus), 2) if cpus else None,
        "per_round_ops_per_s": [round(r, 1) for r in rates],
    }


def paired_ratio(ours: list[Sample], theirs: list[Sample]) -> float | None:
    """Median over rounds of (our ops/s) / (their ops/s) in the same round."""
    ratios = [
        a.ops_per_s / b.ops_per_s for a, b in zip(ours, theirs, strict=True) if b.ops_per_s > 0
    ]
    return round(statistics.median(ratios), 3) if ratios else None


def _report(
    args: argparse.Namespace,
    info: Any,
    samples: dict[str, list[Sample]],
    problems: list[str],
) -> dict[str, Any]:
    ratios = {loop: paired_ratio(samples[loop], samples[base]) for loop, base in BASELINES.items()}
    cpu_ratios = {}
    for loop, base in BASELINES.items():
        ours, theirs = _loop_summary(samples[loop]), _loop_summary(samples[base])
        if ours["cpu_us_per_op"] and theirs["cpu_us_per_op"]:
            cpu_ratios[loop] = round(ours["cpu_us_per_op"] / theirs["cpu_us_per_op"], 3)
    goals = {
        loop: {
            "baseline": base,
            "target": target,
            "ratio": ratios[loop],
            "met": ratios[loop] is not None and ratios[loop] >= target,
        }
        for loop, (base, target) in GOALS.items()
    }
    report = base_report("client_bench", args, info)
    report.update(
        params={
            "rounds": args.rounds,
            "ops": args.ops,
            "batch": args.batch,
            "size": len(BODY),
            "connections_per_client": 1,
        },
        loops={loop: _loop_summary(samples[loop]) for loop in LOOPS},
        ratios=ratios,
        cpu_ratios=cpu_ratios,
        goals=goals,
        goals_met=all(goal["met"] for goal in goals.values()),
        check=problems_check(problems, "every loop's items queued / read exactly"),
        ok=not problems,
    )
    return report


LOOP_TITLES = {
    "set": "pymemcache set",
    "put": "Client.put (raw)",
    "put_json": "Client.put (json)",
    "put_many": "Client.put_many (items)",
    "get_open": "pymemcache get close/open",
    "reliable": "Client.reliable (raw)",
    "reliable_json": "Client.reliable (json)",
}


def _text(report: dict[str, Any]) -> str:
    p = report["params"]
    rows = []
    for loop in LOOPS:
        s = report["loops"][loop]
        ratio = report["ratios"].get(loop)
        goal = report["goals"].get(loop)
        goal_text = ""
        if goal is not None:
            goal_text = f">= {goal['target']:g}: {'met' if goal['met'] else 'MISSED'}"
        rows.append(
            [
                LOOP_TITLES[loop],
                human(s["ops_per_s"] or 0.0),
                f"{human(s['ops_per_s_min'] or 0.0)}-{human(s['ops_per_s_max'] or 0.0)}",
                s["cpu_us_per_op"],
                f"{ratio:.3f}x" if ratio is not None else "",
                goal_text,
            ]
        )
    lines = [
        header_line(report),
        f"{p['rounds']} rounds x {p['ops']:,} ops per loop, {p['size']} B items, one "
        f"connection per client, put_many batches of {p['batch']}",
        "",
        table(("loop", "ops/s (median)", "min-max", "CPU us/op", "vs pymemcache", "goal"), rows),
        "",
        f"check {'OK' if report['check']['ok'] else 'FAILED'}: {report['check']['note']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("client_bench", __doc__.split("\n")[0], "client_bench", 120.0)
    parser.add_argument("--rounds", type=positive_int, default=6, help="rounds (6)")
    parser.add_argument("--ops", type=positive_int, default=5000, help="ops per loop per round")
    parser.add_argument("--batch", type=positive_int, default=100, help="put_many batch (100)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
