"""The bundled client (kestrelpy.client) against real ``kestrelpy serve`` processes.

One scenario of every operation runs on each face: :class:`Client` directly,
:class:`AsyncClient` under ``asyncio.run`` and :class:`TwistedClient` under pytest-twisted.
What the client claims is checked on the servers themselves, through a separate raw
connection (``queue_<q>_items``, ``queue_<q>_open_transactions``). Then: several servers
(spread, stickiness, a server killed mid-run), refusals, codecs across clients, timeouts.

Backoff is real time in a client; the tests that must get past one give the client's engine
a clock they move by hand instead of sleeping.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from pymemcache.client.base import Client as PymemcacheClient

from kestrelpy.client import (
    AsyncClient,
    Client,
    DecodeError,
    NoServerAvailable,
    ServerRefused,
    ServerUnavailable,
    TwistedClient,
    UsageError,
)
from kestrelpy.client.blocking import SocketLink, connect_socket
from kestrelpy.client.engine import Engine
from kestrelpy.client.servers import ServerAddress

from .conftest import HOST as LOOPBACK
from .conftest import Conn, ServerFactory, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(60)

CLIENT_TIMEOUT_S = 5.0


def queue_stats(raw: Conn, queue: str) -> dict[str, int]:
    """The queue's counters as the server reports them (``items``, ``open_transactions``...)."""
    prefix = f"queue_{queue}_"
    return {
        name.removeprefix(prefix): int(value)
        for name, value in raw.stats().items()
        if name.startswith(prefix) and value.isdigit()
    }


def held_and_waiting(raw: Conn, queue: str) -> tuple[int, int]:
    """(open_transactions, items) of ``queue``: what a reliable read test looks at."""
    stats = queue_stats(raw, queue)
    return stats.get("open_transactions", 0), stats.get("items", 0)


def items_on(server: ServerProcess, queue: str) -> int:
    with server.connect() as raw:
        return queue_stats(raw, queue).get("items", 0)


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client_on_clock(servers: list[str], clock: Callable[[], float], **options: Any) -> Client:
    """A blocking Client whose backoff runs on ``clock``: Client itself always uses
    time.monotonic, so its engine is swapped for one built with the same arguments."""
    client = Client(servers, **options)
    client.engine = Engine(servers, connect=connect_socket, clock=clock, **options)
    return client


# -- every operation, on every face ----------------------------------------------------------


