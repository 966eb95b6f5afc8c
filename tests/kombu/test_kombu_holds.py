"""kestrelpy.kombu.holds: one connection per unacknowledged message, idle ones reused."""

from __future__ import annotations

import threading
from itertools import count

from kestrelpy.kombu.holds import Holds


def fresh() -> Holds[str]:
    numbers = count(1)
    return Holds(lambda: f"c{next(numbers)}")


def test_checkout_makes_clients_until_one_is_idle() -> None:
    holds = fresh()
    assert holds.checkout() == "c1"
    assert holds.checkout() == "c2"
    holds.idle("c1")
    assert holds.checkout() == "c1"


def test_idle_is_a_stack_so_the_last_idled_client_reads_next() -> None:
    holds = fresh()
    holds.idle("a")
    holds.idle("b")
    assert holds.checkout() == "b"


def test_take_returns_the_hold_once() -> None:
    holds = fresh()
    holds.hold("t1", "c1", "q")
    held = holds.take("t1")
    assert held is not None and (held.client, held.queue) == ("c1", "q")
    assert holds.take("t1") is None
    assert holds.take("never") is None


def test_tags_in_delivery_order() -> None:
    holds = fresh()
    for tag in ("t1", "t2", "t3"):
        holds.hold(tag, "c" + tag, "q")
    holds.take("t2")
    assert holds.tags() == ["t1", "t3"]


def test_drain_idle_keeps_the_last_ones() -> None:
    holds = fresh()
    for client in ("a", "b", "c"):
        holds.idle(client)
    assert holds.drain_idle(keep=1) == ["a", "b"]
    assert holds.checkout() == "c"


def test_drop_all_forgets_idle_and_holding_clients() -> None:
    holds = fresh()
    holds.idle("a")
    holds.hold("t", "b", "q")
    assert sorted(holds.drop_all()) == ["a", "b"]
    assert holds.tags() == []
    assert holds.checkout() == "c1"


def test_acks_from_other_threads_lose_no_client() -> None:
    """A prefork worker acks from its result thread while the consumer holds new ones."""
    holds = fresh()
    tags = [f"t{i}" for i in range(2000)]
    for tag in tags:
        holds.hold(tag, "x" + tag, "q")

    def ack(part: list[str]) -> None:
        for tag in part:
            held = holds.take(tag)
            assert held is not None
            holds.idle(held.client)

    threads = [threading.Thread(target=ack, args=(tags[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert holds.tags() == []
    assert sorted(holds.drain_idle()) == sorted("x" + tag for tag in tags)


def test_after_drop_all_idle_and_hold_refuse_so_the_caller_disconnects() -> None:
    """An ack racing the channel's close: its client must not sit in an idle stack that
    nobody will ever drain (a leaked connection)."""
    holds = fresh()
    holds.hold("t", "b", "q")
    assert holds.drop_all() == ["b"]
    assert holds.idle("b") is False
    assert holds.hold("t2", "c", "q") is False
    assert holds.drain_idle() == []
    assert holds.tags() == []


def test_len_counts_held_messages() -> None:
    holds = fresh()
    holds.hold("t1", "a", "q")
    holds.hold("t2", "b", "q")
    holds.idle("c")
    assert len(holds) == 2
