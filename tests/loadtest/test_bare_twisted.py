"""The bare Twisted ceiling server: which write path its ``--write`` choice takes, and that
its durable mode (``--log``) answers a set only once the log holds it.

A transport with a real connected socket beside Twisted's own buffer (a ``StringTransport``):
the prompt write must put the reply on the socket and leave the buffer empty, Twisted's
buffered write the other way round, so the column measures the path it names. The durable
mode runs its writer thread on the real reactor, with its log in a real file.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.testing import StringTransport

from loadtest.bare_twisted import BareQueue, factory_for

REQUESTS = b"set q 0 0 2\r\nhi\r\nget q\r\nget q\r\n"
REPLIES = b"STORED\r\nVALUE q 0 2\r\nhi\r\nEND\r\nEND\r\n"


class SocketTransport(StringTransport):
    """Twisted's buffer (``value()``) beside a socket, with the attributes
    ``write_promptly`` reads on a TCP transport: connected, nothing queued."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.socket = sock
        self.connected = True
        self.dataBuffer = b""
        self._tempDataBuffer: list[bytes] = []


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    peer.settimeout(5)
    yield ours, peer
    ours.close()
    peer.close()


class HeldFlush:
    """The log's real ``fdatasync``, entered and then held until the test lets it go, so the
    test sees what the server does while a flush is in flight; counts the flushes."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        if not self.go.wait(timeout=10):
            raise TimeoutError("the test never let the flush go")
        os.fdatasync(fd)


@pytest.fixture
def durable_log(
    socket_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> Iterator[tuple[BareQueue, HeldFlush]]:
    """A durable connection on the real reactor, its log in ``tmp_path`` flushed through a
    :class:`HeldFlush`; the writer stopped after."""
    factory = factory_for("prompt", tmp_path, reactor)
    assert factory.log is not None
    flush = factory.log.flush = HeldFlush()
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(SocketTransport(socket_pair[0]))
    yield protocol, flush
    flush.go.set()
    factory.log.close()


async def receive(peer: socket.socket, expected: bytes) -> bytes:
    """What ``peer`` receives, read off the reactor thread, until ``expected``'s length (or
    the peer's 5 s timeout, or a close)."""
    got = b""
    while len(got) < len(expected):
        chunk = await threads.deferToThread(peer.recv, 4096)
        if not chunk:
            break
        got += chunk
    return got


def serve(write: str, ours: socket.socket) -> SocketTransport:
    protocol = factory_for(write).buildProtocol(None)
    transport = SocketTransport(ours)
    protocol.makeConnection(transport)
    protocol.dataReceived(REQUESTS)
    return transport


def nothing_sent(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        peer.recv(4096)
    except BlockingIOError:
        return True
    finally:
        peer.setblocking(True)
        peer.settimeout(5)
    return False


def test_the_prompt_write_sends_on_the_socket(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    transport = serve("prompt", ours)
    assert peer.recv(4096) == REPLIES
    assert transport.value() == b""


def test_the_twisted_write_goes_through_twisteds_buffer(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    transport = serve("twisted", ours)
    assert transport.value() == REPLIES
    assert nothing_sent(peer)  # nothing went past Twisted's buffer


@pytest_twisted.ensureDeferred
async def test_the_durable_mode_answers_a_set_only_after_its_flush_returns(
    durable_log: tuple[BareQueue, HeldFlush],
    socket_pair: tuple[socket.socket, socket.socket],
    tmp_path: Path,
) -> None:
    (protocol, flush), peer = durable_log, socket_pair[1]
    protocol.dataReceived(b"set q 0 0 5\r\nhello\r\n")
    assert await threads.deferToThread(flush.entered.wait, 5)
    assert b"+q 5\nhello" in (tmp_path / "bare.log").read_bytes()  # written, being flushed
    assert nothing_sent(peer)  # the flush has not returned: no STORED yet
    flush.go.set()
    assert await receive(peer, b"STORED\r\n") == b"STORED\r\n"
    assert flush.calls == 1


@pytest_twisted.ensureDeferred
async def test_the_durable_mode_answers_a_get_at_once_unless_a_reply_is_held_before_it(
    durable_log: tuple[BareQueue, HeldFlush], socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    (protocol, flush), peer = durable_log, socket_pair[1]
    protocol.dataReceived(b"get q\r\n")
    assert peer.recv(4096) == b"END\r\n"  # sent before dataReceived returned
    protocol.dataReceived(b"set q 0 0 2\r\nhi\r\n")
    assert await threads.deferToThread(flush.entered.wait, 5)
    protocol.dataReceived(b"get other\r\n")  # a miss: nothing to log, held only for order
    assert nothing_sent(peer)  # neither the STORED in flight nor the END behind it
    flush.go.set()
    assert await receive(peer, b"STORED\r\nEND\r\n") == b"STORED\r\nEND\r\n"
    assert protocol.waiting == 0
    assert flush.calls == 1  # the END rode no flush of its own
