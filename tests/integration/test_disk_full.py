"""A full disk: sets are refused with SERVER_ERROR, nothing acknowledged is lost, and the
server recovers on its own when space comes back.

Contract (issue 3, storage; docs/protocol.md §12): the LMDB map grows on demand, reserving its
disk blocks first, so a full disk surfaces as ``SERVER_ERROR store failure: write not
committed`` for the writes of the commit that could not grow the map; those items are rolled
back (never delivered), every ``STORED`` item stays, reads and other connections carry on,
and the next commit after space returns retries the grow.

The data dir is a small tmpfs mounted by the test (we run as root, in CI too). Sizes: the
store starts with a 16 MiB map and grows by doubling, so the first grow needs 16 MiB more.
With a 40 MiB tmpfs holding a 12 MiB ballast file, the server starts (16 MiB reserved,
~12 MiB left) but cannot grow; deleting the ballast leaves ~24 MiB, enough for the grow.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ServerProcess, start_fails_with_one_line

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
INITIAL_MAP = 16 * MiB  # the store's first map size
TMPFS_SIZE = "40m"
BALLAST_BYTES = 12 * MiB
ITEM_BYTES = 256 * 1024
BURST = 4  # sets sent in one write, so a failing commit holds several
SMALL_SETS = 200  # 4 KB each, pipelined in one write while the disk is full
MAX_FILL_SETS = 200  # 16 MiB of map holds ~60 items of 256 KiB; 200 is a safe upper bound
RECOVERY_TIMEOUT_S = 15.0
COMMIT_FAILED = b"SERVER_ERROR store failure: write not committed\r\n"

CONFIG = """\
[server]
sync = "always"
item_size_max = "1MB"
"""


def body(tag: str, index: int) -> bytes:
    """A 256 KiB payload whose first bytes say which one it is."""
    head = b"%s-%04d:" % (tag.encode(), index)
    return head + bytes([index % 251]) * (ITEM_BYTES - len(head))


def label(data: bytes | None) -> bytes | None:
    """The readable prefix of a payload, for short assertion messages."""
    return None if data is None else data.split(b":", 1)[0]


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 40 MiB tmpfs at ``tmp_path/small``, unmounted afterwards (lazily if still busy)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    argv = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        why = f"exited {result.returncode}: {result.stderr.strip()}"
    except OSError as err:  # no mount binary
        result, why = None, str(err)
    if result is None or result.returncode != 0:
        pytest.fail(
            "test_disk_full needs to mount a tmpfs (run as root, or in a container with "
            f"CAP_SYS_ADMIN): `{' '.join(argv)}` {why}",
            pytrace=False,
        )
    try:
        yield mount_point
    finally:
        done = subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def write_ballast(path: Path, size: int) -> None:
    """A file whose blocks are really allocated (tmpfs would keep a sparse file free)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def drain(conn, queue: str, count: int) -> list[bytes | None]:
    """Pipeline count + 1 plain gets; return the bodies in order (None for END)."""
    conn.send(b"get %s\r\n" % queue.encode() * (count + 1))
    bodies: list[bytes | None] = []
    for _ in range(count + 1):
        values = conn.read_get_reply(timeout=30)
        assert len(values) <= 1, values
        bodies.append(values[0].data if values else None)
    return bodies


