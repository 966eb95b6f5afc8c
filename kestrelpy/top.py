"""``kestrelpy top``: a live full-screen view of one running server's queues, for a shell.

Reads the memcache ``stats`` command (:func:`kestrelpy.admin.fetch_stats`), so it works with
the HTTP listener off and against anything that answers Kestrel's ``stats``. Everything
between the reply and the screen is a pure function over plain data, unit-tested without a
terminal: :func:`parse_queues` (``queue_<name>_<stat>`` keys into rows), :func:`with_rates`,
:func:`sort_rows`, :func:`apply_key` and :func:`screen_lines`. Only :func:`run_top` and the
functions it calls touch curses, the clocks and the socket.

Threads: a daemon poller thread fetches ``stats`` every ``interval_s`` and hands the newest
outcome to the curses (main) thread, so a server that hangs or goes away never makes the
keys unresponsive: ``q`` quits at once whatever the network does.
"""

from __future__ import annotations

import contextlib
import curses
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kestrelpy.admin import fetch_stats
from kestrelpy.errors import KestrelpyError

MIN_INTERVAL_S = 0.1  # below this the view cannot redraw faster, it only loads the server
_KEY_POLL_MS = 100  # how long the main thread waits for a key before looking for new stats

# The per-queue stats this view reads (names from kestrelpy.stats.queue_report, Kestrel's).
# ``logsize`` names queues: no other stat name ends in ``_logsize``, so stripping it from a
# key leaves the whole queue name even when the name itself contains ``_``.
_QUEUE_ANCHOR = "_logsize"
_ALIAS_ANCHOR = "_put_items"  # an alias reports put_items, put_bytes and children instead


@dataclass(frozen=True)
class QueueRow:
    """One queue (or alias) as the table shows it.

    Counts are Kestrel's: ``items`` waiting, their payload ``bytes``, ``total_items`` ever
    added. ``oldest_ms`` is the age of the oldest waiting item (None when the server does
    not say). For an alias only ``total_items`` (its put_items) means anything.
    ``sets_per_s`` is filled in by :func:`with_rates` (None until two refreshes are seen).
    """

    name: str
    items: int = 0
    bytes: int = 0
    oldest_ms: int | None = None
    open_transactions: int = 0
    waiters: int = 0
    total_items: int = 0
    alias: bool = False
    sets_per_s: float | None = None


def parse_queues(stats: Mapping[str, str]) -> list[QueueRow]:
    """Rows for every queue and alias in a ``stats`` reply, in the reply's order.

    Names are found through one stat whose suffix no other stat shares (see _QUEUE_ANCHOR),
    then each known stat is looked up by its full key: no guessing where a name that
    contains ``_`` ends. Values that are not integers read as 0 rather than failing the
    whole view. An alias whose keys collide with a queue's (alias ``a`` and queue ``a_put``
    both own ``queue_a_put_items``) is shown as the queue: the reply cannot tell them apart.
    """
    rows: list[QueueRow] = []
    queues: set[str] = set()
    for key in stats:
        if key.startswith("queue_") and key.endswith(_QUEUE_ANCHOR):
            name = key[len("queue_") : -len(_QUEUE_ANCHOR)]
            queues.add(name)
            rows.append(_queue_row(stats, name))
    for key in stats:
        if key.startswith("queue_") and key.endswith(_ALIAS_ANCHOR):
            name = key[len("queue_") : -len(_ALIAS_ANCHOR)]
            if name + "_put" in queues or f"queue_{name}_children" not in stats:
                continue
            rows.append(QueueRow(name, total_items=_int(stats, key), alias=True))
    return rows


def _queue_row(stats: Mapping[str, str], name: str) -> QueueRow:
    prefix = f"queue_{name}_"
    oldest_key = next(
        (prefix + s for s in ("oldest_item_age_ms", "age_msec") if prefix + s in stats), None
    )
    return QueueRow(
        name,
        items=_int(stats, prefix + "items"),
        bytes=_int(stats, prefix + "bytes"),
        oldest_ms=None if oldest_key is None else _int(stats, oldest_key),
        open_transactions=_int(stats, prefix + "open_transactions"),
        waiters=_int(stats, prefix + "waiters"),
        total_items=_int(stats, prefix + "total_items"),
    )


