"""Real ``kestrelpy serve`` processes for the fault and fuzz suites, and a reply parser.

Not a conftest.py, for the reason tests/loadtest/lt_harness.py gives (a second top-level
``conftest`` module would shadow tests/conftest.py). Servers start and stop through
loadtest/_servers.py, like every other suite: 127.0.0.1, port 0 announced on stderr, every
wait with a deadline, kill -9 by pid.

Sizes come from the environment so ``make soak`` and ``make fuzz`` run the same tests longer:
``KESTRELPY_SOAK_ROUNDS`` (crash-loop rounds per sync policy) and
``KESTRELPY_FUZZ_EXAMPLES`` (hypothesis examples).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the loadtest package lives at the repo root, not installed
    sys.path.insert(0, str(ROOT))

from loadtest._servers import HOST, Server, ServerError, serve_argv  # noqa: E402

__all__ = ["HOST", "IO_TIMEOUT_S", "Conn", "NeedMore", "Server", "env_int", "make_server"]
__all__ += ["parse_get_reply", "parse_line", "start"]

T = TypeVar("T")
IO_TIMEOUT_S = 10.0  # one reply on a loaded 2-core CI box; a miss is a hang, not slowness


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment (the long runs), else ``default``."""
    text = os.environ.get(name, "").strip()
    return int(text) if text else default


def kestrelpy_command() -> list[str]:
    script = Path(sys.executable).with_name("kestrelpy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kestrelpy"]


def make_server(data_dir: Path, config_text: str) -> Server:
    """A server on ``data_dir`` with ``config_text``, not started; start it again after a
    kill -9 and it reopens the same store."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / (data_dir.name + "-server.conf")
    config.write_text(config_text)
    return Server(serve_argv(kestrelpy_command(), data_dir, config), data_dir=data_dir)


def start(server: Server) -> Server:
    try:
        return server.start()
    except ServerError as err:
        raise AssertionError(str(err)) from None


class NeedMore(Exception):
    """The buffer holds only part of a reply."""


def parse_line(buf: bytearray) -> bytes:
    """Take one reply line (without CRLF) off ``buf``; NeedMore if it is not all there."""
    end = buf.find(b"\r\n")
    if end < 0:
        raise NeedMore
    line = bytes(buf[:end])
    del buf[: end + 2]
    return line


def parse_get_reply(buf: bytearray) -> list[bytes] | bytes:
    """Take one whole get reply off ``buf``: the data blocks (VALUE...END), or the single
    line of an error reply (bytes). NeedMore (``buf`` untouched) if it is not all there."""
    view = bytearray(buf)
    values: list[bytes] = []
    while True:
        line = parse_line(view)
        if line == b"END":
            break
        if not line.startswith(b"VALUE "):
            if values:
                raise AssertionError(f"get reply: {line!r} after a VALUE block")
            del buf[: len(buf) - len(view)]
            return line
        size = int(line.split()[3])
        if len(view) < size + 2:
            raise NeedMore
        block = bytes(view[: size + 2])
        assert block.endswith(b"\r\n"), f"data block without CRLF: {block[-20:]!r}"
        values.append(block[:-2])
        del view[: size + 2]
    del buf[: len(buf) - len(view)]
    return values


class Conn:
    """A blocking connection with a deadline on every read, for setup and checks."""

    def __init__(self, server: Server, timeout: float = IO_TIMEOUT_S) -> None:
        assert server.port is not None, "server not listening"
        self.server = server
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _read(self, parse: Callable[[bytearray], T]) -> T:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return parse(self.buf)
            except NeedMore:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply within {self.timeout}s\n{self.server.log()}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise AssertionError(f"server closed the connection\n{self.server.log()}")
            self.buf += chunk

    def line(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        return self._read(parse_line)

    def get(self, key: bytes) -> list[bytes] | bytes:
        self.sock.sendall(b"get " + key + b"\r\n")
        return self._read(parse_get_reply)

    def set(self, queue: bytes, data: bytes) -> bytes:
        return self.line(b"set %s 0 0 %d\r\n%s\r\n" % (queue, len(data), data))
