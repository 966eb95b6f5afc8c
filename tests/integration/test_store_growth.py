"""The store grows past its initial 16 MiB map and keeps everything across restarts.

Contract (issue 3, storage): the LMDB map starts at 16 MiB and grows on demand; growth is
invisible to clients. After a clean stop (SIGTERM, any sync policy) or a crash (kill -9 under
``sync = "always"``) every acknowledged item comes back, counted in ``stats`` at once (the
counters are stored, not rebuilt by a scan) and delivered in FIFO order.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading

import pytest

from .conftest import kestrelpy_command, subprocess_env

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
INITIAL_MAP = 16 * MiB
SET_CHUNK_BYTES = 2 * MiB  # one pipelined write of sets
GET_CHUNK = 256  # gets pipelined per write when draining


class Payloads:
    """Deterministic, distinct payloads: a readable index, then random bytes."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.size = size
        self._noise = random.Random(seed).randbytes(count * size)
        self.count = count

    def __getitem__(self, index: int) -> bytes:
        head = b"%07d:" % index
        start = index * self.size
        return head + self._noise[start + len(head) : start + self.size]

    def __iter__(self):
        return (self[i] for i in range(self.count))


def set_all(conn, queue: str, payloads: Payloads, first: int = 0, end: int | None = None) -> None:
    """Pipelined sets of payloads[first:end] in chunks; each must answer STORED, in order."""
    end = payloads.count if end is None else end
    per_chunk = max(1, SET_CHUNK_BYTES // payloads.size)
    q = queue.encode()
    for start in range(first, end, per_chunk):
        chunk = [payloads[i] for i in range(start, min(start + per_chunk, end))]
        conn.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (q, len(d), d) for d in chunk))
        conn.expect(b"STORED\r\n" * len(chunk), timeout=30)


def drain_and_check(conn, queue: str, payloads: Payloads) -> None:
    """Read every item with pipelined gets; each must be the next payload; then END."""
    q = queue.encode()
    index = 0
    while index < payloads.count:
        n = min(GET_CHUNK, payloads.count - index)
        conn.send(b"get %s\r\n" % q * n)
        for _ in range(n):
            values = conn.read_get_reply(timeout=30)
            assert len(values) == 1, (
                f"item {index} of {payloads.count}: got {len(values)} values\n{conn.server.log()}"
            )
            data = values[0].data
            if data != payloads[index]:
                raise AssertionError(
                    f"item {index}: got {data[:8]!r}... ({len(data)} bytes), expected "
                    f"{payloads[index][:8]!r}... ({payloads.size} bytes)"
                )
            index += 1
    assert conn.get(queue) is None, "more items than were stored"


def assert_store_grew(data_dir) -> None:
    size = (data_dir / "data.mdb").stat().st_size
    assert size > INITIAL_MAP, (
        f"data.mdb is {size} bytes: the test did not make the store grow past its "
        f"{INITIAL_MAP} byte initial map"
    )


def dump_store_json(data_dir) -> dict[str, dict[str, int]]:
    result = subprocess.run(
        [*kestrelpy_command(), "dump-store", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return {row["queue"]: row for row in json.loads(result.stdout)["queues"]}


def test_40_mib_survive_sigterm_in_order_under_periodic_sync(server_factory):
    payloads = Payloads(count=5120, size=8 * 1024, seed=1)  # 40 MiB of payload
    srv = server_factory('[server]\nsync = "periodic"\n')
    with srv.connect(timeout=30) as conn:
        set_all(conn, "big", payloads)
        stats = conn.stats()
        assert stats.get("queue_big_items") == str(payloads.count), stats.get("queue_big_items")
    assert_store_grew(srv.data_dir)

    srv.stop()
    srv.start()

    with srv.connect(timeout=30) as conn:
        stats = conn.stats()  # right after restart: the stored counters, no scan
        assert stats.get("queue_big_items") == str(payloads.count), (
            f"queue_big_items after restart: {stats.get('queue_big_items')}\n{srv.log()}"
        )
        assert stats.get("queue_big_bytes") == str(payloads.count * payloads.size)
        # The offline reader agrees on the grown store, while the server runs.
        row = dump_store_json(srv.data_dir).get("big")
        assert row is not None and row["items"] == payloads.count, row
        assert row["bytes"] == payloads.count * payloads.size, row
        drain_and_check(conn, "big", payloads)


def test_acknowledged_items_survive_kill9_after_growth_under_always_sync(server_factory):
    payloads = Payloads(count=1000, size=20 * 1024, seed=2)  # ~20 MiB: one grow at least
    srv = server_factory('[server]\nsync = "always"\n')
    with srv.connect(timeout=30) as conn:
        set_all(conn, "crashy", payloads)
    assert_store_grew(srv.data_dir)

    srv.kill9()
    srv.start()

    with srv.connect(timeout=30) as conn:
        stats = conn.stats()
        assert stats.get("queue_crashy_items") == str(payloads.count), (
            f"queue_crashy_items after kill -9: {stats.get('queue_crashy_items')}\n{srv.log()}"
        )
        assert stats.get("queue_crashy_bytes") == str(payloads.count * payloads.size)
        drain_and_check(conn, "crashy", payloads)


def test_reads_from_disk_during_growth_deliver_every_item_once_in_order(server_factory):
    """A consumer reads (from LMDB: a tiny read-ahead window) while the writer grows the map.

    A backlog just under the initial map is written first, so the sets sent while the
    consumer runs make the map grow under its reads.
    """
    payloads = Payloads(count=1500, size=24 * 1024, seed=3)  # ~36 MiB in all
    prefill = 500  # ~14 MiB of pages: most of the 16 MiB initial map
    srv = server_factory('[server]\nsync = "always"\nread_ahead_items = 4\n')
    received: list[bytes] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            with srv.connect(timeout=30) as conn:
                while len(received) < payloads.count:
                    data = conn.get("grow/t=5000", timeout=30)
                    assert data is not None, f"no item within 5 s after {len(received)}"
                    received.append(data)
        except BaseException as err:  # reported by the main thread
            failure.append(err)

    with srv.connect(timeout=30) as conn:
        set_all(conn, "grow", payloads, end=prefill)
        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        set_all(conn, "grow", payloads, first=prefill)
    consumer.join(60)
    assert not consumer.is_alive(), f"consumer still reading after 60 s\n{srv.log()}"
    assert not failure, failure[0]
    assert_store_grew(srv.data_dir)
    mismatches = [i for i, data in enumerate(received) if data != payloads[i]]
    assert not mismatches, (
        f"{len(mismatches)} items out of order or corrupted, first at {mismatches[0]}: "
        f"{received[mismatches[0]][:8]!r}"
    )
    with srv.connect() as conn:
        assert conn.get("grow") is None
        assert conn.stats().get("queue_grow_items") == "0"
