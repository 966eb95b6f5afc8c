"""The kombu transport against real ``kestrelpy serve`` processes, without Celery workers:
refusals, several servers, fanout across servers, poison items, threads.

Each test starts its own servers (fixtures in conftest.py) and talks kombu to them the way
a Celery worker's consumer or a producer does; the servers' stats, read over a raw
memcache connection, show what was left open or queued.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

import kestrelpy.kombu  # noqa: F401  (registers kestrelpy://)

from .conftest import ServerFactory, ServerProcess, wait_until
from .kombu_support import broker_url, publish

WAIT_S = 10.0  # a deadline for anything that should happen at once


def queue_stat(server: ServerProcess, queue: str, key: str) -> int:
    with server.connect() as conn:
        return int(conn.stats().get(f"queue_{queue}_{key}", "0"))


def set_status(server: ServerProcess, status: str) -> None:
    with server.connect() as admin:
        assert admin.request(b"status " + status.encode()) == b"END\r\n"


def retried(operation: Callable[[], object], errors: tuple[type[BaseException], ...]) -> object:
    """``operation``'s result once it stops raising ``errors`` (a client backs a refusing
    server off for a moment), within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return operation()
        except errors:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- refusals --------------------------------------------------------------------------------


def test_a_server_refusing_for_now_is_a_connection_error_not_a_channel_error(
    server: ServerProcess,
) -> None:
    """``SERVER_ERROR server is quiescent`` means "try again later": Celery retries
    connection errors by reconnecting, but a worker exits on a channel error."""
    with Connection(broker_url(server)) as conn:
        queue = conn.SimpleQueue("qs")
        queue.put({"i": 1})
        set_status(server, "quiescent")
        with pytest.raises(conn.connection_errors, match="quiescent") as caught:
            queue.get(timeout=1)
        assert not isinstance(caught.value, conn.channel_errors)
        with pytest.raises(conn.connection_errors, match="quiescent") as caught:
            queue.put({"i": 2})
        assert not isinstance(caught.value, conn.channel_errors)
        set_status(server, "up")
        message = retried(lambda: queue.get(timeout=1), conn.connection_errors)
        assert getattr(message, "payload", None) == {"i": 1}
        message.ack()  # type: ignore[attr-defined]
        queue.close()
    assert queue_stat(server, "qs", "open_transactions") == 0


# -- several servers -------------------------------------------------------------------------


def test_messages_on_the_second_server_do_not_each_wait_out_a_read_on_the_first(
    server_factory: ServerFactory,
) -> None:
    """Each delivered message keeps its reading client, so every read starts on a fresh
    client's first server: without a pass over every server first, each message on the
    second one came only after a whole blocking read (8 s here) on the first."""
    first, second = server_factory(), server_factory()
    publish(broker_url(second), "lat", ({"i": i} for i in range(4)))
    with Connection(broker_url(first, second)) as conn:
        queue = conn.SimpleQueue("lat")
        queue.consumer.qos(prefetch_count=4)
        got = []
        deadline = time.monotonic() + 5.0  # far under two blocking reads
        while len(got) < 4 and time.monotonic() < deadline:
            got.append(queue.get(timeout=8))
        assert sorted(m.payload["i"] for m in got) == [0, 1, 2, 3]
        for message in got:
            message.ack()
        queue.close()
    assert queue_stat(second, "lat", "open_transactions") == 0