def _int(stats: Mapping[str, str], key: str) -> int:
    try:
        return int(stats.get(key, "0"))
    except ValueError:
        return 0


def with_rates(
    rows: Sequence[QueueRow], previous_totals: Mapping[str, int] | None, elapsed_s: float
) -> list[QueueRow]:
    """``rows`` with ``sets_per_s``: the growth of ``total_items`` since the last refresh.

    ``previous_totals`` maps names to ``total_items`` one refresh ago, ``elapsed_s`` seconds
    earlier. The rate stays None for a queue not seen last time, when no time has passed, and
    when the counter went down (queue deleted and re-created, server restarted): a number
    there would be made up.
    """
    if previous_totals is None or elapsed_s <= 0:
        return list(rows)
    rated = []
    for row in rows:
        before = previous_totals.get(row.name)
        rate = None
        if before is not None and row.total_items >= before:
            rate = (row.total_items - before) / elapsed_s
        rated.append(dataclasses.replace(row, sets_per_s=rate))
    return rated


def totals(rows: Sequence[QueueRow]) -> dict[str, int]:
    """What :func:`with_rates` needs from the refresh before: ``total_items`` by name."""
    return {row.name: row.total_items for row in rows}


# -- columns ------------------------------------------------------------------------------


def format_count(n: int, width: int) -> str:
    """``n`` in at most ``width`` characters: exact when it fits, else 12.3K / 4.5M / 6.7G."""
    text = str(n)
    if len(text) <= width:
        return text
    value = float(n)
    for unit in "KMGTPE":
        value /= 1000
        text = f"{value:.1f}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
        if len(text) <= width:
            return text
    return text[:width]


def format_bytes(n: int) -> str:
    """Binary units, the way ``ls -h`` shows sizes: 512B, 1.5K, 20M, 3.1G."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in "KMGTPE":
        value /= 1024
        if value < 1024 or unit == "E":
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    """A short age: 0.4s, 42s, 5m07s, 3h02m, 12d05h (two units at most, like uptime)."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def format_rate(rate: float | None) -> str:
    """Sets per second: ``-`` until known, one decimal below 100, whole numbers above."""
    if rate is None:
        return "-"
    return f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


_DASH = "-"  # a cell that does not apply (alias) or is not known


@dataclass(frozen=True)
class Column:
    """One table column: its title, width, sort key and cell text.

    ``key`` gives the number the column sorts on (unknown and not-applicable cells sort as
    -1, below every real value); ``descending`` is the direction ``s`` starts it in: biggest
    first for numbers (the queue in trouble is at the top), A to Z for names.
    """

    title: str
    width: int
    key: Callable[[QueueRow], float | str]
    text: Callable[[QueueRow], str]
    descending: bool = True


def _queue_only(
    get: Callable[[QueueRow], int | None], show: Callable[[int], str]
) -> tuple[Callable[[QueueRow], float], Callable[[QueueRow], str]]:
    """Sort key and cell text for a stat only queues have (an alias shows ``-``)."""

    def key(row: QueueRow) -> float:
        value = None if row.alias else get(row)
        return -1 if value is None else value

    def text(row: QueueRow) -> str:
        value = None if row.alias else get(row)
        return _DASH if value is None else show(value)

    return key, text


def _oldest(row: QueueRow) -> int | None:
    return row.oldest_ms if row.items else None  # an empty queue has no oldest item


NAME_COLUMN = Column(
    "QUEUE",
    0,  # the name column takes the width the others leave (see _name_width)
    key=lambda row: row.name,
    text=lambda row: row.name + (" (alias)" if row.alias else ""),
    descending=False,
)
COLUMNS: tuple[Column, ...] = (
    NAME_COLUMN,
    Column("ITEMS", 10, *_queue_only(lambda r: r.items, lambda n: format_count(n, 10))),
    Column("BYTES", 8, *_queue_only(lambda r: r.bytes, format_bytes)),
    Column("OLDEST", 8, *_queue_only(_oldest, lambda ms: format_duration(ms / 1000))),
    Column("OPEN", 6, *_queue_only(lambda r: r.open_transactions, lambda n: format_count(n, 6))),
    Column("WAIT", 6, *_queue_only(lambda r: r.waiters, lambda n: format_count(n, 6))),
    Column(
        "TOTAL",
        12,
        key=lambda row: row.total_items,
        text=lambda row: format_count(row.total_items, 12),
    ),
    Column(
        "SETS/S",
        8,
        key=lambda row: -1 if row.sets_per_s is None else row.sets_per_s,
        text=lambda row: format_rate(row.sets_per_s),
    ),
)
DEFAULT_SORT = 1  # ITEMS, biggest first
_MIN_NAME_WIDTH = 16  # names matter most: numbers on the right are cut first