class BlockingFace:
    """:class:`Client` behind awaitable calls, so one scenario drives all three faces."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def do(self, operation: str, *args: Any) -> Any:
        return getattr(self.client, operation)(*args)

    @asynccontextmanager
    async def reliable(self, queue: str) -> AsyncIterator[Any]:
        with self.client.reliable(queue) as job:
            yield job


class AwaitingFace:
    """:class:`AsyncClient` (coroutines) or :class:`TwistedClient` (Deferreds)."""

    def __init__(self, client: AsyncClient | TwistedClient) -> None:
        self.client = client

    async def do(self, operation: str, *args: Any) -> Any:
        return await getattr(self.client, operation)(*args)

    def reliable(self, queue: str) -> Any:
        return self.client.reliable(queue)


async def every_operation(face: BlockingFace | AwaitingFace, srv: ServerProcess, q: str) -> None:
    raw = srv.connect()
    try:
        # put, peek, get; None when empty, with or without a wait
        assert await face.do("put", q, {"id": 1}) is None
        await face.do("put", q, "two")
        assert await face.do("peek", q) == {"id": 1}
        assert await face.do("get", q) == {"id": 1}
        assert await face.do("get", q) == "two"
        assert await face.do("get", q) is None
        assert await face.do("get", q, 20) is None

        # put_many: every item, in order
        assert await face.do("put_many", q, [1, 2, 3, 4]) == 4
        assert await face.do("put_many", q, []) == 0
        assert held_and_waiting(raw, q) == (0, 4)

        # open, then abort (back to the head) or close (gone)
        assert await face.do("open", q) == 1
        assert held_and_waiting(raw, q) == (1, 3)
        with pytest.raises(UsageError, match="is open"):
            await face.do("open", q)
        with pytest.raises(UsageError, match="is open"):
            await face.do("get", q)
        assert await face.do("peek", q) == 2  # a peek takes nothing: allowed
        assert await face.do("abort", q) is True
        assert held_and_waiting(raw, q) == (0, 4)
        assert await face.do("abort", q) is False
        assert await face.do("open", q) == 1
        assert await face.do("close", q) is True
        assert held_and_waiting(raw, q) == (0, 3)
        assert await face.do("close", q) is False

        # reliable, block ends normally: the close rides on the next request
        async with face.reliable(q) as job:
            assert job == 2
            assert held_and_waiting(raw, q) == (1, 2)
        assert held_and_waiting(raw, q) == (1, 2)  # not sent yet
        assert await face.do("peek", q) == 3
        assert held_and_waiting(raw, q) == (0, 2)  # confirmed, ahead of the peek

        # reliable, block raises: aborted, the item is back at the head
        with pytest.raises(RuntimeError, match="job failed"):
            async with face.reliable(q) as job:
                assert job == 3
                raise RuntimeError("job failed")
        assert held_and_waiting(raw, q) == (0, 2)
        assert await face.do("peek", q) == 3

        # a worker loop: each close folds into the next open (get q/close/open)
        async with face.reliable(q) as job:
            assert job == 3
        async with face.reliable(q) as job:
            assert job == 4
        assert held_and_waiting(raw, q) == (1, 0)
        async with face.reliable(q) as job:
            assert job is None  # empty: yields None, and 4 was confirmed on the way
        assert held_and_waiting(raw, q) == (0, 0)

        # stats, flush, delete
        await face.do("put_many", q, ["a", "b"])
        stats = await face.do("stats")
        assert list(stats) == [srv.address]
        assert stats[srv.address][f"queue_{q}_items"] == "2"
        await face.do("flush", q)
        assert held_and_waiting(raw, q) == (0, 0)
        assert await face.do("get", q) is None
        await face.do("put", q, "c")
        await face.do("delete", q)
        assert f"queue_{q}_items" not in raw.stats()

        # disconnect sends the close still owed
        await face.do("put", q, "last")
        async with face.reliable(q) as job:
            assert job == "last"
        assert held_and_waiting(raw, q) == (1, 0)
        await face.do("disconnect")
        assert held_and_waiting(raw, q) == (0, 0)
        assert queue_stats(raw, q)["canceled_transactions"] == 0  # closed, not given back
    finally:
        raw.close()


def test_blocking_client_every_operation(shared_server: ServerProcess, qname: str) -> None:
    client = Client(shared_server.address, timeout_s=CLIENT_TIMEOUT_S)
    asyncio.run(every_operation(BlockingFace(client), shared_server, qname))


def test_asyncio_client_every_operation(shared_server: ServerProcess, qname: str) -> None:
    async def scenario() -> None:
        client = AsyncClient(shared_server.address, timeout_s=CLIENT_TIMEOUT_S)
        await every_operation(AwaitingFace(client), shared_server, qname)

    asyncio.run(scenario())


@pytest_twisted.ensureDeferred
async def test_twisted_client_every_operation(shared_server: ServerProcess, qname: str) -> None:
    from twisted.internet import reactor

    client = TwistedClient(reactor, shared_server.address, timeout_s=CLIENT_TIMEOUT_S)
    await every_operation(AwaitingFace(client), shared_server, qname)


def test_leaving_the_with_block_confirms_a_finished_read(
    shared_server: ServerProcess, qname: str
) -> None:
    with shared_server.connect() as raw:
        with Client(shared_server.address) as client:
            client.put_many(qname, ["a", "b"])
            with client.reliable(qname) as job:
                assert job == "a"
            assert held_and_waiting(raw, qname) == (1, 1)
        assert held_and_waiting(raw, qname) == (0, 1)
        assert queue_stats(raw, qname)["canceled_transactions"] == 0


def test_asyncio_tasks_share_one_connection(shared_server: ServerProcess, qname: str) -> None:
    """Concurrent tasks pipeline on one link per server: no extra connections, and every
    item goes to exactly one reader even when gets and puts interleave."""

    async def scenario(raw: Conn) -> None:
        async with AsyncClient(shared_server.address) as client:
            # Connected first: tasks that all find no link connect at once, and all but one
            # of those connections are closed again (see Engine._call).
            await client.stats()
            before = int(raw.stats()["total_connections"])
            await asyncio.gather(*(client.put(qname, n) for n in range(50)))
            mixed = await asyncio.gather(
                *(client.get(qname) if n % 2 else client.put(qname, 100 + n) for n in range(60))
            )
            rest = await asyncio.gather(*(client.get(qname) for _ in range(60)))
            assert int(raw.stats()["total_connections"]) == before
        taken = [item for item in [*mixed, *rest] if item is not None]
        assert sorted(taken) == [*range(50), *range(100, 160, 2)]

    with shared_server.connect() as raw:
        asyncio.run(scenario(raw))


def test_cancelling_one_asyncio_task_spares_the_others_on_its_connection(
    shared_server: ServerProcess, qname: str
) -> None:
    """A cancelled wait's reply still arrives (and is dropped); the put pipelined behind it
    on the same connection gets its own reply, and nothing is counted down."""

    async def scenario() -> None:
        async with AsyncClient(shared_server.address) as client:
            await client.stats()  # connected: both requests below share the link
            waiting = asyncio.ensure_future(client.get(qname + "_empty", timeout_ms=300))
            putting = asyncio.ensure_future(client.put(qname, "behind"))
            await asyncio.sleep(0)  # both sent (no timing: the loop runs each to its await)
            waiting.cancel()
            await putting  # would raise ServerUnavailable if the cancel failed the link
            assert await client.get(qname) == "behind"

    asyncio.run(scenario())


def test_cancelling_a_task_spares_another_tasks_held_read(
    shared_server: ServerProcess, qname: str
) -> None:
    """A cancel once retired the connection, so the close of a read held by another task
    went out on a fresh one: it answered END, and close returned True while the server put
    the item back (the old connection closed) to be delivered again."""
    other = qname + "_other"

    async def scenario(raw: Conn) -> None:
        async with AsyncClient(shared_server.address) as client:
            await client.put(qname, "job")
            assert await client.open(qname) == "job"
            waiting = asyncio.ensure_future(client.get(other, timeout_ms=5000))
            await asyncio.sleep(0)  # sent: the loop runs the task to its await
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            raw.set(other, b'"wakes the cancelled wait"')  # the close behind it goes on
            assert await client.close(qname) is True
            assert held_and_waiting(raw, qname) == (0, 0)  # confirmed, not put back
            assert queue_stats(raw, qname)["canceled_transactions"] == 0

    with shared_server.connect() as raw:
        asyncio.run(scenario(raw))


def test_cancelling_a_task_spares_another_tasks_waiting_read(
    shared_server: ServerProcess, qname: str
) -> None:
    """A request after a cancel once replaced the connection, failing the read another
    task was waiting on (and counting the server down). Now the wait ends normally."""

    async def scenario(raw: Conn) -> None:
        async with AsyncClient(shared_server.address) as client:
            await client.stats()  # connected: the requests below share the link
            reading = asyncio.ensure_future(client.get(qname, timeout_ms=5000))
            behind = asyncio.ensure_future(client.get(qname + "_empty"))
            await asyncio.sleep(0)  # both sent; the second waits behind the first, server side
            behind.cancel()
            with pytest.raises(asyncio.CancelledError):
                await behind
            putting = asyncio.ensure_future(client.put(qname + "_next", "after the cancel"))
            await asyncio.sleep(0)  # sent
            raw.set(qname, b'"for the waiting read"')
            assert await asyncio.wait_for(reading, CLIENT_TIMEOUT_S) == "for the waiting read"
            await asyncio.wait_for(putting, CLIENT_TIMEOUT_S)
            assert client.pool.is_up(ServerAddress.parse(shared_server.address))
            assert await client.get(qname + "_next") == "after the cancel"

    with shared_server.connect() as raw:
        asyncio.run(scenario(raw))


def test_a_cancelled_asyncio_open_leaves_no_item_open(
    shared_server: ServerProcess, qname: str
) -> None:
    """The open's wait gets an item after the cancel; the abort sent behind it gives the
    item back, so it is not held (unseen) until the connection closes."""

    async def scenario(raw: Conn) -> None:
        async with AsyncClient(shared_server.address) as client:
            await client.stats()
            opening = asyncio.ensure_future(client.open(qname, timeout_ms=5000))
            await asyncio.sleep(0)  # sent
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            raw.set(qname, b'"job"')  # taken by the cancelled open's wait, then given back
            assert await client.get(qname) == "job"  # Kestrel: ERROR if q were held here
            assert held_and_waiting(raw, qname) == (0, 0)

    with shared_server.connect() as raw:
        asyncio.run(scenario(raw))


@pytest_twisted.ensureDeferred
async def test_a_cancelled_twisted_open_leaves_no_item_open(
    shared_server: ServerProcess, qname: str
) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError

    client = TwistedClient(reactor, shared_server.address)
    await client.stats()
    opening = client.open(qname, 5000)
    opening.cancel()
    with pytest.raises(CancelledError):
        await opening
    with shared_server.connect() as raw:
        raw.set(qname, b'"job"')  # taken by the cancelled open's wait, then given back
        assert await client.get(qname) == "job"
        assert held_and_waiting(raw, qname) == (0, 0)
    await client.disconnect()


def test_an_asyncio_client_can_be_used_under_a_second_event_loop(
    shared_server: ServerProcess, qname: str
) -> None:
    """Its connection belongs to the first loop, closed by then: it is replaced (once:
    RuntimeError, event loop is closed). A read held there is gone, and close says so."""
    client = AsyncClient(shared_server.address)
    asyncio.run(client.put_many(qname, ["a", "b"]))
    assert asyncio.run(client.open(qname)) == "a"
    with pytest.raises(ServerUnavailable, match="held the read is gone"):
        asyncio.run(client.close(qname))
    wait_until(lambda: items_on(shared_server, qname) == 2, 10, "a put back", shared_server)
    assert asyncio.run(client.get(qname)) == "a"
    asyncio.run(client.disconnect())


class InterruptingSocket:
    """A real socket whose recv raises KeyboardInterrupt when told: a signal handler's
    exception arriving while the reply is on its way."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.interrupt = False

    def recv(self, size: int) -> bytes:
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return self._sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_an_interrupted_blocking_exchange_does_not_pass_its_reply_on(
    shared_server: ServerProcess, qname: str
) -> None:
    """The reply of the interrupted get is still on its way: the connection is closed, or
    the next request (a put) would take that reply (VALUE ...) for its own."""
    socks: list[InterruptingSocket] = []

    async def connect(address: ServerAddress, timeout_s: float) -> SocketLink:
        sock = socket.create_connection((address.host, address.port), timeout=timeout_s)
        socks.append(InterruptingSocket(sock))
        return SocketLink(socks[-1], address, timeout_s)  # type: ignore[arg-type]

    client = Client(shared_server.address)
    client.engine = Engine(shared_server.address, connect=connect, clock=time.monotonic)
    client.put_many(qname, ["first", "second"])
    socks[-1].interrupt = True
    with pytest.raises(KeyboardInterrupt):
        client.get(qname)  # the server sent "first"; nobody read it
    client.put(qname + "_other", 1)
    assert client.get(qname) == "second"
    assert len(socks) == 2
    client.disconnect()


