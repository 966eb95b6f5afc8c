"""bare_twisted: the CPython-on-Twisted ceiling for the ref scenarios, a bare queue server.

``python -m loadtest.bare_twisted --port N`` serves ``set <q> <flags> <exptime> <bytes>`` and
``get <q>`` on 127.0.0.1 from one dict of in-memory deques, on the epoll reactor kestrelpy
itself runs on (``--reactor twisted-epoll``: Twisted's stock one, slower by its per-event
log context), answering every complete request of a read with one write, sent the way
kestrelpy sends (``kestrelpy.reactor.write_promptly``: straight to an idle socket;
``--write twisted`` for Twisted's buffered ``write``, which registers for writability and
sends a loop turn later: 0.38-0.42x of memcached at 100 connections here against
0.61-0.71x): no store, no options, no checks beyond framing. What it reaches at 10 and 100
connections is what any server in CPython on Twisted can reach on this machine (issue 19's
"bare Twisted in-memory server"), so the bench shows kestrelpy as a share of it beside
memcached and Redis.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from kestrelpy.reactor import write_promptly

STORED = b"STORED\r\n"
END = b"END\r\n"

Queues = defaultdict[bytes, deque[tuple[bytes, bytes]]]
Send = Callable[[Any, bytes], None]  # (transport, reply): how a reply goes out


def buffered_write(transport: Any, data: bytes) -> None:
    """Twisted's own way: queue the reply and register for writability."""
    transport.write(data)


SENDS: dict[str, Send] = {"prompt": write_promptly, "twisted": buffered_write}


class BareQueue(Protocol):
    """Parses whole requests out of each read; a partial one waits in ``buffer``."""

    def __init__(self, queues: Queues, send: Send) -> None:
        self.queues = queues
        self.buffer = b""
        self.send = send

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        replies: list[bytes] = []
        at = 0
        while (line_end := buffer.find(b"\r\n", at)) >= 0:
            words = buffer[at:line_end].split()
            if words and words[0] == b"set" and len(words) >= 5:
                size = int(words[4])
                data_end = line_end + 2 + size
                if len(buffer) < data_end + 2:
                    break  # the data block is not all here yet
                self.queues[words[1]].append((words[2], buffer[line_end + 2 : data_end]))
                replies.append(STORED)
                at = data_end + 2
                continue
            if words and words[0] == b"get" and len(words) >= 2:
                queue = self.queues.get(words[1])
                if queue:
                    flags, value = queue.popleft()
                    head = b"VALUE %b %b %d\r\n" % (words[1], flags, len(value))
                    replies += (head, value, b"\r\n", END)
                else:
                    replies.append(END)
            else:
                replies.append(b"ERROR\r\n")
            at = line_end + 2
        self.buffer = buffer[at:]
        if replies:
            self.send(self.transport, b"".join(replies))


class BareFactory(Factory):
    """One dict of queues shared by every connection."""

    noisy = False

    def __init__(self, send: Send) -> None:
        self.queues: Queues = defaultdict(deque)
        self.send = send

    def buildProtocol(self, addr: object) -> BareQueue:
        return BareQueue(self.queues, self.send)


def factory_for(write: str) -> BareFactory:
    """The factory for ``--write``: ``prompt`` (as kestrelpy sends) or ``twisted``."""
    return BareFactory(SENDS[write])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bare_twisted", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--reactor", choices=("epoll", "twisted-epoll"), default="epoll")
    parser.add_argument("--write", choices=tuple(SENDS), default="prompt")
    args = parser.parse_args(argv)
    if args.reactor == "epoll":
        from kestrelpy.reactor import install

        install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()
    from twisted.internet import reactor

    factory = factory_for(args.write)
    port = reactor.listenTCP(args.port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on 127.0.0.1:{port.getHost().port}", file=sys.stderr, flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