def sort_rows(rows: Sequence[QueueRow], column: int, descending: bool) -> list[QueueRow]:
    """Rows ordered by ``COLUMNS[column]``; ties stay in name order whatever the direction."""
    by_name = sorted(rows, key=lambda row: row.name)
    return sorted(by_name, key=COLUMNS[column].key, reverse=descending)


def table_lines(
    rows: Sequence[QueueRow],
    column: int,
    descending: bool,
    width: int,
    all_rows: Sequence[QueueRow] | None = None,
) -> list[str]:
    """The title line, then one line per row (already sorted), each at most ``width`` long.

    The sorted column's title carries ``v`` (descending) or ``^``. Numbers are right-aligned
    under their titles; a name longer than its column ends in ``~``. The name column is
    sized on ``all_rows`` (default ``rows``), so it does not jump as a page scrolls.
    """
    name_width = _name_width(rows if all_rows is None else all_rows, width)
    titles = []
    for i, col in enumerate(COLUMNS):
        title = ("v" if descending else "^") + col.title if i == column else col.title
        titles.append(title)
    lines = [_join(titles, name_width)]
    lines += [_join([col.text(row) for col in COLUMNS], name_width) for row in rows]
    return [clip(line, width) for line in lines]


def _name_width(rows: Sequence[QueueRow], width: int) -> int:
    """As wide as the longest name, within what the numeric columns leave free."""
    numbers = sum(col.width + 1 for col in COLUMNS[1:])
    longest = max((len(NAME_COLUMN.text(row)) for row in rows), default=0)
    wanted = max(longest, len(NAME_COLUMN.title) + 1)
    return max(_MIN_NAME_WIDTH, min(wanted, width - numbers))


def _join(cells: Sequence[str], name_width: int) -> str:
    name = cells[0]
    if len(name) > name_width:
        name = name[: name_width - 1] + "~"
    parts = [name.ljust(name_width)]
    parts += [cell.rjust(col.width) for cell, col in zip(cells[1:], COLUMNS[1:], strict=True)]
    return " ".join(parts)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters (none for a zero or negative width)."""
    return text[: max(width, 0)]


# -- header and footer --------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One ``stats`` reply as the screen shows it: rows with rates, and when it was taken."""

    stats: Mapping[str, str]
    rows: tuple[QueueRow, ...]
    taken_at: time.struct_time  # local time of the refresh, for the header clock


def header_line(server: str, snapshot: Snapshot, lost: str | None) -> str:
    """Server, version, uptime, status (when the server reports one), connections, items
    waiting in all queues, and the time of the last good refresh. While the server cannot
    be reached, ``connection lost, retrying`` comes right after its address, where a narrow
    terminal still shows it, and the reason ends the line; the numbers are the last ones
    read."""
    stats = snapshot.stats
    parts = [server]
    if lost is not None:
        parts.append("connection lost, retrying")
    parts.append(stats.get("version", "?"))
    if "uptime" in stats:
        parts.append("up " + format_duration(_int(stats, "uptime")))
    if "status" in stats:
        parts.append("status " + stats["status"])
    parts.append(f"conns {stats.get('curr_connections', '?')}")
    parts.append(f"items {stats.get('curr_items', '?')}")
    parts.append(f"queues {sum(not row.alias for row in snapshot.rows)}")
    parts.append(time.strftime("%H:%M:%S", snapshot.taken_at))
    if lost is not None:
        parts.append(f"({lost})")
    return "  ".join(parts)


