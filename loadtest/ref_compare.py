"""ref_compare: issue 19's targets from interleaved rounds of the C reference client.

``make bench`` measures memcached, Redis and kestrelpy one after another, a minute apart.
On a shared machine memcached alone moved between 65k and 211k ops/s from one run to the
next (loadtest/RESULTS.md), so the ratios of one run, and a verdict near its line, can
flip. Here each round runs every server once per connection count, in an order rotated
every round, each on a fresh process (the bench's own start_server and ref scenarios), and
takes the ratios to memcached within the round; the report is the median of the per-round
ratios, their range, and in how many rounds each target held.

    python -m loadtest.ref_compare                      # 3 rounds x 5 s: about 5 minutes
    python -m loadtest.ref_compare --rounds 5 --json

Targets (issue 19): kestrelpy ``always`` at least Redis ``appendfsync always`` at 10
connections, and at least 0.50x memcached at 100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest._servers import ServerError
from loadtest.bench import (
    BARE_SERVERS,
    COMPILED,
    COMPILED_SERVERS,
    built_compiled_servers,
    ref_scenario,
    run_scenario,
    start_server,
)

SERVERS = ("memcached", "redis-always", "kestrelpy-always", "kestrelpy-periodic", *BARE_SERVERS)
ALWAYS_COLUMNS = ("kestrelpy-always", f"kestrelpy-always{COMPILED}")  # the targets' subjects
CONNECTIONS = (10, 100)
AT_100 = 0.50  # kestrelpy always vs memcached at 100 connections


def rotated(names: Sequence[str], by: int) -> list[str]:
    """``names`` starting at index ``by``: each server takes each slot of a round in turn,
    so none is always measured first (or last) while the machine's load drifts."""
    shift = by % len(names)
    return [*names[shift:], *names[:shift]]


def one_rate(name: str, connections: int, args: argparse.Namespace) -> float | None:
    """ops/s of one fresh ``name`` under the C client, or None (logged) if it failed."""
    scenario = ref_scenario(connections, f"{args.duration:g}")
    with tempfile.TemporaryDirectory(prefix=f"kpref-{name}-") as workdir:
        try:
            server = start_server(name, args, Path(workdir), scenario)
        except (ServerError, OSError) as err:
            _log(f"{name}: failed to start: {str(err).splitlines()[0]}")
            return None
        try:
            outcome = run_scenario(server, scenario, args.load_cpu)
        finally:
            server.stop()
    if outcome.report is None or outcome.check_failed:
        _log(f"{name} at {connections} conns: {outcome.error or 'error replies'}")
        return None
    rate: float = outcome.report["ops"]["total"]["ops_per_s"]
    return rate


def measure(args: argparse.Namespace) -> list[dict[int, dict[str, float | None]]]:
    """Per round, per connection count: each server's ops/s."""
    rounds: list[dict[int, dict[str, float | None]]] = []
    for number in range(args.rounds):
        rates: dict[int, dict[str, float | None]] = {}
        for connections in CONNECTIONS:
            rates[connections] = {}
            for name in rotated(args.servers, number):
                rates[connections][name] = one_rate(name, connections, args)
                _log(f"round {number + 1}, {connections} conns, {name}: {rates[connections][name]}")
        rounds.append(rates)
    return rounds


def ratios(rounds: list[dict[int, dict[str, float | None]]]) -> dict[str, dict[int, list[float]]]:
    """Each server's ratio to memcached, per connection count, one per round that has both."""
    out: dict[str, dict[int, list[float]]] = {}
    for rates in rounds:
        for connections, by_server in rates.items():
            reference = by_server.get("memcached")
            for name, rate in by_server.items():
                if reference and rate is not None:
                    out.setdefault(name, {}).setdefault(connections, []).append(rate / reference)
    return out


