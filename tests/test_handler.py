"""Session: what each request means, its reply and its control code (docs/protocol.md §2-§7).

Most tests run a :class:`~kestrelpy.handler.Session` directly on parsed requests and look
at the reply parts it appends (plain bytes, or Durable markers the connection turns into
bytes after the commit) and the code it returns (DONE/WROTE/BLOCKED/CLOSE). Commands whose
effect is easier to see on the wire go through a StringTransport connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import DEFAULT_CONFIG, Harness

from kestrelpy import handler
from kestrelpy.handler import Session
from kestrelpy.replies import (
    BLOCKED,
    CLOSE,
    DELETED_DURABLE,
    DONE,
    END_DURABLE,
    FLUSHED_DURABLE,
    STORED_DURABLE,
    WROTE,
    Durable,
)
from kestrelpy.wire.memcache import NOT_STORED, MemcacheParser

MakeHarness = Callable[..., Harness]
END = b"END\r\n"


class Driver:
    """A Session with a parser in front; records what a blocked read resumes with."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.resumed: list[tuple[list[Any], int]] = []
        self.session = Session(h.ctx, self)
        self.parser = MemcacheParser()

    def resume(self, replies: list[Any], code: int) -> None:
        self.resumed.append((replies, code))

    def run(self, raw: bytes) -> tuple[list[int], list[Any]]:
        out: list[Any] = []
        codes = [self.session.execute(request, out) for request in self.parser.feed(raw)]
        return codes, out


def wire(out: list[Any]) -> bytes:
    """The reply bytes, as sent after a successful commit."""
    return b"".join(part.ok if isinstance(part, Durable) else part for part in out)


def conf(extra: str = "") -> str:
    return DEFAULT_CONFIG + extra


def set_req(queue: bytes, data: bytes, tail: bytes = b"") -> bytes:
    return b"set %b 0 0 %d%b\r\n%b\r\n" % (queue, len(data), tail, data)


# ---------------------------------------------------------------- codes and markers


def test_set_codes_and_durable_marker(kp: MakeHarness) -> None:
    d = Driver(kp(conf('[queues."small"]\nmax_item_size = 1\n')))
    assert d.run(set_req(b"q", b"x")) == ([WROTE], [STORED_DURABLE])
    assert d.run(set_req(b"q", b"x", b" noreply")) == ([WROTE], [])
    assert d.run(set_req(b"small", b"xx")) == ([DONE], [NOT_STORED])
    assert d.run(set_req(b"small", b"xx", b" noreply")) == ([DONE], [])


def test_get_codes(kp: MakeHarness) -> None:
    h = kp()
    d = Driver(h)
    d.run(set_req(b"q", b"x"))
    assert d.run(b"get q\r\n") == ([DONE], [b"VALUE q 0 1\r\nx\r\nEND\r\n"])
    assert d.run(b"get q\r\n") == ([DONE], [END])
    assert d.run(b"get q/t=250\r\n") == ([BLOCKED], [])
    h.clock.advance(0.25)
    assert d.resumed == [([END], DONE)]


def test_blocked_get_resumes_with_the_item(kp: MakeHarness) -> None:
    h = kp()
    d, other = Driver(h), Driver(h)
    assert d.run(b"gets q/t=250/open\r\n") == ([BLOCKED], [])
    other.run(set_req(b"q", b"x"))
    assert d.resumed == [([b"VALUE q/t=250/open 0 1 0\r\nx\r\nEND\r\n"], DONE)]
    h.clock.advance(1)
    assert len(d.resumed) == 1


def test_get_key_options_are_shared_between_sessions_and_bounded(kp: MakeHarness) -> None:
    """Parsed get options live in one server-wide cache, not one per connection (idle
    readers are many); a client sending ever new keys cannot grow it past its bound."""
    h = kp()
    first, second = Driver(h), Driver(h)
    first.run(b"get q/open\r\n")
    assert second.run(b"get q/open\r\n") == ([DONE], [END])
    assert handler._get_keys[b"q/open"].open  # one entry for both sessions
    for n in range(handler._GET_KEYS_MAX + 10):  # unknown options are ignored
        assert first.run(b"get q/peek/x%d\r\n" % n) == ([DONE], [END])
    assert len(handler._get_keys) <= handler._GET_KEYS_MAX


