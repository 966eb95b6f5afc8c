"""Admin protection and queue-count limits (issue 18, finding 6; docs/protocol.md §6-§8).

Contract: with ``[server] admin_commands = false`` the memcache port answers ``shutdown``,
``flush_all``, ``status <new>`` and ``reload`` with ``CLIENT_ERROR admin commands are disabled
on this port (admin_commands = false)`` (``CLIENT_ERROR`` alone under ``bare_error_lines``), the
connection is kept and nothing happens; a plain ``status`` still answers. ``max_queues`` and
``max_fanout_children`` refuse the request that would create one queue too many (a get,
``monitor``, a set, a set to an alias with a missing destination) with ``SERVER_ERROR too many
queues (max_queues = N)`` / ``SERVER_ERROR too many fanout children of 'p'
(max_fanout_children = N)``, connection kept, a set's block read, and nothing created: no
stats line, no ``queue_creates``, nothing stored (a restart loads no such queue).
"""

from __future__ import annotations

import pytest

from .conftest import Conn, ServerFactory, ServerProcess

pytestmark = pytest.mark.timeout(60)

ADMIN_OFF = b"CLIENT_ERROR admin commands are disabled on this port (admin_commands = false)\r\n"
TOO_MANY = b"SERVER_ERROR too many queues (max_queues = 3)\r\n"
TOO_MANY_CHILDREN = (
    b"SERVER_ERROR too many fanout children of 'victim' (max_fanout_children = 2)\r\n"
)


def queue_names(conn: Conn) -> set[str]:
    """The queues ``stats`` lists, by their ``logsize`` key (aliases have none)."""
    return {
        key.removeprefix("queue_").removesuffix("_logsize")
        for key in conn.stats()
        if key.startswith("queue_") and key.endswith("_logsize")
    }


def assert_still_usable(conn: Conn) -> None:
    """The connection takes another request, in step (nothing left over from the last one)."""
    assert conn.request(b"version").startswith(b"VERSION ")


# -- admin_commands = false -------------------------------------------------------------------


@pytest.fixture
def locked(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        '[server]\nadmin_commands = false\nexpiration_timer_frequency = "never"\n'
    )


def test_flush_all_is_refused_and_flushes_nothing(locked: ServerProcess) -> None:
    with locked.connect() as conn:
        assert conn.set("keep", b"precious") == b"STORED\r\n"
        assert conn.request(b"flush_all") == ADMIN_OFF
        assert conn.request(b"flush_all 0") == ADMIN_OFF
        conn.send(b"flush_all noreply\r\n")  # silent, as every non-closing flush_all error
        assert_still_usable(conn)
        assert conn.stats()["queue_keep_items"] == "1"
        assert conn.get("keep") == b"precious"


def test_shutdown_is_refused_and_the_server_stays_up(locked: ServerProcess) -> None:
    with locked.connect() as conn:
        assert conn.request(b"shutdown") == ADMIN_OFF
        assert_still_usable(conn)
    with locked.connect() as other:
        assert_still_usable(other)
    assert locked.running


@pytest.mark.parametrize("wanted", [b"quiescent", b"readonly", b"up", b"nonsense"])
def test_setting_the_status_is_refused_and_changes_nothing(
    locked: ServerProcess, wanted: bytes
) -> None:
    with locked.connect() as conn:
        assert conn.request(b"status " + wanted) == ADMIN_OFF
        assert conn.request(b"status") == b"UP\r\n"  # the query stays allowed
        assert conn.set("after", b"x") == b"STORED\r\n"
    status_file = locked.data_dir / ".status"
    assert not status_file.exists() or status_file.read_text().strip() == "up"


def test_reload_is_refused(locked: ServerProcess) -> None:
    assert locked.config_path is not None
    locked.config_path.write_text("[server]\nnot_a_key = 1\n")  # a reload would report this
    with locked.connect() as conn:
        assert conn.request(b"reload") == ADMIN_OFF
        assert_still_usable(conn)


def test_bare_error_lines_cut_the_refusal(server_factory: ServerFactory) -> None:
    srv = server_factory("[server]\nadmin_commands = false\nbare_error_lines = true\n")
    with srv.connect() as conn:
        assert conn.request(b"shutdown") == b"CLIENT_ERROR\r\n"
        assert_still_usable(conn)


