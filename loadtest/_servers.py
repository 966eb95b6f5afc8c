"""Servers under test as child processes: start on 127.0.0.1, learn the port, keep the log, stop.

The one start/stop helper of the integration tests (tests/integration/conftest.py), the
load-tool tests (tests/loadtest/lt_harness.py) and the bench (loadtest/bench.py), so a server
comes up, fails and goes down the same way in all three.

- Port: a program that can bind port 0 (kestrelpy, the fake Kestrel) is started on port 0
  and announces the port on stderr ("listening on 127.0.0.1:PORT"); the server is ready when
  that line arrives. A program that cannot report its port (memcached) is given a free one
  and is ready once it accepts a connection.
- Output: two drain threads per process read stdout and stderr to the end and keep them in
  memory, so a chatty server never blocks on a full pipe and every error can quote its log.
  The stderr thread also spots the listening line, so waiting for it is waiting on an event.
- Every wait has a deadline. A server that dies or stays silent raises :class:`ServerError`
  with the reason and its last log lines; one that outlives SIGTERM by the deadline gets
  SIGKILL. Processes are signalled through their Popen (by pid), never by name.
- A server may be started again after a stop or a kill -9 (same argv, so the same data dir:
  restart and crash-recovery tests); each start is marked in the log.

Linux only (CPU pinning, /proc elsewhere in this package).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from loadtest._proc import pin

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0  # a cold kestrelpy imports Twisted and opens LMDB; generous on 2 cores
STOP_TIMEOUT_S = 15.0  # a durable server may commit and sync on shutdown
LOG_TAIL_LINES = 80
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# The durable peer of the targets (list LPUSH/RPOP, AOF fsynced for every write
# turn), and the same Redis with no persistence at all: the floor and the ceiling.
REDIS_PERSISTENCE = {
    "always": ("--appendonly", "yes", "--appendfsync", "always"),
    "none": ("--appendonly", "no"),
}

# kestrelpy and the fake Kestrel announce their memcache listener with this. Other
# listeners (an HTTP metrics one, say) may log a similar line; they name themselves.
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
HTTP_LISTENING = re.compile(rb"http listening on 127\.0\.0\.1:(\d+)")  # kestrelpy's HTTP
_OTHER_LISTENER = re.compile(rb"(?i)\b(http|metrics|admin|dashboard)\b")


class ServerError(Exception):
    """A server did not start or stop as asked.

    ``why`` is one line (the exit status, or the deadline missed); ``tail`` holds the last
    lines the server wrote to stderr since this start. ``str()`` shows both.
    """

    def __init__(self, why: str, tail: Sequence[str] = ()) -> None:
        self.why = why
        self.tail = list(tail)
        super().__init__("\n".join([why, *self.tail]))

    def summary(self, lines: int = 3) -> str:
        """One line for a results table: the reason and the last few log lines."""
        return f"{self.why}: {' | '.join(self.tail[-lines:]) or 'no output'}"


def listening_port(line: bytes) -> int | None:
    """The port a memcache listener announces in ``line``, or None if the line is not that."""
    match = LISTENING.search(line)
    if match is None or _OTHER_LISTENER.search(line):
        return None
    return int(match.group(1))


def free_port() -> int:
    """A loopback port that was free a moment ago, for programs that cannot report theirs."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def subprocess_env() -> dict[str, str]:
    """Our environment for a server or CLI child, with log lines unbuffered and no
    PYTHONWARNINGS (a warnings filter of the test run would add lines to the server's log)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the pipe as they are written
    env.pop("PYTHONWARNINGS", None)
    return env


def serve_argv(
    command: Sequence[str],
    data_dir: Path,
    config: Path | None = None,
    extra_args: Sequence[str] = (),
    http: str = "",
) -> list[str]:
    """``kestrelpy serve`` on 127.0.0.1, port 0; ``command`` runs the CLI (script or -m).

    ``http``: its HTTP listener, off unless asked for (``127.0.0.1:0`` for any free port),
    so no test or bench server ever takes the default HTTP port.
    """
    argv = [*command, "serve", "--host", HOST, "--port", "0", "--data-dir", str(data_dir)]
    argv += ["--http", http]
    if config is not None:
        argv += ["--config", str(config)]
    return [*argv, *extra_args]


def memcached_server(*, connections: int = 4096, cpu: int | None = None) -> Server:
    """memcached with one thread on a free loopback port, not started.

    One worker thread, as the performance reference compares against; a 2 MB item limit
    because the fairness scenario sends 1 MiB items. Not ``-vv``, the only mode that
    announces the listener: it also logs every command, which would skew the bench.
    """
    if not os.path.exists(MEMCACHED):
        raise ServerError(
            "memcached is not installed: run `make system-deps` (apt-get install memcached)"
        )
    port = free_port()
    argv = [MEMCACHED, "-t", "1", "-p", str(port), "-l", HOST, "-U", "0"]
    argv += ["-c", str(connections), "-I", "2m"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without it
    return Server(argv, name="memcached", port=port, cpu=cpu)


def redis_server(workdir: Path, *, persistence: str = "always", cpu: int | None = None) -> Server:
    """Debian's ``redis-server`` as our child on a free loopback port, not started.

    Its AOF (``persistence`` ``always``) lives in ``workdir``; RDB snapshots are off
    (``--save ""``) so only the AOF's fsyncs cost disk time, as in the issue's comparison.
    Logs go to stdout (drained by Server), never to a file or syslog; never a service.
    """
    if not os.path.exists(REDIS_SERVER):
        raise ServerError(
            "redis-server is not installed: run `make system-deps` (apt-get install redis-server)"
        )
    port = free_port()
    argv = [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--dir", str(workdir)]
    argv += ["--save", "", *REDIS_PERSISTENCE[persistence], "--daemonize", "no"]
    argv += ["--protected-mode", "yes", "--logfile", ""]
    return Server(argv, name=f"redis-{persistence}", port=port, cpu=cpu, cwd=workdir)


def bare_twisted_server(
    python: str, *, cpu: int | None = None, write: str = "prompt", log_dir: Path | None = None
) -> Server:
    """``loadtest.bare_twisted`` (the CPython-on-Twisted ceiling) run by ``python`` on a free
    loopback port, not started; it announces its port as kestrelpy does. ``write`` is its
    ``--write``: ``prompt`` sends as kestrelpy does, ``twisted`` through Twisted's buffer.
    With ``log_dir`` it is durable (``--log``): about the most a durable server on
    CPython and Twisted reaches here."""
    argv = [python, "-m", "loadtest.bare_twisted", "--port", "0", "--write", write]
    name = "bare-twisted"
    if log_dir is not None:
        argv += ["--log", str(log_dir)]
        name += "-log"
    return Server(argv, name=name, cpu=cpu, cwd=Path(__file__).resolve().parent.parent)


@contextlib.contextmanager
def _children_pinned(cpu: int | None) -> Iterator[None]:
    """Pin the calling thread to ``cpu`` while a child is forked, so the child (and every
    thread it starts) inherits it. A ``preexec_fn`` would do the same in the child, but it
    is unsafe once the parent runs threads, and ours drain pipes."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    pin({cpu})
    try:
        yield
    finally:
        pin(before)


