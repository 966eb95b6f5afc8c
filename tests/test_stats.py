"""The stats reports are functions of the counters and of the time they are given."""

from __future__ import annotations

from collections.abc import Callable

from conftest import HARNESS_EPOCH_S, Harness

from kestrelpy.stats import dump_stats_lines, queue_report, server_report

MakeHarness = Callable[..., Harness]


def test_uptime_and_time_come_from_the_clock(kp: MakeHarness) -> None:
    h = kp()
    h.clock.advance(42.5)
    now_ms = round(h.clock.seconds() * 1000)
    report = dict(server_report(h.ctx.stats, h.collection, now_ms))
    assert report["uptime"] == 42
    assert report["time"] == HARNESS_EPOCH_S + 42


def test_queue_report_reads_the_queue_counters(kp: MakeHarness) -> None:
    h = kp()
    now_ms = HARNESS_EPOCH_S * 1000
    h.collection.put("q", 0, 0, b"abc", now_ms)
    h.collection.put("q", 0, 0, b"de", now_ms)
    queue = h.collection.get("q")
    assert queue is not None
    report = dict(queue_report(h.collection, queue, now_ms + 1500))
    assert (report["items"], report["bytes"], report["total_items"]) == (2, 5, 2)
    assert report["oldest_item_age_ms"] == report["age_msec"] == 1500
    server = dict(server_report(h.ctx.stats, h.collection, now_ms))
    assert (server["curr_items"], server["queue_q_items"], server["queue_q_bytes"]) == (2, 2, 5)


def test_dump_stats_of_an_unknown_queue_is_one_blank_line(kp: MakeHarness) -> None:
    h = kp()
    assert dump_stats_lines(h.collection, "nope", 0) == [""]
    h.collection.get_or_create("q")
    assert "items=0" in dump_stats_lines(h.collection, "q", 0)
