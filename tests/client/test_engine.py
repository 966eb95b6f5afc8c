"""kestrelpy.client.engine over scripted links: which replies count, which link a failure
concerns, and what close and abort may claim. No sockets: each fake link answers from a
script, and an exchange scripted as ``SUSPEND`` waits until the test resumes it, so two
operations can be interleaved by hand."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from kestrelpy.client import NoServerAvailable, ServerUnavailable
from kestrelpy.client.blocking import run_to_end
from kestrelpy.client.engine import Engine
from kestrelpy.client.protocol import END, STORED, Reply, Value, set_request
from kestrelpy.client.servers import ServerAddress

A = ServerAddress("10.0.0.1", 22133)
B = ServerAddress("10.0.0.2", 22133)

SUSPEND = object()  # script entry: the exchange waits for the test to resume it


class _Resume:
    def __await__(self) -> Any:
        return (yield self)


class FakeLink:
    """Answers each exchange with the next scripted reply list or exception."""

    def __init__(self, name: str, *answers: object) -> None:
        self.name = name
        self.answers = list(answers)
        self.sent: list[bytes] = []
        self.usable = True
        self.closed = False

    async def exchange(
        self, request: bytes, replies: int, wait_s: float, opens: bytes = b""
    ) -> list[Reply]:
        self.sent.append(request)
        answer = self.answers.pop(0)
        if answer is SUSPEND:
            answer = await _Resume()
        if isinstance(answer, ServerUnavailable):
            self.usable = False
            raise answer
        assert isinstance(answer, list)
        return answer

    def close(self) -> None:
        self.usable = False
        self.closed = True

    def __repr__(self) -> str:
        return f"FakeLink({self.name})"


class Connector:
    """Hands out the scripted links of each server, in order; records every connect."""

    def __init__(self, links: dict[ServerAddress, list[FakeLink]]) -> None:
        self.links = links
        self.connects: list[ServerAddress] = []

    async def __call__(self, address: ServerAddress, timeout_s: float) -> FakeLink:
        self.connects.append(address)
        return self.links[address].pop(0)


def engine_over(
    links: dict[ServerAddress, list[FakeLink]], **options: Any
) -> tuple[Engine, Connector]:
    connector = Connector(links)
    engine = Engine([str(a) for a in links], connect=connector, clock=lambda: 1000.0, **options)
    return engine, connector


def item(body: bytes) -> Reply:
    return Reply(END, [Value(b"q", 0, body)])


def ok() -> Reply:
    return Reply(STORED)


def gone(*replies: Reply, stale: bool = False) -> ServerUnavailable:
    return ServerUnavailable("server", "connection reset", replies=replies, stale=stale)


def sets(queue: bytes, *bodies: bytes) -> bytes:
    flags = 0x4B01_0000  # json
    return b"".join(set_request(queue, flags, 0, body) for body in bodies)


def finished_read_on_a(engine: Engine) -> None:
    """A reliable read of "q" on server A whose close is owed (rides on the next request)."""
    assert run_to_end(engine.open("q")) == "job"
    engine.finish("q")


# -- the owed closes' replies are not the request's ------------------------------------------


def test_put_many_does_not_count_an_owed_close_as_a_stored_item() -> None:
    """A answers the close and the first set, then dies: the second and third items go to
    B. Counting the close's END as an acknowledged set skipped "b" (lost, yet counted)."""
    link_a = FakeLink("a", [item(b'"job"')], gone(Reply(END), ok()))
    link_b = FakeLink("b", [ok(), ok()])
    engine, _ = engine_over({A: [link_a], B: [link_b]})
    finished_read_on_a(engine)

    assert run_to_end(engine.put_many("out", ["a", "b", "c"])) == 3
    assert link_a.sent[1].startswith(b"get q/close\r\n")
    assert link_b.sent == [sets(b"out", b'"b"', b'"c"')]


def test_a_put_after_an_owed_close_that_alone_was_answered_is_unanswered() -> None:
    """Only the close got its END before the server died: the put was not answered, and
    the server is down (it was raised as ServerRefused(... "END"), a refusal)."""
    link_a = FakeLink("a", [item(b'"job"')], gone(Reply(END)))
    engine, _ = engine_over({A: [link_a]})
    finished_read_on_a(engine)

    with pytest.raises(NoServerAvailable, match="connection reset"):
        run_to_end(engine.put("out", "a"))
    assert not engine.pool.is_up(A)