def test_removals_are_durable_replies(kp: MakeHarness) -> None:
    d = Driver(kp())
    d.run(set_req(b"q", b"x"))
    assert d.run(b"flush q\r\n") == ([WROTE], [END_DURABLE])
    assert d.run(b"flush_all\r\n") == ([WROTE], [FLUSHED_DURABLE])
    assert d.run(b"flush_all 0\r\n") == ([WROTE], [FLUSHED_DURABLE])  # args ignored
    assert d.run(b"delete q\r\n") == ([WROTE], [DELETED_DURABLE])
    assert d.run(b"delete q noreply\r\nflush q noreply\r\nflush_all noreply\r\n") == (
        [WROTE, WROTE, WROTE],
        [],
    )


def test_invalid_requests(kp: MakeHarness) -> None:
    d = Driver(kp())
    assert d.run(b"set q x 0 1 noreply\r\nx\r\n") == ([DONE], [])
    assert d.run(b"set q x 0 1\r\nx\r\n") == ([DONE], [b"CLIENT_ERROR bad flags\r\n"])
    codes, out = d.run(b"get q/abort/open\r\n")
    assert codes == [CLOSE]
    assert wire(out).startswith(b"CLIENT_ERROR bad get options")


def test_unknown_commands(kp: MakeHarness) -> None:
    d = Driver(kp())
    assert d.run(b"bogus\r\nincr q 1\r\n\r\n") == ([DONE] * 3, [b"ERROR\r\n"] * 3)


def test_bare_error_lines(kp: MakeHarness) -> None:
    d = Driver(kp(conf("bare_error_lines = true\n")))
    assert d.run(b"bogus\r\ndelete\r\n") == ([DONE, DONE], [b"ERROR\r\n", b"CLIENT_ERROR\r\n"])
    assert d.run(b"get q/peek/open\r\n") == ([CLOSE], [b"CLIENT_ERROR\r\n"])


def test_missing_queue_names(kp: MakeHarness) -> None:
    d = Driver(kp())
    missing = b"CLIENT_ERROR missing queue name\r\n"
    assert d.run(b"delete\r\nflush\r\n") == ([DONE, DONE], [missing, missing])


def test_flush_expired_without_a_name_closes(kp: MakeHarness) -> None:
    # docs/protocol.md §7: a missing argument to flush_expired drops the connection in Kestrel;
    # kestrelpy says why (CLIENT_ERROR) and closes.
    d = Driver(kp())
    codes, out = d.run(b"flush_expired\r\n")
    assert codes == [CLOSE]
    assert wire(out).startswith(b"CLIENT_ERROR ")


def test_which_commands_create_queues(kp: MakeHarness) -> None:
    h = kp()
    d = Driver(h)
    d.run(b"delete a\r\nflush b\r\nflush_expired c\r\nstats\r\ndump_stats d\r\nget e/close\r\n")
    d.run(b"get e/abort\r\n")
    assert h.collection.names() == []
    d.run(b"get f\r\nget g/peek\r\n" + set_req(b"h", b"x"))
    assert h.collection.names() == ["f", "g", "h"]
    assert h.ctx.stats.queue_creates == 3
    d.run(b"delete f\r\n")
    assert h.ctx.stats.queue_deletes == 1


def test_version_quit_shutdown(kp: MakeHarness) -> None:
    h = kp()
    calls: list[str] = []
    h.ctx.shutdown = lambda: calls.append("shutdown")
    d = Driver(h)
    codes, out = d.run(b"version\r\n")
    assert codes == [DONE] and out[0].startswith(b"VERSION kestrelpy-")
    assert d.run(b"quit\r\n") == ([CLOSE], [])
    assert d.run(b"shutdown\r\n") == ([CLOSE], [])
    assert calls == []  # not from inside the request: on the next reactor turn
    h.clock.advance(0)
    assert calls == ["shutdown"]


