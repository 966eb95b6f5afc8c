"""``kestrelpy top`` without a terminal: stats into rows, rates, sorting, keys and the screen.

Everything here is a pure function over plain data (kestrelpy/top.py keeps curses, clocks
and sockets out of them). The parser is checked against what the server's own report
writes, so a stat renamed in kestrelpy/stats.py breaks this file, not only the screen.
"""

from __future__ import annotations

import curses
import time
from collections.abc import Callable

import pytest
from conftest import DEFAULT_CONFIG, HARNESS_EPOCH_S, Harness

from kestrelpy.stats import server_report
from kestrelpy.top import (
    COLUMNS,
    QueueRow,
    Snapshot,
    ViewState,
    apply_key,
    format_bytes,
    format_count,
    format_duration,
    format_rate,
    header_line,
    parse_queues,
    screen_lines,
    sort_rows,
    table_lines,
    totals,
    with_rates,
)

MakeHarness = Callable[..., Harness]
SERVER = "127.0.0.1:22133"
AT = time.gmtime(0)  # the header clock reads 00:00:00


def column(title: str) -> int:
    return [col.title for col in COLUMNS].index(title)


def snapshot(rows: list[QueueRow], **stats: str) -> Snapshot:
    return Snapshot(stats, tuple(rows), AT)


# -- stats into rows ------------------------------------------------------------------------


def test_rows_read_what_the_server_reports_even_for_names_with_underscores(
    kp: MakeHarness,
) -> None:
    # Names that end like stats (``_total``, ``_items``, ``_logsize``), and a fanout parent
    # (it reports ``children``, as aliases do) beside a queue named like its alias stats
    # would be (``jobs_high`` + ``_put_items``): a parser that split keys at ``_`` would
    # get each one wrong.
    h = kp(DEFAULT_CONFIG + '[aliases."fan"]\ndestination_queues = ["b_total", "x_items"]\n')
    now_ms = HARNESS_EPOCH_S * 1000
    for name, n in (("jobs_high", 3), ("b_total", 1), ("x_items", 2), ("foo_logsize", 1)):
        for _ in range(n):
            h.collection.put(name, 0, 0, b"abcd", now_ms)
    h.collection.put("fan", 0, 0, b"xy", now_ms)
    h.collection.get_or_create("jobs_high+audit")
    h.collection.get_or_create("jobs_high_put")
    report = server_report(h.ctx.stats, h.collection, now_ms + 2500)
    stats = {key: str(value) for key, value in report}
    assert "queue_jobs_high_children" in stats and "queue_jobs_high_put_items" in stats

    rows = {row.name: row for row in parse_queues(stats)}

    assert set(rows) == {
        "jobs_high",
        "jobs_high+audit",
        "jobs_high_put",
        "b_total",
        "x_items",
        "foo_logsize",
        "fan",
    }
    assert rows["jobs_high"] == QueueRow("jobs_high", 3, 12, 2500, 0, 0, 3)
    assert rows["b_total"] == QueueRow("b_total", 2, 6, 2500, 0, 0, 2)
    assert (rows["x_items"].items, rows["foo_logsize"].items, rows["jobs_high_put"].items) == (
        3,
        1,
        0,
    )
    assert rows["fan"] == QueueRow("fan", total_items=1, alias=True)


def test_an_alias_whose_keys_are_a_queues_shows_as_the_queue() -> None:
    # Alias ``a`` and queue ``a_put`` both write ``queue_a_put_items``: the reply cannot
    # say which is which, so the queue (which has every other stat) wins.
    stats = {
        "queue_a_put_logsize": "0",
        "queue_a_put_items": "4",
        "queue_a_put_bytes": "8",
        "queue_a_children": "x",
    }
    assert parse_queues(stats) == [QueueRow("a_put", items=4, bytes=8)]


def test_missing_and_unreadable_values_read_as_zero_or_unknown() -> None:
    stats = {"queue_q_logsize": "0", "queue_q_items": "many", "queue_q_bytes": "7"}
    assert parse_queues(stats) == [QueueRow("q", items=0, bytes=7, oldest_ms=None)]
    assert parse_queues({"uptime": "3", "curr_items": "0"}) == []


def test_a_server_without_oldest_item_age_ms_gives_age_msec() -> None:
    stats = {"queue_q_logsize": "0", "queue_q_items": "1", "queue_q_age_msec": "40"}
    assert parse_queues(stats)[0].oldest_ms == 40


# -- rates ----------------------------------------------------------------------------------