def test_interrupt_cuts_short_a_read_blocked_in_another_thread_without_a_retry(
    shared_server: ServerProcess, qname: str
) -> None:
    """Shut down under it, the read's socket ends like a server's close of an idle link;
    it must fail at once rather than be sent again on a fresh connection (the retry an
    idle link gets), which would wait out the whole read once more."""
    client = Client(shared_server.address)
    client.put(qname + "_warm", 1)  # a connection to reuse: the case a retry is made for
    failed: list[BaseException] = []

    def read() -> None:
        try:
            client.open(qname, timeout_ms=30_000)
        except BaseException as err:
            failed.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    with shared_server.connect() as raw:
        waiting = lambda: queue_stats(raw, qname).get("waiters", 0)  # noqa: E731
        wait_until(lambda: waiting() == 1, 10, "the blocked read", shared_server)
        client.interrupt()
        reader.join(10)
        assert not reader.is_alive() and len(failed) == 1
        assert isinstance(failed[0], NoServerAvailable), repr(failed[0])  # the only one
        wait_until(lambda: waiting() == 0, 10, "no waiter", shared_server)
        raw.set(qname, b'"late"')
        assert queue_stats(raw, qname)["items"] == 1  # no retried read took it
    client.disconnect()


def test_asyncio_concurrent_reads_get_their_own_replies(
    shared_server: ServerProcess, qname: str
) -> None:
    """Two tasks read at once: one an empty queue, one a full one. Both replies arrive in
    one chunk; the empty read must stay empty (it once shared its reply's value list with
    the next reply, so both tasks got the same item)."""

    async def scenario() -> None:
        async with AsyncClient(shared_server.address) as client:
            for n in range(20):
                await client.put(qname, n)
                got = await asyncio.gather(client.get(qname + "-empty"), client.get(qname))
                assert got == [None, n]

    asyncio.run(scenario())