# ------------------------------------------------------------------------ aliases


def test_alias_reads_end_at_once(kp: MakeHarness) -> None:
    h = kp(conf('[aliases."al"]\ndestination_queues = ["x", "y"]\n'))
    d = Driver(h)
    assert d.run(set_req(b"al", b"m")) == ([WROTE], [STORED_DURABLE])
    assert d.run(b"get al/t=1000\r\nget al/open\r\n") == ([DONE, DONE], [END, END])
    assert d.run(b"delete al\r\nflush al\r\n") == ([DONE, WROTE], [b"DELETED\r\n", END_DURABLE])
    assert [q.items for q in h.collection.queues()] == [1, 1]


# ------------------------------------------------------------------------ dump_*


def test_dump_stats(kp: MakeHarness) -> None:
    h = kp()
    d = Driver(h)
    assert d.run(b"dump_stats\r\n") == ([DONE], [END])
    d.run(set_req(b"q", b"abc"))
    _, out = d.run(b"dump_stats q nope\r\n")
    text = wire(out).decode()
    lines = text.split("\r\n")
    assert lines[0] == "queue 'q' {"
    assert lines[1:4] == ["  items=1", "  bytes=3", "  total_items=1"]
    close = lines.index("}")
    assert all(line.startswith("  ") and "=" in line for line in lines[1:close])
    assert lines[close + 1 :] == ["queue 'nope' {", "  ", "}", "END", ""]
    _, everything = d.run(b"dump_stats\r\n")
    assert wire(everything).decode().startswith("queue 'q' {\r\n  items=1\r\n")


def test_dump_config(kp: MakeHarness) -> None:
    d = Driver(kp(conf('[queues."q"]\nmax_items = 5\nmax_age = "30s"\n')))
    d.run(b"get q\r\n")
    _, out = d.run(b"dump_config q\r\n")
    lines = wire(out).decode().split("\r\n")
    assert lines[0] == "queue 'q' {"
    assert "  max_items=5" in lines
    assert "  max_age=30000" in lines
    assert "  discard_old_when_full=false" in lines
    assert "  expire_to_queue=none" in lines
    assert lines[-3:] == ["}", "END", ""]


# ------------------------------------------------------------------------ status


def test_status_show_and_change(kp: MakeHarness) -> None:
    d = Driver(kp())
    assert d.run(b"status\r\n") == ([DONE], [b"UP\r\n"])
    assert d.run(b"status ReadOnly\r\nstatus\r\n") == ([DONE, DONE], [END, b"READONLY\r\n"])
    assert d.run(b"status up\r\n") == ([DONE], [END])
    for bad in (b"status down\r\n", b"status bogus\r\n"):
        codes, out = Driver(d.h).run(bad)
        assert codes == [CLOSE]
        assert wire(out).startswith(b"CLIENT_ERROR")


@pytest.mark.parametrize(
    "request_bytes",
    [
        set_req(b"q", b"x"),
        b"delete q\r\n",
        b"flush q\r\n",
        b"flush_all\r\n",
        b"flush_expired q\r\n",
    ],
)
def test_readonly_refuses_writes(kp: MakeHarness, request_bytes: bytes) -> None:
    h = kp()
    Driver(h).run(set_req(b"q", b"x") + b"status readonly\r\n")
    codes, out = Driver(h).run(request_bytes)
    assert codes == [CLOSE]
    assert wire(out).startswith(b"SERVER_ERROR")
    assert h.collection.get("q").items == 1  # type: ignore[union-attr]


def test_readonly_allows_reads(kp: MakeHarness) -> None:
    h = kp()
    Driver(h).run(set_req(b"q", b"a") + set_req(b"q", b"b") + b"status readonly\r\n")
    d = Driver(h)
    codes, out = d.run(b"get q/peek\r\nget q/open\r\nget q/close\r\nget q\r\nstats\r\n")
    assert codes == [DONE] * 5
    assert wire(out).startswith(b"VALUE q/peek 0 1\r\na\r\nEND\r\nVALUE q/open 0 1\r\na\r\n")