def test_rate_is_sets_per_second_between_two_refreshes() -> None:
    before = totals([QueueRow("a", total_items=100), QueueRow("b", total_items=5)])
    now = [QueueRow("a", total_items=130), QueueRow("b", total_items=5)]
    assert [r.sets_per_s for r in with_rates(now, before, 2.0)] == [15.0, 0.0]


def test_rate_is_unknown_when_it_would_be_made_up() -> None:
    before = {"gone_and_back": 50, "a": 1}
    now = [QueueRow("gone_and_back", total_items=3), QueueRow("new", total_items=9)]
    assert [r.sets_per_s for r in with_rates(now, before, 1.0)] == [None, None]
    assert with_rates([QueueRow("a", total_items=2)], before, 0.0)[0].sets_per_s is None
    assert with_rates([QueueRow("a", total_items=2)], None, 1.0)[0].sets_per_s is None


# -- sorting --------------------------------------------------------------------------------

ROWS = [
    QueueRow("c", items=5, bytes=10, total_items=9, sets_per_s=None),
    QueueRow("a", items=5, bytes=30, total_items=7, sets_per_s=2.0),
    QueueRow("b", items=9, bytes=20, total_items=8, sets_per_s=0.5),
    QueueRow("al", total_items=50, alias=True, sets_per_s=4.0),
]


def names(rows: list[QueueRow]) -> list[str]:
    return [row.name for row in rows]


def test_default_sort_is_items_biggest_first_ties_by_name_then_aliases() -> None:
    state = ViewState()
    assert COLUMNS[state.column].title == "ITEMS" and state.descending
    assert names(sort_rows(ROWS, state.column, state.descending)) == ["b", "a", "c", "al"]


def test_reversing_keeps_ties_in_name_order() -> None:
    assert names(sort_rows(ROWS, column("ITEMS"), False)) == ["al", "a", "c", "b"]


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("QUEUE", ["a", "al", "b", "c"]),
        ("BYTES", ["a", "b", "c", "al"]),
        ("TOTAL", ["al", "c", "b", "a"]),
        ("SETS/S", ["al", "a", "b", "c"]),  # an unknown rate sorts below zero
    ],
)
def test_each_column_sorts_in_its_natural_direction(title: str, expected: list[str]) -> None:
    i = column(title)
    assert names(sort_rows(ROWS, i, COLUMNS[i].descending)) == expected


# -- keys -----------------------------------------------------------------------------------


def test_s_cycles_every_column_in_its_natural_direction_and_back() -> None:
    state = ViewState()
    seen = []
    for _ in COLUMNS:
        next_state = apply_key(state, ord("s"), page=10)
        assert next_state is not None
        state = next_state
        seen.append((COLUMNS[state.column].title, state.descending))
    assert seen[-1] == ("ITEMS", True)
    assert ("QUEUE", False) in seen and ("BYTES", True) in seen
    assert {title for title, _ in seen} == {col.title for col in COLUMNS}


def test_r_reverses_and_q_quits() -> None:
    reversed_state = apply_key(ViewState(), ord("r"), page=10)
    assert reversed_state == ViewState(descending=False)
    assert apply_key(ViewState(), ord("q"), page=10) is None
    assert apply_key(ViewState(), ord("Q"), page=10) is None
    assert apply_key(ViewState(scroll=3), ord("x"), page=10) == ViewState(scroll=3)


@pytest.mark.parametrize(
    ("key", "scroll"),
    [
        (curses.KEY_DOWN, 6),
        (curses.KEY_UP, 4),
        (curses.KEY_NPAGE, 15),
        (curses.KEY_PPAGE, 0),
        (curses.KEY_HOME, 0),
        (curses.KEY_END, 90),  # 100 rows, 10 a page: the last full page starts at 90
    ],
)
def test_scroll_keys_move_within_the_rows(key: int, scroll: int) -> None:
    state = apply_key(ViewState(scroll=5), key, page=10)
    assert state is not None
    assert state.clamped(total=100, page=10).scroll == scroll


def test_scroll_is_pulled_back_when_rows_go_away() -> None:
    assert ViewState(scroll=50).clamped(total=12, page=10).scroll == 2
    assert ViewState(scroll=50).clamped(total=3, page=10).scroll == 0
    assert ViewState(scroll=4).clamped(total=3, page=0).scroll == 3


