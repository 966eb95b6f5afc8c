"""Percentiles: the exact nearest-rank function and the histogram that approximates it."""

from __future__ import annotations

import random

import lt_harness  # noqa: F401  (puts the repo root, home of loadtest, on sys.path)
import pytest

from loadtest._hist import Histogram, Recorder, bucket_index, bucket_value, percentile
from loadtest._proto import make_body
from loadtest._tally import Tally, expected_map, merge_check


def test_nearest_rank_percentile() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert percentile([1, 2, 3, 4], 50) == 2  # a real sample, no interpolation
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_buckets_are_exact_below_256_and_within_one_percent_above() -> None:
    for value in [*range(300), 1000, 12345, 10**6, 10**9, 2**63]:
        rep = bucket_value(bucket_index(value))
        assert abs(rep - value) <= value / 128, value
    indexes = [bucket_index(v) for v in range(100_000)]
    assert indexes == sorted(indexes)  # monotonic: percentiles walk buckets in value order


def test_histogram_tracks_exact_percentiles() -> None:
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(11, 1.5)) for _ in range(20_000)]  # ns, long tail
    hist = Histogram()
    for value in samples:
        hist.record(value)
    ordered = sorted(samples)
    for q in (50, 90, 99, 99.9, 100):
        exact = percentile(ordered, q)
        assert abs(hist.percentile(q) - exact) <= exact / 128 + 1, q
    assert hist.max == ordered[-1] and hist.min == ordered[0] and hist.count == len(samples)


def test_merge_and_recorder_fold() -> None:
    left, right = Histogram(), Histogram()
    for v in range(1000):
        (left if v % 2 else right).record(v)
    left.merge(right)
    assert left.count == 1000 and left.max == 999 and left.min == 0
    assert left.percentile(50) == 499
    rec = Recorder()
    for v in range(1000):
        rec.add(v)
    rec.add_many(5000, 10)
    folded = rec.fold()
    assert folded.count == 1010 and folded.max == 5000 and not rec.samples
    assert Histogram().percentile(99) == 0


def test_tally_merge_counts_missing_duplicates_and_foreign() -> None:
    tag, other = 1, 2
    a, b = Tally(tag, 10), Tally(tag, 10)
    for i in range(6):
        a.add(make_body(tag, i, 16))
    a.add(make_body(tag, 2, 16))  # duplicate inside one process
    b.add(make_body(tag, 5, 16))  # duplicate across processes
    b.add(make_body(other, 9, 16))  # another run's item
    check = merge_check([a.state(), b.state()], 10, expected_map(10, [(0, 8)], [7]))
    assert check["expected"] == 7  # ids 0..7 acknowledged, 7 refused
    assert check["missing"] == 1  # id 6
    assert check["duplicated"] == 2 and check["foreign"] == 1
    assert check["ok"] is False
