"""The stomp backend against real brokers: each test that needs one runs on ActiveMQ and on
RabbitMQ (``stomp_broker``, started once per session; see ``brokers.py``).

No sleeps: ``take`` waits for the broker's push on an event (up to ``receive_wait_ms``),
and ``take_within`` repeats it until a deadline; the consumer process reports over a pipe
read with a deadline.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from kestrelpy.router.backends import open_backend as open_interface_backend
from kestrelpy.router.backends.base import BackendError, Lease
from kestrelpy.router.backends.stomp import StompBackend, open_backend
from kestrelpy.router.config import parse_interface
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import Message

from .brokers import HOST, Broker, free_ports, subprocess_env

CONSUMER = Path(__file__).with_name("router_stomp_consumer.py")
TAKE_TIMEOUT_S = 15.0  # a message the broker has must reach us well within this
CHILD_TIMEOUT_S = 30.0  # a fresh interpreter imports kestrelpy and stomp.py, then connects


@pytest.fixture
def backend(stomp_broker: Broker) -> Iterator[StompBackend]:
    backend = open_backend("test", stomp_broker.options())
    yield backend
    backend.close()


def take_within(backend: StompBackend, queue: str, timeout_s: float = TAKE_TIMEOUT_S) -> Lease:
    """The next message of ``queue``; each take waits on the broker's push, so no sleeps."""
    deadline = time.monotonic() + timeout_s
    while (lease := backend.take(queue)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no message on {queue} within {timeout_s} s")
    return lease


def test_round_trip_keeps_the_routers_headers_and_binary_bodies(
    backend: StompBackend, stomp_queue: str
) -> None:
    # The router's own names clash with STOMP's and the brokers' (destination, message-id,
    # timestamp, content-encoding), and values need STOMP escaping (':', '\n', '\\').
    messages = [
        Message(
            {
                "message-id": "m-1",
                "destination": stomp_queue,
                "timestamp": "1700000000000",
                "content-encoding": "raw",
                "x-attempts": "2",
                "trace": "a:b\\c\nd\r é ✓",
                "Upper.Case_name": "",
            },
            bytes(range(256)) * 4,  # NUL bytes and every other byte value
        ),
        Message({"content-encoding": "json"}, b'{"n":1}'),
        Message({}, b""),
    ]
    assert backend.network is True
    backend.send(stomp_queue, messages)
    for expected in messages:  # FIFO, and only the headers the sender set come back
        lease = take_within(backend, stomp_queue)
        assert lease.message == expected
        lease.ack()
    assert backend.take(stomp_queue) is None


def test_release_gives_the_same_message_back_at_the_head(
    backend: StompBackend, stomp_queue: str
) -> None:
    first, second = Message({"n": "1"}, b"first"), Message({"n": "2"}, b"second")
    backend.send(stomp_queue, [first, second])
    lease = take_within(backend, stomp_queue)
    assert lease.message == first
    assert backend.take(stomp_queue) is None  # a prefetch of one: nothing more while leased
    lease.release()  # ActiveMQ: unsubscribe (its NACK dead-letters); RabbitMQ: NACK
    again = take_within(backend, stomp_queue)
    assert again.message == first
    again.ack()
    last = take_within(backend, stomp_queue)
    assert last.message == second
    last.ack()
    with pytest.raises(BackendError, match="already"):
        last.release()
    assert backend.take(stomp_queue) is None


def read_line(pipe: IO[bytes], timeout_s: float, why: Any) -> bytes:
    """One line from a child's pipe, or AssertionError (with ``why()``) at the deadline."""
    fd, data = pipe.fileno(), b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from the consumer within {timeout_s} s\n{why()}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"the consumer closed stdout after {data!r}\n{why()}")
        data += chunk
    return data


def test_a_message_held_by_a_killed_consumer_process_is_taken_again(
    stomp_broker: Broker, backend: StompBackend, stomp_queue: str, tmp_path: Path
) -> None:
    message = Message({"job": "kill9"}, b"\x00payload\xff")
    backend.send(stomp_queue, [message])
    stderr_path = tmp_path / "consumer.stderr"
    argv = [sys.executable, str(CONSUMER), HOST, str(stomp_broker.stomp_port), stomp_queue]
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=subprocess_env()
        )
    try:
        assert child.stdout is not None
        line = read_line(child.stdout, CHILD_TIMEOUT_S, stderr_path.read_text)
        report = json.loads(line)
        assert report == {"headers": message.headers, "body": message.body.hex()}, report
        assert backend.take(stomp_queue) is None  # leased to the child: nobody else gets it
        child.kill()  # SIGKILL: no close, no release; only the broker can give it back
        assert child.wait(CHILD_TIMEOUT_S) == -9
        lease = take_within(backend, stomp_queue)
        assert lease.message == message
        lease.ack()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(CHILD_TIMEOUT_S)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()


