"""The writer and the periodic fsync threads alone, synchronised with events, never sleeps."""

from __future__ import annotations

import threading

from commit_rig import WAIT_S

from kestrelpy.commits.batch import Batch
from kestrelpy.commits.threads import PeriodicSyncer, Writer
from kestrelpy.errors import StoreError


def test_the_writer_commits_on_its_own_thread_and_notifies_after_each() -> None:
    committed_on: list[threading.Thread] = []
    notified = threading.Semaphore(0)
    failure = StoreError("refused")

    def commit(batch: Batch) -> StoreError | None:
        committed_on.append(threading.current_thread())
        return failure if batch.ticket == 2 else None

    writer = Writer(commit, notified.release)
    try:
        for ticket in (1, 2):
            writer.submit(Batch(ticket))
            assert notified.acquire(timeout=WAIT_S)
        writer.drain(WAIT_S)
        results = [(batch.ticket, error) for batch, error in writer.results()]
        assert results == [(1, None), (2, failure)]
        assert list(writer.results()) == []  # each result is handed out once
        assert threading.current_thread() not in committed_on
    finally:
        writer.stop()
    assert "kestrelpy-writer" not in {thread.name for thread in threading.enumerate()}


def test_drain_waits_for_the_batch_in_flight() -> None:
    release = threading.Event()
    writer = Writer(
        lambda batch: None if release.wait(WAIT_S) else StoreError("stuck"), lambda: None
    )
    try:
        writer.submit(Batch(1))
        release.set()
        writer.drain(WAIT_S)
        assert [error for _batch, error in writer.results()] == [None]
    finally:
        writer.stop()


def test_the_periodic_syncer_syncs_until_stopped() -> None:
    synced = threading.Semaphore(0)
    syncer = PeriodicSyncer(synced.release, interval_s=0.001)
    try:
        assert synced.acquire(timeout=WAIT_S)
        assert synced.acquire(timeout=WAIT_S)  # again, every interval
    finally:
        syncer.stop()
    assert "kestrelpy-fsync" not in {thread.name for thread in threading.enumerate()}