def test_a_hung_server_costs_one_timeout_not_one_per_message(
    server_factory: ServerFactory,
) -> None:
    """A server that accepts connections and never answers: each delivered message leaves
    with its client, so with a pool per client every fresh reader waited ``timeout_s`` on
    it again. The channel's clients share one pool: the first failure backs it off for all."""
    good = server_factory()
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the backlog accepts; nobody ever answers
        publish(broker_url(good), "bh", ({"i": i} for i in range(6)))
        url = f"kestrelpy://127.0.0.1:{hung.getsockname()[1]};{good.host}:{good.port}//"
        with Connection(url, transport_options={"timeout_s": 1.0}) as conn:
            queue = conn.SimpleQueue("bh")
            queue.consumer.qos(prefetch_count=6)
            got = []
            deadline = time.monotonic() + 5.0  # six timeouts before; one or two now
            while len(got) < 6 and time.monotonic() < deadline:
                got.append(queue.get(timeout=10))
            assert sorted(m.payload["i"] for m in got) == list(range(6))
            for message in got:
                message.ack()
            queue.close()


def test_a_broadcast_reaches_a_queue_whose_child_is_missing_on_one_server(
    server_factory: ServerFactory,
) -> None:
    """A queue bound while a server was down has no fanout child there (deleting it on
    that server makes the same state). A broadcast whose ``set`` that server takes stayed
    in the parent, which the publish then flushes: writes rotate, so half were lost."""
    first, second = server_factory(), server_factory()
    url = broker_url(first, second)
    exchange = Exchange("news", type="fanout")
    with Connection(url) as consumer, Connection(url) as producer:
        queue = consumer.SimpleQueue(Queue("reader", exchange))
        with second.connect() as raw:
            assert raw.request(b"delete news+reader") == b"DELETED\r\n"
        publisher = producer.Producer()
        for i in range(6):
            publisher.publish({"i": i}, exchange=exchange, declare=[exchange])
        got = []
        deadline = time.monotonic() + WAIT_S
        while len(got) < 6 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                message = queue.get(timeout=1)
                got.append(message.payload["i"])
                message.ack()
        queue.close()
    assert sorted(got) == list(range(6))
    for srv in (first, second):
        assert queue_stat(srv, "news", "items") == 0


# -- items that are not kombu messages -------------------------------------------------------

UNDECODABLE = b'{"properties": {"body_encoding": "zzz"}, "body": "QUJD"}'


