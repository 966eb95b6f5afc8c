"""A consumer process for the kill -9 test of ``test_router_stomp.py``, run in a fresh
interpreter: ``python router_stomp_consumer.py HOST PORT QUEUE``.

It takes one message from QUEUE through the stomp backend and, still holding the lease,
writes one JSON line to stdout: ``{"headers": {...}, "body": "<hex>"}`` (or ``{"error":
"..."}`` when no message came within the deadline). Then it waits on stdin, neither acking
nor releasing, until the test kills it. EOF on stdin (the test is gone) ends it, so it never
outlives its parent.
"""

from __future__ import annotations

import json
import sys
import time

from kestrelpy.router.backends.stomp import open_backend

TAKE_DEADLINE_S = 30.0


def main(host: str, port: str, queue: str) -> int:
    backend = open_backend("kill9", {"host": host, "port": int(port)})
    deadline = time.monotonic() + TAKE_DEADLINE_S
    lease = None
    while lease is None and time.monotonic() < deadline:
        lease = backend.take(queue)  # waits up to receive_wait_ms for the broker's push
    if lease is None:
        print(json.dumps({"error": f"no message on {queue} within {TAKE_DEADLINE_S} s"}))
        return 1
    message = lease.message
    print(json.dumps({"headers": message.headers, "body": message.body.hex()}), flush=True)
    sys.stdin.read()  # hold the lease until killed (or until the test's end of the pipe)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
