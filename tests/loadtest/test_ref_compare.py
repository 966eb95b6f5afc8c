"""ref_compare: rotation, per-round ratios and target verdicts, and one real round."""

from __future__ import annotations

import json
import subprocess
import sys

from lt_harness import ROOT

from loadtest.ref_compare import ratios, rotated, targets

RUN_TIMEOUT_S = 120  # six fresh servers, gcc six times and 1 s of load each


def test_each_server_takes_each_slot_in_turn() -> None:
    names = ["a", "b", "c"]
    assert [rotated(names, n) for n in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_ratios_are_taken_within_a_round_and_targets_counted() -> None:
    rounds = [
        {
            10: {"memcached": 100.0, "redis-always": 10.0, "kestrelpy-always": 20.0},
            100: {"memcached": 200.0, "redis-always": 100.0, "kestrelpy-always": 120.0},
        },
        {
            10: {"memcached": 50.0, "redis-always": 20.0, "kestrelpy-always": 10.0},
            100: {"memcached": None, "redis-always": 100.0, "kestrelpy-always": 50.0},
        },
    ]
    per_round = ratios(rounds)
    assert per_round["kestrelpy-always"][10] == [0.2, 0.2]
    assert per_round["redis-always"][10] == [0.1, 0.4]
    assert per_round["kestrelpy-always"][100] == [0.6]  # no memcached, no ratio
    assert targets(rounds) == {
        "kestrelpy-always": {
            "always_vs_redis_at_10": {"met_rounds": 1, "rounds": 2},
            "always_at_100": {"target": 0.5, "met_rounds": 1, "rounds": 1},
        }
    }


def test_the_compiled_column_gets_its_own_verdicts() -> None:
    rounds = [
        {
            10: {"memcached": 100.0, "redis-always": 10.0, "kestrelpy-always-mypyc": 5.0},
            100: {"memcached": 200.0, "kestrelpy-always-mypyc": 110.0},
        }
    ]
    assert targets(rounds) == {
        "kestrelpy-always-mypyc": {
            "always_vs_redis_at_10": {"met_rounds": 0, "rounds": 1},
            "always_at_100": {"target": 0.5, "met_rounds": 1, "rounds": 1},
        }
    }


def test_a_round_where_redis_failed_is_not_paired_with_another_rounds_redis() -> None:
    rounds: list[dict[int, dict[str, float | None]]] = [
        {10: {"memcached": 100.0, "redis-always": None, "kestrelpy-always": 5.0}},
        {10: {"memcached": 100.0, "redis-always": 10.0, "kestrelpy-always": 20.0}},
    ]
    verdict = targets(rounds)["kestrelpy-always"]["always_vs_redis_at_10"]
    assert verdict == {"met_rounds": 1, "rounds": 1}  # round 1 alone: 0.2 >= 0.1


def test_one_round_against_real_servers() -> None:
    argv = [sys.executable, "-m", "loadtest.ref_compare", "--rounds", "1", "--duration", "1"]
    argv += ["--servers", "memcached,redis-always,kestrelpy-always", "--json"]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for name in ("memcached", "redis-always", "kestrelpy-always"):
        for connections in ("10", "100"):
            assert result["ratios"][name][connections]["median"] > 0, (name, connections)
    assert result["ratios"]["memcached"]["10"]["median"] == 1.0
    assert result["targets"]["kestrelpy-always"]["always_vs_redis_at_10"]["rounds"] == 1
    assert result["targets"]["kestrelpy-always"]["always_at_100"]["rounds"] == 1