def test_messages_survive_a_broker_restart_and_the_backend_reconnects(
    stomp_broker: Broker, backend: StompBackend, stomp_queue: str
) -> None:
    first, second = Message({"n": "1"}, b"first"), Message({"n": "2"}, b"second")
    backend.send(stomp_queue, [first, second])
    lease = take_within(backend, stomp_queue)
    # A clean shutdown and a start on the same data dir and ports. Our connection closes
    # when the old broker process exits, so the backend knows long before the new one is up.
    stomp_broker.restart()
    with pytest.raises(BackendError, match="deliver it again"):
        lease.ack()  # its connection died with the broker, which gives the message back
    for expected in (first, second):  # persistent: stored before send() returned
        lease = take_within(backend, stomp_queue)
        assert lease.message == expected
        lease.ack()


def test_close_gives_back_what_is_still_leased(stomp_broker: Broker, stomp_queue: str) -> None:
    message = Message({"n": "1"}, b"leased at close")
    first = open_backend("first", stomp_broker.options())
    first.send(stomp_queue, [message])
    lease = take_within(first, stomp_queue)
    first.close()
    lease.release()  # nothing to do: closing gave it back
    with pytest.raises(BackendError, match="closed"):
        first.take(stomp_queue)
    second = open_backend("second", stomp_broker.options())
    try:
        again = take_within(second, stomp_queue)
        assert again.message == message
        again.ack()
    finally:
        second.close()


def test_a_header_that_cannot_travel_fails_the_send_before_anything_is_sent(
    backend: StompBackend, stomp_queue: str
) -> None:
    good, bad = Message({"ok": "1"}, b"good"), Message({"bad name": "x"}, b"bad")
    with pytest.raises(BackendError, match="'bad name'"):
        backend.send(stomp_queue, [good, bad])
    with pytest.raises(BackendError, match="NUL"):
        backend.send(stomp_queue, [Message({"ok": "a\0b"}, b"")])
    assert backend.take(stomp_queue) is None


def test_a_refused_login_carries_the_brokers_reason(rabbitmq: Broker) -> None:
    # ActiveMQ accepts any login by default; RabbitMQ checks guest's password.
    backend = open_backend("orders", rabbitmq.options(passcode="wrong"))
    try:
        with pytest.raises(BackendError) as caught:
            backend.send("orders", [Message({}, b"x")])
        text = str(caught.value)
        assert "'orders'" in text and rabbitmq.address in text and "ERROR" in text, text
    finally:
        backend.close()


def test_a_broker_that_is_not_there_is_a_backend_error_naming_host_and_port() -> None:
    (port,) = free_ports(1)  # nothing listens on it
    backend = open_backend("nowhere", {"port": port, "timeout_s": 5})  # no I/O yet
    try:
        with pytest.raises(BackendError) as sending:
            backend.send("q", [Message({}, b"x")])
        with pytest.raises(BackendError) as taking:
            backend.take("q")
        for caught in (sending, taking):
            assert f"127.0.0.1:{port}" in str(caught.value)
            assert "'nowhere'" in str(caught.value)
    finally:
        backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.send("q", [Message({}, b"x")])


def test_a_stomp_interface_gets_this_backend_without_connecting() -> None:
    (port,) = free_ports(1)
    interface = parse_interface("orders", {"implementation": "stomp", "port": port})
    backend = open_interface_backend(interface)
    assert isinstance(backend, StompBackend)
    assert backend.network is True
    backend.close()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"servers": ["127.0.0.1:61613"]}, "unknown key 'servers'"),
        ({"port": "61613"}, "port"),
        ({"port": True}, "port"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"host": ""}, "host"),
        ({"host": 1}, "host"),
        ({"login": None}, "login"),
        ({"passcode": 5}, "passcode"),
        ({"vhost": ""}, "vhost"),
        ({"destination_prefix": None}, "destination_prefix"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": "10"}, "timeout_s"),
        ({"heartbeat_ms": -1}, "heartbeat_ms"),
        ({"heartbeat_ms": 1.5}, "heartbeat_ms"),
        ({"receive_wait_ms": -1}, "receive_wait_ms"),
        ({"release": "drop"}, "release"),
    ],
)
def test_bad_options_name_the_interface_and_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(RouterConfigError) as caught:
        open_backend("orders", options)
    text = str(caught.value)
    assert text.startswith("router interface 'orders': "), text
    assert key in text, text
