"""A damaged store is refused clearly, and a damaged page fails one read, not the server.

Issue 18, finding 4: a truncated ``data.mdb`` killed ``serve`` and ``dump-store`` with
SIGBUS (exit 135, no message), and damaged pages raised tracebacks and dropped a client
with no reply. Now a data file shorter than its pages, or one whose pages cannot be read
at start, is one line naming the file and what to do, exit 2; a damaged page met later
answers that read ``SERVER_ERROR`` and the server carries on.

Each test damages a copy of a real store, written by a real server.
"""

from __future__ import annotations

import os
import shutil
import struct
import urllib.request
from pathlib import Path

import lmdb
import pytest

from .conftest import (
    ServerProcess,
    assert_one_line_user_error,
    run_kestrelpy,
    start_fails_with_one_line,
)

pytestmark = pytest.mark.timeout(90)

SMALL_ITEMS = 2000  # ~4 per leaf page: ~500 leaf pages of one queue
BRANCH, LEAF = 0x01, 0x02  # LMDB page flags (mdb.c): P_BRANCH, P_LEAF
FLAGS_OFFSET = 10  # page header: mp_pgno (8 bytes), mp_pad (2), mp_flags (2), lower, upper
META_MAIN_ROOT = 4 + 4 + 8 + 8 + 48 + 40  # magic, version, address, mapsize, free db, main
META_TXNID = META_MAIN_ROOT + 8 + 8  # its md_root, mm_last_pg, then mm_txnid
DB_ROOT = 40  # MDB_db: pad, flags, depth, branch, leaf, overflow pages, entries, md_root
PAGE_HEADER = 16  # then one u16 node offset per key; a branch node starts with its child's
# page number: lo (u16), hi (u16), flags (u16, the high bits)


def small(index: int) -> bytes:
    return b"item-%05d:" % index + b"x" * 989


@pytest.fixture
def store(server_factory, tmp_path: Path) -> Path:
    """A real store: ``many`` (SMALL_ITEMS items of 1 KB) and ``other`` (one item)."""
    srv: ServerProcess = server_factory('[server]\nsync = "always"\n', data_dir=tmp_path / "real")
    with srv.connect(timeout=30) as conn:
        conn.send(b"".join(b"set many 0 0 1000\r\n%s\r\n" % small(i) for i in range(SMALL_ITEMS)))
        for _ in range(SMALL_ITEMS):
            assert conn.read_line(timeout=30) == b"STORED\r\n"
        assert conn.set("other", b"other-item") == b"STORED\r\n"
    srv.stop()
    return tmp_path / "real"


def copy_of(store: Path, name: str) -> Path:
    copy = store.parent / name
    copy.mkdir()
    shutil.copy(store / "data.mdb", copy / "data.mdb")
    return copy


def pages_in_use(data_dir: Path) -> tuple[int, int]:
    """(pages in use, page size), from the store's meta page."""
    env = lmdb.open(str(data_dir), readonly=True, lock=False, max_dbs=4)
    try:
        return env.info()["last_pgno"] + 1, env.stat()["psize"]
    finally:
        env.close()


def item_leaves(data_dir: Path) -> list[int]:
    """Page numbers of the live leaf pages of the ``items`` database, in key order (walked
    from the newer meta page; the file also holds stale copies of pages)."""
    pages, psize = pages_in_use(data_dir)
    raw = (data_dir / "data.mdb").read_bytes()[: pages * psize]
    metas = [PAGE_HEADER + n * psize for n in (0, 1)]  # MDB_meta after each page header
    meta = max(metas, key=lambda at: struct.unpack_from("<Q", raw, at + META_TXNID)[0])
    (main_root,) = struct.unpack_from("<Q", raw, meta + META_MAIN_ROOT)

    def nodes(pgno: int) -> list[int]:
        base = pgno * psize
        (lower,) = struct.unpack_from("<H", raw, base + FLAGS_OFFSET + 2)
        count = (lower - PAGE_HEADER) // 2
        return [
            base + struct.unpack_from("<H", raw, base + PAGE_HEADER + 2 * i)[0]
            for i in range(count)
        ]

    def flags(pgno: int) -> int:
        return int(struct.unpack_from("<H", raw, pgno * psize + FLAGS_OFFSET)[0])

    def leaves(pgno: int) -> list[int]:
        if flags(pgno) & LEAF:
            return [pgno]
        found = []
        for node in nodes(pgno):
            lo, hi, high = struct.unpack_from("<HHH", raw, node)
            found += leaves(lo | hi << 16 | high << 32)
        return found

    for main_leaf in leaves(main_root):  # the named databases: key "items" -> its MDB_db
        for node in nodes(main_leaf):
            (ksize,) = struct.unpack_from("<H", raw, node + 6)
            if raw[node + 8 : node + 8 + ksize] == b"items":
                (root,) = struct.unpack_from("<Q", raw, node + 8 + ksize + DB_ROOT)
                return leaves(root)
    raise AssertionError("no items database")


