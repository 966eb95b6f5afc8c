"""Fanout queues ``parent+child`` and aliases (docs/protocol.md §3-§4, §6, §8, §12).

Contract: a set to ``parent`` puts a copy in every child queue that exists (children are
created by their first read, or loaded from disk at start); there is no back-fill for a child
created later. A ``fanout_only`` parent keeps nothing itself but answers ``STORED``; children
ignore ``fanout_only``. A child starts from its parent's resolved config, then its own entry.
Deleting a child unregisters it; deleting the parent does not. The parent's stats list its
children (``children``, comma-separated, no spaces).

An alias fans a set out to its ``destination_queues``; a read of an alias answers ``END`` at
once (even with ``t=``) and creates nothing; ``delete``/``flush`` of an alias do nothing but
answer ``DELETED``/``END``; stats list ``queue_<alias>_put_items``, ``_put_bytes``,
``_children``. A set to an alias is ``NOT_STORED`` if any destination refuses it.
"""

from __future__ import annotations

import time

import pytest

from .conftest import drain, module_server

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
[server]
expiration_timer_frequency = "never"

[queues."fo"]
fanout_only = true

[queues."fo_alone"]
fanout_only = true

[queues."lim"]
max_items = 2

[queues."lim+big"]
max_items = 5

[aliases."al"]
destination_queues = ["al_d1", "al_d2"]

[aliases."al_full"]
destination_queues = ["al_ok", "al_cap1"]

[queues."al_cap1"]
max_items = 1

[aliases."al_fan"]
destination_queues = ["fanp"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "fanout", CONFIG)


def dump_config(conn, queue: str) -> dict[str, str]:
    conn.send(b"dump_config " + queue.encode() + b"\r\n")
    assert conn.read_line() == b"queue '" + queue.encode() + b"' {\r\n"
    values = {}
    while (line := conn.read_line()) != b"}\r\n":
        assert line.startswith(b"  "), line
        key, _, value = line[2:-2].decode().partition("=")
        values[key] = value
    conn.expect(b"END\r\n")
    return values


def queue_keys(stats: dict[str, str], queue: str) -> list[str]:
    return [key for key in stats if key.startswith(f"queue_{queue}_")]


# -- fanout --------------------------------------------------------------------------------


def test_set_to_parent_lands_in_parent_and_every_existing_child(srv, qname):
    p = qname
    with srv.connect() as conn:
        assert conn.get(f"{p}+a") is None  # first read creates the child
        assert conn.get(f"{p}+b/peek") is None
        assert conn.set(p, b"one") == b"STORED\r\n"
        assert conn.set(p, b"two") == b"STORED\r\n"
        assert drain(conn, p) == [b"one", b"two"]
        assert drain(conn, f"{p}+a") == [b"one", b"two"]
        assert drain(conn, f"{p}+b") == [b"one", b"two"]


def test_child_created_later_gets_no_back_fill(srv, qname):
    p = qname
    with srv.connect() as conn:
        assert conn.get(f"{p}+early") is None
        assert conn.set(p, b"before") == b"STORED\r\n"
        assert conn.get(f"{p}+late") is None
        assert conn.set(p, b"after") == b"STORED\r\n"
        assert drain(conn, f"{p}+late") == [b"after"]
        assert drain(conn, f"{p}+early") == [b"before", b"after"]
        assert drain(conn, p) == [b"before", b"after"]


def test_set_to_a_child_goes_to_that_child_only(srv, qname):
    p = qname
    with srv.connect() as conn:
        assert conn.get(f"{p}+a") is None
        assert conn.get(f"{p}+b") is None
        assert conn.set(f"{p}+a", b"direct") == b"STORED\r\n"
        assert conn.get(f"{p}+b") is None
        assert conn.get(p) is None
        assert drain(conn, f"{p}+a") == [b"direct"]


def test_parent_stats_list_its_children(srv, qname):
    p = qname
    with srv.connect() as conn:
        assert conn.set(p, b"x") == b"STORED\r\n"
        stats = conn.stats()
        assert f"queue_{p}_children" not in stats
        assert conn.get(f"{p}+zeta") is None
        assert conn.get(f"{p}+alpha") is None
        stats = conn.stats()
        assert stats[f"queue_{p}_children"] == f"{p}+alpha,{p}+zeta"
        assert queue_keys(stats, p)[-1] == f"queue_{p}_children"  # last of the queue's keys
        assert f"queue_{p}+alpha_items" in stats


def test_deleting_a_child_unregisters_it(srv, qname):
    p = qname
    with srv.connect() as conn:
        assert conn.get(f"{p}+a") is None
        assert conn.get(f"{p}+b") is None
        assert conn.request(f"delete {p}+a".encode()) == b"DELETED\r\n"
        assert conn.set(p, b"x") == b"STORED\r\n"
        stats = conn.stats()
        assert f"queue_{p}+a_items" not in stats  # not re-created by the fanout
        assert stats[f"queue_{p}_children"] == f"{p}+b"
        assert drain(conn, f"{p}+b") == [b"x"]


def test_deleting_the_parent_keeps_its_children_registered(srv, qname):
    p = qname
    with srv.connect() as conn:
        assert conn.get(f"{p}+a") is None
        assert conn.set(p, b"first") == b"STORED\r\n"
        assert conn.request(f"delete {p}".encode()) == b"DELETED\r\n"
        assert conn.set(p, b"second") == b"STORED\r\n"
        assert drain(conn, f"{p}+a") == [b"first", b"second"]
        assert drain(conn, p) == [b"second"]


