"""``kestrelpy stats`` and ``kestrelpy dump-store`` against a real server and store.

Contract (issue 5, item 7; a user error is one line and exit 2): ``stats --server host:port
[--json]`` prints a running server's stats, one line per stat or one JSON object;
``dump-store --data-dir DIR [--json]`` lists the queues of an LMDB store with their item
counts and payload bytes, read-only and safe while the server runs. A user error
(unreachable server, a directory that is not a store) prints one line on stderr and exits 2,
never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess

import lmdb
import pytest

from .conftest import HOST, assert_one_line_user_error, run_kestrelpy

pytestmark = pytest.mark.timeout(60)

CONFIG = '[server]\nsync = "always"\n'


def assert_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstderr: {result.stderr}"
    assert result.stderr == "", f"unexpected stderr: {result.stderr!r}"
    return result.stdout


def parse_stat_lines(stdout: str) -> list[tuple[str, str]]:
    """``name  value`` lines (names padded to a common width) as (name, value) pairs."""
    pairs = []
    for line in stdout.splitlines():
        parts = line.split(None, 1)
        assert len(parts) == 2, f"not a 'name value' line: {line!r}"
        pairs.append((parts[0], parts[1].strip()))
    return pairs


# Stats that may change between two `stats` calls (clock, traffic counters).
VOLATILE = {
    "uptime",
    "time",
    "curr_connections",
    "total_connections",
    "bytes_read",
    "bytes_written",
}


def stable(stats: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in stats.items()
        if k not in VOLATILE and not k.endswith(("_age", "_age_msec", "_oldest_item_age_ms"))
    }


@pytest.fixture
def busy_server(server_factory):
    """A server (sync always) with two queues: 'jobs' (3 items) and 'done' (1 of 3 left)."""
    srv = server_factory(CONFIG)
    with srv.connect() as conn:
        for body in (b"one", b"two two", b"three three three"):
            assert conn.set("jobs", body) == b"STORED\r\n"
        for body in (b"a", b"bb", b"ccc"):
            assert conn.set("done", body) == b"STORED\r\n"
        assert conn.get("done") == b"a"
        assert conn.get("done") == b"bb"
        # A STORED reply commits every removal answered before it (docs/protocol.md §12).
        assert conn.set("jobs", b"four") == b"STORED\r\n"
    return srv


def test_stats_prints_one_line_per_stat(busy_server):
    stdout = assert_ok(run_kestrelpy("stats", "--server", busy_server.address))
    pairs = parse_stat_lines(stdout)
    with busy_server.connect() as conn:
        raw = conn.stats()
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a stat printed twice: {names}"
    assert names == list(raw), f"CLI lines {names}\n   server {list(raw)}"
    printed = dict(pairs)
    assert stable(printed) == stable(raw)
    assert printed["queue_jobs_items"] == "4"
    assert printed["queue_jobs_bytes"] == str(len(b"onetwo twothree three threefour"))
    assert printed["queue_done_items"] == "1"
    assert printed["version"].endswith(raw["version"])


def test_stats_json_is_one_object_with_the_servers_stats(busy_server):
    stdout = assert_ok(run_kestrelpy("stats", "--server", busy_server.address, "--json"))
    try:
        parsed = json.loads(stdout)
    except json.JSONDecodeError as err:
        raise AssertionError(f"--json output is not JSON ({err}):\n{stdout}") from None
    assert isinstance(parsed, dict), type(parsed)
    with busy_server.connect() as conn:
        raw = conn.stats()
    for key in ("uptime", "version", "curr_items", "total_items", "curr_connections"):
        assert key in parsed, f"{key} missing from {sorted(parsed)}"
    assert set(parsed) == set(raw)
    as_text = {k: str(v) for k, v in parsed.items()}
    assert stable(as_text) == stable(raw)
    assert str(parsed["queue_jobs_items"]) == "4"
    assert str(parsed["queue_done_items"]) == "1"
    assert str(parsed["curr_items"]) == "5"


def test_stats_on_an_unreachable_server_is_one_line_exit_2():
    # A bound socket that does not listen: connecting to it is refused, and no other
    # process can take the port while we hold it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        address = f"{HOST}:{holder.getsockname()[1]}"
        result = run_kestrelpy("stats", "--server", address)
        assert_one_line_user_error(result, address)
        result = run_kestrelpy("stats", "--server", address, "--json")
        assert_one_line_user_error(result, address)


def test_stats_with_a_malformed_server_address_is_one_line_exit_2():
    assert_one_line_user_error(run_kestrelpy("stats", "--server", "no-port-here"), "no-port-here")


def test_dump_store_matches_stats_while_the_server_runs(busy_server):
    with busy_server.connect() as conn:
        raw = conn.stats()
    expected = {
        q: (int(raw[f"queue_{q}_items"]), int(raw[f"queue_{q}_bytes"])) for q in ("jobs", "done")
    }
    assert expected == {"jobs": (4, 31), "done": (1, 3)}, raw  # the fixture's own arithmetic

    stdout = assert_ok(run_kestrelpy("dump-store", "--data-dir", busy_server.data_dir))
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and lines[0].split() == ["queue", "items", "bytes"], stdout
    rows = {}
    for line in lines[1:]:
        name, items, size = line.split()
        rows[name] = (int(items), int(size))
    assert rows == expected, f"dump-store {rows}, stats {expected}\n{stdout}"

    stdout = assert_ok(run_kestrelpy("dump-store", "--data-dir", busy_server.data_dir, "--json"))
    parsed = json.loads(stdout)
    by_name = {row["queue"]: (row["items"], row["bytes"]) for row in parsed["queues"]}
    assert by_name == expected, parsed

    assert busy_server.running, busy_server.log()
    with busy_server.connect() as conn:  # the server is undisturbed by the reader
        assert conn.get("done") == b"ccc"
        assert conn.set("jobs", b"five") == b"STORED\r\n"
    parsed = json.loads(
        assert_ok(run_kestrelpy("dump-store", "--data-dir", busy_server.data_dir, "--json"))
    )
    after = {row["queue"]: (row["items"], row["bytes"]) for row in parsed["queues"]}
    assert after == {"jobs": (5, 35), "done": (0, 0)}, parsed


def make_foreign_lmdb(path):
    """A valid LMDB environment that is not a kestrelpy store (no items/queues/meta)."""
    env = lmdb.open(str(path), map_size=1024 * 1024, max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"other")) as txn:
        txn.put(b"k", b"v")
    env.close()


@pytest.mark.parametrize("kind", ["empty-dir", "missing-dir", "garbage-file", "foreign-lmdb"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_dump_store_on_something_that_is_not_a_store_is_one_line_exit_2(tmp_path, kind, as_json):
    target = tmp_path / "target"
    if kind != "missing-dir":
        target.mkdir()
    if kind == "garbage-file":
        (target / "data.mdb").write_bytes(b"this is not an lmdb file\n" * 400)
    if kind == "foreign-lmdb":
        make_foreign_lmdb(target)
    before = sorted(p.name for p in target.iterdir()) if target.exists() else None

    args = ["dump-store", "--data-dir", target] + (["--json"] if as_json else [])
    assert_one_line_user_error(run_kestrelpy(*args), str(target))

    after = sorted(p.name for p in target.iterdir()) if target.exists() else None
    if kind in ("empty-dir", "missing-dir"):
        assert after == before, f"dump-store changed {target}: {before} -> {after}"
