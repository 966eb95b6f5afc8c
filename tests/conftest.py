"""Shared harness for the unit tests: a real KestrelService on LMDB in ``tmp_path``.

No sockets, no threads of ours and no sleeps: connections are
:class:`~twisted.internet.testing.StringTransport` objects, and time (the store's
end-of-turn commits, ``/t=`` waits) is a :class:`~twisted.internet.task.Clock` advanced
by hand. The store commits inline on the clock under ``sync = "never"``/``"periodic"``,
so ``clock.advance(0)`` is "let the reactor finish its turn".

Fixtures:

- ``kp``: a :class:`Harness` factory, ``kp(config_text=...)``; every service it built is
  stopped (its store closed) at teardown.
- ``clock``, ``open_store``: a bare :class:`~kestrelpy.store.Store` factory on a
  :class:`ThreadClock`, for the store's own tests (its writer thread reports through
  ``callFromThread``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kestrelpy.config import load_config
from kestrelpy.queues.collection import QueueCollection
from kestrelpy.server import MemcacheConnection, MemcacheFactory
from kestrelpy.service import KestrelService, ServerContext, make_service
from kestrelpy.store import Store

# Prints each module named on its command line that this interpreter imports from source,
# and the connection class if mypyc made it a plain Python class (a class decorator does)
# or it lost the interfaces declared after it.
_PURE_AMONG = """
import importlib, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    if not (module.__file__ or "").endswith(".so"):
        print(name, module.__file__)
from twisted.internet.interfaces import ILoggingContext, IProtocol, IPushProducer
from kestrelpy.server import MemcacheConnection
if not hasattr(MemcacheConnection, "__mypyc_attrs__"):
    print("kestrelpy.server.MemcacheConnection is not a native class")
for interface in (IProtocol, IPushProducer, ILoggingContext):
    if not interface.implementedBy(MemcacheConnection):
        print("kestrelpy.server.MemcacheConnection does not declare", interface.__name__)