@pytest_twisted.ensureDeferred
async def test_twisted_concurrent_reads_get_their_own_replies(
    shared_server: ServerProcess, qname: str
) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults

    client = TwistedClient(reactor, shared_server.address)
    for n in range(20):
        await client.put(qname, n)
        got = await gatherResults([client.get(qname + "-empty"), client.get(qname)])
        assert got == [None, n]
    await client.disconnect()


# -- several servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Three servers for tests that only touch their own queue."""
    factory = ServerFactory(tmp_path_factory.mktemp("three"))
    yield [factory() for _ in range(3)]
    factory.close()


def test_puts_spread_over_every_server(three_servers: list[ServerProcess], qname: str) -> None:
    with Client([srv.address for srv in three_servers]) as client:
        for n in range(30):
            client.put(qname, n)
        assert [items_on(srv, qname) for srv in three_servers] == [10, 10, 10]
        # a big batch goes out in chunks of 1,000, each to the next server in rotation
        assert client.put_many(qname, range(2500)) == 2500
    assert sum(items_on(srv, qname) for srv in three_servers) == 2530


def test_a_reader_stays_on_a_server_while_it_has_items(
    three_servers: list[ServerProcess], qname: str
) -> None:
    for index, srv in enumerate(three_servers):
        with srv.connect() as raw:
            for n in range(4):
                assert raw.set(qname, b"[%d,%d]" % (index, n)) == b"STORED\r\n"  # flags 0
    with Client([srv.address for srv in three_servers]) as client:
        taken = [client.get(qname) for _ in range(12)]
        assert client.get(qname) is None
    assert taken == [[server, n] for server in range(3) for n in range(4)]


