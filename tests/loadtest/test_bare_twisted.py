"""The bare Twisted ceiling server: which write path its ``--write`` choice takes.

A transport with a real connected socket beside Twisted's own buffer (a ``StringTransport``):
the prompt write must put the reply on the socket and leave the buffer empty, Twisted's
buffered write the other way round, so the column measures the path it names.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet.testing import StringTransport

from loadtest.bare_twisted import factory_for

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


def serve(write: str, ours: socket.socket) -> SocketTransport:
    protocol = factory_for(write).buildProtocol(None)
    transport = SocketTransport(ours)
    protocol.makeConnection(transport)
    protocol.dataReceived(REQUESTS)
    return transport


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
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(4096)  # nothing was sent past Twisted's buffer
