"""Harness for integration tests: the real ``kestrelpy serve`` process, real sockets.

Every test here talks to a server subprocess on 127.0.0.1 over TCP, the way users do. The
harness never sleeps to synchronise: it waits on events (the "listening on" log line, process
exit, socket reads), and every wait has a deadline. When something times out or a reply is
wrong, the assertion message carries the server's stderr, and a failed test gets the stderr of
every server it used as an extra report section. Starting, stopping and logging a server
process is loadtest/_servers.py's job, shared with the load-tool tests and the bench.

Fixtures:

- ``server``: a fresh server on a fresh data dir, for tests that kill, restart or flush.
- ``shared_server``: one server per module for tests that only touch their own queue
  (``qname`` gives each test a unique queue name).
- ``server_factory``: start servers with config text, on a chosen data dir; all are stopped
  (SIGTERM, exit code 0 asserted) at teardown.
- ``kestrelpy_argv``: the command prefix that runs the CLI, for one-shot CLI tests.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the loadtest package lives at the repo root, not installed
    sys.path.insert(0, str(ROOT))

from loadtest._servers import (  # noqa: E402  (needs ROOT on sys.path)
    HOST,  # noqa: F401  (test modules import it from here)
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Server,
    ServerError,
    serve_argv,
    subprocess_env,
)

IO_TIMEOUT_S = 5.0


def kestrelpy_command(*, use_module: bool = False) -> list[str]:
    """The argv prefix that runs the installed CLI (console script, or ``python -m``)."""
    script = Path(sys.executable).with_name("kestrelpy")
    if use_module or not script.exists():
        return [sys.executable, "-m", "kestrelpy"]
    return [str(script)]


RUN_TIMEOUT_S = 30.0  # a kestrelpy command that should end (CLI call, startup error)


def run_kestrelpy(
    *args: object, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``kestrelpy ARGS`` to its end with output captured and stdin closed; one still
    running after RUN_TIMEOUT_S fails the test (a startup error must exit at once)."""
    argv = [*(command or kestrelpy_command()), *map(str, args)]
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"{' '.join(argv)} still running after {RUN_TIMEOUT_S}s\nstderr so far: {err.stderr!r}"
        ) from None


def assert_one_line_user_error(result: subprocess.CompletedProcess[str], *must_mention: str) -> str:
    """A user error as the CLI promises it: exit 2, one stderr line naming ``must_mention``,
    no traceback, nothing on stdout."""
    err = result.stderr
    assert result.returncode == 2, f"exit code {result.returncode}, expected 2\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for text in must_mention:
        assert text in lines[0], f"{text!r} not in the error line: {lines[0]!r}"
    assert result.stdout == "", f"unexpected stdout: {result.stdout!r}"
    return lines[0]


