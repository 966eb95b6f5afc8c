"""The shared server start/stop helper, against small Python children that act each case out.

Each child binds a real 127.0.0.1 socket (port 0, or the one it is given) and writes the log
lines a server writes, so the port, the deadlines, the errors with the log tail, SIGKILL after
a deadline and CPU pinning are checked without kestrelpy or memcached.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator

import lt_harness  # noqa: F401  (puts the repo root, home of loadtest, on sys.path)
import pytest

from loadtest._servers import LISTENING, Server, ServerError, free_port, listening_port

CHILD = """
import signal, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "die":
    print("config error: no such key", file=sys.stderr)
    sys.exit(2)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else lambda *_: sys.exit(0))
sock = socket.socket()
sock.bind(("127.0.0.1", port))
sock.listen()
if mode in ("serve", "stubborn"):
    print("metrics listening on 127.0.0.1:1", file=sys.stderr)  # not the memcache listener
    print(f"child listening on 127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
while True:
    signal.pause()
"""

Child = Callable[..., Server]


@pytest.fixture
def child() -> Iterator[Child]:
    """Makes unstarted child servers; any still running at teardown is killed."""
    made: list[Server] = []

    def make(mode: str, port: int | None = None, cpu: int | None = None) -> Server:
        argv = [sys.executable, "-c", CHILD, mode, str(port or 0)]
        server = Server(argv, name=f"child-{mode}", port=port, cpu=cpu)
        made.append(server)
        return server

    yield make
    for server in made:
        if server.running:
            server.kill9()


def test_listening_line_of_kestrelpy_and_the_fake() -> None:
    line = (
        b"2026-11-25T22:01:32+0000 [kestrelpy.service.KestrelService#info] kestrelpy 0.1.0 "
        b"listening on 127.0.0.1:40425 (data dir /tmp/d, sync always)"
    )
    match = LISTENING.search(line)
    assert match is not None and int(match.group(1)) == 40425
    assert LISTENING.search(b"fake kestrel listening on 127.0.0.1:5") is not None


def test_other_listeners_are_not_the_memcache_port() -> None:
    assert listening_port(b"kestrelpy 0.1.0 listening on 127.0.0.1:40425 (data dir /d)") == 40425
    assert listening_port(b"HTTP metrics listening on 127.0.0.1:9090") is None
    assert listening_port(b"admin listening on 127.0.0.1:8080") is None
    assert listening_port(b"no port here") is None


def test_start_reads_the_announced_port_and_sigterm_stops_it(child: Child) -> None:
    server = child("serve").start(timeout=10)
    assert server.port not in (None, 0, 1)  # the metrics line came first and was skipped
    assert f"child listening on {server.address}" in server.stderr_text()
    assert server.stop() == 0
    assert not server.running


def test_start_again_after_stop_and_kill9_keeps_one_log(child: Child) -> None:
    server = child("serve")
    server.start(timeout=10)
    assert server.stop() == 0
    server.start(timeout=10)
    assert server.kill9() == -signal.SIGKILL
    server.start(timeout=10)
    assert server.starts == 3
    log = server.stderr_text()
    assert all(f"---- start #{n}: " in log for n in (1, 2, 3)), log
    assert sum(line.startswith("child listening on") for line in log.splitlines()) == 3


def test_a_server_that_dies_before_listening_is_reaped_and_quoted(child: Child) -> None:
    server = child("die")
    with pytest.raises(ServerError) as caught:
        server.start(timeout=10)
    err = caught.value
    assert err.why == "child-die exited with status 2 before listening"
    assert err.tail == ["config error: no such key"]  # this run's stderr, no start marker
    assert err.summary() == f"{err.why}: config error: no such key"
    assert "config error: no such key" in str(err)
    assert server.returncode == 2 and not server.running


def test_a_silent_server_is_killed_at_the_deadline(child: Child) -> None:
    server = child("silent")
    with pytest.raises(ServerError, match=r"did not log 'listening on 127\.0\.0\.1:PORT' within"):
        server.start(timeout=0.3)
    assert server.returncode == -signal.SIGKILL


def test_sigkill_follows_a_sigterm_that_is_ignored(child: Child) -> None:
    server = child("stubborn").start(timeout=10)
    assert server.stop(timeout=0.3) == -signal.SIGKILL
    assert "still running 0.3 s after signal 15: SIGKILL" in server.log()


def test_a_given_port_is_ready_once_it_accepts(child: Child) -> None:
    port = free_port()
    server = child("quiet", port=port).start(timeout=10)
    assert server.address == f"127.0.0.1:{port}"
    assert server.stop() == 0


def test_a_given_port_server_that_exits_is_reported_as_exited(child: Child) -> None:
    server = child("die", port=free_port())  # not a timeout: it stops waiting at the exit
    with pytest.raises(ServerError, match="exited with status 2 before listening"):
        server.start(timeout=10)


def test_the_child_is_pinned_and_we_are_not(child: Child) -> None:
    ours = os.sched_getaffinity(0)
    cpu = max(ours)
    server = child("serve", cpu=cpu).start(timeout=10)
    assert os.sched_getaffinity(server.pid) == {cpu}
    assert os.sched_getaffinity(0) == ours
    server.stop()


def test_a_program_that_cannot_run_is_a_server_error() -> None:
    with pytest.raises(ServerError, match="could not be run"):
        Server(["/nonexistent/kestrelpy"], name="ghost").start(timeout=1)
