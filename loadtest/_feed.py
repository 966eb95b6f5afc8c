"""Connections that fill a queue and drain it with a window of pipelined requests.

Used where the load itself is not the measurement (prefill for leaky_reader and
parallel_disconnects) or where bulk throughput is (packing). A window of ``depth`` requests
stays in flight, refilled as replies arrive, so the server always has work queued without
the client buffering unboundedly.
"""

from __future__ import annotations

import socket

from loadtest._loop import Conn, Loop
from loadtest._proto import (
    CRLF,
    FILLER,
    ID_BYTES,
    ReplyError,
    get_request,
    item_tag,
    parse_get_reply,
    parse_store_reply,
    set_head,
)
from loadtest._tally import Tally

VALUE_TAIL = b"\r\nEND\r\n"


class Feeder(Conn):
    """Sets ids ``[first, end)`` of run ``tag`` into ``queue``, ``depth`` in flight.

    ``acked`` ids have a reply; ``refused`` lists the NOT_STORED ones. ``done`` when every
    id is answered (the connection then closes itself).
    """

    __slots__ = ("acked", "buf", "depth", "end", "head", "next_id", "refused", "start", "tail")

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        queue: bytes,
        tag: int,
        size: int,
        ids: tuple[int, int],
        depth: int,
    ) -> None:
        super().__init__(loop, sock)
        self.head = set_head(queue, size) + item_tag(tag)
        self.tail = FILLER * (size - ID_BYTES) + CRLF
        self.start = self.next_id = self.acked = ids[0]
        self.end = ids[1]
        self.depth = depth
        self.buf = bytearray()
        self.refused: list[int] = []

    @property
    def done(self) -> bool:
        return self.acked >= self.end

    def fire(self) -> None:
        """Top the window up to ``depth`` requests in flight (one write)."""
        first = self.next_id
        count = min(self.depth - (first - self.acked), self.end - first)
        if count <= 0:
            return
        head, tail = self.head, self.tail
        self.send(b"".join([head + b"%08x" % i + tail for i in range(first, first + count)]))
        self.next_id = first + count

    def stop(self) -> None:
        """Send nothing more; ``end`` shrinks to what was sent, so ``done`` follows the replies."""
        self.end = self.next_id

    def on_readable(self) -> None:
        buf = self.buf
        buf += self.recv()
        pos = 0
        while self.acked < self.next_id:
            nxt, stored = parse_store_reply(buf, pos)
            if nxt == pos:
                break
            if not stored:
                self.refused.append(self.acked)
            self.acked += 1
            pos = nxt
        del buf[:pos]
        if self.done:
            self.close()
        else:
            self.fire()


class Drainer(Conn):
    """Plain gets, ``depth`` in flight, until a miss (queue empty) or ``limit`` gets sent.

    Every delivered body goes to ``tally`` (when given); ``done`` when no request is left in
    flight and no more will be sent. Replies of one queue usually share one VALUE line
    (same key, same item size), so the last one seen is matched as a prefix before falling
    back to the full parser: about half the client CPU per item on a fast server.
    """

    __slots__ = (
        "buf",
        "depth",
        "got",
        "header",
        "inflight",
        "limit",
        "request",
        "sent",
        "size",
        "stopped",
        "tally",
    )

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        queue: bytes,
        depth: int,
        limit: int,
        tally: Tally | None,
    ) -> None:
        super().__init__(loop, sock)
        self.request = get_request(queue)
        self.depth = depth
        self.limit = limit
        self.tally = tally
        self.buf = bytearray()
        self.inflight = self.sent = self.got = 0
        self.stopped = False
        self.header = b"\x00"  # the last VALUE line (with CRLF); matches nothing at first
        self.size = 0

    @property
    def done(self) -> bool:
        return self.stopped and not self.inflight

    def fire(self) -> None:
        """Refill the window once it is half empty: fewer, larger writes for both sides."""
        count = min(self.depth - self.inflight, self.limit - self.sent)
        if self.stopped or count <= 0:
            self.stopped = self.stopped or self.sent >= self.limit
            return
        if self.inflight and count < self.depth // 2:
            return
        self.send(self.request * count)
        self.inflight += count
        self.sent += count

    def on_readable(self) -> None:
        buf = self.buf
        buf += self.recv()
        pos = self._consume(buf)
        del buf[:pos]
        self.fire()
        if self.done:
            self.close()

    def _consume(self, buf: bytearray) -> int:
        """Take every complete reply off ``buf``; returns the offset after the last one."""
        pos = 0
        header, size, tally = self.header, self.size, self.tally
        while self.inflight:
            if buf.startswith(header, pos):
                start = pos + len(header)
                stop = start + size
                if len(buf) < stop + 7:
                    break
                if not buf.startswith(VALUE_TAIL, stop):
                    raise ReplyError("VALUE data not followed by CRLF END")
                body: bytes | None = bytes(buf[start:stop])
                nxt = stop + 7
            else:
                nxt, body = parse_get_reply(buf, pos)
                if nxt == pos:
                    break
                if body is not None:  # learn this VALUE line for the next replies
                    header = self.header = bytes(buf[pos : buf.find(CRLF, pos) + 2])
                    size = self.size = len(body)
            pos = nxt
            self.inflight -= 1
            if body is None:
                self.stopped = True  # empty: stop asking, but read every reply in flight
            else:
                self.got += 1
                if tally is not None:
                    tally.add(body)
        return pos