def test_full_disk_refuses_sets_loses_nothing_and_recovers(small_fs, server_factory):
    data_dir = small_fs / "data"
    ballast = small_fs / "ballast"
    write_ballast(ballast, BALLAST_BYTES)
    srv: ServerProcess = server_factory(CONFIG, data_dir=data_dir)

    acked: list[bytes] = []  # every payload that got STORED on queue "fill", in order
    with srv.connect(timeout=10) as writer:
        assert writer.set("side", b"side-item") == b"STORED\r\n"

        # Fill in pipelined bursts (several writes per commit) until the map cannot grow;
        # the burst with the first refusal ends the loop.
        refusals: list[bytes] = []
        index = 0
        while not refusals and index < MAX_FILL_SETS:
            burst = [body("fill", index + n) for n in range(BURST)]
            index += BURST
            writer.send(b"".join(b"set fill 0 0 %d\r\n%s\r\n" % (len(d), d) for d in burst))
            for data in burst:
                reply = writer.read_line(timeout=10)
                if reply == b"STORED\r\n":  # may follow a refusal: a smaller commit fits
                    acked.append(data)
                else:
                    refusals.append(reply)
        assert refusals, (
            f"{index} sets of {ITEM_BYTES} bytes all STORED on a {TMPFS_SIZE} tmpfs "
            f"with a {BALLAST_BYTES} byte ballast: the disk never filled\n{srv.log()}"
        )
        assert set(refusals) == {COMMIT_FAILED}, f"refused sets answered {refusals}\n{srv.log()}"
        assert len(acked) >= 20, f"only {len(acked)} sets stored before the disk filled"

        # The full state: the server lives, the writer's connection and others still work.
        assert srv.running, f"server died when the disk filled\n{srv.log()}"
        # Another big set may be refused again or fit in pages LMDB freed meanwhile (a
        # refusal is not a sticky state); either way the reply must tell the truth.
        data = body("again", 0)
        again = writer.set("fill", data)
        assert again in (b"STORED\r\n", COMMIT_FAILED), f"set on a full disk: {again!r}"
        if again == b"STORED\r\n":
            acked.append(data)
        with srv.connect() as other:
            stats = other.stats()
            assert stats.get("queue_fill_items") == str(len(acked)), (
                f"refused sets must not be counted: expected {len(acked)} items, stats say "
                f"{stats.get('queue_fill_items')}"
            )
            assert stats.get("queue_fill_bytes") == str(len(acked) * ITEM_BYTES), stats
            peeked = other.get("fill/peek")
            assert label(peeked) == label(acked[0]) and peeked == acked[0]
            assert other.get("side") == b"side-item"
            assert other.get("side") is None
        assert writer.request(b"version").startswith(b"VERSION "), srv.log()

        # Many small sets in one write: they share commits, some may still fit in free
        # pages, the rest are refused. Exactly the STORED ones must count and survive.
        small = [b"small-%03d:" % i + b"s" * 4000 for i in range(SMALL_SETS)]
        writer.send(b"".join(b"set small 0 0 %d\r\n%s\r\n" % (len(d), d) for d in small))
        small_acked = []
        for data in small:
            reply = writer.read_line(timeout=10)
            assert reply in (b"STORED\r\n", COMMIT_FAILED), reply
            if reply == b"STORED\r\n":
                small_acked.append(data)
        assert len(small_acked) < SMALL_SETS, "a full disk took 800 KB of small sets"
        with srv.connect() as other:
            assert other.stats().get("queue_small_items") == str(len(small_acked))

        # The refusals came from the first grow (16 -> 32 MiB), which found no room.
        size = (data_dir / "data.mdb").stat().st_size
        assert size == INITIAL_MAP, f"data.mdb is {size} bytes while full, not {INITIAL_MAP}"

        # Space comes back: the next commits retry the grow and sets succeed again.
        ballast.unlink()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        attempt = 0
        while True:
            data = body("after", attempt)
            reply = writer.set("fill", data)
            if reply == b"STORED\r\n":
                acked.append(data)
                break
            assert reply == COMMIT_FAILED, f"set while recovering answered {reply!r}"
            assert time.monotonic() < deadline, (
                f"sets still refused {RECOVERY_TIMEOUT_S}s after freeing {BALLAST_BYTES} "
                f"bytes ({attempt + 1} attempts)\n{srv.log()}"
            )
            attempt += 1
        for index in range(attempt + 1, attempt + 11):
            data = body("after", index)
            assert writer.set("fill", data) == b"STORED\r\n", srv.log()
            acked.append(data)
    # 2.5 MiB more than a full 16 MiB map could hold: the map really grew after the refusal.
    size = (data_dir / "data.mdb").stat().st_size
    assert size > INITIAL_MAP, f"data.mdb is {size} bytes: the map never grew"

    # Everything acknowledged is readable in order from the running server ...
    half = len(acked) // 2
    with srv.connect(timeout=10) as reader:
        stats = reader.stats()
        assert stats.get("queue_fill_items") == str(len(acked)), stats.get("queue_fill_items")
        got = [reader.get("fill") for _ in range(half)]
        assert [label(g) for g in got] == [label(a) for a in acked[:half]]
        assert got == acked[:half]
        # A later STORED commits the removals answered before it (docs/protocol.md §12).
        assert reader.set("marker", b"m") == b"STORED\r\n"

    # ... and after a restart on the same dir: the store is intact, nothing reappears.
    srv.stop()
    srv.start()
    with srv.connect(timeout=10) as conn:
        stats = conn.stats()
        assert stats.get("queue_fill_items") == str(len(acked) - half), (
            f"after restart: {stats.get('queue_fill_items')} items, expected "
            f"{len(acked) - half}\n{srv.log()}"
        )
        assert stats.get("queue_side_items") == "0", "the side item's removal was lost"
        got = drain(conn, "fill", len(acked) - half)
        assert [label(g) for g in got] == [*(label(a) for a in acked[half:]), None]
        assert got == [*acked[half:], None]
        got = drain(conn, "small", len(small_acked))
        assert [label(g) for g in got] == [*(label(a) for a in small_acked), None]
        assert got == [*small_acked, None]
    srv.stop()