@pytest.mark.parametrize(
    "request_bytes", [b"get q\r\n", b"get q/peek\r\n", b"get q/open\r\n", set_req(b"q", b"x")]
)
def test_quiescent_refuses_reads_and_writes(kp: MakeHarness, request_bytes: bytes) -> None:
    h = kp()
    Driver(h).run(set_req(b"q", b"x") + b"status quiescent\r\n")
    codes, out = Driver(h).run(request_bytes)
    assert codes == [CLOSE]
    assert wire(out).startswith(b"SERVER_ERROR")


def test_quiescent_still_allows_close_abort_and_admin(kp: MakeHarness) -> None:
    h = kp()
    holder = Driver(h)
    holder.run(set_req(b"q", b"a") + set_req(b"q", b"b"))
    holder.run(b"get q/open\r\n")
    Driver(h).run(b"status quiescent\r\n")
    codes, _ = holder.run(
        b"get q/close\r\nget q/abort\r\nstats\r\nversion\r\nflush_all_expired\r\nstatus\r\n"
    )
    assert codes == [DONE, DONE, DONE, DONE, WROTE, DONE]
    assert h.collection.get("q").items == 1  # type: ignore[union-attr]
    codes, out = holder.run(b"get q/close/open\r\n")
    assert codes == [CLOSE]
    assert wire(out).startswith(b"SERVER_ERROR")  # refused, but the close part happened:
    assert h.collection.get("q").open_transactions == 0  # type: ignore[union-attr]


def test_status_tightening_waits_for_the_grace_period(kp: MakeHarness) -> None:
    h = kp(conf('status_change_grace_period = "2s"\n'))
    d = Driver(h)
    assert d.run(b"status readonly\r\n") == ([DONE], [END])
    assert h.ctx.status == "up"
    h.clock.advance(1.9)
    assert Driver(h).run(set_req(b"q", b"x")) == ([WROTE], [STORED_DURABLE])
    h.clock.advance(0.1)
    assert h.ctx.status == "readonly"
    d.run(b"status up\r\n")
    assert h.ctx.status == "up"  # loosening is immediate


def test_status_persists_across_restart(kp: MakeHarness) -> None:
    h = kp()
    Driver(h).run(b"status readonly\r\n")
    h.restart()
    assert Driver(h).run(b"status\r\n") == ([DONE], [b"READONLY\r\n"])


def test_default_status(kp: MakeHarness) -> None:
    h = kp(conf('default_status = "quiescent"\n'))
    assert Driver(h).run(b"status\r\n") == ([DONE], [b"QUIESCENT\r\n"])


# ------------------------------------------------------------------------ reload


def test_reload_applies_queue_config(kp: MakeHarness) -> None:
    h = kp()
    d = Driver(h)
    d.run(set_req(b"q", b"1"))
    h.config_path.write_text(conf('[queues."q"]\nmax_items = 1\n'), encoding="utf-8")
    assert d.run(b"reload\r\n") == ([DONE], [b"Reloaded config.\r\n"])
    assert d.run(set_req(b"q", b"2")) == ([DONE], [NOT_STORED])


def test_bad_reload_keeps_the_old_config(kp: MakeHarness) -> None:
    h = kp(conf('[queues."q"]\nmax_items = 1\n'))
    d = Driver(h)
    h.config_path.write_text(conf("[queues.q]\nmax_itemz = 5\n"), encoding="utf-8")
    codes, out = d.run(b"reload\r\n")
    assert codes == [DONE]
    assert wire(out).startswith(b"SERVER_ERROR config error: ")
    assert wire(out).count(b"\r\n") == 1
    assert d.run(set_req(b"q", b"1") + set_req(b"q", b"2")) == (
        [WROTE, DONE],
        [STORED_DURABLE, NOT_STORED],
    )


