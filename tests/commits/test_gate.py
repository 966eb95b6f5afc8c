"""The CommitGate contract, as the scheduler keeps it, with inline commits and the writer thread.

Every test runs under ``sync = "never"`` (commits inline at the end of a reactor turn) and
``"always"`` (commits on the writer thread): a connection must not be able to tell them
apart but by timing. The storage is a plain object (:mod:`commit_rig`), time a Clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from commit_rig import BIG, QID, SMALL, Rig, rigs

POLICIES = ["never", "always"]


@pytest.fixture(params=POLICIES)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    with rigs() as make:
        yield make(request.param)


# ------------------------------------------------------------------ take_write_tickets


def test_no_tickets_when_nothing_is_staged_or_committing(rig: Rig) -> None:
    assert rig.scheduler.take_write_tickets() == ()
    rig.put(0)
    rig.settle()
    assert rig.scheduler.take_write_tickets() == ()


def test_a_large_put_gets_a_ticket_of_its_own(rig: Rig) -> None:
    scheduler = rig.scheduler
    rig.put(0)
    small_only = scheduler.take_write_tickets()
    rig.put(1, BIG)
    with_large = scheduler.take_write_tickets()
    assert len(small_only) == 1
    assert len(with_large) == 2 and with_large[0] == small_only[0]
    assert with_large[1] != with_large[0]
    assert scheduler.take_write_tickets() == small_only  # taking resets what was written


def test_a_removal_alone_still_gives_a_ticket(rig: Rig) -> None:
    """A write that stored nothing (handed to a reader) still waits for removals before it."""
    ticket = rig.remove(0)
    assert rig.scheduler.take_write_tickets() == (ticket,)


def test_wait_also_for_adds_a_held_readers_tickets_while_they_are_live(rig: Rig) -> None:
    scheduler = rig.scheduler
    rig.put(0)
    large = rig.put(1, BIG)
    reader_tickets = scheduler.take_write_tickets()
    assert reader_tickets[1] == large
    for ticket in reader_tickets:
        rig.listen("reader", ticket)
    # A writer's item goes straight to that reader: its STORED waits for the reader's
    # commits too (the small one is the writer's own, named once).
    scheduler.wait_also_for(reader_tickets)
    assert scheduler.take_write_tickets() == reader_tickets
    assert scheduler.take_write_tickets() == reader_tickets[:1]  # once only
    rig.settle()
    scheduler.wait_also_for(reader_tickets)  # ended since: nothing more to wait for
    rig.put(2)
    (ticket,) = scheduler.take_write_tickets()
    assert ticket not in reader_tickets


# ---------------------------------------------------------------------- when_committed


def test_listeners_of_successive_batches_run_in_commit_order(rig: Rig) -> None:
    heard: list[str] = []
    scheduler = rig.scheduler
    rig.put(0)
    scheduler.when_committed(lambda ok: heard.append(f"first {ok}"))
    rig.settle()
    rig.put(1)
    scheduler.when_committed(lambda ok: heard.append(f"second {ok}"))
    scheduler.when_committed(lambda ok: heard.append(f"third {ok}"))
    assert heard == ["first True"]
    rig.settle()
    assert heard == ["first True", "second True", "third True"]
    assert scheduler.commits == 2


def test_listener_with_nothing_staged_still_hears(rig: Rig) -> None:
    heard: list[bool] = []
    rig.scheduler.when_committed(heard.append)
    rig.settle()
    assert heard == [True]


def test_a_listener_is_never_called_from_inside_when_committed(rig: Rig) -> None:
    heard: list[bool] = []
    rig.settle()
    rig.scheduler.when_committed(heard.append)  # nothing staged, nothing committing
    assert heard == []
    rig.settle()
    assert heard == [True]


def test_each_listener_is_called_once_in_order_per_lane(rig: Rig) -> None:
    scheduler = rig.scheduler
    small: list[int] = []
    large: list[int] = []
    for round_ in range(5):
        for n in range(3):
            rig.put(10 * round_ + n)
            scheduler.when_committed(lambda ok, n=10 * round_ + n: small.append(n))
        big = rig.put(100 + round_, BIG)
        scheduler.when_committed(lambda ok, n=round_: large.append(n), big)
        if round_ % 2:
            rig.settle()
    rig.settle()
    assert small == [10 * r + n for r in range(5) for n in range(3)]
    assert large == list(range(5))


def test_a_listener_hears_only_after_the_commit_of_its_batch_returned(rig: Rig) -> None:
    scheduler = rig.scheduler
    for item_id in range(6):
        ticket = rig.put(item_id, BIG if item_id % 3 == 0 else SMALL)
        rig.listen(ticket, ticket)
        if item_id % 2:
            rig.settle()
    rig.settle()
    heard = [line.split()[1] for line in rig.log if line.startswith("heard")]
    assert len(heard) == 6
    for ticket in heard:
        assert rig.log.index(f"commit {ticket}") < rig.log.index(f"heard {ticket} True")
    assert scheduler.commits == len(rig.storage.committed)


def test_listeners_wait_while_the_writer_thread_commits() -> None:
    with rigs() as make:
        rig = make("always")
        rig.storage.hold = threading.Event()
        rig.put(0)
        rig.listen("a")
        rig.clock.advance(0)  # the batch goes to the writer, which holds it
        assert rig.storage.holding.wait(10.0)
        rig.put(1)  # staged meanwhile, into the next batch
        rig.listen("b")
        rig.clock.advance(0)
        assert rig.clock.run_thread_calls() == 0
        assert rig.log == []
        rig.storage.hold.set()
        rig.settle()
        assert rig.log == ["commit 0", "heard a True", "commit 1", "heard b True"]


def test_a_listener_may_wait_for_the_batch_committing_now() -> None:
    with rigs() as make:
        rig = make("always")
        rig.storage.hold = threading.Event()
        rig.put(0)
        (ticket,) = rig.scheduler.take_write_tickets()
        rig.clock.advance(0)
        assert rig.storage.holding.wait(10.0)
        assert rig.scheduler.take_write_tickets() == (ticket + 1,)  # the next small batch
        rig.listen("in flight", ticket)
        rig.storage.hold.set()
        rig.settle()
        assert rig.log == ["commit 0", "heard in flight True"]


# --------------------------------------------------------------- protocol §12, failure


def test_a_large_batch_commits_after_removals_answered_before_it(rig: Rig) -> None:
    scheduler = rig.scheduler
    rig.put(0)
    rig.settle()  # the last batch was a small one: the large lane's turn is next
    removal = rig.remove(0)
    large = rig.put(1, BIG)
    assert scheduler.take_write_tickets() == (removal, large)
    rig.listen("large", large)
    rig.listen("removal", removal)
    rig.settle()
    assert rig.log[-4:] == [
        f"commit {removal}",
        "heard removal True",
        f"commit {large}",
        "heard large True",
    ]


def test_a_failed_small_commit_fails_the_large_batches_behind_it(rig: Rig) -> None:
    """Replies to one client's batch may wait for both lanes: all true, or all refused."""
    rig.put(0)
    rig.remove(90)
    large = rig.put(1, BIG)
    small, _large = rig.scheduler.take_write_tickets()
    rig.listen("small", small)
    rig.listen("large", large)
    rig.storage.fail()
    rig.settle()
    assert rig.log[:3] == [f"failed {small}", "heard small False", "heard large False"]
    assert rig.lost == [(QID, 0, SMALL), (QID, 1, BIG)]  # told apart from what was stored
    retried = rig.storage.committed[-1]  # after the pause, the removal was committed
    assert list(retried.deletes.values()) == [64] and not retried.puts
    assert rig.scheduler.commits == 1
