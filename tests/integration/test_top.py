"""``kestrelpy top`` on a real terminal (tmux) against a real server.

Contract (issue 15, item 5): a live, sorted, refreshing view of the queues that quits on
``q`` with exit status 0; ``s`` changes the sort; a server that goes away is said in the
header while the view keeps running; an unreachable server at start is one stderr line and
exit 2. tmux gives the program a real pseudo-terminal and lets the test read the screen
(``capture-pane``) and type (``send-keys``). A screen has no event to wait on, so every
wait is a bounded poll of capture-pane; every failure message shows the last screen.
tmux is a test dependency (.ci/system-deps installs it): missing, these tests fail.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import (
    HOST,
    ServerFactory,
    ServerProcess,
    assert_one_line_user_error,
    kestrelpy_command,
    run_kestrelpy,
    subprocess_env,
)

pytestmark = pytest.mark.timeout(90)

SCREEN_TIMEOUT_S = 15.0  # a cold CLI imports Twisted before it draws
POLL_S = 0.05
INTERVAL_S = 0.2  # top's refresh: short, so refreshes are seen quickly


class Terminal:
    """One program in a private tmux server (its own socket), on a ``width`` x ``height``
    terminal. When the program ends its exit status is written to a file (the pane's shell
    runs ``<program>; echo $? > file``), which is how the test learns it exited and how."""

    def __init__(self, argv: list[str], width: int = 120, height: int = 30) -> None:
        tmux = shutil.which("tmux")
        assert tmux, "tmux is not installed (make system-deps installs it)"
        # A short directory of our own: a unix socket path is limited to ~107 bytes, more
        # than pytest's tmp_path may leave for it.
        self._dir = Path(tempfile.mkdtemp(prefix="top-tmux-"))
        self._base = [tmux, "-f", "/dev/null", "-S", str(self._dir / "sock")]
        self.status_file = self._dir / "status"
        shell = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.status_file))}"
        self._tmux("new-session", "-d", "-x", str(width), "-y", str(height), shell)

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            [*self._base, *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"tmux {args[0]} failed: {result.stderr}"
        return result.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-x", str(width), "-y", str(height))

    def wait_for(self, what: str, predicate: Callable[[str], bool]) -> str:
        """Poll the screen until ``predicate(screen)``; the screen it held then."""
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while True:
            if self.status_file.exists():
                raise AssertionError(
                    f"program ended (status {self.status_file.read_text().strip()}) "
                    f"while waiting for {what}"
                )
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {SCREEN_TIMEOUT_S}s waiting for {what}; screen:\n{screen}"
                )
            time.sleep(POLL_S)

    def wait_exit(self) -> int:
        """The program's exit status, once it has ended."""
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while not (self.status_file.exists() and self.status_file.read_text().endswith("\n")):
            if time.monotonic() > deadline:
                raise AssertionError(f"program still running; screen:\n{self.screen()}")
            time.sleep(POLL_S)
        return int(self.status_file.read_text())

    def close(self) -> None:
        """Kill the tmux server (and so the program, if still running), remove the files.
        The server may already be gone: it exits by itself when its last pane ends."""
        subprocess.run([*self._base, "kill-server"], capture_output=True, timeout=10, check=False)
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    """Opens terminals running programs; all are killed at teardown, pass or fail."""
    opened: list[Terminal] = []

    def open_terminal(argv: list[str], width: int = 120, height: int = 30) -> Terminal:
        term = Terminal(argv, width, height)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def top_argv(srv: ServerProcess) -> list[str]:
    return [*kestrelpy_command(), "top", "--server", srv.address, "--interval", str(INTERVAL_S)]


def queue_rows(screen: str, names: set[str]) -> list[tuple[str, int]]:
    """(queue, items) for each screen line that is one of ``names``'s row, top to bottom."""
    rows = []
    for line in screen.splitlines():
        cells = line.split()
        if len(cells) > 1 and cells[0] in names and cells[1].isdigit():  # else: half drawn
            rows.append((cells[0], int(cells[1])))
    return rows


