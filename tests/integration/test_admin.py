"""Admin commands: monitor/confirm, status, reload, dump_config, dump_stats, flush_all, delete.

Contract (docs/protocol.md §2, §5, §6, §7, §8, §12; issue 5 item 5):

- ``monitor q secs [max]`` opens items until ``secs`` pass, ``max`` are sent (default
  ``max_open_transactions``) or the connection holds ``max_open_transactions`` on q; each item
  is ``VALUE q 0 n\\r\\n<data>\\r\\nEND\\r\\n``, then a final ``END``. The items stay open until
  ``confirm q n`` (the n oldest) and go back to the queue on disconnect. Confirming more than
  is open (or 0) answers ``ERROR``, confirms nothing and keeps the connection. Bad arguments:
  ``CLIENT_ERROR`` (missing confirm count: connection kept; otherwise closed).
- ``status`` answers the upper-cased status; ``status <new>`` answers ``END``; readonly refuses
  writes, quiescent refuses reads and writes, with ``SERVER_ERROR`` + close; never blocked:
  ``get q/close``, ``get q/abort``, ``confirm``, stats, status, version, flush_all_expired.
  The status survives a restart; a tightening waits ``status_change_grace_period``, a
  loosening is immediate; an unknown status is ``CLIENT_ERROR`` + close.
- ``reload`` re-reads the file: queue limits (incl. ``max_age`` of queued items) and aliases
  change at once (removed aliases disappear); ``expire_to_queue`` stays bound at creation.
- ``dump_config``/``dump_stats`` use Kestrel's block layout; ``flush_all`` answers
  ``Flushed all queues.``; ``delete`` answers ``DELETED`` even for unknown queues.
"""

from __future__ import annotations

import time

import pytest

from .conftest import drain, module_server, wait_until

pytestmark = pytest.mark.timeout(60)

