"""The dashboard at ``/`` in a real headless Chromium, against a real server (issue 15 item 4).

Contract (docs/http.md "Dashboard", kestrelpy/http/static/): the page lists every queue with
its item count; a click on a column header sorts by it, a second click reverses; the filter
box takes space-separated terms that must all hold (``items>1``, ``name=~^a``), and a bad
one is reported and filters nothing; peek shows waiting items (text, or base64 for binary)
without removing them; flush and delete ask for confirmation, send the admin token typed
into the page, and an API refusal is shown in plain words with nothing changed; the page
refreshes itself; reload, status change, flush all and shutdown act on a server (the last
two behind the confirmation, shutdown shown as the server stopping, then stopped); queue
names are latin-1 bytes, addressed in paths one ``%XX`` per byte; ``http_peers`` are merged
into one table with a server column, and managed across origins (CORS). A script error
logged by the page fails the test.

The browser is Debian's chromium + chromedriver through selenium (no driver download); when
they are missing these tests fail, they do not skip (``make test`` installs them). Every
wait is an explicit WebDriverWait on page state read in one script call, so a row moved by
the auto-refresh never leaves a stale element behind. One browser serves the module; each
test gets a fresh server, hence a fresh origin and an empty sessionStorage.

``DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes the README's screenshot; every run
saves one under the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from kestrelpy import __version__

from .conftest import ServerFactory, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "s3cret"
CONFIG = f'[server]\nadmin_token = "{TOKEN}"\n'
WAIT_S = 10.0  # the page refreshes every 5 s; every action answers well within this

# name -> items, in set order. "ab+c%" needs URL-encoding; "bin" holds a non-UTF-8 body.
SEED: dict[str, list[bytes]] = {
    "alpha": [b"hello", b"world", b"!"],
    "ab+c%": [b"x", b"y"],
    "beta": [b"b"],
    "bin": [b"\xff\x00\x01"],
    "gamma": [],  # created, then emptied
    "jobs_x": [b"j1", b"j2", b"j3", b"j4", b"j5"],
}

T = TypeVar("T")

ROWS_JS = """
return Array.from(document.querySelectorAll('#queues-body tr[data-queue]')).map(
    tr => [tr.dataset.queue, tr.querySelector('[data-col="items"]').textContent]);
"""


def expected_rows(names: list[str]) -> list[list[str]]:
    return [[name, str(len(SEED[name]))] for name in names]


def by_name(keep: Callable[[str], bool] = lambda name: True) -> list[list[str]]:
    return expected_rows(sorted(name for name in SEED if keep(name)))


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(binary), f"{binary} missing: apt-get install chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # for page_errors()
    for arg in (
        "--headless=new",  # as root both this and --no-sandbox are required
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,800",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(arg)
    # The Service path matters: without it selenium tries to download a driver.
    chrome = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def srv(server_factory: ServerFactory) -> ServerProcess:
    """A server with the HTTP listener, an admin token and the SEED queues."""
    server = server_factory(CONFIG, http=True)
    with server.connect() as conn:
        for name, bodies in SEED.items():
            for body in bodies:
                assert conn.set(name, body) == b"STORED\r\n"
        assert conn.set("gamma", b"gone") == b"STORED\r\n"
        assert conn.get("gamma") == b"gone"
    return server


@pytest.fixture
def page(driver: webdriver.Chrome, srv: ServerProcess) -> Iterator[webdriver.Chrome]:
    """The dashboard of ``srv``, loaded, with every SEED queue listed; the test fails if the
    page logged a script error meanwhile."""
    page_errors(driver)  # drop what an earlier test left
    driver.get(srv.http_url() + "/")
    wait_for(driver, lambda d: d.execute_script(ROWS_JS), by_name(), "the queue rows")
    yield driver
    assert page_errors(driver) == [], "the page logged errors"


def page_errors(driver: webdriver.Chrome) -> list[str]:
    """SEVERE console entries since the last call, except the 4xx answers that tests ask
    for on purpose (Chromium logs each failed fetch; the page shows them to the user)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Failed to load resource: the server responded with a status of 4"
        not in entry["message"]
    ]


# -- helpers -------------------------------------------------------------------------------