class ServerProcess(Server):
    """One ``kestrelpy serve`` on 127.0.0.1, port 0 (see loadtest/_servers.py), with the
    test's config file, whose failures are test failures.

    ``start()`` may be called again after ``stop()`` or ``kill9()``: the new process uses the
    same data dir and config (and gets a new port). A start that fails, or a stop that does
    not end in exit code 0, raises AssertionError carrying the server's log.
    """

    def __init__(
        self,
        data_dir: Path,
        config_text: str | None = None,
        *,
        config_path: Path | None = None,
        use_module: bool = False,
        extra_args: tuple[str, ...] = (),
        http: bool = False,
    ) -> None:
        data_dir = Path(data_dir)
        self.config_path: Path | None = None
        if config_text is not None:
            self.config_path = config_path or data_dir.parent / (data_dir.name + "-server.conf")
            self.config_path.write_text(config_text)
        argv = serve_argv(
            kestrelpy_command(use_module=use_module),
            data_dir,
            self.config_path,
            extra_args,
            http="127.0.0.1:0" if http else "",  # never the default port
        )
        super().__init__(argv, name="kestrelpy", data_dir=data_dir)

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        try:
            return super().start(timeout)
        except ServerError as err:
            raise AssertionError(f"{err.why}\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig``, wait for exit, assert a clean exit code 0. Returns the code."""
        code = super().stop(sig, timeout)
        assert code == 0, f"server exited with {code} after signal {sig}, expected 0\n{self.log()}"
        return code

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def connect(self, timeout: float = IO_TIMEOUT_S) -> Conn:
        assert self.port is not None, "server not listening"
        return Conn(self, timeout)


@dataclass(frozen=True)
class Value:
    """One parsed ``VALUE <key> <flags> <n> [<cas>]`` block."""

    key: bytes
    flags: int
    data: bytes
    cas: bytes | None


class Conn:
    """A raw memcache-text connection with exact-byte reads and deadlines on every read."""

    def __init__(self, server: ServerProcess, timeout: float = IO_TIMEOUT_S) -> None:
        self.server = server
        self.timeout = timeout
        assert server.port is not None
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fail(self, what: str) -> AssertionError:
        return AssertionError(
            f"{what}; unread bytes so far: {bytes(self.buf)!r}\n{self.server.log()}"
        )

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False on EOF. Raises on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._fail("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise self._fail("timed out waiting for the server") from None
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_line(self, timeout: float | None = None) -> bytes:
        """One reply line including its ``\\r\\n``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while (end := self.buf.find(b"\r\n")) < 0:
            if not self._fill(deadline):
                raise self._fail("connection closed before a full reply line")
        line = bytes(self.buf[: end + 2])
        del self.buf[: end + 2]
        return line

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise self._fail(f"connection closed before {n} bytes arrived")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def expect(self, expected: bytes, timeout: float | None = None) -> None:
        """Assert the next bytes from the server are exactly ``expected``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < len(expected):
            if bytes(self.buf) != expected[: len(self.buf)]:
                break  # already wrong: fail now with what we have
            try:
                if not self._fill(deadline):
                    break
            except AssertionError:  # timeout: report as a byte mismatch below
                break
        got = bytes(self.buf[: len(expected)])
        assert got == expected, (
            f"expected {expected!r}\n     got {got!r}\n{self.server.log(last_lines=30)}"
        )
        del self.buf[: len(expected)]

    def expect_closed(self, timeout: float | None = None) -> None:
        """Assert the server closes the connection, sending nothing more."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                more = self._fill(deadline)
            except AssertionError:
                raise self._fail("server kept the connection open; expected it to close") from None
            if not more:
                break
        assert not self.buf, f"unexpected bytes before close: {bytes(self.buf)!r}"

    def request(self, line: bytes, timeout: float | None = None) -> bytes:
        """Send one command line, return the first reply line."""
        self.send(line + b"\r\n")
        return self.read_line(timeout)

    # -- typed helpers ---------------------------------------------------------------------

    def set(self, key: str | bytes, data: bytes, flags: int = 0) -> bytes:
        k = key.encode() if isinstance(key, str) else key
        self.send(b"set %s %d 0 %d\r\n%s\r\n" % (k, flags, len(data), data))
        return self.read_line()

    def read_get_reply(self, timeout: float | None = None) -> list[Value]:
        """Parse a full ``get``/``gets`` reply: zero or more VALUE blocks, then ``END``."""
        values = []
        while True:
            line = self.read_line(timeout)
            if line == b"END\r\n":
                return values
            parts = line.split()
            if not parts or parts[0] != b"VALUE" or len(parts) not in (4, 5):
                raise self._fail(f"expected VALUE or END, got {line!r}")
            size = int(parts[3])
            block = self.read_exact(size + 2, timeout)
            assert block.endswith(b"\r\n"), f"data block without CRLF: {block!r}"
            cas = parts[4] if len(parts) == 5 else None
            values.append(Value(parts[1], int(parts[2]), block[:-2], cas))

    def get(self, key: str | bytes, timeout: float | None = None) -> bytes | None:
        """``get key`` → the body, or None on ``END``. Asserts at most one VALUE."""
        k = key.encode() if isinstance(key, str) else key
        self.send(b"get " + k + b"\r\n")
        values = self.read_get_reply(timeout)
        assert len(values) <= 1, f"one key, several values: {values}"
        return values[0].data if values else None

    def stats(self) -> dict[str, str]:
        self.send(b"stats\r\n")
        result = {}
        while (line := self.read_line()) != b"END\r\n":
            parts = line.decode("latin-1").split(" ", 2)  # names are bytes, as on the wire
            assert parts[0] == "STAT", f"bad stats line {line!r}"
            result[parts[1]] = parts[2].rstrip("\r\n")
        return result


def is_our_version(token: bytes | str) -> bool:
    """The version the server reports: ``0.1.0``, or prefixed like ``kestrelpy-0.1.0``.

    docs/protocol.md says ``VERSION <ver>`` without fixing the format, so a product prefix is
    accepted; the number must be the installed package's.
    """
    from kestrelpy import __version__

    text = token.decode() if isinstance(token, bytes) else token
    return " " not in text and (text == __version__ or text.endswith("-" + __version__))


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, server: ServerProcess
) -> None:
    """Poll with a deadline. Only for state with no event to wait on (e.g. server stats)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{server.log()}")
        time.sleep(0.01)


def start_fails_with_one_line(srv: ServerProcess) -> str:
    """Start ``srv`` expecting it to fail before listening: it exits 2 with exactly one
    line on stderr (the CLI's user-error rule). Returns that line."""
    try:
        srv.start()
    except AssertionError as err:
        message = str(err)
    else:
        srv.stop()
        raise AssertionError(f"the server started; expected a one-line error\n{srv.log()}")
    assert "before listening" in message, message
    wait_until(lambda: not srv.running, 10, "the server to exit", srv)
    assert srv.returncode == 2, f"exit code {srv.returncode}, expected 2\n{srv.log()}"
    lines = [
        line
        for line in srv.stderr_text().splitlines()
        if line.strip() and not line.startswith("---- start #")
    ]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}\n{srv.log()}"
    return lines[0]


# -- fixtures --------------------------------------------------------------------------------


class ServerFactory:
    """Creates servers; stops every one still running at teardown (asserting exit 0)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[ServerProcess] = []

    def __call__(
        self,
        config: str | None = None,
        *,
        data_dir: Path | None = None,
        start: bool = True,
        use_module: bool = False,
        http: bool = False,
    ) -> ServerProcess:
        """``http``: also its HTTP listener, on a free port (``srv.http_url()``)."""
        if data_dir is None:
            data_dir = self.base / f"data{len(self.servers)}"
        srv = ServerProcess(data_dir, config, use_module=use_module, http=http)
        self.servers.append(srv)
        if start:
            srv.start()
        return srv

    def close(self) -> None:
        errors = []
        for srv in self.servers:
            if srv.running:
                try:
                    srv.stop()
                except AssertionError as err:
                    errors.append(str(err))
        if errors:
            raise AssertionError("server(s) failed to stop cleanly:\n" + "\n".join(errors))


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A fresh server on an empty data dir, default config."""
    return server_factory()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module; tests must use their own queue (see ``qname``)."""
    factory = ServerFactory(tmp_path_factory.mktemp("shared"))
    yield factory()
    factory.close()


@pytest.fixture
def qname() -> str:
    """A queue name no other test uses."""
    return "q" + uuid.uuid4().hex[:12]


@pytest.fixture
def kestrelpy_argv() -> list[str]:
    return kestrelpy_command()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the stderr of every server a failed test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    servers: list[ServerProcess] = []
    for value in funcargs.values():
        if isinstance(value, ServerProcess):
            servers.append(value)
        elif isinstance(value, ServerFactory):
            servers.extend(value.servers)
    seen: set[int] = set()
    for srv in servers:
        if id(srv) in seen:
            continue
        seen.add(id(srv))
        report.sections.append((f"kestrelpy stderr ({srv.data_dir.name})", srv.stderr_text()))


def drain(conn: Any, queue: str) -> list[bytes]:
    """Every item left in ``queue``, in order, through plain gets on ``conn``."""
    bodies = []
    while (body := conn.get(queue)) is not None:
        bodies.append(body)
        assert len(bodies) < 1000, "queue never drained"
    return bodies


def module_server(tmp_path_factory: Any, label: str, config: str) -> Iterator[Any]:
    """Body of a module-scoped fixture: one server with ``config`` for a whole module."""
    factory = ServerFactory(tmp_path_factory.mktemp(label))
    yield factory(config)
    factory.close()