def footer_line(column: int, descending: bool, first: int, shown: int, total: int) -> str:
    """Where the sort and the scroll stand, and the keys."""
    direction = "descending" if descending else "ascending"
    where = f"{first + 1}-{first + shown} of {total}" if shown else f"0 of {total}"
    return (
        f"sort {COLUMNS[column].title.lower()} {direction}  queues {where}  "
        "s sort  r reverse  arrows/PgUp/PgDn scroll  q quit"
    )


# -- keys and the whole screen ----------------------------------------------------------


@dataclass(frozen=True)
class ViewState:
    """What the keys change: the sort column and direction, and the first row shown."""

    column: int = DEFAULT_SORT
    descending: bool = COLUMNS[DEFAULT_SORT].descending
    scroll: int = 0

    def clamped(self, total: int, page: int) -> ViewState:
        """Scroll kept where rows exist: never past the last full page, never negative."""
        scroll = min(self.scroll, max(total - page, 0))
        return dataclasses.replace(self, scroll=max(scroll, 0))


QUIT_KEYS = frozenset({ord("q"), ord("Q")})


def apply_key(state: ViewState, key: int, page: int) -> ViewState | None:
    """The state after ``key`` (a curses key code); None means quit.

    ``s`` moves to the next column in its natural direction, ``r`` flips the direction,
    arrows move one row, PageUp/PageDown one ``page`` of rows, Home/End to the ends.
    Scrolling may overshoot here; :meth:`ViewState.clamped` pulls it back when drawn, when
    the row count is known. Other keys change nothing.
    """
    if key in QUIT_KEYS:
        return None
    if key == ord("s"):
        column = (state.column + 1) % len(COLUMNS)
        return ViewState(column, COLUMNS[column].descending, state.scroll)
    if key == ord("r"):
        return dataclasses.replace(state, descending=not state.descending)
    moves = {
        curses.KEY_UP: -1,
        curses.KEY_DOWN: 1,
        curses.KEY_PPAGE: -max(page, 1),
        curses.KEY_NPAGE: max(page, 1),
        curses.KEY_HOME: -sys.maxsize,
        curses.KEY_END: sys.maxsize,
    }
    if key in moves:
        return dataclasses.replace(state, scroll=max(state.scroll + moves[key], 0))
    return state


CHROME_LINES = 3  # header, column titles, footer


def page_rows(height: int) -> int:
    """How many queue rows fit between the titles and the footer."""
    return max(height - CHROME_LINES, 0)


def screen_lines(
    server: str, snapshot: Snapshot, lost: str | None, state: ViewState, width: int, height: int
) -> list[str]:
    """Every line of the screen, top to bottom: at most ``height`` lines, each at most
    ``width - 1`` characters (curses raises on a write into the bottom-right cell, and a
    full-width line wraps), so any terminal size draws without error; a tiny one shows the
    header, then the titles, then as much as fits. From CHROME_LINES lines up there are
    exactly ``height`` lines, the footer last. ``state`` must already be clamped."""
    usable = width - 1
    sorted_rows = sort_rows(snapshot.rows, state.column, state.descending)
    page = page_rows(height)
    shown = sorted_rows[state.scroll : state.scroll + page]
    table = table_lines(shown, state.column, state.descending, usable, sorted_rows)
    footer = footer_line(state.column, state.descending, state.scroll, len(shown), len(sorted_rows))
    lines = [clip(header_line(server, snapshot, lost), usable), *table]
    if height >= CHROME_LINES:  # the footer sits on the last line, below any blank ones
        lines += [""] * (height - 1 - len(lines))
        lines.append(clip(footer, usable))
    return lines[: max(height, 0)]


# -- the terminal -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    stats: dict[str, str]
    monotonic_s: float  # for rates: immune to wall-clock steps
    taken_at: time.struct_time


@dataclass(frozen=True)
class _Lost:
    why: str


