"""kestrelpy.kombu.pool: one server pool shared by a channel's clients, safe across threads."""

from __future__ import annotations

import threading

import pytest

from kestrelpy.client import Client
from kestrelpy.client.servers import ServerAddress
from kestrelpy.kombu.pool import SharedServerPool, sharing

SERVERS = ["127.0.0.1:1", "127.0.0.1:2"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_server_one_client_saw_fail_is_backed_off_for_every_client() -> None:
    clock = Clock()
    pool = SharedServerPool(SERVERS, clock)
    first = sharing(Client(SERVERS), pool)
    fresh = sharing(Client(SERVERS), pool)
    hung = ServerAddress("127.0.0.1", 1)
    first.engine.pool.mark_down(hung, "timed out")
    assert list(fresh.engine.pool.readers()) == [ServerAddress("127.0.0.1", 2)]
    clock.now += 1.0
    assert hung in list(fresh.engine.pool.readers())


def test_a_hit_moves_where_every_clients_reads_start() -> None:
    pool = SharedServerPool(SERVERS, Clock())
    sharing(Client(SERVERS), pool).engine.pool.read_from(ServerAddress("127.0.0.1", 2))
    fresh = sharing(Client(SERVERS), pool)
    assert next(iter(fresh.engine.pool.readers())) == ServerAddress("127.0.0.1", 2)


def test_a_pool_of_other_servers_is_refused() -> None:
    with pytest.raises(ValueError, match="servers"):
        sharing(Client(["127.0.0.1:3"]), SharedServerPool(SERVERS, Clock()))


def test_marks_from_several_threads_keep_the_pool_consistent() -> None:
    """Acks (result thread) mark servers up while the consumer marks them down: the count
    of troubled servers must end right, or backoffs would be ignored."""
    pool = SharedServerPool(SERVERS, Clock())
    address = ServerAddress("127.0.0.1", 1)

    def churn() -> None:
        for _ in range(2000):
            pool.mark_down(address, "reset")
            pool.mark_up(address)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    pool.mark_up(address)
    assert pool.is_up(address)
    assert pool._troubled == 0  # the fast paths (mark_up, readers) trust this count
