"""Output of the load tools: a progress line on stderr, a summary table or one JSON object.

Progress goes to stderr and only to a terminal, so ``--json`` output on stdout stays one
parseable object and logs of unattended runs stay clean.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from loadtest._hist import Histogram

_BAR_WIDTH = 24
_MIN_REDRAW_S = 0.1  # redrawing faster only burns the coordinator's CPU


class Progress:
    """A one-line ``\\r`` progress bar: ``[#####.....]  45% label  detail``.

    Disabled (every call a no-op) when the stream is not a TTY or the user asked for quiet.
    """

    def __init__(self, label: str, total: int, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self._label = label
        self._total = max(total, 1)
        self._stream = stream
        self._enabled = enabled and stream.isatty()
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._width = 0

    def update(self, done: int, detail: str = "", force: bool = False) -> None:
        """Redraw if at least 0.1 s passed since the last redraw (or ``force``)."""
        if not self._enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _MIN_REDRAW_S:
            return
        self._last_draw = now
        frac = min(max(done / self._total, 0.0), 1.0)
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        elapsed = now - self._started
        text = f"[{bar}] {frac * 100:3.0f}% {self._label} {elapsed:5.1f}s {detail}".rstrip()
        pad = " " * max(0, self._width - len(text))
        self._width = len(text)
        self._stream.write("\r" + text + pad)
        self._stream.flush()

    def finish(self) -> None:
        """Erase the bar so the summary starts on a clean line."""
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


def ms(ns: float) -> float:
    """Nanoseconds to milliseconds, rounded for reports (µs resolution)."""
    return round(ns / 1e6, 3)


def latency_summary(hist: Histogram) -> dict[str, float | int]:
    """The stable latency keys of every JSON report (milliseconds)."""
    return {
        "count": hist.count,
        "p50_ms": ms(hist.percentile(50)),
        "p99_ms": ms(hist.percentile(99)),
        "p999_ms": ms(hist.percentile(99.9)),
        "max_ms": ms(hist.max),
        "mean_ms": ms(hist.mean()),
    }


def op_summary(count: int, seconds: float, hist: Histogram) -> dict[str, Any]:
    """One operation's count, rate and latency, as every tool's JSON report has it."""
    return {"count": count, "ops_per_s": rate(count, seconds), "latency": latency_summary(hist)}


def rate(count: int, seconds: float) -> float:
    """Operations per second, 0.0 for an empty interval; rounded to 0.1."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


def human(value: float) -> str:
    """Short number for tables: 1234567 -> 1.23M, 15320 -> 15.3k."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def latency_rows(ops: dict[str, dict[str, Any]]) -> list[list[object]]:
    """Rows of the usual per-op-type table from the ``ops`` part of a report."""
    rows: list[list[object]] = []
    for name, op in ops.items():
        lat = op.get("latency", {})
        rows.append(
            [
                name,
                op["count"],
                human(op["ops_per_s"]),
                lat.get("p50_ms", "-"),
                lat.get("p99_ms", "-"),
                lat.get("p999_ms", "-"),
                lat.get("max_ms", "-"),
            ]
        )
    return rows


LATENCY_HEADERS = ("op", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms")


CHECK_FIELDS = (
    "expected",
    "received",
    "queued",
    "missing",
    "duplicated",
    "foreign",
    "not_stored",
    "left_in_queue",
)


def check_text(check: dict[str, Any]) -> str:
    """One line describing the exactly-once / lost-item verdict."""
    if not check.get("performed"):
        return f"exactly-once check skipped: {check.get('note', '')}".rstrip()
    verdict = "OK" if check.get("ok") else "FAILED"
    if "expected" not in check:
        return f"check {verdict}: {check.get('note', '')}".rstrip()
    fields = ", ".join(f"{k} {check[k]}" for k in CHECK_FIELDS if k in check)
    note = f" ({check['note']})" if check.get("note") else ""
    return f"exactly-once check {verdict}: {fields}{note}"


def emit(report: dict[str, Any], as_json: bool, text: str, stream: TextIO = sys.stdout) -> None:
    """Print the report: one JSON object (sorted keys, one line) or the human summary."""
    if as_json:
        stream.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        stream.write(text.rstrip() + "\n")
    stream.flush()
