"""Latency statistics: an exact percentile and a fixed-size, mergeable histogram.

Load runs produce millions of samples across several processes. Keeping them all costs memory
and a final sort; a log-linear histogram (HdrHistogram's idea) costs a few kB per op type,
records in O(1), merges by adding counts and stays within 1/128 (0.8 %) of the true value.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence

SUB_BITS = 7  # 128 linear sub-buckets per power of two: relative error <= 1/128
_LINEAR = 1 << (SUB_BITS + 1)  # values below this get one bucket each
_BUCKETS = (66 - SUB_BITS) << SUB_BITS  # covers every value below 2**64


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100); 0.0 when empty.

    Nearest rank (no interpolation) always returns an observed value, so p100 is the max and
    a p99 of 100 samples is the 99th smallest, as latency reports usually mean.
    """
    if not sorted_values:
        return 0.0
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def bucket_index(value: int) -> int:
    """Bucket of a non-negative integer value; exact below 256, then 128 per power of two."""
    if value < _LINEAR:
        return value
    shift = value.bit_length() - SUB_BITS - 1
    return (shift << SUB_BITS) + (value >> shift)


def bucket_value(index: int) -> int:
    """Middle of the value range that bucket ``index`` covers (its representative)."""
    if index < _LINEAR:
        return index
    shift = (index >> SUB_BITS) - 1
    low = (index - (shift << SUB_BITS)) << shift
    return low + ((1 << shift) >> 1)


class Histogram:
    """Counts of non-negative integer samples (the tools record nanoseconds).

    Picklable (plain slots), so worker processes send theirs to the parent to be merged.
    """

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0
        self.max = 0
        self.min = -1

    def record(self, value: int, times: int = 1) -> None:
        """Add ``times`` samples of ``value``; negative values (clock skew) count as 0."""
        if value < 0:
            value = 0
        self.counts[bucket_index(value)] += times
        self.count += times
        self.total += value * times
        if value > self.max:
            self.max = value
        if self.min < 0 or value < self.min:
            self.min = value

    @classmethod
    def merged(cls, hists: Iterable[Histogram]) -> Histogram:
        """One histogram holding the samples of all of ``hists`` (the workers' ones)."""
        total = cls()
        for hist in hists:
            total.merge(hist)
        return total

    def merge(self, other: Histogram) -> None:
        """Add another histogram's samples to this one."""
        if not other.count:
            return
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        if self.min < 0 or 0 <= other.min < self.min:
            self.min = other.min

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile (q in 0..100), within 0.8 % of the exact value; 0 if empty.

        Clamped to the observed max so p100 and a p99.9 of few samples report a real sample.
        """
        if not self.count:
            return 0
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} outside 0..100")
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(bucket_value(index), self.max)
        return self.max

    def mean(self) -> float:
        """Arithmetic mean of the samples; 0.0 if empty."""
        return self.total / self.count if self.count else 0.0


class Recorder:
    """Collects latency samples in a hot loop for one C-level append each.

    Samples go to an ``array('q')`` and are folded into a Histogram later, off the hot path
    (``fold``); the owner calls ``maybe_fold`` between polls so memory stays bounded
    (8 bytes per sample up to FOLD_AT samples, then a short fold).
    """

    FOLD_AT = 1 << 22  # 4M samples = 32 MB

    __slots__ = ("add", "hist", "samples")

    def __init__(self) -> None:
        self.hist = Histogram()
        self.samples = array("q")
        self.add = self.samples.append  # hot loops call rec.add(ns)

    def add_many(self, value: int, times: int) -> None:
        """``times`` samples of one value (a pipelined batch answered together)."""
        if times == 1:
            self.add(value)
        else:
            self.hist.record(value, times)

    def maybe_fold(self) -> None:
        if len(self.samples) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> Histogram:
        """Move the raw samples into the histogram and return it."""
        record = self.hist.record
        for value in self.samples:
            record(value)
        del self.samples[:]
        return self.hist
