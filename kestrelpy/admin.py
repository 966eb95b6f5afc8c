"""Admin commands of the CLI: ``kestrelpy stats`` and ``kestrelpy dump-store``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from kestrelpy.errors import KestrelpyError
from kestrelpy.storage.lmdb_store import inspect_store

_TIMEOUT_S = 10.0


def fetch_stats(server: str) -> dict[str, str]:
    """Send ``stats`` to a server and return its ``STAT`` pairs in order."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise KestrelpyError(f"--server {server!r}: expected host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=_TIMEOUT_S) as conn:
            conn.sendall(b"stats\r\n")
            reply = _read_until_end(conn)
    except OSError as err:
        raise KestrelpyError(f"cannot reach {server}: {err}") from err
    stats: dict[str, str] = {}
    for line in reply.decode("latin-1").split("\r\n"):
        if line.startswith("STAT "):
            _, name, value = line.split(" ", 2)
            stats[name] = value
    return stats


def _read_until_end(conn: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"END\r\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise KestrelpyError("server closed the connection before END")
        reply += chunk
    return reply


def print_stats(server: str, *, as_json: bool) -> int:
    stats = fetch_stats(server)
    if as_json:
        print(json.dumps(stats, indent=2))
    else:
        width = max((len(name) for name in stats), default=0)
        for name, value in stats.items():
            print(f"{name:<{width}}  {value}")
    return 0


def print_store(data_dir: Path, *, as_json: bool) -> int:
    records = inspect_store(data_dir)
    rows = [
        {"queue": r.name, "items": r.items, "bytes": r.payload_bytes, "create_time": r.create_time}
        for r in sorted(records, key=lambda r: r.name)
    ]
    if as_json:
        print(json.dumps({"data_dir": str(data_dir), "queues": rows}, indent=2))
        return 0
    width = max((len(row["queue"]) for row in rows), default=5)  # type: ignore[arg-type]
    print(f"{'queue':<{width}}  {'items':>12}  {'bytes':>14}")
    for row in rows:
        print(f"{row['queue']:<{width}}  {row['items']:>12}  {row['bytes']:>14}")
    return 0
