"""When the scheduler commits: reactor turns, lazy removals, backoff, shutdown, threads.

The storage is a plain object (:mod:`commit_rig`) and time a Clock: ``clock.advance(0)``
ends a reactor turn. Under ``sync = "always"`` the writer thread's results come back
through ``callFromThread``, waited for with an event and a deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from commit_rig import BIG, WAIT_S, Rig, rigs

from kestrelpy.errors import PutsRefusedError

POLICIES = ["never", "always"]


@pytest.fixture
def make() -> Iterator[Callable[..., Rig]]:
    with rigs() as build:
        yield build


def end_turn(rig: Rig) -> None:
    """End the reactor turn; under "always", until the writer has answered once."""
    rig.clock.advance(0)
    if rig.scheduler.lanes.in_flight is not None:
        rig.clock.wait_for_thread_call(WAIT_S)
        rig.clock.run_thread_calls()


def test_nothing_staged_nothing_scheduled(make: Callable[..., Rig]) -> None:
    rig = make()
    assert rig.scheduler.take_write_tickets() == ()
    assert rig.clock.getDelayedCalls() == []


def test_inline_commits_take_at_most_two_batches_per_reactor_turn(
    make: Callable[..., Rig],
) -> None:
    rig = make("never")
    rig.put(0)
    large = [rig.put(n, BIG) for n in (1, 2, 3)]
    rig.clock.callLater(0, rig.log.append, "other reactor work")
    rig.clock.advance(0)
    assert rig.log == [
        "commit 0",
        f"commit {large[0]}",
        "other reactor work",  # the rest waits for the next turn
        f"commit {large[1]}",
        f"commit {large[2]}",
    ]


def test_a_removal_alone_commits_shortly_not_at_the_end_of_the_turn(
    make: Callable[..., Rig],
) -> None:
    rig = make("never")
    rig.remove(0)
    rig.clock.advance(0)
    assert rig.log == []
    rig.clock.advance(0.02)
    assert rig.log == ["commit 0"]


def test_a_removal_rides_along_with_the_next_write(make: Callable[..., Rig]) -> None:
    rig = make("never")
    rig.remove(0)
    rig.put(1)
    rig.clock.advance(0)
    assert rig.log == ["commit 0"]
    (batch,) = rig.storage.committed
    assert len(batch.deletes) == len(batch.puts) == 1
    rig.clock.advance(1)  # the lazy timer finds nothing left to do
    assert rig.log == ["commit 0"]


@pytest.mark.parametrize("sync", POLICIES)
def test_a_failure_pauses_commits_then_retries_with_the_removals(
    make: Callable[..., Rig], sync: str
) -> None:
    rig = make(sync)
    rig.put(0)
    rig.remove(50)
    rig.listen("failed")
    rig.storage.fail(times=2)
    end_turn(rig)
    assert rig.log == ["failed 0", "heard failed False"]
    rig.put(1)
    rig.listen("next")
    rig.clock.advance(0.49)
    assert rig.scheduler.lanes.in_flight is None  # paused: nothing handed to the writer
    assert rig.log[2:] == []
    rig.clock.advance(0.01)
    end_turn(rig)
    assert rig.log[2:] == ["failed 1", "heard next False"]  # paused again, not spinning
    rig.put(2)
    rig.listen("last")
    rig.clock.advance(0.5)
    end_turn(rig)
    assert rig.log[4:] == ["commit 2", "heard last True"]
    (retried,) = rig.storage.committed
    assert len(retried.deletes) == 1  # answered before the failures: still removed
    assert [item_id for _qid, item_id, _size in rig.lost] == [0, 1]
    assert rig.scheduler.commits == 1


def test_commit_now_commits_a_batch_staged_behind_one_in_flight(
    make: Callable[..., Rig],
) -> None:
    rig = make("always")
    rig.put(0)
    rig.listen("A")
    rig.clock.advance(0)  # batch A goes to the writer
    rig.put(1)
    rig.listen("B")
    rig.scheduler.commit_now()
    assert rig.log == ["commit 0", "heard A True", "commit 1", "heard B True"]
    assert rig.scheduler.commits == 2
    assert not rig.scheduler.lanes.has_staged


def test_commit_now_stops_at_a_failure(make: Callable[..., Rig]) -> None:
    rig = make("never")
    rig.put(0)
    large = rig.put(1, BIG)
    rig.listen("large", large)
    rig.storage.fail()
    rig.scheduler.commit_now()
    assert rig.log == ["failed 0", "heard large False"]
    assert not rig.scheduler.lanes.has_work()


@pytest.mark.parametrize("sync", [*POLICIES, "periodic"])
def test_close_commits_what_is_staged_and_stops_the_threads(
    make: Callable[..., Rig], sync: str
) -> None:
    rig = make(sync)
    rig.put(0)
    rig.put(1, BIG)
    rig.scheduler.close()
    assert rig.log == ["commit 0", "commit 1"]
    names = {thread.name for thread in threading.enumerate()}
    assert not names & {"kestrelpy-writer", "kestrelpy-fsync"}
    rig.clock.advance(0)  # the turn scheduled before close finds nothing to do
    assert rig.log == ["commit 0", "commit 1"]
    rig.put(2)
    assert rig.clock.getDelayedCalls() == []  # nothing is scheduled after close


def test_the_writer_thread_reports_on_the_reactor_thread_only(make: Callable[..., Rig]) -> None:
    rig = make("always")
    threads: list[threading.Thread] = []
    rig.put(0)
    rig.scheduler.when_committed(lambda ok: threads.append(threading.current_thread()))
    rig.clock.advance(0)
    rig.clock.wait_for_thread_call(WAIT_S)
    assert threads == []  # done on the writer, not yet delivered
    assert rig.log == ["commit 0"]
    rig.clock.run_thread_calls()
    assert threads == [threading.current_thread()]


def test_the_writer_takes_the_next_batch_once_the_last_is_delivered(
    make: Callable[..., Rig],
) -> None:
    rig = make("always")
    rig.storage.hold = threading.Event()
    rig.put(0)
    rig.clock.advance(0)
    assert rig.storage.holding.wait(WAIT_S)
    rig.put(1)
    rig.clock.advance(0)  # the writer is busy: batch 1 waits, staged
    assert rig.scheduler.lanes.in_flight is not None
    assert rig.scheduler.lanes.pending.puts
    rig.storage.hold.set()
    rig.settle()
    assert rig.log == ["commit 0", "commit 1"]


def test_periodic_commits_inline_and_syncs_from_its_own_thread(
    make: Callable[..., Rig],
) -> None:
    rig = make("periodic", sync_interval_ms=1)
    rig.put(0)
    rig.clock.advance(0)
    assert rig.log == ["commit 0"]
    assert rig.storage.synced.wait(WAIT_S)


@pytest.mark.parametrize("sync", POLICIES)
def test_removals_the_storage_committed_alone_are_not_carried_over(
    make: Callable[..., Rig], sync: str
) -> None:
    """Issue 18, finding 5: ``PutsRefusedError`` means the removals are in the store; the
    next commit must not take them along (on a full disk it would fail with them)."""
    rig = make(sync)
    rig.put(0)
    rig.remove(50)
    rig.listen("refused")
    rig.storage.failures.append(PutsRefusedError("no room for puts"))
    end_turn(rig)
    assert rig.log == ["failed 0", "heard refused False"]
    rig.put(1)
    rig.listen("next")
    rig.clock.advance(0.5)
    end_turn(rig)
    assert rig.log[2:] == ["commit 1", "heard next True"]
    (next_batch,) = rig.storage.committed
    assert next_batch.deletes == {}
    assert [item_id for _qid, item_id, _size in rig.lost] == [0]
