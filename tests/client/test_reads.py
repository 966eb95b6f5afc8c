"""kestrelpy.client.reads: which reliable reads a client holds, where, and which closes it
still owes (docs/client.md, "Reliable reads, and the close that rides along")."""

from __future__ import annotations

from kestrelpy.client.reads import HeldRead, HeldReads
from kestrelpy.client.servers import ServerAddress

A = ServerAddress("10.0.0.1", 22133)
B = ServerAddress("10.0.0.2", 22133)


def test_a_held_read_remembers_its_server() -> None:
    reads = HeldReads()
    assert reads.get("q") is None
    reads.hold("q", A)
    assert reads.get("q") == HeldRead(A, finished=False)
    assert reads.servers_owed_closes() == set()
    assert reads.take_finished(A) == []  # open, not finished: no close owed
    assert reads.get("q") == HeldRead(A)


def test_a_finished_read_is_owed_a_close_on_its_server_only() -> None:
    reads = HeldReads()
    reads.hold("q", A)
    reads.hold("r", B)
    reads.finish("q")
    assert reads.get("q") == HeldRead(A, finished=True)
    assert reads.servers_owed_closes() == {A}
    assert reads.take_finished(B) == []
    assert reads.take_finished(A) == ["q"]
    assert reads.get("q") is None  # taken: the caller sends the close
    assert reads.take_finished(A) == []
    assert reads.servers_owed_closes() == set()
    assert reads.get("r") == HeldRead(B)


def test_take_finished_takes_every_close_owed_to_the_server() -> None:
    reads = HeldReads()
    for queue in ("a", "b", "c"):
        reads.hold(queue, A)
    reads.hold("d", B)
    reads.finish("a")
    reads.finish("c")
    reads.finish("d")
    assert reads.servers_owed_closes() == {A, B}
    assert sorted(reads.take_finished(A)) == ["a", "c"]
    assert reads.get("b") == HeldRead(A)  # still open
    assert reads.servers_owed_closes() == {B}


def test_release_forgets_a_read_and_is_idempotent() -> None:
    reads = HeldReads()
    reads.hold("q", A)
    reads.release("q")
    assert reads.get("q") is None
    reads.release("q")
    reads.release("never-held")


def test_drop_server_voids_every_read_on_it() -> None:
    reads = HeldReads()
    reads.hold("a", A)
    reads.hold("b", A)
    reads.hold("c", B)
    reads.finish("b")
    assert sorted(reads.drop_server(A)) == ["a", "b"]
    # an open read is kept as lost, so its close or abort can report that the item is back
    assert reads.get("a") == HeldRead(A, lost=True)
    assert reads.get("b") is None
    assert reads.servers_owed_closes() == set()  # the server put b back: nothing to close
    assert reads.get("c") == HeldRead(B)
    assert reads.drop_server(A) == []
    assert reads.take_finished(A) == []


def test_finishing_a_lost_read_forgets_it_and_owes_no_close() -> None:
    reads = HeldReads()
    reads.hold("q", A)
    reads.drop_server(A)
    reads.finish("q")
    assert reads.get("q") is None
    assert reads.servers_owed_closes() == set()


def test_a_new_hold_replaces_a_finished_one() -> None:
    reads = HeldReads()
    reads.hold("q", A)
    reads.finish("q")
    reads.hold("q", B)
    assert reads.get("q") == HeldRead(B, finished=False)
    assert reads.servers_owed_closes() == set()