def test_open_and_close_go_to_the_server_that_gave_the_item(
    three_servers: list[ServerProcess], qname: str
) -> None:
    first, middle, last = three_servers
    with middle.connect() as raw:
        for n in range(3):
            raw.set(qname, b"%d" % n)
    with Client([srv.address for srv in three_servers]) as client, middle.connect() as raw:
        assert client.open(qname) == 0
        assert held_and_waiting(raw, qname) == (1, 2)
        for n in range(3):
            client.put(qname, f"w{n}")  # one to each server, the open read untouched
        assert held_and_waiting(raw, qname) == (1, 3)
        assert client.close(qname) is True
        assert held_and_waiting(raw, qname) == (0, 3)

        with client.reliable(qname) as job:
            assert job == 1
        assert held_and_waiting(raw, qname) == (1, 2)
        for n in range(3):
            client.put(qname, f"x{n}")  # the one that goes to ``middle`` carries the close
        assert held_and_waiting(raw, qname) == (0, 3)
    for srv in (first, last):
        with srv.connect() as other:
            assert queue_stats(other, qname)["transactions"] == 0


def fixed_port_server(factory: ServerFactory, data_dir: Path) -> ServerProcess:
    """A server that comes back on the same port after a kill (the client's list is
    fixed); the last ``--port`` on the command line wins over the harness's ``--port 0``."""
    from loadtest._servers import free_port

    srv = ServerProcess(data_dir, extra_args=("--port", str(free_port())))
    factory.servers.append(srv)  # stopped at teardown like the factory's own
    return srv.start()


def test_killing_a_server_mid_run_loses_no_acknowledged_job(
    server_factory: ServerFactory, tmp_path: Path, qname: str
) -> None:
    servers = [fixed_port_server(server_factory, tmp_path / f"kill{n}") for n in range(3)]
    first, victim, last = servers
    addresses = [srv.address for srv in servers]
    clock = ManualClock()
    producer = client_on_clock(addresses, clock, timeout_s=CLIENT_TIMEOUT_S)
    consumer = client_on_clock(addresses, clock, timeout_s=CLIENT_TIMEOUT_S)
    acked: list[int] = []
    consumed: list[int] = []

    def put(numbers: range) -> None:
        for n in numbers:
            producer.put(qname, n)  # returns only once a server said STORED
            acked.append(n)

    def drain() -> None:
        while True:
            with consumer.reliable(qname) as job:
                if job is None:
                    return
                consumed.append(job)

    put(range(60))  # rotation: n % 3 says which server holds n
    for _ in range(20):
        with consumer.reliable(qname) as job:
            consumed.append(job)
    assert consumed == list(range(0, 60, 3))  # the reader stayed on ``first``

    # ``first`` is empty, so the next job comes from ``victim``; it dies during the job
    with pytest.raises(RuntimeError, match="crashed"), consumer.reliable(qname) as job:
        assert job == 1
        victim.kill9()
        raise RuntimeError("worker crashed with its server")  # the abort cannot be sent

    put(range(60, 120))  # every put acknowledged, by ``first`` or ``last``
    assert items_on(first, qname) + items_on(last, qname) == 20 + 60
    drain()
    assert sorted(consumed) == [n for n in range(120) if n >= 60 or n % 3 != 1]

    victim.start()  # same port, same data: the 20 acknowledged items are still there
    assert items_on(victim, qname) == 20
    assert consumer.get(qname) is None  # still backing off: not asked yet
    assert items_on(victim, qname) == 20

    clock.now += 60.0  # every backoff is over
    drain()
    assert sorted(consumed) == list(range(120))  # each acknowledged job exactly once

    put(range(120, 123))  # the producer writes to ``victim`` again too
    with victim.connect() as raw:
        assert queue_stats(raw, qname)["total_items"] == 1
    drain()
    assert sorted(consumed) == list(range(123))
    producer.disconnect()
    consumer.disconnect()


# -- refusals and usage errors ---------------------------------------------------------------


def test_a_full_queue_refuses_with_not_stored(server_factory: ServerFactory, qname: str) -> None:
    srv = server_factory("[defaults]\nmax_items = 2\n")
    with Client(srv.address) as client:
        client.put(qname, 1)
        client.put(qname, 2)
        with pytest.raises(ServerRefused) as refused:
            client.put(qname, 3)
        assert refused.value.server == srv.address
        assert refused.value.reply == "NOT_STORED"
        assert srv.address in str(refused.value)
        assert "NOT_STORED" in str(refused.value)
        assert client.get(qname) == 1  # the connection is still good

        other = qname + "b"
        with pytest.raises(ServerRefused) as batch:
            client.put_many(other, ["a", "b", "c"])
        assert batch.value.stored == 2
        assert batch.value.refused == [2]
        assert batch.value.reply == "NOT_STORED"
        assert [client.get(other), client.get(other), client.get(other)] == ["a", "b", None]