def test_reloaded_server_settings_apply_to_new_connections_only(kp: MakeHarness) -> None:
    # A connection keeps the [server] rules it opened with, for every command alike.
    h = kp()
    old, other = h.connect(), h.connect()
    h.config_path.write_text(conf("connection_limit_refuse_writes = 1\n"), encoding="utf-8")
    assert old.ask(b"reload\r\n") == b"Reloaded config.\r\n"
    assert old.ask(set_req(b"q", b"x") + b"delete q\r\nflush_all\r\n") == (
        b"STORED\r\nDELETED\r\nFlushed all queues.\r\n"
    )
    fresh = h.connect()
    assert fresh.ask(b"delete q\r\n") == b"SERVER_ERROR too many connections\r\n"
    assert other.ask(b"flush q\r\n") == b"END\r\n"


# ------------------------------------------------------------------------ session end


def test_end_cancels_the_wait_and_returns_open_items(kp: MakeHarness) -> None:
    h = kp(conf("max_open_transactions = 5\n"))
    d, waiter = Driver(h), Driver(h)
    d.run(set_req(b"q", b"a") + set_req(b"q", b"b") + set_req(b"r", b"c"))
    d.run(b"get q/open\r\nget q/open\r\nget r/open\r\n")
    assert waiter.run(b"get w/t=1000\r\n") == ([BLOCKED], [])
    waiter.session.end()
    d.session.end()
    d.session.end()  # idempotent
    h.clock.advance(2)
    assert waiter.resumed == []
    assert h.collection.get("w").waiters == 0  # type: ignore[union-attr]
    other = Driver(h)
    assert wire(other.run(b"get q\r\nget q\r\nget r\r\n")[1]) == (
        b"VALUE q 0 1\r\na\r\nEND\r\nVALUE q 0 1\r\nb\r\nEND\r\nVALUE r 0 1\r\nc\r\nEND\r\n"
    )


# -------------------------------------------------------------- monitor and confirm


def test_confirm(kp: MakeHarness) -> None:
    # docs/protocol.md §5: `confirm q count` confirms the count oldest open items -> END; more
    # than are open (or 0) confirms nothing -> ERROR, kept; a missing count -> CLIENT_ERROR.
    h = kp(conf("max_open_transactions = 5\n"))
    d = Driver(h)
    d.run(set_req(b"q", b"a") + set_req(b"q", b"b") + set_req(b"q", b"c"))
    d.run(b"get q/open\r\nget q/open\r\n")
    assert d.run(b"confirm q 3\r\n") == ([DONE], [b"ERROR\r\n"])
    assert d.run(b"confirm q 0\r\n") == ([DONE], [b"ERROR\r\n"])
    codes, out = d.run(b"confirm q\r\n")
    assert codes == [DONE] and wire(out).startswith(b"CLIENT_ERROR")
    codes, out = d.run(b"confirm q 2\r\n")
    assert codes in ([DONE], [WROTE]) and wire(out) == END
    assert h.collection.get("q").open_transactions == 0  # type: ignore[union-attr]
    d.session.end()
    h.restart()
    assert wire(Driver(h).run(b"get q\r\nget q\r\n")[1]) == b"VALUE q 0 1\r\nc\r\nEND\r\nEND\r\n"


def test_monitor_opens_up_to_max_items(kp: MakeHarness) -> None:
    # docs/protocol.md §5: each item `VALUE q 0 n` + data + END, then a final END.
    h = kp(conf("max_open_transactions = 10\n"))
    conn = h.connect()
    conn.ask(set_req(b"q", b"a") + set_req(b"q", b"b") + set_req(b"q", b"c"))
    assert conn.ask(b"monitor q 1 2\r\n") == (
        b"VALUE q 0 1\r\na\r\nEND\r\nVALUE q 0 1\r\nb\r\nEND\r\nEND\r\n"
    )
    assert h.collection.get("q").open_transactions == 2  # type: ignore[union-attr]
    assert conn.ask(b"confirm q 2\r\n") == END
    assert conn.ask(b"get q\r\n") == b"VALUE q 0 1\r\nc\r\nEND\r\n"
