"""CommitGatedOutput with plain objects: a recording commit gate and a list for the wire.

The contract under test (kestrelpy.commits.CommitGate): after each write the output asks
for its tickets, listens for each, and sends nothing that waits until every commit it
waits for has ended; a failed commit turns its writes' markers into COMMIT_FAILED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kestrelpy.output import CommitGatedOutput
from kestrelpy.replies import COMMIT_FAILED, DELETED_DURABLE, STORED_DURABLE

STORED = b"STORED\r\n"


class RecordingGate:
    """A commit gate whose commits end when the test says so."""

    def __init__(self) -> None:
        self.next_tickets: tuple[int, ...] = (1,)
        self.listeners: dict[int, list[Callable[[bool], None]]] = {}
        self.waited_also: list[int] = []

    def take_write_tickets(self) -> tuple[int, ...]:
        return self.next_tickets

    def wait_also_for(self, tickets: Iterable[int]) -> None:
        self.waited_also.extend(tickets)

    def when_committed(self, listener: Callable[[bool], None], ticket: int | None = None) -> None:
        assert ticket is not None
        self.listeners.setdefault(ticket, []).append(listener)

    def commit(self, ticket: int, ok: bool = True) -> None:
        for listener in self.listeners.pop(ticket):
            listener(ok)


class Wire:
    """An OutputSink that records what was transmitted and how often all was sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.drained = 0

    def transmit(self, data: bytes) -> None:
        self.sent.append(data)

    def output_drained(self) -> None:
        self.drained += 1


def make() -> tuple[CommitGatedOutput, RecordingGate, Wire]:
    gate, wire = RecordingGate(), Wire()
    return CommitGatedOutput(gate, wire), gate, wire


def test_plain_replies_go_out_at_once_in_one_write() -> None:
    output, _gate, wire = make()
    output.parts.extend([b"VALUE q 0 1\r\nx\r\nEND\r\n", b"END\r\n"])
    output.settle()
    assert wire.sent == [b"VALUE q 0 1\r\nx\r\nEND\r\nEND\r\n"]
    assert wire.drained == 1
    assert output.parts == []


def test_a_write_and_what_follows_wait_for_its_commit() -> None:
    output, gate, wire = make()
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.parts.append(b"END\r\n")
    output.settle()
    assert wire.sent == [] and output.held and wire.drained == 0
    gate.commit(1)
    assert wire.sent == [STORED + b"END\r\n"]
    assert not output.held and wire.drained == 1


def test_a_failed_commit_answers_its_writes_with_server_error() -> None:
    output, gate, wire = make()
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.parts.append(DELETED_DURABLE)
    output.after_write()  # the same ticket: merged into one hold
    output.settle()
    gate.commit(1, ok=False)
    assert wire.sent == [COMMIT_FAILED + COMMIT_FAILED]


def test_each_write_gets_its_own_commits_verdict() -> None:
    output, gate, wire = make()
    output.parts.append(STORED_DURABLE)  # rides the small lane only
    output.after_write()
    gate.next_tickets = (1, 2)  # the next one also rides a large batch
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.settle()
    gate.commit(2, ok=False)
    assert wire.sent == []  # the first hold still waits for ticket 1
    gate.commit(1)
    assert wire.sent == [STORED, COMMIT_FAILED]


def test_commits_ending_out_of_order_keep_reply_order() -> None:
    output, gate, wire = make()
    gate.next_tickets = (1, 2)
    output.parts.append(b"A")
    output.parts.append(STORED_DURABLE)
    output.after_write()
    gate.next_tickets = (3,)
    output.parts.append(b"B")
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.settle()
    gate.commit(3)  # the later hold is ready first: it must not overtake
    assert wire.sent == []
    gate.commit(2)
    assert wire.sent == []
    gate.commit(1)
    assert wire.sent == [b"A" + STORED, b"B" + STORED]


def test_no_tickets_means_nothing_to_wait_for() -> None:
    output, gate, wire = make()
    gate.next_tickets = ()  # e.g. the item went straight to a blocked reader
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.settle()
    assert wire.sent == [STORED]


def test_a_reader_behind_held_output_makes_the_writer_wait_too() -> None:
    output, gate, wire = make()
    gate.next_tickets = (4, 5)
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.add_from_reader([b"VALUE q 0 1\r\nx\r\nEND\r\n"])
    assert gate.waited_also == [4, 5]
    assert wire.sent == []  # held behind the write's commit
    idle, idle_gate, idle_wire = make()
    idle.add_from_reader([b"END\r\n"])
    assert idle_gate.waited_also == []  # nothing held: nobody needs to wait
    assert idle_wire.sent == [b"END\r\n"] and idle_wire.drained == 1  # and it goes at once


def test_send_ready_sends_only_when_nothing_is_held() -> None:
    output, gate, wire = make()
    output.parts.append(b"A")
    output.send_ready()
    assert wire.sent == [b"A"] and wire.drained == 0
    output.parts.append(STORED_DURABLE)
    output.after_write()
    output.parts.append(b"B")
    output.send_ready()
    assert wire.sent == [b"A"]
    gate.commit(1)
    assert wire.sent == [b"A", STORED + b"B"]
