"""Where kestrelpy adapts Twisted's internals: a leaner epoll reactor, a prompter write.

The only module that touches private Twisted attributes; each use is documented here
with the measurement that pays for it, and tested against a real reactor and sockets.

**The reactor.** Twisted's epoll reactor without its per-event logging context.

For every ready socket the stock ``EPollReactor.doPoll`` goes through
``log.callWithLogger``, which sets up a logging context (the connection's ``logPrefix``)
around the read or write: about a tenth of the server's CPU time when every request is
a small one (loadtest ``flood``, py-spy). This reactor dispatches the event directly;
``_doReadOrWrite`` still catches what a read or write raises and drops that connection,
so the only loss is the prefix on such log lines.

**The transport.** TCP connections accepted by this reactor are :class:`LeanServer` objects:
Twisted's ``tcp.Server`` formats two strings per connection when it is made (its log prefix
and its repr, about 165 bytes together) that are read only if something logs or prints the
connection; here both are built when asked. Connections from one host also share its
address string (58 bytes each otherwise). 10,000 idle readers: 2.5 MB less (loadtest
``idle``).

**The write.** :func:`write_promptly` sends a reply straight to an idle socket instead of
through Twisted's buffered ``write``, which only queues and registers for writability:
two ``epoll_ctl`` calls and a loop turn per reply (loadtest ``flood``, first speed round).
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import epollreactor, main, tcp
from twisted.internet.interfaces import IProtocol, IReactorFDSet
from twisted.logger import Logger


class LeanServer(tcp.Server):
    """``tcp.Server`` that keeps no log prefix or repr string per connection, and shares
    its peer's host string with every other connection from that host.

    ``Server.__init__`` still formats both strings (its code is not ours to split), but
    assigning them goes to the properties below, which keep nothing and build the same
    text when read (the same while connected): rarely, since :class:`LeanEPollReactor`
    sets no logging context per event.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: IProtocol,
        client: tuple[object, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: IReactorFDSet,
    ) -> None:
        host = client[0]
        if type(host) is str:  # accept() makes a new one per connection: 58 B each
            client = (sys.intern(host), *client[1:])
        super().__init__(sock, protocol, client, server, sessionno, reactor)

    @property
    def logstr(self) -> str:
        """As Twisted's: ``<protocol's log prefix>,<session number>,<peer host>``."""
        protocol = getattr(self, "protocol", None)  # deleted when the connection is lost
        prefix = "Uninitialized" if protocol is None else self._getLogPrefix(protocol)
        return f"{prefix},{self.sessionno},{self.hostname}"

    @logstr.setter
    def logstr(self, value: str) -> None:
        """Set by ``Server.__init__``; built when read instead."""

    @property
    def repstr(self) -> str:
        """As Twisted's: ``<protocol class #session number on port>``."""
        protocol = getattr(self, "protocol", None)
        name = protocol.__class__.__name__ if protocol is not None else "None"
        return f"<{name} #{self.sessionno} on {self.server._realPortNumber}>"

    @repstr.setter
    def repstr(self, value: str) -> None:
        """Set by ``Server.__init__``; built when read instead."""


class LeanPort(tcp.Port):
    """A listening TCP port whose connections are :class:`LeanServer` objects."""

    transport = LeanServer


class LeanEPollReactor(epollreactor.EPollReactor):
    """``EPollReactor`` whose poll step calls the event handlers directly."""

    _log = Logger()

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle: Any = self._doReadOrWrite  # untyped in Twisted
        for fd, event in events:
            selectable: Any = selectables.get(fd)
            if selectable is None:
                continue  # closed by an earlier event of this same poll
            try:
                handle(selectable, fd, event)
            except Exception:
                self._log.failure("while handling an event on fd {fd}", fd=fd)

    doIteration = doPoll

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> LeanPort:
        """As ``PosixReactorBase.listenTCP``, with a :class:`LeanPort`."""
        listening = LeanPort(port, factory, backlog, interface, self)
        listening.startListening()
        return listening


def install() -> bool:
    """Install as the global reactor; False if Twisted's internals are not as expected."""
    stock = epollreactor.EPollReactor
    if not all(hasattr(stock, name) for name in ("_doReadOrWrite", "doPoll")):
        return False
    build: Any = LeanEPollReactor  # Twisted's reactor constructors are untyped
    install_reactor: Any = main.installReactor
    install_reactor(build())
    return True


def write_promptly(transport: Any, data: bytes) -> None:
    """Send ``data`` now when nothing is queued in ``transport``; else let it queue.

    An idle socket nearly always takes a small reply whole, so try it first; whatever it
    does not take goes through Twisted's ``write``, after nothing (order is kept because
    this path is taken only when Twisted holds no unsent data: its ``dataBuffer`` and its
    private ``_tempDataBuffer``, where ``write`` collects data between flushes). A
    transport without a socket (a test double) always takes the ``write`` path.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is not None
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        try:
            sent = sock.send(data)
        except OSError:  # BlockingIOError included; Twisted's write will see a real error
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