MONITOR_CONFIG = """\
[server]
max_open_transactions = 5
expiration_timer_frequency = "never"

[defaults]
max_items = 1000

[queues."dc"]
max_age = "30s"
max_size = "1KB"
expire_to_queue = "dc_dst"
discard_old_when_full = true

[aliases."mon_alias"]
destination_queues = ["mon_alias_dest"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "admin", MONITOR_CONFIG)


def monitor_item(queue: str, body: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (queue.encode(), len(body), body)


def wait_open_transactions(server, queue: str, count: int) -> dict[str, str]:
    """The server handles a disconnect asynchronously (docs/protocol.md §12): poll until
    it has."""
    seen: dict[str, str] = {}
    with server.connect() as conn:

        def check() -> bool:
            seen.clear()
            seen.update(conn.stats())
            return seen.get(f"queue_{queue}_open_transactions") == str(count)

        wait_until(check, 10, f"{queue} open_transactions == {count}", server)
    return dict(seen)


def read_block(conn, name: str) -> list[tuple[str, str]]:
    """One ``queue '<name>' {`` … ``}`` block of dump_stats/dump_config, as (key, value)."""
    assert conn.read_line() == b"queue '" + name.encode() + b"' {\r\n"
    pairs = []
    while (line := conn.read_line()) != b"}\r\n":
        assert line.startswith(b"  ") and b"=" in line, line
        key, _, value = line[2:-2].decode().partition("=")
        pairs.append((key, value))
    return pairs


def refused(conn, request: bytes) -> None:
    """``request`` is refused by the server status: SERVER_ERROR, then the server closes."""
    conn.send(request)
    line = conn.read_line()
    assert line.startswith(b"SERVER_ERROR"), line
    conn.expect_closed()


# -- monitor / confirm ----------------------------------------------------------------------


def test_monitor_sends_each_item_as_value_end_then_a_final_end(srv, qname):
    with srv.connect() as conn:
        for body in (b"a", b"bb", b"ccc"):
            assert conn.set(qname, body) == b"STORED\r\n"
        started = time.monotonic()
        conn.send(f"monitor {qname} 10 3\r\n".encode())
        conn.expect(
            monitor_item(qname, b"a")
            + monitor_item(qname, b"bb")
            + monitor_item(qname, b"ccc")
            + b"END\r\n"
        )
        assert time.monotonic() - started < 5, "max reached: the batch must end at once"
        stats = conn.stats()
        assert stats[f"queue_{qname}_open_transactions"] == "3"
        assert stats[f"queue_{qname}_items"] == "0"
        assert conn.request(f"confirm {qname} 3".encode()) == b"END\r\n"
        assert conn.stats()[f"queue_{qname}_open_transactions"] == "0"
    stats = wait_open_transactions(srv, qname, 0)
    assert stats[f"queue_{qname}_items"] == "0"  # confirmed: nothing came back
    assert stats[f"queue_{qname}_canceled_transactions"] == "0"


def test_monitor_waits_for_new_items_until_the_time_is_up(srv, qname):
    with srv.connect() as conn, srv.connect() as producer:
        assert conn.set(qname, b"early") == b"STORED\r\n"
        started = time.monotonic()
        conn.send(f"monitor {qname} 1 3\r\n".encode())
        conn.expect(monitor_item(qname, b"early"))
        assert producer.set(qname, b"late") == b"STORED\r\n"
        conn.expect(monitor_item(qname, b"late"))
        conn.expect(b"END\r\n", timeout=10)
        assert time.monotonic() - started >= 0.9, "the batch ended before 1 s"
        assert conn.request(f"confirm {qname} 2".encode()) == b"END\r\n"
        assert conn.get(qname) is None


def test_monitor_default_max_is_max_open_transactions(srv, qname):
    bodies = [b"m%d" % i for i in range(7)]
    with srv.connect() as conn:
        for body in bodies:
            assert conn.set(qname, body) == b"STORED\r\n"
        conn.send(f"monitor {qname} 10\r\n".encode())
        conn.expect(b"".join(monitor_item(qname, body) for body in bodies[:5]) + b"END\r\n")
        # Holding max_open_transactions already: nothing more is opened, the batch ends.
        started = time.monotonic()
        conn.send(f"monitor {qname} 10 3\r\n".encode())
        conn.expect(b"END\r\n")
        assert time.monotonic() - started < 5
        assert conn.request(f"confirm {qname} 5".encode()) == b"END\r\n"
        assert drain(conn, qname) == bodies[5:]


def test_unconfirmed_monitor_items_come_back_on_disconnect_in_order(srv, qname):
    conn = srv.connect()
    try:
        for body in (b"a", b"b", b"c", b"d"):
            assert conn.set(qname, body) == b"STORED\r\n"
        conn.send(f"monitor {qname} 10 3\r\n".encode())
        conn.expect(
            monitor_item(qname, b"a")
            + monitor_item(qname, b"b")
            + monitor_item(qname, b"c")
            + b"END\r\n"
        )
        assert conn.request(f"confirm {qname} 1".encode()) == b"END\r\n"  # a is gone
    finally:
        conn.close()
    stats = wait_open_transactions(srv, qname, 0)
    assert stats[f"queue_{qname}_canceled_transactions"] == "2"
    with srv.connect() as other:
        assert drain(other, qname) == [b"b", b"c", b"d"]


def test_confirming_more_than_is_open_is_error_and_loses_nothing(srv, qname):
    with srv.connect() as conn:
        for body in (b"a", b"b", b"c"):
            assert conn.set(qname, body) == b"STORED\r\n"
        conn.send(f"monitor {qname} 10 2\r\n".encode())
        conn.expect(monitor_item(qname, b"a") + monitor_item(qname, b"b") + b"END\r\n")
        assert conn.request(f"confirm {qname} 3".encode()) == b"ERROR\r\n"
        assert conn.request(f"confirm {qname} 0".encode()) == b"ERROR\r\n"
        assert conn.stats()[f"queue_{qname}_open_transactions"] == "2"  # nothing confirmed
        with srv.connect() as other:  # open items belong to their connection
            assert other.request(f"confirm {qname} 1".encode()) == b"ERROR\r\n"
        assert conn.stats()[f"queue_{qname}_open_transactions"] == "2"
        assert conn.request(f"confirm {qname} 2".encode()) == b"END\r\n"
        assert drain(conn, qname) == [b"c"]


def test_confirm_of_an_unknown_queue_is_error_and_creates_nothing(srv, qname):
    with srv.connect() as conn:
        assert conn.request(f"confirm {qname} 1".encode()) == b"ERROR\r\n"
        assert not any(key.startswith(f"queue_{qname}_") for key in conn.stats())


@pytest.mark.parametrize(
    "line",
    [b"monitor", b"monitor {q}", b"monitor {q} abc", b"monitor {q} 1 x", b"monitor {q} 1.5"],
)
def test_bad_monitor_arguments_are_client_error_then_close(srv, qname, line):
    with srv.connect() as conn:
        assert conn.set(qname, b"safe") == b"STORED\r\n"
        conn.send(line.replace(b"{q}", qname.encode()) + b"\r\n")
        reply = conn.read_line()
        assert reply.startswith(b"CLIENT_ERROR"), reply
        conn.expect_closed()
    wait_open_transactions(srv, qname, 0)
    with srv.connect() as conn:
        assert drain(conn, qname) == [b"safe"]


@pytest.mark.parametrize("line", [b"confirm", b"confirm {q}"])
def test_missing_confirm_count_is_client_error_and_connection_kept(srv, qname, line):
    with srv.connect() as conn:
        reply = conn.request(line.replace(b"{q}", qname.encode()))
        assert reply.startswith(b"CLIENT_ERROR"), reply
        assert conn.request(b"version").startswith(b"VERSION ")


@pytest.mark.parametrize("count", [b"x", b"-1", b"1.5"])
def test_non_numeric_confirm_count_is_client_error_then_close(srv, qname, count):
    with srv.connect() as conn:
        assert conn.set(qname, b"safe") == b"STORED\r\n"
        conn.send(f"monitor {qname} 10 1\r\n".encode())
        conn.expect(monitor_item(qname, b"safe") + b"END\r\n")
        reply = conn.request(b"confirm " + qname.encode() + b" " + count)
        assert reply.startswith(b"CLIENT_ERROR"), reply
        conn.expect_closed()
    wait_open_transactions(srv, qname, 0)  # the open item came back: nothing lost
    with srv.connect() as conn:
        assert drain(conn, qname) == [b"safe"]


def test_monitor_of_an_alias_is_end_at_once(srv):
    with srv.connect() as conn:
        assert conn.set("mon_alias", b"x") == b"STORED\r\n"
        started = time.monotonic()
        conn.send(b"monitor mon_alias 5 2\r\n")
        conn.expect(b"END\r\n")
        assert time.monotonic() - started < 3
        assert drain(conn, "mon_alias_dest") == [b"x"]


# -- dump_config / dump_stats ---------------------------------------------------------------


def test_dump_config_shows_resolved_values_in_documented_units(srv):
    with srv.connect() as conn:
        conn.send(b"dump_config dc\r\n")
        values = dict(read_block(conn, "dc"))
        conn.expect(b"END\r\n")
    assert values["max_items"] == "1000"  # from [defaults]
    assert values["max_size"] == "1024"  # "1KB" in bytes
    assert values["max_age"] == "30000"  # "30s" in ms
    assert values["expire_to_queue"] == "dc_dst"
    assert values["discard_old_when_full"] == "true"
    assert values["fanout_only"] == "false"
    assert values["max_queue_age"] == "none"
    assert values["open_transaction_timeout"] == "none"
    assert values["max_item_size"] == str(2**63 - 1)
    assert values["max_expire_sweep"] == str(2**31 - 1)
    assert values["keep_journal"] == "true"
    assert values["max_memory_size"] == str(128 * 1024 * 1024)


def test_dump_config_without_arguments_lists_every_queue(srv, qname):
    with srv.connect() as conn:
        assert conn.set(qname, b"x") == b"STORED\r\n"
        conn.send(b"dump_stats\r\n")
        names = []
        while (line := conn.read_line()) != b"END\r\n":
            if line.startswith(b"queue '"):
                names.append(line[7 : line.rindex(b"'")].decode())
        assert qname in names
        assert names == sorted(names)
        conn.send(b"dump_config\r\n")
        for name in names:
            values = dict(read_block(conn, name))
            assert values["max_items"] == "1000"
        conn.expect(b"END\r\n")
        assert drain(conn, qname) == [b"x"]


def test_dump_stats_block_matches_stats_keys_and_values(srv, qname):
    with srv.connect() as conn:
        for body in (b"one", b"three"):
            assert conn.set(qname, body) == b"STORED\r\n"
        assert conn.get(qname + "/open") == b"one"
        stats = conn.stats()
        conn.send(f"dump_stats {qname}\r\n".encode())
        pairs = read_block(conn, qname)
        conn.expect(b"END\r\n")
        prefix = f"queue_{qname}_"
        from_stats = [(k[len(prefix) :], v) for k, v in stats.items() if k.startswith(prefix)]
        assert [k for k, _ in pairs] == [k for k, _ in from_stats]
        moving = {"age_msec", "oldest_item_age_ms"}  # time passes between the two replies
        assert [p for p in pairs if p[0] not in moving] == [
            p for p in from_stats if p[0] not in moving
        ]
        dumped = dict(pairs)
        assert dumped["items"] == "1"
        assert dumped["bytes"] == "5"
        assert dumped["open_transactions"] == "1"


def test_dump_stats_of_several_and_unknown_queues(srv, qname):
    with srv.connect() as conn:
        assert conn.set(qname, b"x") == b"STORED\r\n"
        conn.send(f"dump_stats {qname}_unknown {qname}\r\n".encode())
        conn.expect(f"queue '{qname}_unknown' {{\r\n  \r\n}}\r\n".encode())
        assert dict(read_block(conn, qname))["items"] == "1"
        conn.expect(b"END\r\n")
        assert not any(key.startswith(f"queue_{qname}_unknown_") for key in conn.stats())
        assert drain(conn, qname) == [b"x"]


def test_dump_stats_with_no_queues_is_end_alone(server_factory):
    srv = server_factory("")
    with srv.connect() as conn:
        assert conn.request(b"dump_stats") == b"END\r\n"
        assert conn.request(b"flush_all_expired") == b"0\r\n"


# -- flush_all / flush / delete -------------------------------------------------------------


@pytest.mark.parametrize("line", [b"flush_all", b"flush_all 0"])
def test_flush_all_empties_every_queue_but_leaves_open_items(srv, qname, line):
    with srv.connect() as conn, srv.connect() as holder:
        for queue in (qname + "_a", qname + "_b"):
            assert conn.set(queue, b"1") == b"STORED\r\n"
            assert conn.set(queue, b"2") == b"STORED\r\n"
        assert holder.get(qname + "_a/open") == b"1"
        assert conn.request(line) == b"Flushed all queues.\r\n"
        stats = conn.stats()
        assert stats[f"queue_{qname}_a_items"] == "0"
        assert stats[f"queue_{qname}_b_items"] == "0"
        assert stats[f"queue_{qname}_a_total_flushes"] == "1"
        assert stats[f"queue_{qname}_a_open_transactions"] == "1"
        assert conn.get(qname + "_b") is None
        assert holder.get(qname + "_a/abort") is None  # the open item comes back
        assert drain(conn, qname + "_a") == [b"1"]


def test_flush_of_one_queue_and_of_an_unknown_queue(srv, qname):
    with srv.connect() as conn:
        assert conn.set(qname, b"x") == b"STORED\r\n"
        assert conn.set(qname + "_other", b"y") == b"STORED\r\n"
        assert conn.request(f"flush {qname}".encode()) == b"END\r\n"
        assert conn.request(f"flush {qname}_unknown".encode()) == b"END\r\n"
        stats = conn.stats()
        assert stats[f"queue_{qname}_items"] == "0"
        assert stats[f"queue_{qname}_total_flushes"] == "1"
        assert not any(k.startswith(f"queue_{qname}_unknown_") for k in stats)
        assert drain(conn, qname + "_other") == [b"y"]


def test_delete_drops_items_and_stats_and_answers_deleted_even_if_unknown(srv, qname):
    with srv.connect() as conn:
        assert conn.set(qname, b"x") == b"STORED\r\n"
        assert conn.set(qname, b"y") == b"STORED\r\n"
        before = int(conn.stats()["queue_deletes"])
        assert conn.request(f"delete {qname}".encode()) == b"DELETED\r\n"
        stats = conn.stats()
        assert not any(k.startswith(f"queue_{qname}_") for k in stats)
        assert int(stats["queue_deletes"]) == before + 1
        assert conn.request(f"delete {qname}_never".encode()) == b"DELETED\r\n"
        assert not any(k.startswith(f"queue_{qname}_never_") for k in conn.stats())
        assert conn.get(qname) is None  # re-created, empty, fresh counters
        assert conn.stats()[f"queue_{qname}_total_items"] == "0"


def test_delete_ends_a_blocked_read_with_end(srv, qname):
    with srv.connect() as waiter, srv.connect() as conn:
        assert conn.get(qname) is None
        waiter.send(f"get {qname}/t=20000\r\n".encode())
        wait_until(
            lambda: conn.stats().get(f"queue_{qname}_waiters") == "1",
            10,
            "the get to block",
            srv,
        )
        started = time.monotonic()
        assert conn.request(f"delete {qname}".encode()) == b"DELETED\r\n"
        waiter.expect(b"END\r\n")
        assert time.monotonic() - started < 5


# -- status -----------------------------------------------------------------------------------


def test_status_readonly_refuses_writes_and_serves_reads(server_factory):
    srv = server_factory("")
    with srv.connect() as conn:
        assert conn.request(b"status") == b"UP\r\n"
        for body in (b"a", b"b", b"c"):
            assert conn.set("ro", body) == b"STORED\r\n"
        assert conn.request(b"status readonly") == b"END\r\n"
        assert conn.request(b"status") == b"READONLY\r\n"
        assert conn.get("ro") == b"a"
        assert conn.get("ro/peek") == b"b"
        assert conn.get("ro/open") == b"b"
        assert conn.get("ro/close") is None
        assert conn.request(b"flush_all_expired") == b"0\r\n"
        assert conn.request(b"version").startswith(b"VERSION ")
        assert "queue_ro_items" in conn.stats()
    for request in (
        b"set ro 0 0 5\r\nhello\r\n",
        b"delete ro\r\n",
        b"flush ro\r\n",
        b"flush_all\r\n",
        b"flush_expired ro\r\n",
    ):
        with srv.connect() as conn:
            refused(conn, request)
    with srv.connect() as conn:
        assert conn.request(b"status up") == b"END\r\n"  # loosening is immediate
        assert conn.request(b"status") == b"UP\r\n"
        assert conn.set("ro", b"d") == b"STORED\r\n"
        assert drain(conn, "ro") == [b"c", b"d"]


def test_status_quiescent_refuses_reads_too_but_not_close_abort_confirm(server_factory):
    srv = server_factory("[server]\nmax_open_transactions = 2\n")
    holder = srv.connect()
    try:
        for body in (b"a", b"b", b"c"):
            assert holder.set("qs", body) == b"STORED\r\n"
        assert holder.get("qs/open") == b"a"
        with srv.connect() as conn:
            assert conn.request(b"status QUIESCENT") == b"END\r\n"  # case-insensitive
            assert conn.request(b"status") == b"QUIESCENT\r\n"
            assert conn.request(b"flush_all_expired") == b"0\r\n"
            conn.send(b"dump_stats qs\r\n")
            assert dict(read_block(conn, "qs"))["items"] == "2"
            conn.expect(b"END\r\n")
        for request in (
            b"get qs\r\n",
            b"get qs/peek\r\n",
            b"get qs/open\r\n",
            b"gets qs\r\n",
            b"monitor qs 1 1\r\n",
            b"set qs 0 0 1\r\nx\r\n",
            b"delete qs\r\n",
        ):
            with srv.connect() as conn:
                refused(conn, request)
        assert holder.get("qs/abort") is None  # never blocked
        assert holder.request(b"confirm qs 1") == b"ERROR\r\n"  # not refused: nothing open
        with srv.connect() as conn:
            assert conn.request(b"status up") == b"END\r\n"
        assert holder.get("qs/open") == b"a"  # the aborted item is back at the head
        assert holder.request(b"status quiescent") == b"END\r\n"
        # A refused close/open has already closed: "a" is confirmed, not returned.
        refused(holder, b"get qs/close/open\r\n")
    finally:
        holder.close()
    with srv.connect() as conn:
        assert conn.request(b"status up") == b"END\r\n"
    wait_open_transactions(srv, "qs", 0)
    with srv.connect() as conn:
        assert drain(conn, "qs") == [b"b", b"c"]


@pytest.mark.parametrize("wanted", [b"down", b"bogus", b"up-ish"])
def test_unknown_status_is_client_error_then_close(server_factory, wanted):
    srv = server_factory("")
    with srv.connect() as conn:
        reply = conn.request(b"status " + wanted)
        assert reply.startswith(b"CLIENT_ERROR"), reply
        conn.expect_closed()
    with srv.connect() as conn:
        assert conn.request(b"status") == b"UP\r\n"


def test_status_persists_across_restart(server_factory):
    srv = server_factory("")
    with srv.connect() as conn:
        assert conn.set("kept", b"x") == b"STORED\r\n"
        assert conn.request(b"status readonly") == b"END\r\n"
    srv.restart()
    with srv.connect() as conn:
        assert conn.request(b"status") == b"READONLY\r\n"
        assert conn.get("kept/peek") == b"x"
    with srv.connect() as conn:
        refused(conn, b"set kept 0 0 1\r\ny\r\n")
    with srv.connect() as conn:
        assert conn.request(b"status quiescent") == b"END\r\n"
    srv.restart()
    with srv.connect() as conn:
        assert conn.request(b"status") == b"QUIESCENT\r\n"
        refused(conn, b"get kept\r\n")
    with srv.connect() as conn:
        assert conn.request(b"status up") == b"END\r\n"
    srv.restart()
    with srv.connect() as conn:
        assert conn.request(b"status") == b"UP\r\n"
        assert drain(conn, "kept") == [b"x"]


def test_default_status_and_status_file_from_config(server_factory, tmp_path):
    config = '[server]\ndefault_status = "readonly"\nstatus_file = "state/kp.status"\n'
    srv = server_factory(config)
    with srv.connect() as conn:
        assert conn.request(b"status") == b"READONLY\r\n"
        assert conn.request(b"status writeavoid") == b"END\r\n"
        assert conn.request(b"status") == b"WRITEAVOID\r\n"
        assert conn.set("wa", b"ok") == b"STORED\r\n"  # writeavoid serves writes
        assert conn.get("wa") == b"ok"
    assert srv.config_path is not None
    status_file = srv.config_path.parent / "state" / "kp.status"
    assert status_file.exists(), "status_file is relative to the config file's directory"
    srv.restart()
    with srv.connect() as conn:
        assert conn.request(b"status") == b"WRITEAVOID\r\n"  # the file wins over the default


def test_status_change_grace_period_delays_a_tightening_only(server_factory):
    grace_s = 0.8
    srv = server_factory('[server]\nstatus_change_grace_period = "800ms"\n')
    with srv.connect() as conn:
        changed = time.monotonic()
        assert conn.request(b"status readonly") == b"END\r\n"
        assert conn.set("grace", b"within") == b"STORED\r\n"  # not enforced yet

    refused_at: list[float] = []

    def set_refused() -> bool:
        with srv.connect() as conn:
            conn.send(b"set grace 0 0 1\r\nz\r\n")
            line = conn.read_line()
            if line == b"STORED\r\n":
                return False
            assert line.startswith(b"SERVER_ERROR"), line
            refused_at.append(time.monotonic())
            conn.expect_closed()
            return True

    wait_until(set_refused, 10, "the readonly status to be enforced", srv)
    assert refused_at[0] - changed >= grace_s - 0.05, "enforced before the grace period"
    with srv.connect() as conn:
        assert conn.request(b"status") == b"READONLY\r\n"
        assert conn.request(b"status up") == b"END\r\n"
        assert conn.set("grace", b"after") == b"STORED\r\n"  # loosening: at once
        bodies = drain(conn, "grace")
        assert bodies[0] == b"within" and bodies[-1] == b"after"


# -- reload -----------------------------------------------------------------------------------


def reload(srv, config: str) -> None:
    assert srv.config_path is not None
    srv.config_path.write_text(config)
    with srv.connect() as conn:
        assert conn.request(b"reload") == b"Reloaded config.\r\n"


def test_reload_changes_limits_of_existing_queues(server_factory):
    srv = server_factory('[queues."r"]\nmax_items = 1\n')
    with srv.connect() as conn:
        assert conn.set("r", b"a") == b"STORED\r\n"
        assert conn.set("r", b"b") == b"NOT_STORED\r\n"
        reload(srv, '[queues."r"]\nmax_items = 3\n')
        assert conn.set("r", b"b") == b"STORED\r\n"
        assert conn.set("r", b"c") == b"STORED\r\n"
        assert conn.set("r", b"d") == b"NOT_STORED\r\n"
        conn.send(b"dump_config r\r\n")
        assert dict(read_block(conn, "r"))["max_items"] == "3"
        conn.expect(b"END\r\n")
        assert drain(conn, "r") == [b"a", b"b", b"c"]


def test_reload_max_age_applies_to_items_already_queued(server_factory):
    no_timer = '[server]\nexpiration_timer_frequency = "never"\n'
    srv = server_factory(no_timer)
    with srv.connect() as conn:
        assert conn.set("aging", b"old") == b"STORED\r\n"
        assert conn.get("clock/t=300") is None  # the item is now > 300 ms old
        reload(srv, no_timer + '[queues."aging"]\nmax_age = "200ms"\n')
        assert conn.get("aging") is None
        assert conn.stats()["queue_aging_expired_items"] == "1"


def test_reload_adds_and_removes_aliases(server_factory):
    srv = server_factory("")
    with srv.connect() as conn:
        reload(srv, '[aliases."ra"]\ndestination_queues = ["ra_1", "ra_2"]\n')
        assert conn.set("ra", b"fanned") == b"STORED\r\n"
        assert conn.get("ra") is None
        assert conn.stats()["queue_ra_children"] == "ra_1,ra_2"
        reload(srv, "")
        assert "queue_ra_children" not in conn.stats()
        assert conn.set("ra", b"plain") == b"STORED\r\n"  # now an ordinary queue
        assert drain(conn, "ra") == [b"plain"]
        assert drain(conn, "ra_1") == [b"fanned"]
        assert drain(conn, "ra_2") == [b"fanned"]


def test_reload_does_not_rebind_expire_to_queue_of_an_existing_queue(server_factory):
    base = '[server]\nexpiration_timer_frequency = "never"\n[queues."src"]\nmax_age = "100ms"\n'
    srv = server_factory(base + 'expire_to_queue = "dst_a"\n')
    with srv.connect() as conn:
        assert conn.set("src", b"moved") == b"STORED\r\n"
        reload(srv, base + 'expire_to_queue = "dst_b"\n')
        assert conn.get("clock/t=200") is None
        assert conn.get("src") is None
        # Bound when "src" was created: the reloaded target is not used.
        assert (drain(conn, "dst_a"), drain(conn, "dst_b")) == ([b"moved"], [])
