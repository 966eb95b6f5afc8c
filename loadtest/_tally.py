"""Exactly-once bookkeeping: which of a run's item ids arrived, and how often.

Each consumer process keeps one byte per expected id (a million items cost 1 MB) and counts
duplicates it sees itself; the coordinator ORs the workers' maps to find ids that arrived in
more than one process and ids that never arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loadtest._proto import item_tag

FOREIGN = -1  # Tally.add: not an item of this run
DUPLICATE = -2  # Tally.add: delivered before (in this process)


class Tally:
    """Ids of one run seen by one process. ``add`` is O(1) and allocation-free for our items."""

    __slots__ = ("duplicated", "expected", "foreign", "received", "seen", "tag")

    def __init__(self, tag: int, expected: int) -> None:
        self.tag = item_tag(tag)
        self.expected = expected
        self.seen = bytearray(expected)
        self.received = 0
        self.duplicated = 0
        self.foreign = 0

    def add(self, body: bytes) -> int:
        """Count one delivered body: its id on first delivery, DUPLICATE or FOREIGN."""
        # body_id inlined: this runs once per delivered item in the consumers' hot loop.
        try:
            item = int(body[8:16], 16) if body[:8] == self.tag else -1
        except ValueError:
            item = -1
        if item < 0 or item >= self.expected:
            self.foreign += 1
            return FOREIGN
        self.received += 1
        if self.seen[item]:
            self.duplicated += 1
            return DUPLICATE
        self.seen[item] = 1
        return item

    def state(self) -> dict[str, Any]:
        """Picklable summary for the coordinator (the map travels as bytes)."""
        return {
            "seen": bytes(self.seen),
            "received": self.received,
            "foreign": self.foreign,
        }


def union(maps: Iterable[bytes], expected: int) -> bytes:
    """OR of 0/1 byte maps, computed on big integers (fast: no Python loop over ids)."""
    merged = 0
    for seen in maps:
        merged |= int.from_bytes(seen, "little")
    return merged.to_bytes(expected, "little")


def expected_map(size: int, ranges: Iterable[tuple[int, int]], refused: Iterable[int]) -> bytes:
    """0/1 map of the ids the server acknowledged as STORED: ``[start, end)`` ranges of
    answered sets minus the refused (NOT_STORED) ones. Sets still unanswered when a run was
    cut off are not expected: the server may or may not have stored them."""
    expected = bytearray(size)
    for start, end in ranges:
        expected[start:end] = b"\x01" * (end - start)
    for item in refused:
        expected[item] = 0
    return bytes(expected)


def merge_check(
    states: list[dict[str, Any]], size: int, expected: bytes | None = None, not_stored: int = 0
) -> dict[str, Any]:
    """The ``check`` part of a report from the Tally states of every consumer process.

    ``expected`` is the map of acknowledged ids (None: all ``size`` ids). ``duplicated``
    counts every delivery beyond the first of an id, in one process or across several;
    ``missing`` counts acknowledged ids never delivered. Refused sets are reported but are
    not a failure: a refused item was never the server's to deliver.
    """
    received = sum(s["received"] for s in states)
    foreign = sum(s["foreign"] for s in states)
    seen = int.from_bytes(union((s["seen"] for s in states), size), "little")
    distinct = seen.to_bytes(size, "little").count(1)
    if expected is None:
        want, delivered = size, distinct
    else:
        want = expected.count(1)
        delivered = (seen & int.from_bytes(expected, "little")).to_bytes(size, "little").count(1)
    missing = want - delivered
    duplicated = received - distinct
    return {
        "performed": True,
        "ok": missing == 0 and duplicated == 0 and foreign == 0,
        "expected": want,
        "received": received,
        "missing": missing,
        "duplicated": duplicated,
        "foreign": foreign,
        "not_stored": not_stored,
    }
