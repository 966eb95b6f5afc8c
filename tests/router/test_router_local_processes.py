"""The ``local`` backend across real processes: fresh interpreters (``subprocess``) on one
directory, each opening its own LMDB environment. The test talks to them through pipes
(``router_local_child.py`` prints a line and waits for one); every wait has a timeout."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kestrelpy.router.backends.local import MIN_MAP_SIZE, LocalBackend
from kestrelpy.router.wire import Message
from kestrelpy.storage.shared_queues import SharedQueues

CHILD = Path(__file__).with_name("router_local_child.py")
LINE_TIMEOUT_S = 20.0  # a fresh interpreter imports kestrelpy, opens LMDB, answers
EXIT_TIMEOUT_S = 20.0
LEASE_MS = 600_000

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "queues"


@pytest.fixture
def spawn(store_dir: Path) -> Iterator[Spawn]:
    """Start ``router_local_child.py MODE store_dir QUEUE ARGS``; any still running at
    teardown is killed (by its own pid) and reaped."""
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str, queue: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, str(store_dir), queue, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: read_line reads the fd, communicate() goes on from there
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_S)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def backend(store_dir: Path) -> Iterator[LocalBackend]:
    local = LocalBackend("parent", store_dir, lease_ms=LEASE_MS, map_size=MIN_MAP_SIZE)
    yield local
    local.close()


def read_line(proc: subprocess.Popen[bytes], timeout_s: float = LINE_TIMEOUT_S) -> str:
    """One line from the child's stdout, waiting at most ``timeout_s``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = bytearray()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"no line from child {proc.pid} within {timeout_s}s: {line!r}")
        byte = os.read(proc.stdout.fileno(), 1)  # no further: the rest is not ours to eat
        if not byte:
            _, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
            raise AssertionError(f"child {proc.pid} ended ({proc.returncode}): {err.decode()}")
        line += byte
    return line.decode().rstrip("\n")


def finish(proc: subprocess.Popen[bytes]) -> list[str]:
    """The rest of the child's output lines, once it has exited with 0."""
    out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


def wait_dead_unreaped(proc: subprocess.Popen[bytes], timeout_s: float = EXIT_TIMEOUT_S) -> None:
    """Wait until ``proc`` has died, leaving it a zombie (a pidfd turns readable then)."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
        assert ready, f"child {proc.pid} still alive {timeout_s}s after SIGKILL"
    finally:
        os.close(pidfd)


def depth(store_dir: Path, queue: str) -> tuple[int, int]:
    queues = SharedQueues(store_dir, lease_ms=LEASE_MS)
    try:
        return queues.depth(queue)
    finally:
        queues.close()


def test_takers_in_three_processes_get_every_message_exactly_once(
    spawn: Spawn, backend: LocalBackend, store_dir: Path
) -> None:
    sent = [f"m{i:03d}" for i in range(300)]
    backend.send("jobs", [Message({"n": body}, body.encode()) for body in sent])
    takers = [spawn("drain", "jobs") for _ in range(3)]
    for proc in takers:
        assert read_line(proc) == "ready"  # all open before any takes: they race
    for proc in takers:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    taken = []
    for proc in takers:
        lines = finish(proc)
        assert lines[-1] == "done"
        taken.extend(lines[:-1])
    assert len(taken) == len(sent), "a message was taken twice"
    assert sorted(taken) == sent
    assert depth(store_dir, "jobs") == (0, 0)


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_taker_killed_while_holding_a_lease_loses_it_to_another_process(
    spawn: Spawn, backend: LocalBackend, reaped: bool
) -> None:
    backend.send("jobs", [Message({"k": "v"}, b"a"), Message({}, b"b")])
    holder = spawn("hold", "jobs")
    assert json.loads(read_line(holder)) == {"body": "a", "headers": {"k": "v"}}
    other = backend.take("jobs")  # a is leased to a live process: b comes out
    assert other is not None and other.message.body == b"b"
    other.release()
    holder.send_signal(signal.SIGKILL)
    if reaped:
        holder.wait(timeout=EXIT_TIMEOUT_S)
    else:
        wait_dead_unreaped(holder)  # dead, not reaped: a zombie holds nothing either
    lease = backend.take("jobs")
    assert lease is not None
    assert lease.message == Message({"k": "v"}, b"a")  # back at the head, ahead of b
    lease.ack()
    holder.wait(timeout=EXIT_TIMEOUT_S)
    assert holder.returncode == -signal.SIGKILL


def test_a_taker_that_exits_without_releasing_loses_its_lease(
    spawn: Spawn, backend: LocalBackend, store_dir: Path
) -> None:
    backend.send("jobs", [Message({}, b"a")])
    holder = spawn("hold", "jobs")
    assert json.loads(read_line(holder))["body"] == "a"
    assert holder.stdin is not None
    holder.stdin.close()  # EOF: it leaves with os._exit, its lease still on disk
    assert holder.wait(timeout=EXIT_TIMEOUT_S) == 3
    assert depth(store_dir, "jobs") == (0, 1)
    lease = backend.take("jobs")
    assert lease is not None and lease.message.body == b"a"
    lease.ack()


def test_a_map_another_process_grew_is_followed(
    spawn: Spawn, backend: LocalBackend, store_dir: Path
) -> None:
    backend.send("jobs", [Message({}, b"first")])  # opens the store with a 1 MiB map
    block = 64 * 1024
    filler = spawn("fill", "jobs", "48", str(block))  # 3 MiB: the child's map doubles
    child_map = int(finish(filler)[0])
    assert child_map >= 4 * MIN_MAP_SIZE
    got = []
    while (lease := backend.take("jobs")) is not None:  # MapResizedError inside, adopted
        got.append(lease.message)
        lease.ack()
    assert got[0].body == b"first"
    assert [m.body for m in got[1:]] == [bytes([i]) * block for i in range(48)]
    assert got[48].headers == {"n": "47"}
    queues = SharedQueues(store_dir, lease_ms=LEASE_MS)  # shares the parent's environment
    try:
        assert queues.map_size_bytes() >= child_map
    finally:
        queues.close()


def test_a_backend_opened_before_fork_refuses_to_work_in_the_child(
    spawn: Spawn, backend: LocalBackend, store_dir: Path
) -> None:
    backend.send("jobs", [Message({}, b"first"), Message({}, b"second")])
    forker = spawn("fork", "jobs")
    assert finish(forker) == ["child 0", "first second"]
    assert depth(store_dir, "jobs") == (0, 0)