def test_a_batch_partly_stored_is_not_sent_again_elsewhere(
    server_factory: ServerFactory, qname: str
) -> None:
    """One item over ``max_item_size`` refuses alone (NOT_STORED) and the rest of its batch
    is stored: the batch must not go to the next server too, or those items are queued
    twice."""
    servers = [server_factory("[defaults]\nmax_item_size = 20\n") for _ in range(2)]
    with Client([srv.address for srv in servers]) as client:
        with pytest.raises(ServerRefused) as refused:
            client.put_many(qname, ["x" * 50, "a", "b"])
        assert refused.value.server == servers[0].address
        assert refused.value.reply == "NOT_STORED"
        assert refused.value.stored == 2  # the two after the refused one
        assert refused.value.refused == [0]
        assert [items_on(srv, qname) for srv in servers] == [2, 0]
        with pytest.raises(ServerRefused) as alone:
            client.put(qname, "y" * 50)  # refused everywhere: the last refusal is raised
        assert alone.value.reply == "NOT_STORED"
        assert (alone.value.stored, alone.value.refused) == (0, [0])
    assert [items_on(srv, qname) for srv in servers] == [2, 0]


def test_a_readonly_server_refuses_writes_with_server_error(
    server: ServerProcess, qname: str
) -> None:
    with server.connect() as raw:
        assert raw.request(b"status readonly") == b"END\r\n"
    with Client(server.address) as client:
        with pytest.raises(ServerRefused) as refused:
            client.put(qname, "x")
        assert refused.value.server == server.address
        assert refused.value.reply == "SERVER_ERROR server is readonly"
        assert f"{server.address} refused set {qname}" in str(refused.value)
    with server.connect() as raw:
        assert queue_stats(raw, qname).get("total_items", 0) == 0


def test_a_readonly_server_is_still_drained_and_writes_go_elsewhere(
    server_factory: ServerFactory, qname: str
) -> None:
    readonly, writable = server_factory(), server_factory()
    with readonly.connect() as raw:
        raw.set(qname, b'"old"')
        assert raw.request(b"status readonly") == b"END\r\n"
    with Client([readonly.address, writable.address]) as client:
        for n in range(4):
            client.put(qname, n)  # one lands on the read-only server: refused, sent on
        assert client.get(qname) == "old"  # backing off from its writes, not its reads
    assert items_on(writable, qname) == 4


def test_an_item_too_large_in_a_batch_is_not_resent_and_nothing_backs_off(
    server_factory: ServerFactory, qname: str
) -> None:
    """``SERVER_ERROR object too large`` closes the connection after the items before it
    were stored: those are not sent again elsewhere, and the server is not counted down."""
    config = '[server]\nitem_size_max = "1KB"\n'
    servers = [server_factory(config) for _ in range(2)]
    with Client([srv.address for srv in servers]) as client:
        with pytest.raises(ServerRefused) as refused:
            client.put_many(qname, ["a", "b", "x" * 2000, "c"])
        assert refused.value.reply == "SERVER_ERROR object too large"
        assert refused.value.stored == 2
        assert refused.value.refused == [2]  # "c" was never answered: neither
        assert [items_on(srv, qname) for srv in servers] == [2, 0]
        assert client.engine.pool.is_up(ServerAddress.parse(servers[0].address))
        client.put(qname, "next")  # the rotation goes on: the second server
    assert [items_on(srv, qname) for srv in servers] == [2, 1]


def test_refused_indexes_count_from_the_start_of_put_many(
    server_factory: ServerFactory, qname: str
) -> None:
    srv = server_factory("[defaults]\nmax_items = 1500\n")
    with Client(srv.address) as client, pytest.raises(ServerRefused) as refused:
        client.put_many(qname, range(2000))  # two chunks: the second is half refused
    assert refused.value.stored == 1500
    assert refused.value.refused == list(range(1500, 2000))


def test_close_after_the_server_closed_the_idle_connection_raises(
    server_factory: ServerFactory, qname: str
) -> None:
    """The server put the item back when it closed the connection that held it: close
    must not be retried on a fresh connection, where it answers END (success)."""
    srv = server_factory('[server]\nclient_timeout = "200ms"\n')
    with Client(srv.address) as client:
        client.put(qname, "job")
        assert client.open(qname) == "job"
        wait_until(lambda: srv_connections(srv) == 1, 10, "the idle client connection closed", srv)
        with pytest.raises(ServerUnavailable, match="held the read is gone"):
            client.close(qname)
        assert items_on(srv, qname) == 1  # back: it will be delivered again
        assert client.get(qname) == "job"


def test_a_connection_the_server_closed_while_idle_is_replaced_at_once(
    server_factory: ServerFactory, qname: str
) -> None:
    """``client_timeout`` (or a restart) closes an idle connection; the next operation
    goes out on a fresh one instead of failing and backing off from a healthy server."""
    srv = server_factory('[server]\nclient_timeout = "200ms"\n')
    with Client(srv.address) as client:
        client.put(qname, 1)
        wait_until(lambda: srv_connections(srv) == 1, 10, "the idle client connection closed", srv)
        client.put(qname, 2)
        assert [client.get(qname), client.get(qname)] == [1, 2]