def test_fanout_only_parent_keeps_nothing_children_get_everything(srv):
    with srv.connect() as conn:
        assert conn.get("fo+c") is None
        assert conn.set("fo", b"fanned") == b"STORED\r\n"
        assert conn.get("fo") is None
        assert conn.stats()["queue_fo_items"] == "0"
        assert conn.set("fo+c", b"direct") == b"STORED\r\n"  # children ignore fanout_only
        assert drain(conn, "fo+c") == [b"fanned", b"direct"]


def test_fanout_only_parent_without_children_keeps_nothing(srv):
    with srv.connect() as conn:
        assert conn.set("fo_alone", b"nobody") == b"STORED\r\n"
        assert conn.get("fo_alone") is None


def test_child_inherits_parent_config_and_its_own_entry_overrides(srv):
    with srv.connect() as conn:
        assert conn.get("lim+small") is None
        assert conn.get("lim+big") is None
        assert dump_config(conn, "lim+small")["max_items"] == "2"
        assert dump_config(conn, "lim+big")["max_items"] == "5"
        replies = [conn.set("lim", body) for body in (b"1", b"2", b"3")]
        assert replies == [b"STORED\r\n", b"STORED\r\n", b"NOT_STORED\r\n"]  # parent full
        stats = conn.stats()
        assert stats["queue_lim_items"] == "2"
        assert stats["queue_lim+small_items"] == "2"  # inherited max_items = 2
        assert stats["queue_lim+big_items"] == "3"  # its own max_items = 5
        assert drain(conn, "lim+big") == [b"1", b"2", b"3"]
        assert drain(conn, "lim+small") == [b"1", b"2"]
        assert drain(conn, "lim") == [b"1", b"2"]


def test_children_on_disk_receive_fanout_after_restart(server_factory):
    srv = server_factory("")
    with srv.connect() as conn:
        assert conn.get("orders+audit") is None
        assert conn.get("orders+mail") is None
    srv.restart()
    with srv.connect() as conn:
        assert conn.set("orders", b"after-restart") == b"STORED\r\n"  # before any child read
        assert drain(conn, "orders+audit") == [b"after-restart"]
        assert drain(conn, "orders+mail") == [b"after-restart"]
        assert drain(conn, "orders") == [b"after-restart"]


def test_fanout_copies_are_committed_with_the_stored_reply(server_factory):
    """STORED means committed (docs/protocol.md §12): after a kill -9 every child still has
    its copy."""
    srv = server_factory("")
    with srv.connect() as conn:
        assert conn.get("crash+a") is None
        assert conn.get("crash+b") is None
        assert conn.set("crash", b"durable") == b"STORED\r\n"
    srv.kill9()
    srv.start()
    with srv.connect() as conn:
        assert drain(conn, "crash+a") == [b"durable"]
        assert drain(conn, "crash+b") == [b"durable"]
        assert drain(conn, "crash") == [b"durable"]


# -- aliases ----------------------------------------------------------------------------------


def test_set_to_alias_goes_to_every_destination_and_is_counted(srv):
    with srv.connect() as conn:
        assert conn.set("al", b"hello") == b"STORED\r\n"
        assert conn.set("al", b"world!") == b"STORED\r\n"
        stats = conn.stats()
        assert stats["queue_al_put_items"] == "2"
        assert stats["queue_al_put_bytes"] == "11"
        assert stats["queue_al_children"] == "al_d1,al_d2"
        assert "queue_al_items" not in stats  # an alias is not a queue
        assert drain(conn, "al_d1") == [b"hello", b"world!"]
        assert drain(conn, "al_d2") == [b"hello", b"world!"]


@pytest.mark.parametrize("suffix", ["", "/t=3000", "/open", "/peek", "/t=3000/open"])
def test_read_of_an_alias_is_end_at_once(srv, suffix):
    with srv.connect() as conn:
        assert conn.set("al", b"x") == b"STORED\r\n"
        started = time.monotonic()
        conn.send(b"get al" + suffix.encode() + b"\r\nversion\r\n")
        conn.expect(b"END\r\n", timeout=10)
        assert time.monotonic() - started < 1.5, "the alias read waited for t="
        assert conn.read_line().startswith(b"VERSION ")
        assert "queue_al_items" not in conn.stats()
        assert drain(conn, "al_d1") == [b"x"]
        assert drain(conn, "al_d2") == [b"x"]


def test_delete_and_flush_of_an_alias_do_nothing(srv):
    with srv.connect() as conn:
        assert conn.set("al", b"kept") == b"STORED\r\n"
        assert conn.request(b"delete al") == b"DELETED\r\n"
        assert conn.request(b"flush al") == b"END\r\n"
        assert conn.set("al", b"still") == b"STORED\r\n"  # still an alias
        assert drain(conn, "al_d1") == [b"kept", b"still"]
        assert drain(conn, "al_d2") == [b"kept", b"still"]


def test_alias_set_is_not_stored_when_a_destination_refuses(srv):
    with srv.connect() as conn:
        assert conn.set("al_full", b"a") == b"STORED\r\n"
        assert conn.set("al_full", b"b") == b"NOT_STORED\r\n"  # al_cap1 holds 1 at most
        assert drain(conn, "al_cap1") == [b"a"]
        assert drain(conn, "al_ok")[:1] == [b"a"]


def test_alias_to_a_fanout_parent_reaches_its_children(srv):
    with srv.connect() as conn:
        assert conn.get("fanp+c") is None
        assert conn.set("al_fan", b"via-alias") == b"STORED\r\n"
        assert drain(conn, "fanp+c") == [b"via-alias"]
        assert drain(conn, "fanp") == [b"via-alias"]
