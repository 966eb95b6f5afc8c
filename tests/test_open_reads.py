"""Open reads of a connection, and open_transaction_timeout, on a Clock (no sleeps).

Kestrel 2.4.7's rule: an item held open longer than ``open_transaction_timeout`` is given
back by the next transactional read on its queue (that read aborts the oldest expired
open item first, then opens the head).
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import DEFAULT_CONFIG, Conn, Harness

MakeHarness = Callable[..., Harness]
LEASE = DEFAULT_CONFIG + '[queues."q"]\nopen_transaction_timeout = "1s"\n'


def set_req(queue: bytes, data: bytes) -> bytes:
    return b"set %b 0 0 %d\r\n%b\r\n" % (queue, len(data), data)


def value(key: bytes, data: bytes) -> bytes:
    return b"VALUE %b 0 %d\r\n%b\r\nEND\r\n" % (key, len(data), data)


def holding_a(h: Harness) -> tuple[Conn, Conn]:
    """Queue q holds a, b; the first connection has a open, the second nothing."""
    holder, other = h.connect(), h.connect()
    holder.ask(set_req(b"q", b"a") + set_req(b"q", b"b"))
    assert holder.ask(b"get q/open\r\n") == value(b"q/open", b"a")
    return holder, other


def test_an_open_item_is_kept_until_its_timeout_passes(kp: MakeHarness) -> None:
    h = kp(LEASE)
    _holder, other = holding_a(h)
    h.clock.advance(0.999)
    assert other.ask(b"get q/open\r\n") == value(b"q/open", b"b")  # a is still held
    assert h.collection.get("q").open_transactions == 2  # type: ignore[union-attr]


def test_the_next_open_read_gives_an_expired_item_back_first(kp: MakeHarness) -> None:
    h = kp(LEASE)
    holder, other = holding_a(h)
    h.clock.advance(1.0)
    assert other.ask(b"get q/open\r\n") == value(b"q/open", b"a")  # back at the head
    queue = h.collection.get("q")
    assert queue is not None
    assert queue.open_transactions == 1 and queue.canceled_transactions == 1
    assert holder.ask(b"get q/close\r\n") == b"END\r\n"  # nothing left to close
    assert other.ask(b"get q/close\r\n") == b"END\r\n"
    assert holder.ask(b"get q\r\n") == value(b"q", b"b")


def test_a_plain_get_does_not_expire_leases(kp: MakeHarness) -> None:
    h = kp(LEASE)
    _holder, other = holding_a(h)
    h.clock.advance(5.0)
    assert other.ask(b"get q\r\n") == value(b"q", b"b")
    assert other.ask(b"get q\r\n") == b"END\r\n"  # a is still open on holder


def test_an_item_closed_in_time_is_not_given_back(kp: MakeHarness) -> None:
    h = kp(LEASE)
    holder, other = holding_a(h)
    assert holder.ask(b"get q/close\r\n") == b"END\r\n"
    h.clock.advance(2.0)
    assert other.ask(b"get q/open\r\n") == value(b"q/open", b"b")
    assert other.ask(b"get q/close/open\r\n") == b"END\r\n"  # a was closed for good


def test_disconnect_after_the_timeout_returns_the_item_once(kp: MakeHarness) -> None:
    h = kp(LEASE)
    holder, other = h.connect(), h.connect()
    holder.ask(set_req(b"q", b"a"))
    holder.ask(b"get q/open\r\n")
    h.clock.advance(1.5)
    assert other.ask(b"get q/open\r\n") == value(b"q/open", b"a")  # given back, reopened
    holder.lose()  # holder no longer holds it: nothing returns a second time
    assert other.ask(b"get q/close\r\n") == b"END\r\n"
    assert other.ask(b"get q\r\n") == b"END\r\n"
    assert h.collection.get("q").items == 0  # type: ignore[union-attr]


def test_without_a_timeout_open_items_are_held_forever(kp: MakeHarness) -> None:
    h = kp()
    holder, other = h.connect(), h.connect()
    holder.ask(set_req(b"q", b"a"))
    holder.ask(b"get q/open\r\n")
    h.clock.advance(10**6)
    assert other.ask(b"get q/open\r\n") == b"END\r\n"