# -- close and abort only on the connection that opened the read -----------------------------


@pytest.mark.parametrize("operation", ["close", "abort"])
def test_close_or_abort_is_never_retried_on_a_fresh_connection(operation: str) -> None:
    """The server closed the idle connection that held the read (``client_timeout``), so
    the item is back on its queue. A retry on a fresh connection would answer END and
    report success for an item that will be delivered again."""
    link = FakeLink("a", [item(b'"job"')], gone(stale=True))
    engine, connector = engine_over({A: [link, FakeLink("fresh", [Reply(END)])]})
    assert run_to_end(engine.open("q")) == "job"

    with pytest.raises(ServerUnavailable, match="the connection that held the read is gone"):
        run_to_end(getattr(engine, operation)("q"))
    assert connector.connects == [A]  # never reconnected for it
    assert engine.pool.is_up(A)  # a stale idle connection says nothing about the server
    assert run_to_end(getattr(engine, operation)("q")) is False  # reported once, then gone


def test_a_read_voided_by_another_requests_failure_cannot_be_closed() -> None:
    """Another request found the connection gone and reconnected: the read it held is back
    on its queue, and close says so instead of sending ``get q/close`` on the new one."""
    link = FakeLink("a", [item(b'"job"')], gone(stale=True))
    fresh = FakeLink("fresh", [ok()])
    engine, _ = engine_over({A: [link, fresh]})
    assert run_to_end(engine.open("q")) == "job"
    run_to_end(engine.put("out", 1))  # stale: retried on ``fresh``
    assert not engine.holds("q")

    with pytest.raises(ServerUnavailable, match="the connection that held the read is gone"):
        run_to_end(engine.close("q"))
    assert fresh.sent == [sets(b"out", b"1")]  # no close went out on the new connection


def test_a_lost_read_does_not_block_the_next_open_of_its_queue() -> None:
    link = FakeLink("a", [item(b'"job"')], gone(stale=True))
    fresh = FakeLink("fresh", [ok()], [item(b'"again"')])
    engine, _ = engine_over({A: [link, fresh]})
    assert run_to_end(engine.open("q")) == "job"
    run_to_end(engine.put("out", 1))
    assert run_to_end(engine.open("q")) == "again"
    assert fresh.sent[-1] == b"get q/open\r\n"  # no close of the lost read folded in


# -- a failure concerns its own link only ----------------------------------------------------


def test_a_late_failure_of_a_replaced_link_spares_its_replacement() -> None:
    """A read is in flight on the first link when the link is dropped (``disconnect``) and
    a new one made. The old link's failure then must not close the new link, void the
    read held on it, or count the server down; the read is sent again on the new link."""
    old = FakeLink("old", SUSPEND)
    new = FakeLink("new", [item(b'"held"')], [item(b'"late"')], [Reply(END)])
    engine, _ = engine_over({A: [old, new]})

    in_flight: Coroutine[Any, Any, Any] = engine.get("q")
    in_flight.send(None)  # sent on ``old``, waiting for its reply
    run_to_end(engine.disconnect())
    assert old.closed
    assert run_to_end(engine.open("held")) == "held"  # on ``new``

    with pytest.raises(StopIteration) as done:
        in_flight.throw(gone())  # closed by us: no reply
    assert done.value.value == "late"
    assert not new.closed
    assert engine.pool.is_up(A)
    assert engine.holds("held")
    assert run_to_end(engine.close("held")) is True
    assert new.sent[-1] == b"get held/close\r\n"


def test_the_failure_of_the_current_link_still_counts_the_server_down() -> None:
    link = FakeLink("a", gone())
    engine, _ = engine_over({A: [link]})
    with pytest.raises(NoServerAvailable):
        run_to_end(engine.get("q"))
    assert link.closed
    assert not engine.pool.is_up(A)


# -- decode_by_flags -------------------------------------------------------------------------


def test_decode_by_flags_off_reads_every_item_with_the_clients_codec() -> None:
    json_marked = Reply(END, [Value(b"q", 0x4B01_0000, b'{"a":1}')])
    php_compressed = Reply(END, [Value(b"q", 16, b"x\x9c\x03\x00")])
    link = FakeLink("a", [json_marked], [php_compressed])
    engine, _ = engine_over({A: [link]}, codec="raw", decode_by_flags=False)
    assert run_to_end(engine.get("q")) == b'{"a":1}'
    assert run_to_end(engine.get("q")) == b"x\x9c\x03\x00"
