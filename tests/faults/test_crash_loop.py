"""Crash loop: producers and reliable readers on real connections, the server killed with
kill -9 at random moments and restarted on the same data dir, checked by content.

What docs/protocol.md §12 promises, and so what is checked:

- ``STORED`` under ``sync = "always"`` means the item is committed and fsynced: every item
  whose ``STORED`` reached us is delivered at least once over the whole run.
- A removal (a plain get, or the close of ``get q/close/open``) is committed once a write
  that *arrived after the removal was answered* has been answered (``STORED``), on any
  connection. So a removal counts as confirmed when its reply had reached us before we sent
  a ``set`` whose ``STORED`` then reached us, in the same server life (a later life's
  ``STORED`` says nothing: the removal may have died with the process). A confirmed removal
  is never delivered again; an unconfirmed one may be (at-least-once).
- Payloads are unique and carry their id and length: nothing is delivered that was never
  sent, and nothing comes back altered.
- Within one server life an item is handed out once (connections only end at the kill).

No sleeps: one thread drives every connection through a selector, the kill comes after the
N-th reply (N from a seeded RNG) while the other connections still have requests in flight,
and every wait has a deadline. Replies the server sent before dying are still read.

``sync = "periodic"`` runs the same loop to measure its loss window: items ``STORED`` then
never delivered after a kill -9. Only "nothing delivered that was never sent" is asserted
there; the loss is reported. (kill -9 keeps the page cache, so a commit before ``STORED`` is
expected to survive even unsynced; a power cut is what ``periodic`` can lose.)

Sizes: ``KESTRELPY_SOAK_ROUNDS`` rounds per policy (``make soak``), else a few;
``KESTRELPY_SOAK_SEED`` replays a run.
"""

from __future__ import annotations

import hashlib
import random
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fault_harness import (
    HOST,
    IO_TIMEOUT_S,
    Conn,
    NeedMore,
    Server,
    env_int,
    make_server,
    parse_get_reply,
    parse_line,
    start,
)

QUEUES = (b"crash_a", b"crash_b")
PRODUCERS = 3
READERS = ((b"crash_a", "open"), (b"crash_b", "open"), (b"crash_a", "open"), (b"crash_b", "plain"))
MAX_BATCH = 4  # sets pipelined per producer turn
MAX_REPLIES_BEFORE_KILL = 400
LARGE_SHARE = 0.03  # items of 64 KiB and up take their own commit lane (§12)