class Server:
    """One server under test, run as our child; ``start()`` again after ``stop()``/``kill9()``.

    Not thread-safe for control: one thread starts and stops it. The drain threads only
    append to the log (under a lock) and report the listening line.
    """

    host = HOST

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "server",
        port: int | None = None,
        cpu: int | None = None,
        cwd: Path | None = None,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``port``: the port ``argv`` binds, for a program that cannot announce it (then
        ready means accepting); None: it binds port 0 and logs the listening line.
        ``data_dir``: where it stores data, for callers that measure or reuse it."""
        self.argv = list(argv)
        self.name = name
        self.cpu = cpu
        self.cwd = cwd
        self.data_dir = data_dir
        self.env = dict(env) if env is not None else subprocess_env()
        self._given_port = port
        self.port = port
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stderr: list[bytes] = []  # every run's, after a "---- start #N" marker line
        self._stdout: list[bytes] = []
        self._run_from = 0  # index in _stderr of this run's first line
        self._threads: list[threading.Thread] = []
        self._settled = threading.Event()  # the listening line arrived, or stderr ended
        self.http_port: int | None = None  # kestrelpy's HTTP listener, when it has one
        self._http_settled = threading.Event()  # its line arrived, or stderr ended

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def http_url(self, timeout: float = START_TIMEOUT_S) -> str:
        """``http://127.0.0.1:PORT`` of kestrelpy's HTTP listener (started with it on)."""
        self._http_settled.wait(timeout)
        if self.http_port is None:
            raise ServerError(f"{self.name} announced no HTTP listener", self._tail())
        return f"http://{HOST}:{self.http_port}"

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ServerError(f"{self.name} was never started")
        return self._proc

    # -- control -----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start and wait (up to ``timeout``) until it listens; ServerError if it does not.

        On error nothing is left running: a silent server is killed, a dead one reaped.
        """
        if self.running:
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.port = self._given_port
        self._settled = threading.Event()
        self.http_port = None
        self._http_settled = threading.Event()
        with self._lock:
            self._stderr.append(f"---- start #{self.starts}: {' '.join(self.argv)}\n".encode())
            self._run_from = len(self._stderr)
        try:
            with _children_pinned(self.cpu):
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,  # a Ctrl-C in the terminal does not reach it
                )
        except OSError as err:
            raise ServerError(f"{self.name} could not be run: {err}") from None
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._drain_stderr, args=(self._proc.stderr,), daemon=True),
            threading.Thread(target=self._drain_stdout, args=(self._proc.stdout,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if self._given_port is None:
            self._settled.wait(timeout)  # set by _drain_stderr: the port, or EOF
            if self.port is not None:
                return self
            died = self._settled.is_set()
            silent = f"did not log 'listening on {HOST}:PORT' within {timeout:g} s"
        else:
            if self._accepting(time.monotonic() + timeout):
                return self
            died = self._proc.poll() is not None
            silent = f"not accepting on {self.address} within {timeout:g} s"
        if died:
            code = self._reap(STOP_TIMEOUT_S)
            raise ServerError(
                f"{self.name} exited with status {code} before listening", self._tail()
            )
        self._kill_quietly()
        raise ServerError(f"{self.name} {silent}", self._tail())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig``; SIGKILL if it still runs after ``timeout``. Returns the exit code
        (negative: the signal that ended it); callers that expect a clean exit check it."""
        proc = self._started()
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._note(f"---- still running {timeout:g} s after signal {sig}: SIGKILL\n")
            proc.kill()
        return self._reap(STOP_TIMEOUT_S)

    def kill9(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGKILL: no shutdown code runs, like a power cut for the process."""
        self._started().kill()
        return self._reap(timeout)

    def _accepting(self, deadline: float) -> bool:
        """Connect until the server accepts; False if it exits or the deadline passes."""
        assert self._proc is not None and self.port is not None
        while (left := deadline - time.monotonic()) > 0:
            if self._proc.poll() is not None:
                return False
            try:
                socket.create_connection((HOST, self.port), timeout=min(left, 1.0)).close()
                return True
            except OSError:
                time.sleep(0.02)  # not listening yet; it announces nothing we could wait on
        return False

    def _reap(self, timeout: float) -> int:
        """Wait for the exit and for the drain threads to read the last output."""
        proc = self._started()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_quietly()
            raise ServerError(
                f"{self.name} (pid {proc.pid}) did not exit within {timeout:g} s", self._tail()
            ) from None
        self._join_drains()
        return code

    def _kill_quietly(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(STOP_TIMEOUT_S)
        self._join_drains()

    def _join_drains(self) -> None:
        for thread in self._threads:
            thread.join(STOP_TIMEOUT_S)

    # -- output ------------------------------------------------------------------------------

    def _drain_stderr(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            with self._lock:
                self._stderr.append(line)
            if self.port is None and (port := listening_port(line)) is not None:
                self.port = port
                self._settled.set()
            elif self.http_port is None and (match := HTTP_LISTENING.search(line)) is not None:
                self.http_port = int(match.group(1))
                self._http_settled.set()
        self._settled.set()  # EOF: the process is gone (or going); start() tells which
        self._http_settled.set()

    def _drain_stdout(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            with self._lock:
                self._stdout.append(line)

    def _note(self, line: str) -> None:
        """A line of ours in the stderr log (what we did to the process, and when)."""
        with self._lock:
            self._stderr.append(line.encode())

    def _tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        with self._lock:
            run = self._stderr[self._run_from :]
        return b"".join(run).decode("utf-8", "replace").splitlines()[-lines:]

    def stderr_text(self) -> str:
        """Everything written to stderr by every run, each after its start marker."""
        with self._lock:
            return b"".join(self._stderr).decode("utf-8", "replace")

    def log(self, last_lines: int = LOG_TAIL_LINES) -> str:
        """The tail of stderr (and stdout, if any), for assertion and error messages."""
        with self._lock:
            err = b"".join(self._stderr).decode("utf-8", "replace").splitlines()
            out = b"".join(self._stdout).decode("utf-8", "replace").splitlines()
        text = f"---- {self.name} stderr (tail) ----\n" + "\n".join(err[-last_lines:])
        if out:
            text += f"\n---- {self.name} stdout (tail) ----\n" + "\n".join(out[-last_lines:])
        return text
