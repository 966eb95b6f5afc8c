"""Harness for the ``kestrelpy consume``/``produce`` tests: consumer processes, a gate that
blocking jobs report to, and readers for queues and job records.

No sleeps to synchronise: a test waits for a consumer's exit, for a job to connect to the
gate, or (polling, with a deadline) for a line in a file. Every wait has a deadline and
fails with the consumer's output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .conftest import HOST, RUN_TIMEOUT_S, Conn, kestrelpy_command, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
JOBCODE = Path(__file__).with_name("jobcode")  # job_helpers.py: on the consumers' PYTHONPATH
WAIT_S = 20.0  # generous: a consumer starts a Python and imports on a busy 2-core box


def job_command(mode: str) -> list[str]:
    """A COMMAND for ``consume -- ...`` (see jobcode/job_helpers.py for the modes)."""
    return [sys.executable, str(JOBCODE / "job_helpers.py"), mode]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``predicate`` until truthy and return its value. Only for state with no event
    to wait on (a file growing); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


class JobFiles:
    """One test's job environment: the records file, the marker, the gate address."""

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmp_path / "jobs.jsonl"
        self.marker = tmp_path / "marker"
        self.gate: Gate | None = None

    def env(self) -> dict[str, str]:
        env = subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(JOBCODE), env.get("PYTHONPATH", "")) if p
        )
        env["JOB_OUT"] = str(self.out)
        env["JOB_MARKER"] = str(self.marker)
        if self.gate is not None:
            env["JOB_GATE"] = self.gate.address
        return env

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def wait_records(self, count: int) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (records := self.records()) and len(records) >= count and records,
            f"{count} job records in {self.out}",
        )


class Consumer:
    """One ``kestrelpy consume`` process; stdout and stderr go to files (no pipe to fill)."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        self.args = args
        n = len(list(log_dir.glob("consumer*.out")))
        self.out_path = log_dir / f"consumer{n}.out"
        self.err_path = log_dir / f"consumer{n}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*kestrelpy_command(), "consume", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=cwd,
            )

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def describe(self) -> str:
        return (
            f"kestrelpy consume {' '.join(self.args)}\n"
            f"--- stdout\n{self.stdout()}--- stderr\n{self.stderr()}"
        )

    def wait(self, timeout: float = WAIT_S) -> int:
        """The exit code; a consumer still running after ``timeout`` fails the test."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        raise AssertionError(f"consumer still running after {timeout}s\n{self.describe()}")

    def assert_exit(self, code: int = 0, timeout: float = WAIT_S) -> None:
        got = self.wait(timeout)
        assert got == code, f"exit {got}, expected {code}\n{self.describe()}"

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT_S)

    def wait_stderr(self, text: str) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.stderr():
                raise AssertionError(f"consumer exited before {text!r}\n{self.describe()}")
            return text in self.stderr()

        wait_for(seen, f"{text!r} on the consumer's stderr")


class Gate:
    """Where gated jobs report: :meth:`accept` returns once one has started."""

    def __init__(self) -> None:
        self._listener = socket.create_server((HOST, 0))
        self.address = f"{HOST}:{self._listener.getsockname()[1]}"

    def accept(self, timeout: float = WAIT_S) -> GatedJob:
        self._listener.settimeout(timeout)
        try:
            conn, _ = self._listener.accept()
        except TimeoutError:
            raise AssertionError(f"no job reached the gate within {timeout}s") from None
        conn.settimeout(timeout)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            assert chunk, "a gated job hung up before saying who it is"
            data += chunk
        return GatedJob(conn, json.loads(data))

    def close(self) -> None:
        self._listener.close()


class GatedJob:
    def __init__(self, conn: socket.socket, entry: dict[str, Any]) -> None:
        self.conn = conn
        self.entry = entry

    def release(self) -> None:
        """Let the job finish (exit 0)."""
        self.conn.sendall(b"go\n")
        self.conn.close()

    def drop(self) -> None:
        """Hang up: the job exits 4 without finishing."""
        self.conn.close()

    def wait_gone(self, timeout: float = WAIT_S) -> None:
        """Wait until the job process has hung up (it was killed)."""
        self.conn.settimeout(timeout)
        try:
            assert self.conn.recv(64) == b"", "the gate got bytes from a job"
        except ConnectionResetError:
            pass
        finally:
            self.conn.close()


class Jobs:
    """Fixture value: start consumers against a server and read what their jobs did."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.files = JobFiles(tmp_path)
        self.consumers: list[Consumer] = []

    def gate(self) -> Gate:
        self.files.gate = Gate()
        return self.files.gate

    def consume(self, *args: object, cwd: Path | None = None) -> Consumer:
        consumer = Consumer(
            [str(arg) for arg in args], self.files.env(), self.tmp_path, cwd or self.tmp_path
        )
        self.consumers.append(consumer)
        return consumer

    def records(self) -> list[dict[str, Any]]:
        return self.files.records()

    def cli(self, *args: object) -> subprocess.CompletedProcess[str]:
        """``kestrelpy ARGS`` to its end, in this test's job environment."""
        return run_cli(*args, env=self.files.env(), cwd=self.tmp_path)

    def close(self) -> None:
        for consumer in self.consumers:
            if consumer.proc.poll() is None:
                consumer.proc.kill()  # by pid; a test that failed midway left it running
                consumer.proc.wait()
        if self.files.gate is not None:
            self.files.gate.close()


def job_harness(tmp_path: Path) -> Iterator[Jobs]:
    """Body of a test module's ``jobs`` fixture; consumers still running are killed."""
    harness = Jobs(tmp_path)
    yield harness
    harness.close()


def run_cli(
    *args: object,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``kestrelpy ARGS`` to its end, with ``input`` on stdin (or stdin closed)."""
    argv = [*kestrelpy_command(), *map(str, args)]
    try:
        return subprocess.run(
            argv,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            env=env or subprocess_env(),
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{' '.join(argv)} still running\nstderr: {err.stderr!r}") from None


def produce(server: Any, *args: object, input: str | None = None) -> None:
    """``kestrelpy produce -s SERVER ARGS``, asserting success."""
    result = run_cli("produce", "-s", f"{HOST}:{server.port}", *args, input=input)
    assert result.returncode == 0, f"produce exit {result.returncode}: {result.stderr}"
    assert result.stderr == "" and result.stdout == "", result


def take_all(server: Any, queue: str) -> list[Any]:
    """Every item of ``queue``, decoded from JSON, removed; raw bytes if not JSON."""
    items = []
    with Conn(server) as conn:
        while (body := conn.get(queue)) is not None:
            try:
                items.append(json.loads(body))
            except ValueError:
                items.append(body)
            assert len(items) < 10_000, "queue never drained"
    return items


def queue_state(server: Any, queue: str) -> tuple[int, int]:
    """(items, open_transactions) of ``queue`` from the server's stats."""
    with Conn(server) as conn:
        stats = conn.stats()
    return (
        int(stats.get(f"queue_{queue}_items", 0)),
        int(stats.get(f"queue_{queue}_open_transactions", 0)),
    )