def test_admin_commands_default_to_kestrels_behaviour(server_factory: ServerFactory) -> None:
    srv = server_factory("[server]\n")
    with srv.connect() as conn:
        assert conn.set("q", b"x") == b"STORED\r\n"
        assert conn.request(b"flush_all") == b"Flushed all queues.\r\n"
        assert conn.request(b"status readonly") == b"END\r\n"
        assert conn.request(b"status") == b"READONLY\r\n"
        assert conn.request(b"reload") == b"Reloaded config.\r\n"


# -- max_queues -------------------------------------------------------------------------------


@pytest.fixture
def capped(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        "[server]\nmax_queues = 3\nmax_fanout_children = 2\n"
        'expiration_timer_frequency = "never"\n'
        '[aliases."both"]\ndestination_queues = ["a", "fresh"]\n'
    )


def fill_to_the_cap(conn: Conn) -> None:
    for name in ("a", "b", "c"):
        assert conn.get(name) is None  # each get creates its queue
    assert queue_names(conn) == {"a", "b", "c"}


def test_a_get_of_one_queue_too_many_is_refused(capped: ServerProcess) -> None:
    with capped.connect() as conn:
        fill_to_the_cap(conn)
        assert conn.request(b"get d") == TOO_MANY
        assert conn.request(b"get d/open") == TOO_MANY
        assert conn.request(b"get d/peek") == TOO_MANY
        assert conn.request(b"get d/t=50") == TOO_MANY
        assert conn.request(b"monitor d 0") == TOO_MANY
        assert conn.set("a", b"still works") == b"STORED\r\n"  # existing queues are served
        assert conn.get("a") == b"still works"
        stats = conn.stats()
        assert queue_names(conn) == {"a", "b", "c"}
        assert not any(key.startswith("queue_d_") for key in stats)
        assert stats["queue_creates"] == "3"


def test_a_set_of_one_queue_too_many_is_refused_after_its_block(capped: ServerProcess) -> None:
    with capped.connect() as conn:
        fill_to_the_cap(conn)
        # The block reads as a command if it is not consumed: "get a" would answer END.
        assert conn.request(b"set d 0 0 5\r\nget a") == TOO_MANY
        conn.send(b"set d 0 0 3 noreply\r\nabc\r\n")  # silent, as a noreply set's errors
        assert conn.set("b", b"ok") == b"STORED\r\n"
        assert conn.get("b") == b"ok"
        # An alias whose destination "fresh" is missing: refused whole, "a" gets nothing.
        assert conn.set("both", b"y") == TOO_MANY
        assert conn.get("a") is None
        assert queue_names(conn) == {"a", "b", "c"}
        assert conn.stats()["queue_creates"] == "3"
    capped.restart()  # nothing was stored for "d" or "fresh"
    with capped.connect() as conn:
        assert queue_names(conn) == {"a", "b", "c"}
        assert conn.request(b"get d") == TOO_MANY  # stored queues count after a restart


def test_deleting_a_queue_makes_room(capped: ServerProcess) -> None:
    with capped.connect() as conn:
        fill_to_the_cap(conn)
        assert conn.request(b"delete c") == b"DELETED\r\n"
        assert conn.set("d", b"now") == b"STORED\r\n"
        assert conn.get("d") == b"now"
        assert queue_names(conn) == {"a", "b", "d"}


# -- max_fanout_children ----------------------------------------------------------------------


def test_fanout_children_beyond_the_cap_are_refused(server_factory: ServerFactory) -> None:
    srv = server_factory("[server]\nmax_fanout_children = 2\n")
    with srv.connect() as conn:
        assert conn.get("victim+tap0") is None
        assert conn.get("victim+tap1") is None
        for n in range(2, 6):
            assert conn.request(b"get victim+tap%d" % n) == TOO_MANY_CHILDREN
        assert conn.request(b"set victim+tap9 0 0 1\r\nx") == TOO_MANY_CHILDREN
        assert conn.request(b"monitor victim+tap9 0") == TOO_MANY_CHILDREN
        assert conn.get("other+tap0") is None  # the cap is per parent
        assert conn.set("victim", b"one copy each") == b"STORED\r\n"
        stats = conn.stats()
        assert stats["queue_victim_children"] == "victim+tap0,victim+tap1"
        assert stats["queue_victim+tap1_items"] == "1"
        assert not any(key.startswith("queue_victim+tap2") for key in stats)
        assert conn.get("victim+tap0") == b"one copy each"