"""


def compiled_module_names() -> list[str]:
    """The modules setup.py compiles, as import names."""
    setup = (Path(__file__).resolve().parent.parent / "setup.py").read_text(encoding="utf-8")
    paths = re.findall(r'^    "(kestrelpy/[^"]+)[.]py",$', setup, flags=re.MULTILINE)
    return [path.replace("/", ".").removesuffix(".__init__") for path in paths]


@pytest.fixture(scope="session", autouse=True)
def servers_are_compiled_when_asked() -> None:
    """Under ``make test-compiled`` (``KPTEST_EXPECT_COMPILED=1``) the servers the tests start
    (from this interpreter's install) must run the mypyc build: a pure install would pass
    them all and prove nothing. Every module of the build is checked, and that the
    connection is a native class (the request path calls into it most)."""
    if os.environ.get("KPTEST_EXPECT_COMPILED") != "1":
        return
    names = compiled_module_names()
    assert len(names) > 20, names  # the list was read, not missed
    probe = subprocess.run(
        [sys.executable, "-c", _PURE_AMONG, *names],
        capture_output=True,
        text=True,
        cwd="/",  # the repository's sources must not shadow the install
        timeout=60,
        check=True,
    )
    assert not probe.stdout.strip(), f"not compiled in this install: {probe.stdout}"


DEFAULT_CONFIG = '[server]\nsync = "never"\nexpiration_timer_frequency = "never"\n'
HARNESS_EPOCH_S = 1_700_000_000  # where a harness clock starts: a plausible "now", in unix s


class TcpStringTransport(StringTransport):
    """A StringTransport with the TCP options a real connection's transport has."""

    tcp_nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.tcp_nodelay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self.tcp_nodelay


class Conn:
    """One client connection over a StringTransport."""

    def __init__(self, harness: Harness, proto: MemcacheConnection) -> None:
        self.harness = harness
        self.proto = proto
        self.transport = TcpStringTransport()
        proto.makeConnection(self.transport)
        self.lost = False

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def take(self) -> bytes:
        """Everything written to this connection since the last take."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def ask(self, data: bytes) -> bytes:
        """Send, let the reactor turn (commits, backlog drains), return the output."""
        self.send(data)
        self.harness.settle()
        return self.take()

    @property
    def closing(self) -> bool:
        """The server asked the transport to close the connection."""
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """The connection is gone (client hung up, or the server's close completed)."""
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


def run_until_idle(clock: Clock, max_steps: int = 1000) -> None:
    """Advance ``clock`` to each scheduled call until nothing is scheduled."""
    clock.advance(0)
    for _ in range(max_steps):
        calls = clock.getDelayedCalls()
        if not calls:
            return
        clock.advance(max(0.0, min(call.getTime() for call in calls) - clock.seconds()))
    raise AssertionError(f"clock still busy after {max_steps} steps: {clock.getDelayedCalls()}")


class Harness:
    """A service on ``data_dir`` driven by ``clock``; ``restart`` reopens the same store."""

    def __init__(self, root: Path, config_text: str) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.config_path = root / "server.conf"
        self.config_path.write_text(config_text, encoding="utf-8")
        self.clock = ThreadClock()  # a plain Clock, that also takes the writer's calls
        self.clock.advance(HARNESS_EPOCH_S)
        self.services: list[KestrelService] = []
        self.service = self._build()

    def _build(self) -> KestrelService:
        config = load_config(self.config_path, data_dir=self.data_dir)
        service = make_service(config, self.clock)
        self.services.append(service)
        return service

    @property
    def ctx(self) -> ServerContext:
        return self.service.ctx

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def collection(self) -> QueueCollection:
        return self.service.collection

    def connect(self) -> Conn:
        proto = MemcacheFactory(self.service.ctx, self.service.store).buildProtocol(None)
        return Conn(self, proto)

    def settle(self) -> None:
        """Run everything due now: commits, their listeners, backlog drains."""
        self.clock.advance(0)

    def run_until_idle(self) -> None:
        """Run every scheduled call, moving the clock to each in turn.

        Also runs the store's deferred commits (removals alone may wait a little for a
        write to ride along with) - and any /t= timers, so use it only where none matter.
        """
        run_until_idle(self.clock)

    def stop(self) -> None:
        self.service.stopService()

    def restart(self) -> None:
        """Stop (sessions end, store commits and closes) and build anew on the same dir."""
        self.stop()
        self.service = self._build()

    def close_all(self) -> None:
        for service in self.services:
            service.store.close()  # idempotent: a stopped service's store is closed already


@pytest.fixture
def kp(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []

    def build(config_text: str = DEFAULT_CONFIG, name: str = "kp") -> Harness:
        root = tmp_path / name
        root.mkdir()
        harness = Harness(root, config_text)
        harnesses.append(harness)
        return harness

    yield build
    for harness in harnesses:
        harness.close_all()


class ThreadClock(Clock):
    """A Clock that also accepts ``callFromThread`` (from the writer thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._from_threads: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._arrived = threading.Event()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._from_threads.append((f, args))
        self._arrived.set()

    def wait_for_thread_call(self, timeout_s: float = 10.0) -> None:
        """Block until some thread called callFromThread (an event with a deadline)."""
        assert self._arrived.wait(timeout_s), "no callFromThread within the deadline"
        self._arrived.clear()

    def run_thread_calls(self) -> int:
        with self._lock:
            calls, self._from_threads = self._from_threads, []
        for f, args in calls:
            f(*args)
        return len(calls)


@pytest.fixture
def clock() -> ThreadClock:
    return ThreadClock()


@pytest.fixture
def open_store(tmp_path: Path, clock: ThreadClock) -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def build(sync: str = "never", path: Path | None = None) -> Store:
        store = Store(path or tmp_path / "db", clock, sync=sync)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()