def wait_for(
    driver: webdriver.Chrome, read: Callable[[Any], T], want: T | Callable[[T], bool], what: str
) -> T:
    """Wait until ``read(driver)`` equals ``want`` (or satisfies it, if callable); the failure
    says what was last seen."""
    seen: list[T] = []

    def ready(d: Any) -> bool:
        value = read(d)
        seen[:] = [value]
        return bool(want(value)) if callable(want) else value == want

    try:
        WebDriverWait(driver, WAIT_S).until(ready)
    except TimeoutException:
        raise AssertionError(
            f"timed out after {WAIT_S}s waiting for {what}: wanted {want!r}, last saw "
            f"{seen[0] if seen else 'nothing'!r}"
        ) from None
    return seen[0]


def rows(driver: Any) -> list[list[str]]:
    return driver.execute_script(ROWS_JS)  # type: ignore[no-any-return]


def text_of(driver: Any, css: str) -> str:
    """The text of ``css`` if it is shown, else ""."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]);"
        "return e && !e.closest('[hidden]') ? e.textContent : '';",
        css,
    )


def set_filter(driver: webdriver.Chrome, expression: str) -> None:
    box = driver.find_element(By.ID, "filter")
    box.clear()
    if expression:
        box.send_keys(expression)


def click_queue_action(
    driver: webdriver.Chrome, queue: str, action: str, server: str | None = None
) -> None:
    """Click ``action`` in the row of ``queue`` (on ``server``, when several are shown)."""
    driver.execute_script(
        "Array.from(document.querySelectorAll('#queues-body tr[data-queue]'))"
        ".find(tr => tr.dataset.queue === arguments[0]"
        "            && (arguments[2] === null || tr.dataset.server === arguments[2]))"
        '.querySelector(`button[data-action="${arguments[1]}"]`).click();',
        queue,
        action,
        server,
    )


def use_token(driver: webdriver.Chrome, token: str) -> None:
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "token-save").click()
    wait_for(driver, lambda d: text_of(d, "#token-state"), "Token set for this tab.", "the token")


def confirm(driver: webdriver.Chrome, answer: str) -> None:
    """Answer the open confirmation dialog: "ok" or "cancel"."""
    wait_for(
        driver,
        lambda d: d.execute_script("return document.getElementById('confirm-dialog').open"),
        True,
        "the confirmation dialog",
    )
    driver.find_element(By.ID, f"confirm-{answer}").click()


def click_server_action(driver: webdriver.Chrome, action: str) -> None:
    """Click ``action`` in the (first) servers row."""
    driver.execute_script(
        "document.querySelector('#servers-body tr')"
        '.querySelector(`button[data-action="${arguments[0]}"]`).click();',
        action,
    )


def dialog_text(driver: webdriver.Chrome) -> tuple[str, str, str]:
    """The open confirmation dialog's title, question and OK button label."""
    wait_for(
        driver,
        lambda d: d.execute_script("return document.getElementById('confirm-dialog').open"),
        True,
        "the confirmation dialog",
    )
    title, text, ok = (text_of(driver, f"#confirm-{part}") for part in ("title", "text", "ok"))
    return title, text, ok


def queue_items(srv: ServerProcess, queue: str) -> int:
    with srv.connect() as conn:
        return int(conn.stats()[f"queue_{queue}_items"])