def break_links_to(data_dir: Path, pgnos: list[int]) -> None:
    """Point the branch entries that lead to these pages past the end of the store:
    reading them is then LMDB's PageNotFoundError."""
    pages, psize = pages_in_use(data_dir)
    targets = set(pgnos)
    with open(data_dir / "data.mdb", "r+b") as f:
        raw = f.read(pages * psize)
        broken = 0
        for pgno in range(2, pages):
            base = pgno * psize
            flags, lower = struct.unpack_from("<HH", raw, base + FLAGS_OFFSET)
            if not flags & BRANCH:
                continue
            for index in range((lower - PAGE_HEADER) // 2):
                (node,) = struct.unpack_from("<H", raw, base + PAGE_HEADER + 2 * index)
                lo, hi, high = struct.unpack_from("<HHH", raw, base + node)
                if (lo | hi << 16 | high << 32) in targets:
                    f.seek(base + node)
                    f.write(struct.pack("<HHH", 0xFFFF, 0xFFFF, 0))
                    broken += 1
    # Stale copies of branch pages may link to them too; breaking those changes nothing.
    assert broken >= len(targets), f"found links to {broken} of {len(targets)} pages"


def assert_refused(data_dir: Path, server_factory) -> None:
    """``dump-store`` and ``serve`` both: one line naming data.mdb, exit 2."""
    data_file = str(data_dir / "data.mdb")
    dump = run_kestrelpy("dump-store", "--data-dir", data_dir)
    line = assert_one_line_user_error(dump, data_file, "damaged")
    assert "restore" in line, line
    srv: ServerProcess = server_factory(None, data_dir=data_dir, start=False)
    line = start_fails_with_one_line(srv)
    assert data_file in line and "dump-store" in line, line


@pytest.mark.parametrize("pages_cut", [1, "half"])
def test_a_truncated_store_is_one_line_exit_2(store, server_factory, pages_cut):
    pages, psize = pages_in_use(store)
    damaged = copy_of(store, f"cut-{pages_cut}")
    keep = pages - 1 if pages_cut == 1 else pages // 2
    os.truncate(damaged / "data.mdb", keep * psize)
    assert_refused(damaged, server_factory)
    assert (damaged / "data.mdb").stat().st_size == keep * psize, "the refusal changed the file"


def test_damaged_pages_at_start_are_one_line_exit_2(store, server_factory):
    damaged = copy_of(store, "all-leaves")
    leaves = item_leaves(damaged)
    break_links_to(damaged, [leaves[0], leaves[-1]])  # the first and last: read at start
    assert_refused(damaged, server_factory)


def test_a_damaged_page_fails_that_read_and_the_server_stays_up(store, server_factory):
    damaged = copy_of(store, "one-leaf")
    leaves = item_leaves(damaged)
    assert len(leaves) > 100, f"only {len(leaves)} leaf pages"
    break_links_to(damaged, [leaves[len(leaves) * 9 // 10]])  # past the first refill
    srv: ServerProcess = server_factory(None, data_dir=damaged)
    with srv.connect(timeout=10) as conn:
        got = 0
        while True:
            conn.send(b"get many\r\n")
            line = conn.read_line(timeout=10)
            if not line.startswith(b"VALUE "):
                break
            data = conn.read_exact(int(line.split()[3]) + 2)[:-2]
            assert conn.read_line() == b"END\r\n"
            assert data == small(got), f"item {got}: {data[:12]!r}"
            got += 1
        assert line == b"SERVER_ERROR store read failed\r\n", (line, srv.log())
        assert 0 < got < SMALL_ITEMS, got
        # The connection and the server carry on; other queues are intact.
        assert conn.request(b"version").startswith(b"VERSION "), srv.log()
        assert conn.get("other") == b"other-item"
        assert conn.set("fresh", b"new") == b"STORED\r\n"
        assert conn.get("fresh") == b"new"
        conn.send(b"get many\r\n")
        assert conn.read_line(timeout=10) == b"SERVER_ERROR store read failed\r\n"
    assert srv.running, srv.log()
    assert "store damaged" in srv.log(), srv.log()


def flip_payload_byte(data_dir: Path, marker: bytes) -> int:
    """Flip one payload byte just after ``marker`` wherever the file holds it (the live
    page and stale copies alike); returns how many copies were changed."""
    path = data_dir / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.find(marker)
    copies = 0
    while at != -1:
        raw[at + len(marker)] ^= 0x01
        copies += 1
        at = raw.find(marker, at + 1)
    path.write_bytes(bytes(raw))
    return copies


def test_an_item_that_fails_its_checksum_is_refused_dropped_and_counted(store, server_factory):
    """Issue 18, finding 4: flipped payload bytes were served as if sound."""
    damaged = copy_of(store, "flipped")
    assert flip_payload_byte(damaged, small(5)[:11]) >= 1
    srv: ServerProcess = server_factory(None, data_dir=damaged, http=True)
    with srv.connect(timeout=10) as conn:
        for index in range(5):
            assert conn.get("many") == small(index)
        conn.send(b"get many\r\n")
        assert conn.read_line(timeout=10) == (
            b"SERVER_ERROR item failed its checksum and was dropped\r\n"
        ), srv.log()
        assert conn.get("many") == small(6)  # the queue goes on after it
        assert conn.stats()["queue_many_items"] == str(SMALL_ITEMS - 7)
    with urllib.request.urlopen(srv.http_url() + "/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'kestrelpy_queue_corrupt_items_total{queue="many"} 1.0' in metrics
    assert srv.running, srv.log()
    # logged under the queue's own namespace (the compiled build once named it __main__)
    assert "[kestrelpy.queues.queue.Queue#error] queue many: an item failed" in srv.log(), srv.log()
    srv.stop()
    srv = server_factory(None, data_dir=damaged)  # dropped for good, counters still exact
    with srv.connect(timeout=10) as conn:
        assert conn.get("many") == small(7)
        assert conn.stats()["queue_many_items"] == str(SMALL_ITEMS - 8)