def fill(srv: ServerProcess, counts: dict[str, tuple[int, int]]) -> None:
    """``queue: (items, bytes per item)``, set over one connection."""
    with srv.connect() as conn:
        for queue, (items, size) in counts.items():
            for _ in range(items):
                assert conn.set(queue, b"x" * size) == b"STORED\r\n"


def order(screen: str) -> list[str]:
    return [name for name, _ in queue_rows(screen, NAMES)]


# Items and bytes rank the queues in different orders, so a sort change shows in the rows.
QUEUES = {"jobs_high": (3, 1), "mail": (2, 10), "b_total": (1, 100)}
NAMES = set(QUEUES)


def test_top_shows_the_queues_refreshes_sorts_and_quits_on_q(
    server: ServerProcess, terminal: Callable[..., Terminal]
) -> None:
    fill(server, QUEUES)
    term = terminal(top_argv(server))

    by_items = [("jobs_high", 3), ("mail", 2), ("b_total", 1)]
    screen = term.wait_for("the queues by items", lambda s: queue_rows(s, NAMES) == by_items)
    header = screen.splitlines()[0]
    assert header.startswith(server.address) and "items 6" in header, header
    assert "vITEMS" in screen.splitlines()[1]

    fill(server, {"b_total": (4, 100)})  # now 5: the refresh moves it to the top
    term.wait_for(
        "the refreshed count",
        lambda s: queue_rows(s, NAMES) == [("b_total", 5), ("jobs_high", 3), ("mail", 2)],
    )

    # Title and rows are waited for together: a capture may fall between their writes.
    term.keys("s")  # items -> bytes: b_total 500B, mail 20B, jobs_high 3B
    term.wait_for(
        "the sort on bytes",
        lambda s: "vBYTES" in s and order(s) == ["b_total", "mail", "jobs_high"],
    )
    term.keys("r")
    term.wait_for(
        "the reversed sort",
        lambda s: "^BYTES" in s and order(s) == ["jobs_high", "mail", "b_total"],
    )

    term.keys("q")
    assert term.wait_exit() == 0


def test_top_says_the_connection_is_lost_keeps_running_and_still_quits(
    server_factory: ServerFactory, terminal: Callable[..., Terminal]
) -> None:
    srv = server_factory()
    fill(srv, {"jobs": (2, 5)})
    term = terminal(top_argv(srv))
    term.wait_for("the queue", lambda s: queue_rows(s, {"jobs"}) == [("jobs", 2)])

    srv.stop()
    screen = term.wait_for("the lost connection", lambda s: "connection lost, retrying" in s)
    assert queue_rows(screen, {"jobs"}) == [("jobs", 2)], "the last numbers read stay shown"

    term.keys("q")
    assert term.wait_exit() == 0


def starts_with(prefix: str) -> Callable[[str], bool]:
    return lambda screen: screen.startswith(prefix)


def test_top_on_a_tiny_terminal_draws_what_fits_and_survives_resizes(
    server: ServerProcess, terminal: Callable[..., Terminal]
) -> None:
    fill(server, {"jobs": (2, 5)})
    term = terminal(top_argv(server), width=12, height=2)
    term.wait_for("the clipped header", lambda s: s.startswith(server.address[:11]))
    for width, height in ((1, 1), (40, 3), (200, 50), (7, 30)):
        term.resize(width, height)
        header = server.address[: width - 1]  # the last column stays empty
        term.wait_for(f"a redraw at {width}x{height}", starts_with(header))
    term.resize(120, 30)
    term.wait_for("the full view again", lambda s: queue_rows(s, {"jobs"}) == [("jobs", 2)])
    term.keys("q")
    assert term.wait_exit() == 0


def test_top_against_a_closed_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    result = run_kestrelpy("top", "--server", f"{HOST}:{port}")
    assert_one_line_user_error(result, "cannot reach", f"{HOST}:{port}")


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("--server", "no-port"), "expected host:port"),
        (("--server", f"{HOST}:22133", "--interval", "0"), "--interval"),
    ],
)
def test_top_with_bad_arguments_is_one_line_and_exit_2(
    args: tuple[str, ...], mentions: str
) -> None:
    assert_one_line_user_error(run_kestrelpy("top", *args), mentions)