def screenshot(driver: webdriver.Chrome, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    assert path.stat().st_size > 0


# -- tests ---------------------------------------------------------------------------------


def test_lists_queues_with_item_counts(page: webdriver.Chrome, tmp_path: Path) -> None:
    assert rows(page) == by_name()  # the fixture waited for exactly this
    server_row = wait_for(
        page,
        lambda d: d.execute_script(
            "const tr = document.querySelector('#servers-body tr');"
            "return tr && ['status', 'version', 'items'].map("
            'c => tr.querySelector(`[data-col="${c}"]`).textContent);'
        ),
        lambda got: bool(got) and got[0] == "up",
        "this server's row",
    )
    assert __version__ in server_row[1]
    assert server_row[2] == str(sum(len(bodies) for bodies in SEED.values()))
    assert text_of(page, "#queue-count") == f"({len(SEED)})"
    assert page.title == "kestrelpy dashboard"
    screenshot(page, tmp_path / "dashboard.png")


def test_sorting_by_items_then_reversed(page: webdriver.Chrome) -> None:
    by_items = expected_rows(sorted(SEED, key=lambda name: (len(SEED[name]), name)))
    sort_button = page.find_element(By.CSS_SELECTOR, 'button[data-sort="items"]')
    sort_button.click()
    wait_for(page, rows, by_items, "rows sorted by items")
    assert (
        page.find_element(By.CSS_SELECTOR, 'th[data-col="items"]').get_attribute("aria-sort")
        == "ascending"
    )
    sort_button.click()
    # Ties (beta/bin with 1 item) keep a stable order by name, reversed with the column.
    descending = expected_rows(sorted(SEED, key=lambda name: (len(SEED[name]), name), reverse=True))
    wait_for(page, rows, descending, "rows sorted by items, reversed")
    page.find_element(By.CSS_SELECTOR, 'button[data-sort="name"]').click()
    wait_for(page, rows, by_name(), "rows sorted by name again")


def test_filter_expressions(page: webdriver.Chrome) -> None:
    set_filter(page, "items>1")
    wait_for(page, rows, by_name(lambda n: len(SEED[n]) > 1), "items>1")
    assert text_of(page, "#queue-count") == f"(3 of {len(SEED)} shown)"

    set_filter(page, "name=~^a")
    wait_for(page, rows, by_name(lambda n: n.startswith("a")), "name=~^a")

    set_filter(page, "items>=1 items<=2 name=~^b")  # every term must hold
    wait_for(page, rows, expected_rows(["beta", "bin"]), "three terms")

    set_filter(page, "name=beta")  # exact, not a substring or a prefix
    wait_for(page, rows, expected_rows(["beta"]), "name=beta")

    set_filter(page, "bytes<=0")
    wait_for(page, rows, expected_rows(["gamma"]), "bytes<=0")

    for bad, why in [
        ("itemz>1", 'unknown field "itemz"'),
        ("name=~(", "bad regular expression"),
        ("items>lots", "is a number"),
        ("name>3", "is text"),
        ("alpha", "is not a term"),
    ]:
        set_filter(page, bad)
        error = wait_for(page, lambda d: text_of(d, "#filter-error"), bool, f"error for {bad}")
        assert why in error and error.startswith("Filter not applied"), error
        assert rows(page) == by_name(), f"a bad filter ({bad}) must filter nothing"
        assert page.find_element(By.ID, "filter").get_attribute("aria-invalid") == "true"

    set_filter(page, "")
    wait_for(page, lambda d: text_of(d, "#filter-error"), "", "the error to go")
    assert rows(page) == by_name()


PEEK_JS = """
return Array.from(document.querySelectorAll('#peek-items li')).map(
    li => [li.dataset.encoding, li.querySelector('.peek-data').textContent]);
"""


def test_peek_shows_items_without_removing_them(page: webdriver.Chrome, srv: ServerProcess) -> None:
    click_queue_action(page, "alpha", "peek")
    peeked = [["text", body.decode()] for body in SEED["alpha"]]
    wait_for(page, lambda d: d.execute_script(PEEK_JS), peeked, "alpha's items")
    assert "alpha" in text_of(page, "#peek-title")

    n = page.find_element(By.ID, "peek-n")
    n.clear()
    n.send_keys("1")
    page.find_element(By.ID, "peek-again").click()
    wait_for(page, lambda d: d.execute_script(PEEK_JS), peeked[:1], "the head item only")

    click_queue_action(page, "bin", "peek")  # not UTF-8: the API sends base64
    wait_for(page, lambda d: d.execute_script(PEEK_JS), [["base64", "/wAB"]], "bin's item")

    click_queue_action(page, "ab+c%", "peek")  # the name is URL-encoded in the path
    wait_for(page, lambda d: d.execute_script(PEEK_JS), [["text", "x"]], "ab+c%'s head")

    assert queue_items(srv, "alpha") == 3, "peek removed items"
    assert rows(page) == by_name()

    n.clear()
    n.send_keys("500")  # the API allows 1..100: its 400 is shown
    page.find_element(By.ID, "peek-again").click()
    state = wait_for(page, lambda d: text_of(d, "#peek-state"), lambda t: "failed" in t, "400")
    assert "rejected" in state

    # The README's screenshot: the servers, every queue and an open peek, from the top.
    n.clear()
    n.send_keys("10")
    click_queue_action(page, "alpha", "peek")
    wait_for(page, lambda d: len(d.execute_script(PEEK_JS)), 3, "alpha's items")
    if target := os.environ.get("DASHBOARD_SCREENSHOT"):
        page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        page.set_window_size(1280, 1080)  # the whole page, for the README
        try:
            screenshot(page, Path(target))
        finally:
            page.set_window_size(1280, 800)


def test_flush_with_the_token_empties_the_queue(page: webdriver.Chrome, srv: ServerProcess) -> None:
    use_token(page, TOKEN)
    click_queue_action(page, "alpha", "flush")
    confirm(page, "ok")
    message = wait_for(page, lambda d: text_of(d, "#message-text"), bool, "the flush message")
    assert message == 'Flushed queue "alpha".'
    assert page.find_element(By.ID, "message").get_attribute("data-kind") == "ok"
    flushed = [[name, "0" if name == "alpha" else count] for name, count in by_name()]
    wait_for(page, rows, flushed, "alpha at 0 items")
    assert queue_items(srv, "alpha") == 0
    with srv.connect() as conn:
        assert conn.get("alpha") is None  # END: nothing left
        assert conn.get("beta") == b"b"  # other queues untouched


def test_flush_with_a_wrong_or_no_token_changes_nothing(
    page: webdriver.Chrome, srv: ServerProcess
) -> None:
    click_queue_action(page, "alpha", "flush")  # no token yet: the server answers 401
    confirm(page, "ok")
    message = wait_for(page, lambda d: text_of(d, "#message-text"), bool, "the 401 message")
    assert message.startswith('Flush of queue "alpha" failed: the server wants the admin token')
    assert "missing bearer token" in message

    use_token(page, "not-the-token")
    click_queue_action(page, "alpha", "flush")
    confirm(page, "ok")
    message = wait_for(
        page, lambda d: text_of(d, "#message-text"), lambda t: "refused" in t, "the 403 message"
    )
    assert message.startswith('Flush of queue "alpha" failed: the admin token was refused')
    assert "wrong token" in message
    assert page.find_element(By.ID, "message").get_attribute("data-kind") == "error"
    assert page.find_element(By.ID, "message").get_attribute("role") == "alert"

    page.find_element(By.ID, "refresh-now").click()
    wait_for(page, rows, by_name(), "unchanged rows")
    assert queue_items(srv, "alpha") == 3


def test_cancelled_delete_keeps_the_queue_and_confirmed_delete_removes_it(
    page: webdriver.Chrome, srv: ServerProcess
) -> None:
    use_token(page, TOKEN)
    click_queue_action(page, "ab+c%", "delete")
    confirm(page, "cancel")
    page.find_element(By.ID, "refresh-now").click()
    wait_for(page, rows, by_name(), "every queue still listed")
    assert queue_items(srv, "ab+c%") == 2

    click_queue_action(page, "ab+c%", "delete")
    confirm(page, "ok")
    wait_for(page, rows, by_name(lambda n: n != "ab+c%"), "the deleted queue gone")
    assert text_of(page, "#message-text") == 'Deleted queue "ab+c%".'
    with srv.connect() as conn:
        assert "queue_ab+c%_items" not in conn.stats()


def test_flush_all_with_the_token_empties_every_queue(
    page: webdriver.Chrome, srv: ServerProcess
) -> None:
    label = srv.http_url().removeprefix("http://")
    use_token(page, TOKEN)
    click_server_action(page, "flush-all")
    title, text, ok = dialog_text(page)
    assert (title, ok) == ("Flush all queues?", "Flush all")
    assert f"every waiting item of every queue on {label}" in text
    assert "cannot be undone" in text
    confirm(page, "ok")
    message = wait_for(page, lambda d: text_of(d, "#message-text"), bool, "the message")
    assert message == f"Flushed all queues on {label}."
    assert page.find_element(By.ID, "message").get_attribute("data-kind") == "ok"
    wait_for(page, rows, [[name, "0"] for name, _ in by_name()], "every queue at 0 items")
    with srv.connect() as conn:
        stats = conn.stats()
        for name in SEED:
            assert stats[f"queue_{name}_items"] == "0", name  # flushed, not deleted
            assert conn.get(name) is None, name


def test_flush_all_without_a_token_is_refused_and_changes_nothing(
    page: webdriver.Chrome, srv: ServerProcess
) -> None:
    label = srv.http_url().removeprefix("http://")
    click_server_action(page, "flush-all")
    confirm(page, "ok")
    message = wait_for(page, lambda d: text_of(d, "#message-text"), bool, "the 401 message")
    assert message.startswith(
        f"Flush of all queues on {label} failed: the server wants the admin token"
    ), message
    assert "missing bearer token" in message
    assert page.find_element(By.ID, "message").get_attribute("data-kind") == "error"
    page.find_element(By.ID, "refresh-now").click()
    wait_for(page, rows, by_name(), "unchanged rows")
    for name, bodies in SEED.items():
        assert queue_items(srv, name) == len(bodies), name


STATUS_JS = "return document.querySelector('#servers-body [data-col=\"status\"]').textContent"


def test_shutdown_with_the_token_stops_the_server(
    page: webdriver.Chrome, srv: ServerProcess
) -> None:
    label = srv.http_url().removeprefix("http://")
    click_server_action(page, "shutdown")  # no token: refused, the server keeps running
    confirm(page, "ok")
    message = wait_for(page, lambda d: text_of(d, "#message-text"), bool, "the 401 message")
    assert message.startswith(f"Shutdown of {label} failed: the server wants the admin token")
    assert srv.running
    assert page.execute_script(STATUS_JS) == "up"

    use_token(page, TOKEN)
    click_server_action(page, "shutdown")
    title, text, ok = dialog_text(page)
    assert (title, ok) == ("Shut down the server?", "Shut down")
    assert f"Stop the kestrelpy server {label}?" in text
    confirm(page, "ok")
    wait_until(lambda: not srv.running, WAIT_S, "the server to exit after /shutdown", srv)
    assert srv.stop() == 0  # it has exited already: this only reaps it, asserting exit 0
    wait_for(
        page,
        lambda d: text_of(d, "#message-text"),
        f"{label} has shut down: it no longer answers.",
        "the stopped message",
    )
    wait_for(page, lambda d: d.execute_script(STATUS_JS), "stopped", "the stopped status")
    assert page.execute_script(
        "return Array.from(document.querySelectorAll('#servers-body button'))"
        ".every(b => b.disabled)"
    ), "actions on a stopped server stay enabled"
    # Leave the page (it keeps polling), then drop the failed fetches it logged meanwhile.
    page.get("about:blank")
    unexpected = [e for e in page_errors(page) if "ERR_CONNECTION_REFUSED" not in e]
    assert unexpected == [], "the page logged errors"


def test_a_latin1_queue_name_is_peeked_and_flushed(
    page: webdriver.Chrome, srv: ServerProcess
) -> None:
    """b"caf\xe9" is "café" on the page and caf%E9 in paths: one byte, not UTF-8's %C3%A9."""
    name = "caf\xe9"
    raw = name.encode("latin-1")
    with srv.connect() as conn:
        for body in (b"un", b"deux"):
            assert conn.set(raw, body) == b"STORED\r\n"
    page.find_element(By.ID, "refresh-now").click()
    wait_for(page, rows, sorted([*by_name(), [name, "2"]]), "the latin-1 queue listed")

    click_queue_action(page, name, "peek")
    wait_for(
        page, lambda d: d.execute_script(PEEK_JS), [["text", "un"], ["text", "deux"]], "its items"
    )
    assert name in text_of(page, "#peek-title")

    use_token(page, TOKEN)
    click_queue_action(page, name, "flush")
    confirm(page, "ok")
    message = wait_for(page, lambda d: text_of(d, "#message-text"), bool, "the flush message")
    assert message == f'Flushed queue "{name}".'
    wait_for(page, rows, sorted([*by_name(), [name, "0"]]), "the latin-1 queue at 0 items")
    wait_for(page, lambda d: text_of(d, "#peek-state"), "No waiting items.", "an empty peek")
    with srv.connect() as conn:
        assert conn.get(raw) is None
        assert conn.get("beta") == b"b"  # other queues untouched


def test_auto_refresh_shows_new_queues(page: webdriver.Chrome, srv: ServerProcess) -> None:
    Select(page.find_element(By.ID, "refresh-interval")).select_by_value("2000")
    with srv.connect() as conn:
        assert conn.set("zeta", b"new") == b"STORED\r\n"
    # No click: only the timer can bring the new row.
    wait_for(page, rows, [*by_name(), ["zeta", "1"]], "the new queue, by auto-refresh")


SERVER_ROW_JS = """
return Array.from(document.querySelectorAll('#servers-body tr')).map(
    tr => [tr.dataset.server, tr.querySelector('[data-col="status"]').textContent]);
"""


def test_server_status_change_and_reload(page: webdriver.Chrome, srv: ServerProcess) -> None:
    label = srv.http_url().removeprefix("http://")
    use_token(page, TOKEN)
    row = page.find_element(By.CSS_SELECTOR, "#servers-body tr")
    Select(row.find_element(By.CSS_SELECTOR, '[data-role="status-select"]')).select_by_value(
        "readonly"
    )
    row.find_element(By.CSS_SELECTOR, 'button[data-action="set-status"]').click()
    confirm(page, "ok")
    wait_for(page, lambda d: d.execute_script(SERVER_ROW_JS), [[label, "readonly"]], "readonly")
    assert text_of(page, "#message-text") == f"{label} is now readonly."
    with srv.connect() as conn:
        conn.send(b"set alpha 0 0 1\r\nz\r\n")
        assert conn.read_line().startswith(b"SERVER_ERROR"), "readonly took no writes"

    Select(row.find_element(By.CSS_SELECTOR, '[data-role="status-select"]')).select_by_value("up")
    row.find_element(By.CSS_SELECTOR, 'button[data-action="set-status"]').click()
    confirm(page, "ok")
    wait_for(page, lambda d: d.execute_script(SERVER_ROW_JS), [[label, "up"]], "up again")

    row.find_element(By.CSS_SELECTOR, 'button[data-action="reload"]').click()
    wait_for(
        page, lambda d: text_of(d, "#message-text"), f"Reloaded the config of {label}.", "reload"
    )


def test_peers_are_merged_into_one_table(
    driver: webdriver.Chrome, srv: ServerProcess, server_factory: ServerFactory
) -> None:
    """A dashboard on one server shows and manages its peer's queues too (CORS, preflight)."""
    page_errors(driver)  # drop what an earlier test left
    peer = srv.http_url().removeprefix("http://")
    front = server_factory(CONFIG + f'http_peers = ["{peer}"]\n', http=True)
    with front.connect() as conn:
        assert conn.set("alpha", b"front") == b"STORED\r\n"
    here = front.http_url().removeprefix("http://")
    driver.get(front.http_url() + "/")
    merged_js = """
    return Array.from(document.querySelectorAll('#queues-body tr[data-queue]')).map(tr => [
        tr.querySelector('[data-col="server"]').textContent, tr.dataset.queue,
        tr.querySelector('[data-col="items"]').textContent]);
    """
    # Sorted by name; the same name on two servers is ordered by server.
    want = sorted([[peer, name, count] for name, count in by_name()] + [[here, "alpha", "1"]])
    want.sort(key=lambda row: (row[1], row[0]))
    wait_for(driver, lambda d: d.execute_script(merged_js), want, "both servers' queues")
    assert driver.find_element(By.CSS_SELECTOR, 'th[data-col="server"]').is_displayed()
    servers = wait_for(driver, lambda d: d.execute_script(SERVER_ROW_JS), len, "server rows")
    assert servers == [[here, "up"], [peer, "up"]]

    set_filter(driver, f"server={peer} name=alpha")
    wait_for(driver, lambda d: d.execute_script(merged_js), [[peer, "alpha", "3"]], "filter")

    use_token(driver, TOKEN)  # one token for every server here
    click_queue_action(driver, "alpha", "flush", server=peer)
    confirm(driver, "ok")
    wait_for(driver, lambda d: d.execute_script(merged_js), [[peer, "alpha", "0"]], "flushed")
    assert text_of(driver, "#message-text") == f'Flushed queue "alpha" on {peer}.'
    assert queue_items(srv, "alpha") == 0
    assert queue_items(front, "alpha") == 1, "the flush went to the wrong server"
    assert page_errors(driver) == []