def srv_connections(srv: ServerProcess) -> int:
    """curr_connections, counting the probe itself."""
    with srv.connect() as raw:
        return int(raw.stats()["curr_connections"])


def test_a_quiescent_server_refuses_reads_with_server_error(
    server: ServerProcess, qname: str
) -> None:
    """Refused is not empty: a get that every server refuses raises, it does not say
    None (which a worker loop takes for "nothing to do")."""
    with server.connect() as raw:
        raw.set(qname, b'"job"')
        assert raw.request(b"status quiescent") == b"END\r\n"
    with Client(server.address) as client:
        with pytest.raises(ServerRefused) as refused:
            client.get(qname)
        assert refused.value.server == server.address
        assert refused.value.reply == "SERVER_ERROR server is quiescent"
        with pytest.raises(NoServerAvailable, match="server is quiescent"):
            client.get(qname)  # backing off from it now
    with server.connect() as raw:
        assert raw.request(b"status up") == b"END\r\n"
        assert queue_stats(raw, qname)["items"] == 1


@pytest.mark.parametrize("name", ["a b", "a/b", "", "tab\there", "x" * 300])
def test_a_bad_queue_name_raises_before_anything_is_sent(
    shared_server: ServerProcess, name: str
) -> None:
    with shared_server.connect() as raw:
        before = raw.stats()["total_connections"]
        client = Client(shared_server.address)
        for operation in (
            lambda: client.put(name, 1),
            lambda: client.put_many(name, [1]),
            lambda: client.get(name),
            lambda: client.peek(name),
            lambda: client.open(name),
            lambda: client.flush(name),
            lambda: client.delete(name),
        ):
            with pytest.raises(UsageError, match="queue name"):
                operation()
        assert raw.stats()["total_connections"] == before  # never even connected


def test_a_second_open_raises_without_sending(shared_server: ServerProcess, qname: str) -> None:
    with Client(shared_server.address) as client, shared_server.connect() as raw:
        client.put_many(qname, [1, 2])
        assert client.open(qname) == 1
        gets = raw.stats()["cmd_get"]
        with pytest.raises(UsageError, match="close or abort it first"):
            client.open(qname)
        with pytest.raises(UsageError, match="close or abort it first"):
            client.get(qname)
        assert raw.stats()["cmd_get"] == gets
        assert held_and_waiting(raw, qname) == (1, 1)  # Kestrel would have dropped it
        assert client.close(qname) is True
        assert held_and_waiting(raw, qname) == (0, 1)


