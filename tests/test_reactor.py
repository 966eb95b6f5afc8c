"""The Twisted adaptations on real sockets: the lean epoll reactor delivers events and a
protocol that raises loses only its own connection; write_promptly keeps reply order."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport

from kestrelpy.reactor import LeanEPollReactor, write_promptly


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a protocol bug")
        self.transport.write(data)  # type: ignore[union-attr]


class Client(Protocol):
    def __init__(self, record: dict[str, Any], name: str, payload: bytes) -> None:
        self.record = record
        self.name = name
        self.payload = payload

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.record[self.name] = data
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.record.setdefault(self.name + " lost", True)
        if "good lost" in self.record and "bad lost" in self.record:
            self.record["reactor"].stop()


class OneClient(ClientFactory):
    def __init__(self, record: dict[str, Any], name: str, payload: bytes) -> None:
        self.record = record
        self.name = name
        self.payload = payload

    def buildProtocol(self, addr: Any) -> Client:
        return Client(self.record, self.name, self.payload)


def test_echo_and_a_raising_protocol_only_drops_its_connection() -> None:
    reactor = LeanEPollReactor()
    record: dict[str, Any] = {"reactor": reactor}
    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    address = port.getHost()
    reactor.connectTCP(address.host, address.port, OneClient(record, "bad", b"boom"))
    reactor.connectTCP(address.host, address.port, OneClient(record, "good", b"hello"))
    deadline = reactor.callLater(10, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert deadline.active(), "the reactor did not finish within 10 s"
    deadline.cancel()
    assert record["good"] == b"hello"
    assert "bad" not in record  # dropped without a reply
    assert record["bad lost"] is True


class Replier(Protocol):
    """Answers each chunk with ``reply`` through write_promptly, then a marker through write."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def dataReceived(self, data: bytes) -> None:
        write_promptly(self.transport, self.reply)
        self.transport.write(b"<end>")  # type: ignore[union-attr]


class Collector(Protocol):
    def __init__(self, record: dict[str, Any], expected: int) -> None:
        self.record = record
        self.expected = expected
        self.received = bytearray()

    def connectionMade(self) -> None:
        self.transport.write(b"go")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected:
            self.record["received"] = bytes(self.received)
            self.record["reactor"].stop()


class CollectorFactory(ClientFactory):
    def __init__(self, record: dict[str, Any], expected: int) -> None:
        self.record = record
        self.expected = expected

    def buildProtocol(self, addr: Any) -> Collector:
        return Collector(self.record, self.expected)


@pytest.mark.parametrize("size", [16, 8 * 1024 * 1024])
def test_write_promptly_keeps_order_with_twisted_writes(size: int) -> None:
    # 16 B goes straight to the idle socket; 8 MiB overflows it, and the rest must
    # still arrive before the marker written through Twisted after it.
    reply = bytes(range(256)) * (size // 256) if size >= 256 else b"x" * size
    reactor = LeanEPollReactor()
    record: dict[str, Any] = {"reactor": reactor}
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Replier(reply)), interface="127.0.0.1")
    address = port.getHost()
    reactor.connectTCP(address.host, address.port, CollectorFactory(record, size + 5))
    deadline = reactor.callLater(30, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert deadline.active(), "the reply did not arrive within 30 s"
    deadline.cancel()
    assert record["received"] == reply + b"<end>"


def test_write_promptly_on_a_transport_without_a_socket_uses_write() -> None:
    transport = StringTransport()
    write_promptly(transport, b"hello")
    assert transport.value() == b"hello"


class Describe(Protocol):
    """Records how its transport describes itself; the second one lost stops the reactor."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.record.setdefault("hosts", []).append(transport.hostname)
        self.record.setdefault("kept", sorted(vars(transport)))
        self.record.setdefault("prefix", transport.logPrefix())
        self.record.setdefault("text", repr(transport))
        transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.record.setdefault("after", repr(self.transport))
        self.record["lost"] = self.record.get("lost", 0) + 1
        if self.record["lost"] == 2:
            self.record["reactor"].stop()


def test_accepted_connections_keep_no_log_strings_but_describe_themselves() -> None:
    """A LeanServer formats its log prefix and repr when asked (Twisted keeps both as
    strings on every connection: about 165 bytes each idle reader), and connections from
    one host share one host string."""
    reactor = LeanEPollReactor()
    record: dict[str, Any] = {"reactor": reactor}
    port = reactor.listenTCP(
        0, Factory.forProtocol(lambda: Describe(record)), interface="127.0.0.1"
    )
    address = port.getHost()
    for _ in range(2):
        reactor.connectTCP(address.host, address.port, ClientFactory.forProtocol(Protocol))
    deadline = reactor.callLater(10, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert deadline.active(), "the connections were not made and lost within 10 s"
    deadline.cancel()
    assert "logstr" not in record["kept"] and "repstr" not in record["kept"]
    assert record["prefix"] == "Describe,0,127.0.0.1"
    assert record["text"] == f"<Describe #0 on {address.port}>"
    assert record["after"] == f"<None #0 on {address.port}>"
    first, second = record["hosts"]
    assert first == "127.0.0.1" and first is second
