"""A tiny in-memory Kestrel look-alike for testing the load tools' queue paths.

kestrelpy is developed in parallel; this stand-in lets the exactly-once, leak and drain
checks run against real queue semantics today: FIFO queues, ``get q/t=ms`` waits, per
connection ``open``/``close``/``abort``, open items and waits released on disconnect,
``delete``, ``stats`` with ``queue_`` keys and a bare-number version (like real Kestrel, so
the tools' stats probe is what detects it). Fault injection (``--lose-every``,
``--dup-every``) proves that the checks fail when a server loses or duplicates items.

Run: ``python fake_kestrel.py --port 0``; prints ``listening on 127.0.0.1:PORT`` on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Queue:
    items: deque[bytes] = field(default_factory=deque)
    waiters: deque[Connection] = field(default_factory=deque)
    open_count: int = 0
    total: int = 0


class Server:
    """All queues. Single-threaded (one asyncio loop), so no locking anywhere."""

    def __init__(self, lose_every: int, dup_every: int) -> None:
        self.queues: dict[bytes, Queue] = {}
        self.lose_every = lose_every
        self.dup_every = dup_every
        self.sets = 0
        self.takes = 0

    def queue(self, name: bytes) -> Queue:
        return self.queues.setdefault(name, Queue())

    def put(self, name: bytes, body: bytes) -> None:
        self.sets += 1
        if self.lose_every and self.sets % self.lose_every == 0:
            return  # acknowledged, never stored: the tools must report it missing
        q = self.queue(name)
        q.total += 1
        q.items.append(body)
        self.wake(name)

    def take(self, name: bytes) -> bytes | None:
        q = self.queue(name)
        if not q.items:
            return None
        self.takes += 1
        if self.dup_every and self.takes % self.dup_every == 0:
            return q.items[0]  # delivered but kept: the tools must report a duplicate
        return q.items.popleft()

    def wake(self, name: bytes) -> None:
        """Hand queued items to waiting connections, oldest waiter first."""
        q = self.queue(name)
        while q.items and q.waiters:
            q.waiters.popleft().deliver(self.take(name))

    def stats(self) -> bytes:
        lines = [b"STAT version 2.4.1"]
        for name, q in sorted(self.queues.items()):
            lines.append(b"STAT queue_%s_items %d" % (name, len(q.items)))
            lines.append(b"STAT queue_%s_total_items %d" % (name, q.total))
            lines.append(b"STAT queue_%s_waiters %d" % (name, len(q.waiters)))
            lines.append(b"STAT queue_%s_open_transactions %d" % (name, q.open_count))
        return b"\r\n".join([*lines, b"END"]) + b"\r\n"


class Connection(asyncio.Protocol):
    """One client: parses pipelined commands in order; a waiting get holds back the rest."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.held: dict[bytes, list[bytes]] = {}  # open items per queue, oldest first
        self.waiting: tuple[bytes, bool, asyncio.TimerHandle] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def process(self) -> None:
        while self.waiting is None and self.transport is not None:
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                return
            parts = bytes(self.buf[:eol]).split(b" ")
            verb = parts[0].lower()
            if verb == b"set":
                size = int(parts[4])
                if len(self.buf) < eol + 2 + size + 2:
                    return
                body = bytes(self.buf[eol + 2 : eol + 2 + size])
                del self.buf[: eol + 4 + size]
                self.server.put(parts[1], body)
                self.write(b"STORED\r\n")
                continue
            del self.buf[: eol + 2]
            self.execute(verb, parts)

    def execute(self, verb: bytes, parts: list[bytes]) -> None:
        server = self.server
        if verb in (b"get", b"gets"):
            self.get(parts[1])
        elif verb == b"delete":
            server.queues.pop(parts[1], None)
            self.write(b"DELETED\r\n")
        elif verb == b"version":
            self.write(b"VERSION 2.4.1\r\n")
        elif verb == b"stats":
            self.write(server.stats())
        elif verb == b"quit":
            if self.transport is not None:
                self.transport.close()
        else:
            self.write(b"ERROR\r\n")

    def get(self, key: bytes) -> None:
        name, *opts = key.split(b"/")
        wait_ms = max([int(o[2:]) for o in opts if o.startswith(b"t=")] or [0])
        mine = self.held.setdefault(name, [])
        q = self.server.queue(name)
        if b"abort" in opts:
            if mine:
                q.open_count -= 1
                q.items.appendleft(mine.pop(0))
                self.server.wake(name)
            self.write(b"END\r\n")
            return
        if b"close" in opts and mine:
            q.open_count -= 1
            mine.pop(0)
        if b"close" in opts and b"open" not in opts:
            self.write(b"END\r\n")
            return
        opening = b"open" in opts
        body = self.server.take(name)
        if body is None and wait_ms > 0:
            timer = asyncio.get_running_loop().call_later(wait_ms / 1000, self.expire)
            self.waiting = (name, opening, timer)
            q.waiters.append(self)
            return
        self.reply(name, opening, body)

    def reply(self, name: bytes, opening: bool, body: bytes | None) -> None:
        if body is None:
            self.write(b"END\r\n")
            return
        if opening:
            self.held.setdefault(name, []).append(body)
            self.server.queue(name).open_count += 1
        self.write(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (name, len(body), body))

    def deliver(self, body: bytes | None) -> None:
        """Called by the server with an item for this connection's waiting get."""
        assert self.waiting is not None
        name, opening, timer = self.waiting
        timer.cancel()
        self.waiting = None
        self.reply(name, opening, body)
        self.process()

    def expire(self) -> None:
        assert self.waiting is not None
        name, _opening, _timer = self.waiting
        self.server.queue(name).waiters.remove(self)
        self.waiting = None
        self.write(b"END\r\n")
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the wait and return open items to the head, in their original order."""
        self.transport = None
        if self.waiting is not None:
            name, _opening, timer = self.waiting
            timer.cancel()
            self.server.queue(name).waiters.remove(self)
            self.waiting = None
        for name, bodies in self.held.items():
            q = self.server.queue(name)
            q.open_count -= len(bodies)
            q.items.extendleft(reversed(bodies))
            self.server.wake(name)
        self.held.clear()


async def serve(port: int, lose_every: int, dup_every: int) -> None:
    server = Server(lose_every, dup_every)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Connection(server), "127.0.0.1", port, backlog=2048)
    bound = listener.sockets[0].getsockname()[1]
    print(f"fake kestrel listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lose-every", type=int, default=0, help="drop every Nth set")
    parser.add_argument("--dup-every", type=int, default=0, help="duplicate every Nth take")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.lose_every, args.dup_every))


if __name__ == "__main__":
    main()
