"""kestrelpy.client.servers: addresses, write rotation, reader stickiness and backoff, on a
fake clock (a list holding "now", in seconds)."""

from __future__ import annotations

from collections import Counter

import pytest

from kestrelpy.client import NoServerAvailable, UsageError
from kestrelpy.client.servers import (
    BACKOFF_START_S,
    ServerAddress,
    ServerPool,
    parse_servers,
)

A = ServerAddress("10.0.0.1", 22133)
B = ServerAddress("10.0.0.2", 22133)
C = ServerAddress("10.0.0.3", 22134)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = [now]

    def __call__(self) -> float:
        return self.now[0]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds


def pool_of(*addresses: ServerAddress, backoff_max_s: float = 30.0) -> tuple[ServerPool, FakeClock]:
    clock = FakeClock()
    return ServerPool(addresses, clock, backoff_max_s=backoff_max_s), clock


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:22133", ServerAddress("127.0.0.1", 22133)),
        ("kestrel.example:1", ServerAddress("kestrel.example", 1)),
        (" host:65535 ", ServerAddress("host", 65535)),
        ("[::1]:22133", ServerAddress("::1", 22133)),
        ("[fe80::1%eth0]:80", ServerAddress("fe80::1%eth0", 80)),
    ],
)
def test_parse_host_port(text: str, expected: ServerAddress) -> None:
    assert ServerAddress.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty
        "   ",
        "localhost",  # no port: a typo more often than a wish for 22133
        "localhost:",
        ":22133",  # no host
        "[]:22133",
        "host:http",  # bad ports
        "host:0",
        "host:65536",
        "host:-1",
        "host:+80",
        "host: 80",
        "host:80x",
        "[::1]",
        "[::1:80",  # unbalanced brackets
        "::1]:80",
    ],
)
def test_parse_refuses_bad_addresses(text: str) -> None:
    with pytest.raises(UsageError, match="expected host:port"):
        ServerAddress.parse(text)


def test_str_is_host_port_with_brackets_for_ipv6() -> None:
    assert str(A) == "10.0.0.1:22133"
    assert str(ServerAddress("::1", 22133)) == "[::1]:22133"
    assert ServerAddress.parse(str(ServerAddress("::1", 5))) == ServerAddress("::1", 5)


def test_parse_servers_from_a_string_or_a_list() -> None:
    assert parse_servers("10.0.0.1:22133, 10.0.0.2:22133,,10.0.0.3:22134") == [A, B, C]
    assert parse_servers(["10.0.0.1:22133", "10.0.0.3:22134"]) == [A, C]
    # duplicates are dropped, order kept
    assert parse_servers("10.0.0.2:22133,10.0.0.1:22133,10.0.0.2:22133") == [B, A]


@pytest.mark.parametrize("servers", ["", " , ", [], [""]])
def test_parse_servers_needs_at_least_one(servers: str | list[str]) -> None:
    with pytest.raises(UsageError, match="no servers given"):
        parse_servers(servers)


def test_parse_servers_names_the_bad_entry() -> None:
    with pytest.raises(UsageError, match=r"'10\.0\.0\.2'"):
        parse_servers("10.0.0.1:22133,10.0.0.2")


# -- writes ----------------------------------------------------------------------------------


def first_writer(pool: ServerPool) -> ServerAddress | None:
    return next(pool.writers(), None)


def test_writes_rotate_over_every_server() -> None:
    pool, _ = pool_of(A, B, C)
    assert [first_writer(pool) for _ in range(7)] == [A, B, C, A, B, C, A]


def test_each_write_may_try_every_up_server_once() -> None:
    pool, _ = pool_of(A, B, C)
    assert list(pool.writers()) == [A, B, C]
    assert list(pool.writers()) == [B, C, A]


def test_writes_skip_a_server_that_is_down() -> None:
    pool, _ = pool_of(A, B, C)
    pool.mark_down(B, "connection refused")
    writes = Counter(first_writer(pool) for _ in range(30))
    assert B not in writes
    assert writes[A] == writes[C] == 15  # the down server's share is split, not dumped on C
    assert sorted(pool.writers()) == [A, C]  # a write never tries a server in backoff


def test_a_write_backoff_keeps_the_server_for_reads() -> None:
    """A read-only server refuses writes but can still be drained."""
    pool, clock = pool_of(A, B)
    pool.mark_down(A, "SERVER_ERROR server is readonly", writes_only=True)
    assert list(pool.writers()) == [B]
    assert list(pool.writers()) == [B]
    assert list(pool.readers()) == [A, B]
    pool.mark_up(A)  # a read succeeded: writes are still refused until the backoff ends
    assert list(pool.writers()) == [B]
    clock.advance(1.0)
    assert sorted(pool.writers()) == [A, B]
    pool.mark_writable(A)
    assert [first_writer(pool) for _ in range(4)] in ([A, B, A, B], [B, A, B, A])


