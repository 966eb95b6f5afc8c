"""The ``local`` backend in one process: a real LMDB directory in ``tmp_path`` and a fake
clock (unix ms) that runs leases out. Several processes at once, and ``kill -9``, are in
``test_router_local_processes.py``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrelpy.router.backends.base import Backend, BackendError, Lease
from kestrelpy.router.backends.local import (
    MIN_MAP_SIZE,
    LeaseLost,
    LocalBackend,
    open_backend,
)
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.router import MAX_HELD_BACKOFF_S, Router
from kestrelpy.router.wire import Message, pack
from kestrelpy.storage.lmdb_store import LmdbStorage
from kestrelpy.storage.shared_queues import SharedQueues, owner_alive, process_start, unix_ms

LEASE_MS = 60_000
EPOCH_MS = 1_700_000_000_000


class FakeClock:
    """Unix ms that move only when a test says so."""

    def __init__(self) -> None:
        self.now_ms = EPOCH_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "queues"


@pytest.fixture
def make(store_dir: Path, clock: FakeClock) -> Iterator[Callable[..., LocalBackend]]:
    """Backends on ``store_dir`` with the fake clock; all closed at teardown."""
    made: list[LocalBackend] = []

    def make_backend(**kwargs: Any) -> LocalBackend:
        kwargs.setdefault("lease_ms", LEASE_MS)
        backend = LocalBackend("jobs", store_dir, clock=clock, **kwargs)
        made.append(backend)
        return backend

    yield make_backend
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make: Callable[..., LocalBackend]) -> LocalBackend:
    return make()


def msg(body: bytes, **headers: str) -> Message:
    return Message(dict(headers), body)


def take(backend: LocalBackend, queue: str = "q") -> Lease:
    lease = backend.take(queue)
    assert lease is not None, f"queue {queue!r} unexpectedly empty"
    return lease


def bodies(backend: LocalBackend, queue: str = "q") -> list[bytes]:
    """Take and ack everything on ``queue``, in order."""
    found = []
    while (lease := backend.take(queue)) is not None:
        found.append(lease.message.body)
        lease.ack()
    return found


def depth(store_dir: Path, queue: str = "q") -> tuple[int, int]:
    queues = SharedQueues(store_dir, lease_ms=LEASE_MS)
    try:
        return queues.depth(queue)
    finally:
        queues.close()


# -- the contract ------------------------------------------------------------------------------


def test_a_message_comes_back_with_its_headers(backend: LocalBackend) -> None:
    typed: Backend = backend  # LocalBackend fits the Protocol
    sent = msg(b'{"id": 7}\n\x00\xff', **{"content-type": "application/json", "x-try": "2"})
    typed.send("q", [sent])
    lease = take(backend)
    assert lease.message == sent
    lease.ack()
    assert backend.take("q") is None
    assert backend.network is False


def test_messages_come_out_in_the_order_sent(backend: LocalBackend) -> None:
    backend.send("q", [msg(b"%d" % i) for i in range(5)])
    backend.send("q", [msg(b"%d" % i) for i in range(5, 8)])
    assert bodies(backend) == [b"%d" % i for i in range(8)]


def test_queues_do_not_mix_even_when_one_name_starts_another(backend: LocalBackend) -> None:
    backend.send("q2", [msg(b"q2-a")])
    backend.send("q", [msg(b"q-a")])
    backend.send("q2", [msg(b"q2-b")])
    assert bodies(backend, "q") == [b"q-a"]
    assert bodies(backend, "q2") == [b"q2-a", b"q2-b"]
    assert backend.take("other") is None


def test_a_released_message_is_next_again_ahead_of_later_ones(backend: LocalBackend) -> None:
    backend.send("q", [msg(b"a"), msg(b"b"), msg(b"c")])
    a = take(backend)
    b = take(backend)
    b.release()  # a is still out: b is the head now
    assert take(backend).message.body == b"b"
    a.release()
    assert bodies(backend) == [b"a", b"c"]


def test_an_acked_message_is_gone_for_good(
    make: Callable[..., LocalBackend], store_dir: Path
) -> None:
    first = make()
    first.send("q", [msg(b"a"), msg(b"b")])
    take(first).ack()
    first.close()
    assert depth(store_dir) == (1, 0)
    assert bodies(make()) == [b"b"]
    assert depth(store_dir) == (0, 0)


def test_a_held_lease_keeps_the_message_from_other_takers(
    make: Callable[..., LocalBackend],
) -> None:
    one, two = make(), make()  # one directory, one process: the environment is shared
    one.send("q", [msg(b"a"), msg(b"b")])
    a = take(one)
    assert take(two).message.body == b"b"
    assert two.take("q") is None
    a.ack()
    one.close()  # the other backend's store stays open
    two.send("q", [msg(b"c")])
    assert bodies(two) == [b"c"]


# -- leases that run out -----------------------------------------------------------------------


def test_a_lease_past_its_deadline_is_taken_again(backend: LocalBackend, clock: FakeClock) -> None:
    backend.send("q", [msg(b"a"), msg(b"b")])
    first = take(backend)
    assert first.message.body == b"a"
    clock.advance(LEASE_MS - 1)
    assert take(backend).message.body == b"b"  # a is still leased
    assert backend.take("q") is None
    clock.advance(1)  # a's deadline
    again = take(backend)
    assert again.message.body == b"a"
    with pytest.raises(LeaseLost, match="after the lease ran out"):
        first.ack()  # the second lease holds it now
    again.ack()


def test_a_run_out_lease_released_late_leaves_the_new_lease_alone(
    backend: LocalBackend, clock: FakeClock
) -> None:
    backend.send("q", [msg(b"a")])
    first = take(backend)
    clock.advance(LEASE_MS)
    second = take(backend)
    first.release()  # nothing to do: a is back out, under the second lease
    assert backend.take("q") is None
    second.release()
    assert bodies(backend) == [b"a"]


def test_a_run_out_lease_nobody_took_again_still_acks(
    backend: LocalBackend, clock: FakeClock, store_dir: Path
) -> None:
    backend.send("q", [msg(b"a")])
    lease = take(backend)
    clock.advance(10 * LEASE_MS)
    lease.ack()  # not redelivered yet (that happens at the next take): still ours
    assert depth(store_dir) == (0, 0)


def test_a_redelivered_message_keeps_its_place_at_the_head(
    backend: LocalBackend, clock: FakeClock
) -> None:
    backend.send("q", [msg(b"a"), msg(b"b")])
    take(backend)
    clock.advance(LEASE_MS)
    assert bodies(backend) == [b"a", b"b"]


# -- open, close, reopen -----------------------------------------------------------------------


def test_messages_outlive_the_backend_and_close_releases_its_leases(
    make: Callable[..., LocalBackend],
) -> None:
    first = make()
    first.send("q", [msg(b"a"), msg(b"b"), msg(b"c")])
    take(first)
    take(first)
    first.close()  # a and b go back, in their places
    assert bodies(make()) == [b"a", b"b", b"c"]


def test_open_backend_creates_nothing_until_first_use(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet"
    backend = open_backend("jobs", {"path": str(path)})
    try:
        assert not path.exists()
        backend.send("q", [msg(b"a")])
        assert (path / "data.mdb").exists()
        assert bodies(backend) == [b"a"]
    finally:
        backend.close()


def test_a_lease_ends_once_and_not_after_close(backend: LocalBackend) -> None:
    backend.send("q", [msg(b"a"), msg(b"b")])
    lease = take(backend)
    lease.ack()
    with pytest.raises(BackendError, match="acked or released already"):
        lease.release()
    held = take(backend)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        held.ack()
    with pytest.raises(BackendError, match="closed"):
        backend.take("q")
    backend.close()  # idempotent


@pytest.mark.parametrize("queue", ["", "a\0b", "x" * 600])
def test_a_queue_name_the_store_cannot_hold_is_refused(backend: LocalBackend, queue: str) -> None:
    with pytest.raises(BackendError, match="router interface 'jobs': queue name"):
        backend.send(queue, [msg(b"a")])
    with pytest.raises(BackendError, match="router interface 'jobs': queue name"):
        backend.take(queue)


def test_a_store_path_that_cannot_be_a_directory_fails_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    backend = LocalBackend("jobs", blocker / "q", lease_ms=LEASE_MS)
    with pytest.raises(BackendError, match=r"router interface 'jobs': cannot open .*file/q"):
        backend.send("q", [msg(b"a")])
    backend.close()


def test_a_kestrelpy_server_store_is_not_taken_for_a_router_directory(tmp_path: Path) -> None:
    LmdbStorage(tmp_path / "server").close()
    backend = LocalBackend("jobs", tmp_path / "server", lease_ms=LEASE_MS)
    with pytest.raises(BackendError, match="kestrelpy server's store"):
        backend.take("q")
    backend.close()


def test_a_full_map_grows_and_the_write_goes_through(
    make: Callable[..., LocalBackend], store_dir: Path
) -> None:
    backend = make(map_size=MIN_MAP_SIZE)
    block = 64 * 1024
    for i in range(48):  # 3 MiB through a 1 MiB map, one write at a time
        backend.send("q", [msg(bytes([i]) * block)])
    backend.send("q", [msg(b"%d" % i * 4096) for i in range(200)])  # and in one transaction
    queues = SharedQueues(store_dir, lease_ms=LEASE_MS)
    try:
        assert queues.map_size_bytes() >= 4 * MIN_MAP_SIZE
    finally:
        queues.close()
    got = bodies(backend)
    assert got[:48] == [bytes([i]) * block for i in range(48)]
    assert got[48:] == [b"%d" % i * 4096 for i in range(200)]


# -- stored bytes ------------------------------------------------------------------------------


def test_items_are_stored_packed_and_foreign_bytes_come_out_as_a_bare_body(
    backend: LocalBackend, store_dir: Path
) -> None:
    queues = SharedQueues(store_dir, lease_ms=LEASE_MS)
    try:
        queues.put("q", [b"plain", b"KPR/1 {not json\nbody", pack(msg(b"x", k="v"))])
        backend.send("q", [msg(b"y", k="w")])
        first = queues.take("q")
        assert first is not None and first.data == b"plain"
        queues.release([first])
    finally:
        queues.close()
    assert [take(backend).message for _ in range(4)] == [
        msg(b"plain"),
        msg(b"KPR/1 {not json\nbody"),  # for the router's on_error to judge
        msg(b"x", k="v"),
        msg(b"y", k="w"),
    ]


def test_an_owner_is_its_pid_and_start_time(tmp_path: Path) -> None:
    start = process_start(os.getpid())
    assert start is not None
    assert owner_alive(os.getpid(), start)
    assert not owner_alive(os.getpid(), start + 1)  # a reused pid is not the owner


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "path"),
        ({"path": ""}, "path"),
        ({"path": 3}, "path"),
        ({"path": "/q", "lease_s": 0}, "lease_s"),
        ({"path": "/q", "lease_s": -5}, "lease_s"),
        ({"path": "/q", "lease_s": "600"}, "lease_s"),
        ({"path": "/q", "lease_s": True}, "lease_s"),
        ({"path": "/q", "lease_s": float("nan")}, "lease_s"),
        ({"path": "/q", "lease_s": float("inf")}, "lease_s"),
        ({"path": "/q", "map_size": "1G"}, "map_size"),
        ({"path": "/q", "map_size": 1.5e9}, "map_size"),
        ({"path": "/q", "map_size": 4096}, "map_size"),
        ({"path": "/q", "map_size": False}, "map_size"),
        ({"path": "/q", "lease": 600}, "'lease'"),
        ({"path": "/q", "servers": ["127.0.0.1:22133"]}, "'servers'"),
    ],
)
def test_bad_options_fail_naming_interface_and_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(RouterConfigError, match=rf"router interface 'jobs': .*{key}"):
        open_backend("jobs", options)


def test_good_options_are_taken(tmp_path: Path) -> None:
    backend = open_backend(
        "jobs", {"path": str(tmp_path / "q"), "lease_s": 0.5, "map_size": MIN_MAP_SIZE}
    )
    try:
        backend.send("q", [msg(b"a")])
        assert bodies(backend) == [b"a"]
    finally:
        backend.close()


# -- through a Router ----------------------------------------------------------------------------


def test_a_late_ack_is_logged_and_the_consume_run_goes_on(
    tmp_path: Path, store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first delivery outlives its lease (another taker, whose clock is past the
    deadline, gets the message meanwhile): its ack raises LeaseLost, which is logged as
    flush logs it; the run goes on to the next message instead of ending."""
    delivered: list[Any] = []
    thief = LocalBackend("thief", store_dir, lease_ms=LEASE_MS, clock=_far_future)
    stolen: list[Lease] = []

    def steal_first(frame: Any, config: dict[str, Any]) -> None:
        delivered.append(frame.body)
        if len(delivered) == 1:  # held by the thief until after the consume run
            stolen.append(take(thief, "jobs"))

    delivery = {"callback": steal_first}
    config = {"jobs": {"queues": "jobs", "path": str(store_dir), "delivery": delivery}}
    try:
        with Router(config, default_path=tmp_path / "d") as router:
            router.send("jobs", 1)
            router.send("jobs", 2)
            with caplog.at_level(logging.WARNING, logger="kestrelpy.router"):
                assert router.consume("jobs") == 2
    finally:
        thief.close()
    assert delivered == [1, 2]
    assert stolen[0].message.body == b"1"
    assert "after the lease ran out" in caplog.text


def _far_future() -> int:
    return unix_ms() + 100 * LEASE_MS


def test_a_retry_waits_no_longer_than_a_lease_should_last(tmp_path: Path, store_dir: Path) -> None:
    waits: list[float] = []
    retry = {"retry": {"max": 1, "backoff": "fixed", "base_s": 3600, "max_s": 7200}}
    delivery = {"callback": _fail, "on_error": [retry]}
    config = {"jobs": {"queues": "jobs", "path": str(store_dir), "delivery": delivery}}
    with Router(config, default_path=tmp_path / "d", sleep=waits.append) as router:
        router.send("jobs", 1)
        assert router.consume("jobs") == 1
    assert waits == [MAX_HELD_BACKOFF_S]


def _fail(frame: Any, config: dict[str, Any]) -> None:
    raise RuntimeError("fails")
