"""ref_client: build ``loadtest/ref_client.c`` with gcc and run it, for the bench and tests.

The C client is the yardstick the performance targets are stated in (one request in flight
per connection, 64 B set/get, or LPUSH/RPOP against Redis), so the bench measures every
server with it rather than with a Python tool that might itself be the limit. It is built
with ``gcc -O2`` into a fresh temporary directory on every run: nothing to commit, nothing
stale after an edit, and the build (well under a second) happens before the clock starts.

    python -m loadtest.ref_client --server 127.0.0.1:22133 --connections 10 --duration 10
    python -m loadtest.ref_client --server 127.0.0.1:6379 --protocol redis --json --cpu 1

The C client connects to 127.0.0.1 only. The report is the client's JSON line plus the
options (``server``, ``params``); exit codes as the other tools: 0 done, 1 the server sent
error replies, 2 the run could not be done (no gcc, unreachable server, bad reply).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest._client import parse_address
from loadtest._proc import parse_cpus, pin

SOURCE = Path(__file__).with_name("ref_client.c")
PROTOCOLS = ("memcache", "redis")
BUILD_TIMEOUT_S = 120.0  # gcc on a busy 2-core machine
SLACK_S = 30.0  # connecting and exiting, beyond the run itself
LOOPBACK = {"127.0.0.1", "localhost"}


class RefClientError(Exception):
    """The client could not be built or run; ``str()`` is one line for stderr or a table."""


def build(out_dir: Path) -> Path:
    """Compile ref_client.c into ``out_dir`` and return the binary's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RefClientError("gcc is not installed (apt-get install gcc): it builds ref_client.c")
    binary = out_dir / "ref_client"
    done = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RefClientError(f"gcc failed on {SOURCE.name}: {lines[0] if lines else 'no output'}")
    return binary


def run(binary: Path, port: int, connections: int, seconds: float, protocol: str) -> dict[str, Any]:
    """One run of the built client; its JSON report (exit 1 still carries one)."""
    argv = [str(binary), str(port), str(connections), f"{seconds:g}", protocol]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + SLACK_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise RefClientError(f"ref_client did not finish within {seconds + SLACK_S:g} s") from None
    if done.returncode in (0, 1) and done.stdout.strip():
        report: dict[str, Any] = json.loads(done.stdout)
        return report
    lines = done.stderr.strip().splitlines()
    why = lines[-1].removeprefix("ref_client: ") if lines else f"exit status {done.returncode}"
    raise RefClientError(why)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ref_client", description=__doc__)
    parser.add_argument("--server", default="127.0.0.1:22133", help="HOST:PORT, loopback only")
    parser.add_argument("-c", "--connections", type=int, default=10, help="half write, half read")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="memcache")
    parser.add_argument("--cpu", type=parse_cpus, default=None, help="pin to CPUs (1, 0-1)")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--quiet", action="store_true", help="accepted; there is no progress bar")
    return parser


def summary(report: dict[str, Any]) -> str:
    """The report in one line for a terminal."""
    ops = report["ops"]
    return (
        f"ref_client {report['protocol']} {report['connections']} conns on {report['server']}: "
        f"{ops['total']['ops_per_s']:,.0f} ops/s (writes {ops['set']['ops_per_s']:,.0f}, "
        f"reads {ops['get']['ops_per_s']:,.0f}, hits {report['hits']:,}), "
        f"p99 {ops['total']['latency']['p99_ms']:.3g} ms, "
        f"client CPU {report['client_cpu_percent']:.0f} %, errors {report['errors']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_address(args.server)
        if host not in LOOPBACK:
            raise RefClientError(f"the C client connects to 127.0.0.1 only, not {host}")
        if args.connections <= 0 or args.duration <= 0:
            raise RefClientError("--connections and --duration must be positive")
        pin(args.cpu)  # the client inherits it
        with tempfile.TemporaryDirectory(prefix="ref_client-") as build_dir:
            binary = build(Path(build_dir))
            report = run(binary, port, args.connections, args.duration, args.protocol)
    except (RefClientError, OSError, ValueError) as err:
        print(f"ref_client: {err}", file=sys.stderr)
        return 2
    report["server"] = args.server
    report["params"] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "protocol": args.protocol,
        "size": report["size"],
    }
    print(json.dumps(report, sort_keys=True) if args.json else summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
