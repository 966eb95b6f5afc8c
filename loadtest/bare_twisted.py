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

``--log DIR`` makes it durable as cheaply as this stack allows, close to the shape of
Redis's ``appendfsync always``: every set (and every removal) is appended to a log file
written in place over zeros (so ``fdatasync`` flushes data, never the file's size or
extents); a writer thread writes the records gathered since its last flush began and
flushes them with one ``fdatasync`` while the reactor gathers the next group (at most one
flush in flight); a read holding a set is answered only after the flush that covers it,
and a get-only read at once, as kestrelpy answers (Redis holds every reply of a turn). No
index or item ids: about the most a durable server on this stack can reach, kestrelpy's
``always`` included. It writes and never reads the log back: a yardstick, not a store.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
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


LOG_BYTES = 32 << 20  # the log's ring: written over from the start when full

Held = list[tuple["BareQueue", bytes]]  # (connection, reply) in the order they were held


class DurableLog:
    """The set and removal records gathered while no flush runs, flushed as one group by a
    thread: at most one flush in flight, the next group gathering meanwhile.

    Reactor thread only, but for :meth:`_write`. A group's held replies go out, in order,
    when its flush returns. The writer failing stops the server: clients waiting for a
    flush that will never come would otherwise hang with it.
    """

    def __init__(self, path: Path, reactor: Any, send: Send) -> None:
        self.reactor = reactor
        self.send = send
        self.flush: Callable[[int], None] = os.fdatasync  # the one flush per group
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(1 << 20)
        for _ in range(LOG_BYTES >> 20):
            os.write(self.fd, zeros)
        os.fsync(self.fd)  # the ring's blocks are allocated and written once, up front
        self.offset = 0
        self.records = bytearray()
        self.held: Held = []
        self.flushing = False
        self.turn_due = False
        self.groups: queue.SimpleQueue[tuple[bytes, Held] | None] = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write, name="bare-log-writer", daemon=True)
        self.writer.start()

    def close(self) -> None:
        """Stop the writer once the groups handed to it are written (it closes the file)."""
        self.groups.put(None)
        self.writer.join(timeout=10)

    def append(self, record: bytes) -> None:
        self.records += record
        self._turn_soon()

    def hold(self, connection: BareQueue, reply: bytes) -> None:
        """Answer ``connection`` with ``reply`` after the flush of the records gathered so
        far (or, with none, once the flushes before it have returned)."""
        connection.waiting += 1
        self.held.append((connection, reply))
        self._turn_soon()

    def _turn_soon(self) -> None:
        if not self.turn_due:
            self.turn_due = True
            self.reactor.callLater(0, self._end_of_turn)

    def _end_of_turn(self) -> None:
        self.turn_due = False
        if self.flushing:
            return  # this group goes when the flush in flight returns
        if self.records:
            self.flushing = True
            self.groups.put((bytes(self.records), self.held))
            self.records = bytearray()
            self.held = []
        elif self.held:  # held only for order, behind flushes that have all returned
            held, self.held = self.held, []
            self._release(held)

    def _write(self) -> None:
        """The writer thread: write each group where the ring is, flush, hand back."""
        try:
            while (group := self.groups.get()) is not None:
                data, held = group
                if len(data) > LOG_BYTES:
                    raise ValueError(f"a group of {len(data)} bytes exceeds the log's ring")
                if self.offset + len(data) > LOG_BYTES:
                    self.offset = 0
                os.pwrite(self.fd, data, self.offset)
                self.offset += len(data)
                self.flush(self.fd)
                self.reactor.callFromThread(self._flushed, held)
        except Exception as error:  # any failure ends the server, saying why
            self.reactor.callFromThread(self._failed, error)
        finally:
            os.close(self.fd)

    def _flushed(self, held: Held) -> None:
        self.flushing = False
        self._release(held)
        self._end_of_turn()  # what gathered during the flush goes next

    def _release(self, held: Held) -> None:
        for connection, reply in held:
            connection.waiting -= 1
            self.send(connection.transport, reply)

    def _failed(self, error: Exception) -> None:
        print(f"bare_twisted: the log writer failed, stopping: {error!r}", file=sys.stderr)
        if self.reactor.running:
            self.reactor.stop()


class BareQueue(Protocol):
    """Parses whole requests out of each read; a partial one waits in ``buffer``."""

    def __init__(self, queues: Queues, send: Send, log: DurableLog | None = None) -> None:
        self.queues = queues
        self.buffer = b""
        self.send = send
        self.log = log
        self.waiting = 0  # held replies not yet sent: later ones queue behind them

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        replies: list[bytes] = []
        stored_here = False
        at = 0
        while (line_end := buffer.find(b"\r\n", at)) >= 0:
            words = buffer[at:line_end].split()
            if words and words[0] == b"set" and len(words) >= 5:
                size = int(words[4])
                data_end = line_end + 2 + size
                if len(buffer) < data_end + 2:
                    break  # the data block is not all here yet
                value = buffer[line_end + 2 : data_end]
                self.queues[words[1]].append((words[2], value))
                if self.log is not None:
                    self.log.append(b"+%b %d\n%b" % (words[1], size, value))
                    stored_here = True
                replies.append(STORED)
                at = data_end + 2
                continue
            if words and words[0] == b"get" and len(words) >= 2:
                items = self.queues.get(words[1])
                if items:
                    flags, value = items.popleft()
                    if self.log is not None:
                        self.log.append(b"-%b\n" % words[1])
                    head = b"VALUE %b %b %d\r\n" % (words[1], flags, len(value))
                    replies += (head, value, b"\r\n", END)
                else:
                    replies.append(END)
            else:
                replies.append(b"ERROR\r\n")
            at = line_end + 2
        self.buffer = buffer[at:]
        if not replies:
            return
        if self.log is not None and (stored_here or self.waiting):
            self.log.hold(self, b"".join(replies))
        else:
            self.send(self.transport, b"".join(replies))


class BareFactory(Factory):
    """One dict of queues shared by every connection."""

    noisy = False

    def __init__(self, send: Send, log: DurableLog | None = None) -> None:
        self.queues: Queues = defaultdict(deque)
        self.send = send
        self.log = log

    def buildProtocol(self, addr: object) -> BareQueue:
        return BareQueue(self.queues, self.send, self.log)


def factory_for(write: str, log_dir: Path | None = None, reactor: Any = None) -> BareFactory:
    """The factory for ``--write``: ``prompt`` (as kestrelpy sends) or ``twisted``; with
    ``log_dir``, durable (``--log``) on ``reactor``."""
    send = SENDS[write]
    log = None if log_dir is None else DurableLog(log_dir / "bare.log", reactor, send)
    return BareFactory(send, log)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bare_twisted", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--reactor", choices=("epoll", "twisted-epoll"), default="epoll")
    parser.add_argument("--write", choices=tuple(SENDS), default="prompt")
    parser.add_argument("--log", type=Path, metavar="DIR", help="durable: flush sets to DIR")
    args = parser.parse_args(argv)
    if args.reactor == "epoll":
        from kestrelpy.reactor import install

        install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()
    from twisted.internet import reactor

    factory = factory_for(args.write, args.log, reactor)
    if factory.log is not None:
        reactor.addSystemEventTrigger("after", "shutdown", factory.log.close)  # type: ignore[attr-defined]
    port = reactor.listenTCP(args.port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on 127.0.0.1:{port.getHost().port}", file=sys.stderr, flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
