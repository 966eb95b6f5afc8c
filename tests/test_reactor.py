"""The lean epoll reactor on real sockets: events reach protocols, and a protocol that
raises loses only its own connection."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ClientFactory, Factory, Protocol

from kestrelpy.reactor import LeanEPollReactor


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
