"""A process that uses a ``local`` router backend, for the multi-process tests.

Run as ``python router_local_child.py MODE DIR QUEUE [ARGS]`` in a fresh interpreter (an
LMDB environment must not cross ``fork()``). It speaks one line at a time on stdout and
waits for the test on stdin, so the test synchronises on pipes, never on sleeps:

- ``drain``: print ``ready``, wait for a line, then take and ack until the queue is empty,
  printing each body; print ``done``.
- ``hold``: take one message, print its body and headers (JSON), then block reading stdin
  (the test kills it there). At EOF it leaves without releasing (``os._exit``).
- ``fill N SIZE``: send N messages of SIZE bytes with a 1 MiB map; print the final map size.
- ``fork``: take one message, fork; in the child the same backend object must refuse to
  work (its environment was opened before the fork); then the parent takes the next one
  and acks both; print the child's exit code and both bodies.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kestrelpy.router.backends.base import BackendError
from kestrelpy.router.backends.local import MIN_MAP_SIZE, LocalBackend
from kestrelpy.router.wire import Message


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    mode, directory, queue = argv[:3]
    backend = LocalBackend("child", Path(directory), lease_ms=600_000, map_size=MIN_MAP_SIZE)
    if mode == "drain":
        say("ready")
        sys.stdin.readline()
        while (lease := backend.take(queue)) is not None:
            say(lease.message.body.decode())
            lease.ack()
        say("done")
    elif mode == "hold":
        lease = backend.take(queue)
        if lease is None:
            say("empty")
            return 1
        say(json.dumps({"body": lease.message.body.decode(), "headers": lease.message.headers}))
        sys.stdin.readline()  # killed here
        os._exit(3)  # no close(): the lease must outlive this process
    elif mode == "fill":
        count, size = int(argv[3]), int(argv[4])
        for i in range(count):
            backend.send(queue, [Message({"n": str(i)}, bytes([i % 256]) * size)])
        queues = backend._store()  # the map size is the point of this mode
        say(str(queues.map_size_bytes()))
    elif mode == "fork":
        first = backend.take(queue)
        assert first is not None
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 when the backend refuses, naming fork()
            try:
                backend.take(queue)
            except BackendError as err:
                os._exit(0 if "fork()" in str(err) else 1)
            os._exit(2)
        _, status = os.waitpid(pid, 0)  # bounded by the test's timeout on this process
        say(f"child {os.waitstatus_to_exitcode(status)}")
        second = backend.take(queue)  # the parent's store is untouched by the child
        assert second is not None
        say(first.message.body.decode() + " " + second.message.body.decode())
        first.ack()
        second.ack()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