# -- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "width", "text"),
    [
        (0, 6, "0"),
        (999999, 6, "999999"),
        (1234567, 6, "1235K"),
        (1234567, 4, "1.2M"),
        (987654321, 4, "988M"),
    ],
)
def test_counts_are_exact_when_they_fit(n: int, width: int, text: str) -> None:
    assert format_count(n, width) == text


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0B"), (1023, "1023B"), (1536, "1.5K"), (200 * 2**20, "200M")]
)
def test_bytes_in_binary_units(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.35, "0.3s"),
        (42, "42s"),
        (307, "5m07s"),
        (3 * 3600 + 125, "3h02m"),
        (86400 * 12, "12d00h"),
    ],
)
def test_durations_are_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rates_show_unknown_as_a_dash() -> None:
    assert [format_rate(r) for r in (None, 0.0, 12.34, 1234.5)] == ["-", "0.0", "12.3", "1234"]


def test_cells_line_up_under_their_titles_and_long_names_end_in_a_tilde() -> None:
    rows = [QueueRow("q" * 40, items=3, bytes=2048, oldest_ms=1500), QueueRow("al", alias=True)]
    title, long_row, alias_row = table_lines(rows, column("ITEMS"), True, width=90)
    assert title.split() == [
        "QUEUE",
        "vITEMS",
        "BYTES",
        "OLDEST",
        "OPEN",
        "WAIT",
        "TOTAL",
        "SETS/S",
    ]
    assert long_row.split()[1:] == ["3", "2.0K", "1.5s", "0", "0", "0", "-"]
    assert long_row.split()[0].endswith("~")
    assert title.index("vITEMS") + len("vITEMS") == long_row.index(" 3 ") + 2
    assert alias_row.split() == ["al", "(alias)", "-", "-", "-", "-", "-", "0", "-"]
    assert all(len(line) <= 90 for line in (title, long_row, alias_row))


def test_an_empty_queue_has_no_oldest_item() -> None:
    (_, row) = table_lines([QueueRow("q", oldest_ms=9000)], 0, False, width=100)
    assert row.split()[3] == "-"


def test_header_names_the_server_and_says_when_it_is_lost() -> None:
    snap = snapshot(
        [QueueRow("a"), QueueRow("al", alias=True)],
        version="kestrelpy-0.1.0",
        uptime="3700",
        curr_connections="4",
        curr_items="12",
    )
    assert header_line(SERVER, snap, None) == (
        "127.0.0.1:22133  kestrelpy-0.1.0  up 1h01m  conns 4  items 12  queues 1  00:00:00"
    )
    with_status = snapshot([], status="readonly")
    assert "  status readonly  " in header_line(SERVER, with_status, None)
    lost = header_line(SERVER, snap, "cannot reach 127.0.0.1:22133: refused")
    assert lost.startswith("127.0.0.1:22133  connection lost, retrying  kestrelpy-0.1.0")
    assert lost.endswith("(cannot reach 127.0.0.1:22133: refused)")


# -- the whole screen ---------------------------------------------------------------------


MANY = [QueueRow(f"queue_{i:03d}", items=i, total_items=i) for i in range(40)]


@pytest.mark.parametrize("width", [0, 1, 2, 10, 30, 79, 80, 200])
@pytest.mark.parametrize("height", [0, 1, 2, 3, 4, 30])
def test_any_terminal_size_gets_lines_that_fit(width: int, height: int) -> None:
    lines = screen_lines(SERVER, snapshot(MANY), "lost", ViewState(), width, height)
    assert len(lines) <= height
    assert all(len(line) <= max(width - 1, 0) for line in lines)
    if height >= 3:
        assert len(lines) == height


def test_the_page_shows_rows_from_the_scroll_position_and_the_footer_says_where() -> None:
    state = ViewState(scroll=5).clamped(total=len(MANY), page=10)
    lines = screen_lines(SERVER, snapshot(MANY), None, state, width=120, height=13)
    assert lines[1].split()[0] == "QUEUE"
    assert [line.split()[0] for line in lines[2:12]] == [
        f"queue_{i:03d}" for i in range(34, 24, -1)
    ]
    assert lines[-1].startswith("sort items descending  queues 6-15 of 40  s sort  r reverse")


def test_the_name_column_keeps_its_width_while_scrolling() -> None:
    rows = [*MANY, QueueRow("a_long_queue_name_at_the_end_of_the_list")]
    top, bottom = (
        screen_lines(SERVER, snapshot(rows), None, ViewState(scroll=scroll), 150, 5)
        for scroll in (0, 39)
    )
    assert top[1] == bottom[1]  # titles, and so every column, where they were


def test_a_short_list_leaves_blank_lines_above_the_footer() -> None:
    lines = screen_lines(SERVER, snapshot(MANY[:2]), None, ViewState(), width=120, height=8)
    assert lines[4:7] == ["", "", ""]
    assert "queues 1-2 of 2" in lines[7]