def test_no_writer_when_every_server_is_down() -> None:
    pool, _ = pool_of(A, B)
    pool.mark_down(A, "x")
    pool.mark_down(B, "y")
    assert list(pool.writers()) == []


# -- reads -----------------------------------------------------------------------------------


def test_a_reader_stays_on_the_server_that_gave_it_an_item() -> None:
    pool, _ = pool_of(A, B, C)
    assert list(pool.readers()) == [A, B, C]
    pool.read_from(B)
    for _ in range(3):
        assert list(pool.readers()) == [B, C, A]
    first_writer(pool)  # writes do not move the reader
    assert list(pool.readers()) == [B, C, A]


def test_move_reader_on_when_every_server_was_empty() -> None:
    pool, _ = pool_of(A, B, C)
    pool.move_reader_on()
    assert list(pool.readers()) == [B, C, A]
    pool.move_reader_on()
    pool.move_reader_on()
    assert list(pool.readers()) == [A, B, C]  # wraps round


def test_readers_skip_servers_that_are_down() -> None:
    pool, _ = pool_of(A, B, C)
    pool.read_from(B)
    pool.mark_down(B, "reset")
    assert list(pool.readers()) == [C, A]


def test_the_server_owed_a_close_is_asked_first_and_once() -> None:
    pool, _ = pool_of(A, B, C)
    assert list(pool.readers(first=C)) == [C, A, B]
    pool.read_from(B)
    assert list(pool.readers(first=C)) == [C, B, A]
    assert list(pool.readers(first=B)) == [B, C, A]
    pool.mark_down(C, "reset")
    assert list(pool.readers(first=C)) == [B, A]


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_a_success_resets_it() -> None:
    pool, clock = pool_of(A, B, backoff_max_s=1.0)
    expected = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert expected[0] == BACKOFF_START_S
    for backoff in expected:
        down_at = clock()
        pool.mark_down(A, "refused")
        assert not pool.is_up(A)
        clock.now[0] = down_at + backoff - 0.001
        assert not pool.is_up(A), backoff
        clock.now[0] = down_at + backoff
        assert pool.is_up(A), backoff  # due again: the next request tries it
    pool.mark_up(A)
    pool.mark_down(A, "refused")
    clock.advance(BACKOFF_START_S)
    assert pool.is_up(A)  # back to the first step


def test_a_server_in_backoff_comes_back_into_rotation() -> None:
    pool, clock = pool_of(A, B)
    pool.mark_down(A, "refused")
    assert [first_writer(pool) for _ in range(4)] == [B, B, B, B]
    clock.advance(BACKOFF_START_S)
    assert {first_writer(pool) for _ in range(4)} == {A, B}


def test_mark_up_of_a_healthy_server_changes_nothing() -> None:
    pool, _ = pool_of(A)
    pool.mark_up(A)
    assert pool.is_up(A)


def test_unavailable_names_every_server_and_the_soonest_retry() -> None:
    pool, clock = pool_of(A, B, backoff_max_s=30.0)
    pool.mark_down(A, "connection refused")
    pool.mark_down(B, "timed out")
    pool.mark_down(B, "timed out")  # second failure: 0.2 s
    error = pool.unavailable()
    assert isinstance(error, NoServerAvailable)
    assert error.failures == ("10.0.0.1:22133: connection refused", "10.0.0.2:22133: timed out")
    assert error.retry_in_s == pytest.approx(0.1)
    assert "10.0.0.1:22133: connection refused" in str(error)
    assert "10.0.0.2:22133: timed out" in str(error)
    assert "next retry in 0.10s" in str(error)
    clock.advance(0.05)
    assert pool.unavailable().retry_in_s == pytest.approx(0.05)
    clock.advance(1.0)
    assert pool.unavailable().retry_in_s == 0.0  # overdue: never negative


def test_unavailable_leaves_out_healthy_servers_and_their_zero_backoff() -> None:
    pool, _ = pool_of(A, B, C, backoff_max_s=30.0)
    pool.mark_down(B, "timed out")
    pool.mark_down(C, "refused")
    pool.mark_down(C, "refused")  # 0.2 s
    error = pool.unavailable()
    assert error.failures == ("10.0.0.2:22133: timed out", "10.0.0.3:22134: refused")
    assert error.retry_in_s == pytest.approx(0.1)  # B's, not A's "now"


def test_unavailable_with_nothing_backing_off_names_every_server() -> None:
    pool, _ = pool_of(A, B)
    error = pool.unavailable()
    assert error.failures == ("10.0.0.1:22133: failed", "10.0.0.2:22133: failed")
    assert error.retry_in_s == 0.0


def test_backoff_survives_thousands_of_consecutive_failures() -> None:
    pool, clock = pool_of(A, backoff_max_s=30.0)
    for _ in range(2000):  # once 2 ** 1024 overflowed a float: OverflowError
        pool.mark_down(A, "refused")
    assert not pool.is_up(A)
    clock.advance(30.0)
    assert pool.is_up(A)