def targets(rounds: list[dict[int, dict[str, float | None]]]) -> dict[str, dict[str, Any]]:
    """Each target, for each ``always`` column measured (pure, and compiled when it ran):
    rounds where it held, of the rounds that measured both sides (Redis from the same round:
    a round where one of them failed does not count)."""
    verdicts: dict[str, dict[str, Any]] = {}
    for name in ALWAYS_COLUMNS:
        at_10: list[bool] = []
        at_100: list[bool] = []
        for rates in rounds:
            ours_10, redis_10 = _ratio(rates, 10, name), _ratio(rates, 10, "redis-always")
            if ours_10 is not None and redis_10 is not None:
                at_10.append(ours_10 >= redis_10)
            if (ours_100 := _ratio(rates, 100, name)) is not None:
                at_100.append(ours_100 >= AT_100)
        if at_10 or at_100:
            verdicts[name] = {
                "always_vs_redis_at_10": _held(at_10),
                "always_at_100": {"target": AT_100, **_held(at_100)},
            }
    return verdicts


def _held(verdicts: list[bool]) -> dict[str, int]:
    return {"met_rounds": sum(verdicts), "rounds": len(verdicts)}


def _ratio(rates: dict[int, dict[str, float | None]], connections: int, name: str) -> float | None:
    """``name``'s rate over memcached's in one round, or None when either is missing."""
    by_server = rates.get(connections, {})
    rate, reference = by_server.get(name), by_server.get("memcached")
    return rate / reference if rate is not None and reference else None


def report(
    args: argparse.Namespace, rounds: list[dict[int, dict[str, float | None]]]
) -> dict[str, Any]:
    per_round = ratios(rounds)
    return {
        "tool": "ref_compare",
        "params": {"rounds": args.rounds, "duration_s": args.duration, "servers": args.servers},
        "rates": [{str(c): r for c, r in rates.items()} for rates in rounds],
        "ratios": {
            name: {
                str(c): {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
                for c, xs in by_conns.items()
            }
            for name, by_conns in per_round.items()
        },
        "per_round_ratios": {n: {str(c): xs for c, xs in b.items()} for n, b in per_round.items()},
        "targets": targets(rounds),
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: median (min-max) ratio to memcached per server, then the verdicts."""
    lines = ["| server | 10 conns | 100 conns |", "|---|---|---|"]
    for name in result["params"]["servers"]:
        by_conns = result["ratios"].get(name, {})
        cells = [
            f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
            if (r := by_conns.get(str(c)))
            else "-"
            for c in CONNECTIONS
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    for name, goals in result["targets"].items():
        near, far = goals["always_vs_redis_at_10"], goals["always_at_100"]
        lines += [
            "",
            f"{name} >= redis-always at 10 conns: met in {near['met_rounds']} of "
            f"{near['rounds']} rounds",
            f"{name} >= {far['target']:.2f}x memcached at 100 conns: met in "
            f"{far['met_rounds']} of {far['rounds']} rounds",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ref_compare", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--servers",
        type=lambda text: [s for s in text.split(",") if s],
        default=[*SERVERS, *built_compiled_servers()],
        help="comma list; memcached is the reference and must be among them (default: "
        f"{','.join(SERVERS)}, and {','.join(COMPILED_SERVERS)} when `make compiled` has "
        "built them)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument(
        "--kestrelpy-cmd",
        type=lambda text: text.split(),
        default=None,
        help="command that runs kestrelpy (default: this python -m kestrelpy)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "memcached" not in args.servers or args.rounds <= 0 or args.duration <= 0:
        print(
            "ref_compare: needs memcached among --servers, rounds and duration > 0", file=sys.stderr
        )
        return 2
    args.kestrelpy_cmd = args.kestrelpy_cmd or [sys.executable, "-m", "kestrelpy"]
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    args.server_cpu, args.load_cpu = (0, 1) if two_cpus else (None, None)
    result = report(args, measure(args))
    print(json.dumps(result, sort_keys=True) if args.json else table(result))
    return 0


def _log(text: str) -> None:
    print(f"ref_compare: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