def payload(item: int, size: int) -> bytes:
    """Item ``item``'s unique body: its id and size, then bytes derived from the id."""
    head = b"i%d:%d:" % (item, size)
    seed = hashlib.blake2b(head, digest_size=32).digest()
    body = (seed * (size // 32 + 1))[: max(0, size - len(head))]
    return head + body


def item_of(data: bytes) -> int | None:
    """The id ``data`` claims, if ``data`` is exactly that item's payload; else None."""
    try:
        tag, size, _ = data.split(b":", 2)
        item, length = int(tag[1:]), int(size)
    except ValueError:
        return None
    return item if tag[:1] == b"i" and payload(item, length) == data else None


@dataclass
class Pending:
    kind: str  # "set" or "get"
    sent_seq: int
    item: int | None = None  # set: the item sent; get: the item this get closes


@dataclass
class Client:
    sock: socket.socket
    role: str  # "producer", "open" (get q/close/open) or "plain" (get q)
    queue: bytes
    buf: bytearray = field(default_factory=bytearray)
    pending: deque[Pending] = field(default_factory=deque)
    holding: int | None = None  # the item this connection has open


@dataclass
class Tally:
    """What the whole run saw; violations are lists of human-readable lines."""

    sent: set[int] = field(default_factory=set)
    stored: set[int] = field(default_factory=set)
    delivered: set[int] = field(default_factory=set)
    confirmed_removed: set[int] = field(default_factory=set)
    deliveries: int = 0
    redeliveries: int = 0
    rounds: int = 0
    never_sent: list[str] = field(default_factory=list)
    after_confirmed: list[str] = field(default_factory=list)
    twice_in_a_life: list[str] = field(default_factory=list)

    def lost(self) -> set[int]:
        return self.stored - self.delivered


class CrashLoop:
    def __init__(self, server: Server, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.tally = Tally()
        self.seq = 0  # one clock for every send and reply, across connections
        self.next_item = 0
        self.life_delivered: set[int] = set()
        self.unconfirmed: deque[tuple[int, int]] = deque()  # (answered_seq, item), in order

    def _tick(self) -> int:
        self.seq += 1
        return self.seq

    # -- what a reply means ---------------------------------------------------------------

    def _deliver(self, queue: bytes, data: bytes) -> int | None:
        t = self.tally
        item = item_of(data)
        if item is None or item not in t.sent:
            t.never_sent.append(f"{queue!r}: {data[:60]!r} ({len(data)} bytes)")
            return None
        t.deliveries += 1
        if item in t.confirmed_removed:
            t.after_confirmed.append(f"item {item} on {queue!r} in round {t.rounds}")
        if item in self.life_delivered:
            t.twice_in_a_life.append(f"item {item} on {queue!r} in round {t.rounds}")
        if item in t.delivered:
            t.redeliveries += 1
        self.life_delivered.add(item)
        t.delivered.add(item)
        return item

    def _removal_answered(self, item: int, seq: int) -> None:
        self.unconfirmed.append((seq, item))

    def _stored(self, item: int, sent_seq: int) -> None:
        self.tally.stored.add(item)
        while self.unconfirmed and self.unconfirmed[0][0] < sent_seq:
            self.tally.confirmed_removed.add(self.unconfirmed.popleft()[1])

    def _take_reply(self, client: Client) -> bool:
        """Handle the next whole reply in ``client.buf``; False if it is not all there."""
        if not client.pending:
            raise AssertionError(f"reply with no request in flight: {bytes(client.buf)[:80]!r}")
        req = client.pending[0]
        try:
            reply = parse_line(client.buf) if req.kind == "set" else parse_get_reply(client.buf)
        except NeedMore:
            return False
        client.pending.popleft()
        seq = self._tick()
        if req.kind == "set":
            assert reply == b"STORED", f"set of item {req.item}: {reply!r}\n{self.server.log()}"
            assert req.item is not None
            self._stored(req.item, req.sent_seq)
            return True
        assert isinstance(reply, list) and len(reply) <= 1, (
            f"get on {client.queue!r}: {reply!r}\n{self.server.log()}"
        )
        if client.role == "open":
            if req.item is not None:
                self._removal_answered(req.item, seq)  # the close; this get answered it
            client.holding = self._deliver(client.queue, reply[0]) if reply else None
        elif reply:
            item = self._deliver(client.queue, reply[0])
            if item is not None:
                self._removal_answered(item, seq)
        return True

    # -- requests -------------------------------------------------------------------------

    def _issue(self, client: Client) -> None:
        rng = self.rng
        if client.role == "producer":
            out = []
            for _ in range(rng.randint(1, MAX_BATCH)):
                item = self.next_item
                self.next_item += 1
                large = rng.random() < LARGE_SHARE
                size = rng.randint(65536, 81920) if large else rng.randint(16, 300)
                data = payload(item, size)
                queue = rng.choice(QUEUES)
                out.append(b"set %s 0 0 %d\r\n%s\r\n" % (queue, len(data), data))
                self.tally.sent.add(item)
                client.pending.append(Pending("set", self._tick(), item))
            client.sock.sendall(b"".join(out))
        elif client.role == "open":
            client.pending.append(Pending("get", self._tick(), client.holding))
            client.sock.sendall(b"get %s/close/open\r\n" % client.queue)
        else:
            client.pending.append(Pending("get", self._tick()))
            client.sock.sendall(b"get %s\r\n" % client.queue)

    # -- one server life ------------------------------------------------------------------

    def round(self) -> None:
        """Start the server, run until the N-th reply, kill -9, read what it had sent."""
        start(self.server)
        self.tally.rounds += 1
        self.life_delivered = set()
        self.unconfirmed.clear()
        kill_after = self.rng.randint(1, MAX_REPLIES_BEFORE_KILL)
        clients = [self._connect("producer", b"") for _ in range(PRODUCERS)]
        clients += [self._connect(role, queue) for queue, role in READERS]
        sel = selectors.DefaultSelector()
        for client in clients:
            sel.register(client.sock, selectors.EVENT_READ, client)
        replies = 0
        try:
            while replies < kill_after:
                for client in clients:
                    if not client.pending and (
                        client.role == "producer" or self.rng.random() < 0.5
                    ):
                        self._issue(client)
                ready = sel.select(IO_TIMEOUT_S)
                assert ready, f"no reply within {IO_TIMEOUT_S}s\n{self.server.log()}"
                for key, _ in ready:
                    client = key.data
                    chunk = client.sock.recv(1 << 16)
                    assert chunk, f"server closed a connection\n{self.server.log()}"
                    client.buf += chunk
                    while replies < kill_after and client.pending and self._take_reply(client):
                        replies += 1
                if replies >= kill_after:
                    break
            self.server.kill9()
            for client in clients:
                self._drain(client)
        finally:
            sel.close()
            for client in clients:
                client.sock.close()
            if self.server.running:
                self.server.kill9()

    def _connect(self, role: str, queue: bytes) -> Client:
        assert self.server.port is not None
        sock = socket.create_connection((HOST, self.server.port), timeout=IO_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Client(sock, role, queue)

    def _drain(self, client: Client) -> None:
        """After the kill: the replies the server sent before it died, up to EOF."""
        deadline = time.monotonic() + IO_TIMEOUT_S
        while client.pending and self._take_reply(client):
            pass
        while client.pending:
            client.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = client.sock.recv(1 << 16)
            except ConnectionResetError:
                return
            except TimeoutError:
                raise AssertionError("no EOF from a killed server within the deadline") from None
            if not chunk:
                return
            client.buf += chunk
            while client.pending and self._take_reply(client):
                pass

    def final_drain(self) -> None:
        """A last life without a kill: read every queue empty, then stop cleanly."""
        start(self.server)
        self.tally.rounds += 1
        self.life_delivered = set()
        with Conn(self.server) as conn:
            for queue in QUEUES:
                while True:
                    reply = conn.get(queue + b"/close/open")
                    assert isinstance(reply, list), f"{queue!r}: {reply!r}"
                    if not reply:
                        break
                    self._deliver(queue, reply[0])
                assert conn.get(queue + b"/close") == []
        code = self.server.stop()
        assert code == 0, f"exit {code} after SIGTERM\n{self.server.log()}"


def run(tmp_path: Path, sync: str, rounds: int, seed: int) -> Tally:
    config = f'[server]\nsync = "{sync}"\n'
    loop = CrashLoop(make_server(tmp_path / "data", config), random.Random(seed))
    try:
        for _ in range(rounds):
            loop.round()
        loop.final_drain()
    finally:
        if loop.server.running:
            loop.server.kill9()
    t = loop.tally
    print(
        f"\ncrash loop sync={sync} seed={seed}: {rounds} kills survived, {len(t.sent)} sent, "
        f"{len(t.stored)} STORED, {len(t.delivered)} delivered ({t.deliveries} deliveries, "
        f"{t.redeliveries} again after a kill), {len(t.confirmed_removed)} confirmed removals, "
        f"lost {len(t.lost())} of {len(t.stored)} STORED"
    )
    return t


ROUNDS = env_int("KESTRELPY_SOAK_ROUNDS", 6)
SEED = env_int("KESTRELPY_SOAK_SEED", 18)


def _shown(lines: list[str]) -> str:
    return "\n".join(lines[:20]) + (f"\n... {len(lines)} in all" if len(lines) > 20 else "")


@pytest.mark.timeout(max(120, ROUNDS * 20))
def test_always_keeps_every_stored_item_through_kill_9(tmp_path: Path) -> None:
    t = run(tmp_path, "always", ROUNDS, SEED)
    assert not t.never_sent, "delivered but never sent:\n" + _shown(t.never_sent)
    assert not t.after_confirmed, "delivered after a confirmed removal:\n" + _shown(
        t.after_confirmed
    )
    assert not t.twice_in_a_life, "handed out twice in one server life:\n" + _shown(
        t.twice_in_a_life
    )
    lost = sorted(t.lost())
    assert not lost, f"{len(lost)} STORED items never delivered: {lost[:20]}"
    assert t.stored and t.delivered, "the run checked nothing"


@pytest.mark.timeout(max(120, ROUNDS * 20))
def test_periodic_loss_window_under_kill_9(tmp_path: Path) -> None:
    rounds = max(2, ROUNDS // 2)
    t = run(tmp_path, "periodic", rounds, SEED + 1)
    assert not t.never_sent, "delivered but never sent:\n" + _shown(t.never_sent)
    print(
        f"periodic: lost {len(t.lost())} STORED items, {len(t.after_confirmed)} deliveries "
        f"after a confirmed removal, over {rounds} kills"
    )