def test_a_disk_too_small_for_the_initial_map_is_one_line_exit_2_then_starts(
    small_fs, server_factory
):
    """The first 16 MiB reservation fails: one clear error at start; with room, it starts."""
    ballast = small_fs / "ballast"
    write_ballast(ballast, 30 * MiB)  # 10 MiB left: less than the initial map
    data_dir = small_fs / "data"
    srv: ServerProcess = server_factory(CONFIG, data_dir=data_dir, start=False)
    line = start_fails_with_one_line(srv)  # 10 MiB free for a 16 MiB map
    assert str(data_dir) in line and "No space left" in line, line

    ballast.unlink()
    srv.start()
    with srv.connect() as conn:
        assert conn.set("q", b"hello") == b"STORED\r\n"
    srv.stop()
    srv.start()
    with srv.connect() as conn:
        assert conn.get("q") == b"hello"
    srv.stop()


def fill_until_refused(conn, queue: str, srv: ServerProcess) -> int:
    """Big sets in bursts, then small ones, until both are refused: the map is full to its
    last page that puts may use. Returns how many were STORED."""
    stored = 0
    for size, burst in ((ITEM_BYTES, BURST), (4000, 50), (100, 200)):
        refused = False
        index = 0
        while not refused:
            assert index < MAX_FILL_SETS * 20, f"never refused\n{srv.log()}"
            data = [b"%05d:" % (index + n) + b"f" * (size - 6) for n in range(burst)]
            index += burst
            conn.send(
                b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (queue.encode(), size, d) for d in data)
            )
            for _ in data:
                reply = conn.read_line(timeout=10)
                if reply == b"STORED\r\n":
                    stored += 1
                else:
                    assert reply == COMMIT_FAILED, reply
                    refused = True
    return stored


def test_removals_commit_on_a_full_disk_and_never_block_later_sets(small_fs, server_factory):
    """Issue 18, finding 5: removals have room kept for them; a refused set's commit does
    not take them along, and nothing failed is retried in every later commit."""
    ballast = small_fs / "ballast"
    write_ballast(ballast, BALLAST_BYTES)
    srv: ServerProcess = server_factory(CONFIG, data_dir=small_fs / "data")
    with srv.connect(timeout=10) as conn:
        assert conn.set("side", b"side-item") == b"STORED\r\n"
        stored = fill_until_refused(conn, "fq", srv)
        assert stored > 20, stored
        assert conn.get("side") == b"side-item"  # a removal, committed on its own
        assert conn.request(b"flush fq") == b"END\r\n", srv.log()
        with srv.connect() as other:
            assert other.stats().get("queue_fq_items") == "0"
        # The flush freed pages: sets fit again, without the disk having any more room.
        data = body("after", 0)
        assert conn.set("after", data) == b"STORED\r\n", srv.log()
    srv.stop()
    srv.start()
    with srv.connect(timeout=10) as conn:
        stats = conn.stats()
        assert stats.get("queue_fq_items") == "0", "the flush was not committed"
        assert stats.get("queue_side_items") == "0", "the get's removal was not committed"
        assert conn.get("after") == body("after", 0)
    srv.stop()


def test_after_a_restart_on_a_full_disk_delete_commits_and_sets_resume(small_fs, server_factory):
    ballast = small_fs / "ballast"
    write_ballast(ballast, BALLAST_BYTES)
    srv: ServerProcess = server_factory(CONFIG, data_dir=small_fs / "data")
    with srv.connect(timeout=10) as conn:
        assert fill_until_refused(conn, "fq", srv) > 20
        assert conn.set("keep", b"kept") in (b"STORED\r\n", COMMIT_FAILED)
    srv.stop()
    srv.start()  # the disk is still full
    with srv.connect(timeout=10) as conn:
        assert conn.request(b"delete fq") == b"DELETED\r\n", srv.log()
        for index in range(10):  # no failed removal rides these commits
            assert conn.set("after", body("after", index)) == b"STORED\r\n", srv.log()
    srv.stop()
    srv.start()
    with srv.connect(timeout=10) as conn:
        stats = conn.stats()
        assert "queue_fq_items" not in stats, "the delete was not committed"
        assert stats.get("queue_after_items") == "10"
    srv.stop()