class _Poller:
    """Fetches ``stats`` every ``interval_s`` on a daemon thread; the newest outcome waits
    in one slot for the main thread (older ones are dropped: only the latest is drawn).

    A fetch that fails with KestrelpyError (refused, reset, timed out) is a :class:`_Lost`
    outcome and the next try comes one interval later, so a dead server is retried at the
    refresh pace, not in a tight loop. Any other exception ends the thread and is raised
    again in the main thread by :meth:`take`, not swallowed.
    """

    def __init__(self, server: str, interval_s: float) -> None:
        self._server = server
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._outcome: _Fetched | _Lost | None = None
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kestrelpy-top-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; not waited for (a fetch may block up to its timeout, and
        the thread is a daemon, so exiting the process does not wait either)."""
        self._stop.set()

    def take(self) -> _Fetched | _Lost | None:
        """The newest outcome since the last call, or None when nothing new arrived."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            outcome, self._outcome = self._outcome, None
        return outcome

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval_s):
                outcome = _fetch(self._server)
                with self._lock:
                    self._outcome = outcome
        except BaseException as err:
            with self._lock:
                self._failure = err


def _fetch(server: str) -> _Fetched | _Lost:
    try:
        stats = fetch_stats(server)
    except KestrelpyError as err:
        return _Lost(str(err))
    return _Fetched(stats, time.monotonic(), time.localtime())


def run_top(server: str, *, interval_s: float) -> int:
    """Show ``server``'s queues until ``q``; 0 on ``q``.

    Raises KestrelpyError (one line, exit 2 through the CLI) before the screen is taken
    over: for a bad interval, a bad ``server`` or one that cannot be reached now, and when
    stdin/stdout are not a terminal curses can drive.
    """
    if not (math.isfinite(interval_s) and interval_s >= MIN_INTERVAL_S):
        raise KestrelpyError(f"--interval {interval_s}: expected at least {MIN_INTERVAL_S}s")
    first = _fetch(server)
    if isinstance(first, _Lost):
        raise KestrelpyError(first.why)
    _check_terminal()
    poller = _Poller(server, interval_s)
    poller.start()
    try:
        code: int = curses.wrapper(_show, server, first, poller)
    finally:
        poller.stop()
    return code


def _check_terminal() -> None:
    """Fail in one line, before curses half-initialises, where it could not run."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise KestrelpyError("top needs a terminal; for a one-off report use `kestrelpy stats`")
    try:
        curses.setupterm(fd=sys.stdout.fileno())
    except curses.error as err:
        raise KestrelpyError(f"top cannot drive this terminal: {err}") from err


def _show(screen: curses.window, server: str, first: _Fetched, poller: _Poller) -> int:
    """The main loop (main thread): take new stats, draw, wait up to _KEY_POLL_MS for a key.

    Redraws every turn: curses sends only what changed, and a resize is then picked up
    without handling KEY_RESIZE specially.
    """
    _hide_cursor()
    screen.timeout(_KEY_POLL_MS)
    latest = first
    snapshot = Snapshot(first.stats, tuple(parse_queues(first.stats)), first.taken_at)
    lost: str | None = None
    state = ViewState()
    while True:
        outcome = poller.take()
        if isinstance(outcome, _Lost):
            lost = outcome.why
        elif outcome is not None:
            rows = with_rates(
                parse_queues(outcome.stats),
                totals(snapshot.rows),
                outcome.monotonic_s - latest.monotonic_s,
            )
            snapshot = Snapshot(outcome.stats, tuple(rows), outcome.taken_at)
            latest, lost = outcome, None
        height, width = screen.getmaxyx()
        state = state.clamped(len(snapshot.rows), page_rows(height))
        _draw(screen, screen_lines(server, snapshot, lost, state, width, height))
        key = screen.getch()
        if key != -1:
            next_state = apply_key(state, key, page_rows(height))
            if next_state is None:
                return 0
            state = next_state


def _draw(screen: curses.window, lines: Sequence[str]) -> None:
    """Write the lines; the titles (line 1) and the footer (last, see screen_lines) in
    reverse video.

    screen_lines already fits them to the window; curses.error is still ignored per line
    because the window may shrink between getmaxyx and the write (a resize mid-frame), and
    the next frame redraws at the new size anyway.
    """
    highlighted = {1, len(lines) - 1} if len(lines) >= CHROME_LINES else {1}
    screen.erase()
    for y, line in enumerate(lines):
        attr = curses.A_REVERSE if y in highlighted else curses.A_NORMAL
        with contextlib.suppress(curses.error):
            screen.addstr(y, 0, line, attr)
    screen.refresh()


def _hide_cursor() -> None:
    with contextlib.suppress(curses.error):  # some terminals cannot; the view is the same
        curses.curs_set(0)