@pytest.mark.parametrize(
    ("servers", "options", "match"),
    [
        ("localhost", {}, "expected host:port"),
        ("", {}, "no servers given"),
        ("127.0.0.1:1", {"timeout_s": 0}, "timeout_s"),
        ("127.0.0.1:1", {"codec": "pickle"}, "unknown codec"),
    ],
)
def test_bad_client_arguments_are_usage_errors(
    servers: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        Client(servers, **options)
    with pytest.raises(UsageError, match=match):
        AsyncClient(servers, **options)


# -- codecs across clients -------------------------------------------------------------------


@pytest.fixture
def pymemcache(shared_server: ServerProcess) -> Iterator[PymemcacheClient]:
    address = (shared_server.host, shared_server.port)
    client = PymemcacheClient(address, connect_timeout=5, timeout=5, default_noreply=False)
    yield client
    client.close()


def test_an_unmarked_item_is_read_with_the_readers_codec(
    shared_server: ServerProcess, pymemcache: PymemcacheClient, qname: str
) -> None:
    assert pymemcache.set(qname, b'{"from": "pymemcache"}')  # flags 0
    assert pymemcache.set(qname, b"\x00raw\r\n")
    with Client(shared_server.address) as json_client:
        assert json_client.get(qname) == {"from": "pymemcache"}
    with Client(shared_server.address, codec="raw") as raw_client:
        assert raw_client.get(qname) == b"\x00raw\r\n"
        raw_client.put(qname, '{"id":1}')  # raw: a str goes out as its UTF-8 bytes
    assert pymemcache.get(qname) == b'{"id":1}'  # and other clients see plain bytes


def test_decode_by_flags_off_gives_the_bytes_of_any_item(
    shared_server: ServerProcess, pymemcache: PymemcacheClient, qname: str
) -> None:
    """What the router's kestrel backend reads with: raw bytes, whatever wrote them."""
    assert pymemcache.set(qname, b"x\x9c\x03\x00", flags=16)  # PHP memcached: compressed
    with Client(shared_server.address) as writer:
        writer.put(qname, {"id": 1})  # json, marked
    with Client(shared_server.address, codec="raw", decode_by_flags=False) as reader:
        assert reader.get(qname) == b"x\x9c\x03\x00"
        assert reader.get(qname) == b'{"id":1}'

    async def scenario() -> None:
        async with AsyncClient(shared_server.address, codec="raw", decode_by_flags=False) as c:
            await c.put(qname, {"id": 2}, codec="json")
            assert await c.get(qname) == b'{"id":2}'

    asyncio.run(scenario())


def test_raw_codec_round_trips_bytes(shared_server: ServerProcess, qname: str) -> None:
    body = bytes(range(256)) + b"\r\nEND\r\nVALUE x 0 1\r\n"
    with Client(shared_server.address, codec="raw") as client:
        client.put(qname, body)
        client.put(qname, b"")
        client.put(qname, "é")
        assert client.get(qname) == body
        assert client.get(qname) == b""
        assert client.get(qname) == "é".encode()


def test_an_item_is_decoded_by_its_mark_whatever_the_readers_codec(
    shared_server: ServerProcess, qname: str
) -> None:
    job = {"name": "resize", "args": [1, 2], "blob": b"\x00\xff"}
    with Client(shared_server.address, codec="msgpack") as writer:
        writer.put(qname, job)
    with Client(shared_server.address, codec="raw") as writer:
        writer.put(qname, b"\x01\x02")
    with Client(shared_server.address, codec="json") as reader:
        assert reader.get(qname) == job
        assert reader.get(qname) == b"\x01\x02"


def test_an_item_with_unknown_flags_is_a_decode_error(
    shared_server: ServerProcess, pymemcache: PymemcacheClient, qname: str
) -> None:
    assert pymemcache.set(qname, b"pickled?", flags=1)
    assert pymemcache.set(qname, b"compressed?", flags=8)
    with Client(shared_server.address) as client, shared_server.connect() as raw:
        with pytest.raises(DecodeError) as plain:
            client.get(qname)
        assert (plain.value.body, plain.value.flags) == (b"pickled?", 1)
        # an open that cannot decode leaves the read open: close drops it (dead-letter)
        with pytest.raises(DecodeError) as opened:
            client.open(qname)
        assert (opened.value.body, opened.value.flags) == (b"compressed?", 8)
        assert held_and_waiting(raw, qname) == (1, 0)
        assert client.close(qname) is True
        assert held_and_waiting(raw, qname) == (0, 0)


# -- timeouts --------------------------------------------------------------------------------


WAIT_MS = 300  # longer than the client's timeout_s below: the server may hold a read


def test_blocking_read_wait_is_added_to_the_timeout(
    shared_server: ServerProcess, qname: str
) -> None:
    with Client(shared_server.address, timeout_s=0.1) as client:
        assert client.get(qname, WAIT_MS) is None
        assert client.open(qname, WAIT_MS) is None


def test_asyncio_read_wait_is_added_to_the_timeout(
    shared_server: ServerProcess, qname: str
) -> None:
    async def scenario() -> None:
        async with AsyncClient(shared_server.address, timeout_s=0.1) as client:
            assert await client.get(qname, WAIT_MS) is None

    asyncio.run(scenario())


@pytest_twisted.ensureDeferred
async def test_twisted_read_wait_is_added_to_the_timeout(
    shared_server: ServerProcess, qname: str
) -> None:
    from twisted.internet import reactor

    client = TwistedClient(reactor, shared_server.address, timeout_s=0.1)
    assert await client.get(qname, WAIT_MS) is None
    await client.disconnect()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(8)
        yield f"{LOOPBACK}:{sock.getsockname()[1]}"


def test_blocking_client_gives_up_on_a_silent_server(silent_server: str, qname: str) -> None:
    client = Client(silent_server, timeout_s=0.2)
    with pytest.raises(NoServerAvailable, match=f"{silent_server}: timed out") as caught:
        client.put(qname, 1)
    assert caught.value.failures == (f"{silent_server}: timed out",)
    with pytest.raises(NoServerAvailable, match=silent_server):
        client.get(qname)  # backing off: fails at once, still naming it
    client.disconnect()


def test_asyncio_client_gives_up_on_a_silent_server(silent_server: str, qname: str) -> None:
    async def scenario() -> None:
        client = AsyncClient(silent_server, timeout_s=0.2)
        with pytest.raises(NoServerAvailable, match=f"{silent_server}: timed out"):
            await client.get(qname, 100)
        await client.disconnect()

    asyncio.run(scenario())


@pytest_twisted.ensureDeferred
async def test_twisted_client_gives_up_on_a_silent_server(silent_server: str, qname: str) -> None:
    from twisted.internet import reactor

    client = TwistedClient(reactor, silent_server, timeout_s=0.2)
    with pytest.raises(NoServerAvailable, match=f"{silent_server}: timed out"):
        await client.put(qname, 1)
    await client.disconnect()