def test_a_payload_kombu_cannot_decode_is_dead_lettered_not_raised(server: ServerProcess) -> None:
    """JSON with properties, but a body encoding kombu does not know: building kombu's
    Message raised AttributeError out of drain_events, and the item stayed open."""
    with server.connect() as raw:
        assert raw.set("poison", UNDECODABLE) == b"STORED\r\n"
    with Connection(broker_url(server)) as conn:
        queue = conn.SimpleQueue("poison")
        queue.put({"ok": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"ok": 1}
        message.ack()
        queue.close()
    with server.connect() as raw:
        assert raw.get("poison_errors") == UNDECODABLE
        assert raw.stats()["queue_poison_open_transactions"] == "0"


def test_a_dead_letter_that_cannot_be_stored_gives_the_item_back(
    server_factory: ServerFactory,
) -> None:
    """The errors queue refuses (``max_items = 0``): the refusal is raised, and the item
    goes back to the head of its queue instead of staying open on the reader."""
    server = server_factory('[queues."stuck_errors"]\nmax_items = 0\n')
    with server.connect() as raw:
        assert raw.set("stuck", b"not json") == b"STORED\r\n"
    with Connection(broker_url(server)) as conn:
        queue = conn.SimpleQueue("stuck")
        with pytest.raises(conn.channel_errors, match="NOT_STORED"):
            queue.get(timeout=1)
        assert queue_stat(server, "stuck", "open_transactions") == 0
        assert queue_stat(server, "stuck", "items") == 1
        queue.close()


def test_dead_letters_of_a_fanout_child_do_not_make_a_new_child(server: ServerProcess) -> None:
    exchange = Exchange("news", type="fanout")
    url = broker_url(server)
    with Connection(url) as consumer, Connection(url) as producer:
        queue = consumer.SimpleQueue(Queue("reader", exchange))
        with server.connect() as raw:
            assert raw.set("news+reader", b"not json") == b"STORED\r\n"
        producer.Producer().publish({"i": 0}, exchange=exchange, declare=[exchange])
        message = queue.get(timeout=5)
        assert message.payload == {"i": 0}
        message.ack()
        queue.close()
    with server.connect() as raw:
        stats = raw.stats()
        assert stats["queue_news_children"] == "news+reader"
        assert raw.get("news%2Breader_errors") == b"not json"


# -- threads ---------------------------------------------------------------------------------


def test_closing_a_channel_cuts_short_a_read_blocked_in_another_thread(
    server: ServerProcess,
) -> None:
    """A channel closed while its consumer waits in a blocking read: the read ends at
    once (the server sees no waiter), and a message put afterwards is neither delivered
    to the closed channel nor left open on it. Before, the read went on to its end, took
    the message, and raised KeyError out of drain_events."""
    with Connection(broker_url(server)) as conn:
        channel = conn.channel()
        got: list[object] = []
        Consumer(channel, [Queue("cf")], callbacks=[lambda body, _m: got.append(body)]).consume()
        raised: list[BaseException] = []

        def drain() -> None:
            try:
                conn.drain_events(timeout=4)
            except TimeoutError:
                pass
            except BaseException as err:
                raised.append(err)

        thread = threading.Thread(target=drain)
        thread.start()
        wait_until(lambda: queue_stat(server, "cf", "waiters") == 1, WAIT_S, "the read", server)
        channel.close()
        wait_until(lambda: queue_stat(server, "cf", "waiters") == 0, 3, "no waiter", server)
        with server.connect() as raw:
            assert raw.set("cf", b'{"body": "aGk=", "properties": {}}') == b"STORED\r\n"
        thread.join(WAIT_S)
        assert not thread.is_alive()
        assert raised == [] and got == []
        assert queue_stat(server, "cf", "items") == 1
        assert queue_stat(server, "cf", "open_transactions") == 0


def test_two_channels_consuming_one_queue_ack_what_the_other_read(server: ServerProcess) -> None:
    """kombu keeps one consumer callback per queue per connection, so a message read by
    one channel is delivered, and acked, through the other: the ack must still close it."""
    with Connection(broker_url(server)) as conn:
        queue = Queue("dup")
        got: list[object] = []

        def on_message(body: object, message: Any) -> None:
            got.append(body)
            message.ack()

        for _ in range(2):
            Consumer(conn.channel(), [queue], callbacks=[on_message]).consume()
        publisher = Producer(conn.channel())
        for i in range(6):
            publisher.publish({"i": i}, routing_key="dup", declare=[queue])
        deadline = time.monotonic() + WAIT_S
        while len(got) < 6 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)
        assert len(got) == 6
        assert queue_stat(server, "dup", "open_transactions") == 0
    assert queue_stat(server, "dup", "items") == 0, "acked messages came back"


def test_max_held_bounds_unacked_messages_when_prefetch_sets_no_limit(
    server: ServerProcess,
) -> None:
    """A consumer without ``qos`` (prefetch 0) held one connection per unacked message,
    without end; ``max_held`` caps it, and an ack makes room for one more."""
    url = broker_url(server)
    publish(url, "pf0", ({"i": i} for i in range(10)))
    with Connection(url, transport_options={"max_held": 3}) as conn:
        held: list[Any] = []
        Consumer(conn.channel(), [Queue("pf0")], callbacks=[lambda _b, m: held.append(m)]).consume()
        with contextlib.suppress(TimeoutError):
            for _ in range(10):
                conn.drain_events(timeout=0.5)
        assert len(held) == 3
        assert queue_stat(server, "pf0", "open_transactions") == 3
        held[0].ack()
        conn.drain_events(timeout=5)
        assert len(held) == 4
        for message in held[1:]:
            message.ack()
    assert queue_stat(server, "pf0", "items") == 6


def test_max_held_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_held=0"):
        Connection("kestrelpy://127.0.0.1:1//", transport_options={"max_held": 0}).connect()
