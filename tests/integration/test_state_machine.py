"""A hypothesis state machine against ONE real server, compared with a plain-Python queue.

Issue 5 ("Tests it must have"): set/get/open/close/abort/peek/flush/restart are driven over
a raw socket, and every reply must be exactly the bytes the model predicts (docs/protocol.md
§3-§5, §12): FIFO order; ``/open`` removes tentatively and holds the item on this
connection; ``/close`` confirms it, ``/abort`` puts it back at the head; ``/close/open``
confirms, then opens the next; ``/peek`` does not remove; ``flush`` drops waiting items, not
open ones; a plain get or a second open while holding is ``ERROR`` + close and the held item
goes back to the head, as it does on a disconnect and on a restart (SIGTERM, then start on
the same data dir). ``stats`` must agree with the model after every step.

Each example uses a fresh queue name, so examples do not see each other's items.
"""

from __future__ import annotations

import uuid
from collections import deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from .conftest import Conn, ServerFactory, ServerProcess, wait_until

pytestmark = pytest.mark.timeout(120)

MAX_RESTARTS_PER_EXAMPLE = 2
BODIES = st.binary(min_size=0, max_size=12)


def value(key: bytes, body: bytes) -> bytes:
    """The reply to a get that finds ``body`` (flags 0; the VALUE line echoes the key)."""
    return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(body), body)


class QueueMachine(RuleBasedStateMachine):
    server: ServerProcess  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        self.name = "sm" + uuid.uuid4().hex[:12]
        self.q = self.name.encode()
        self.waiting: deque[bytes] = deque()  # the model: items in the queue, head first
        self.held: bytes | None = None  # the item open on this connection (max 1)
        self.restarts = 0
        self.conn: Conn = self.server.connect()

    # -- helpers ------------------------------------------------------------------------

    def get(self, suffix: bytes, expected: bytes) -> None:
        key = self.q + suffix
        self.conn.send(b"get " + key + b"\r\n")
        self.conn.expect(expected)

    def expect_head(self, suffix: bytes) -> bytes | None:
        """Expected reply for a read that returns the head; the head or None."""
        if self.waiting:
            head = self.waiting[0]
            self.get(suffix, value(self.q + suffix, head))
            return head
        self.get(suffix, b"END\r\n")
        return None

    def return_held(self) -> None:
        if self.held is not None:
            self.waiting.appendleft(self.held)
            self.held = None

    def reconnect_after_close(self) -> None:
        """The old connection is gone; wait until the server has returned its open item."""
        self.conn.close()
        self.return_held()
        self.conn = self.server.connect()
        key = f"queue_{self.name}_open_transactions"
        wait_until(
            lambda: self.conn.stats().get(key, "0") == "0",
            10,
            "the server to return the disconnected connection's open item",
            self.server,
        )

    # -- rules --------------------------------------------------------------------------

    @rule(body=BODIES)
    def set(self, body: bytes) -> None:
        self.conn.send(b"set %s 0 0 %d\r\n%s\r\n" % (self.q, len(body), body))
        self.conn.expect(b"STORED\r\n")
        self.waiting.append(body)

    @rule(bodies=st.lists(BODIES, min_size=2, max_size=4))
    def set_pipelined(self, bodies: list[bytes]) -> None:
        self.conn.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (self.q, len(b), b) for b in bodies))
        self.conn.expect(b"STORED\r\n" * len(bodies))
        self.waiting.extend(bodies)

    @rule()
    def get_plain(self) -> None:
        if self.held is not None:
            self.refused_while_holding(b"")
        elif self.expect_head(b"") is not None:
            self.waiting.popleft()

    @rule()
    def get_open(self) -> None:
        if self.held is not None:  # over max_open_transactions = 1
            self.refused_while_holding(b"/open")
        elif self.expect_head(b"/open") is not None:
            self.held = self.waiting.popleft()

    @rule(order=st.sampled_from([b"/close/open", b"/open/close"]))
    def get_close_open(self, order: bytes) -> None:
        self.held = None  # confirmed first
        if self.expect_head(order) is not None:
            self.held = self.waiting.popleft()

    @rule()
    def get_close(self) -> None:
        self.get(b"/close", b"END\r\n")
        self.held = None

    @rule()
    def get_abort(self) -> None:
        self.get(b"/abort", b"END\r\n")
        self.return_held()

    @rule()
    def peek(self) -> None:
        self.expect_head(b"/peek")

    @rule()
    def flush(self) -> None:
        self.conn.send(b"flush " + self.q + b"\r\n")
        self.conn.expect(b"END\r\n")
        self.waiting.clear()  # the open item is not waiting: it survives a flush

    @rule(restart=st.booleans())
    def lose_connection(self, restart: bool) -> None:
        """Disconnect, or restart the server (SIGTERM, then start on the same data dir)."""
        if restart and self.restarts < MAX_RESTARTS_PER_EXAMPLE:
            self.restarts += 1
            self.conn.close()
            self.server.stop()  # asserts exit code 0
            self.server.start()
            self.return_held()
            self.conn = self.server.connect()
        else:
            self.reconnect_after_close()

    def refused_while_holding(self, suffix: bytes) -> None:
        """A plain get, or a second open, while holding: ERROR, then close
        (docs/protocol.md §4)."""
        self.get(suffix, b"ERROR\r\n")
        self.conn.expect_closed()
        self.reconnect_after_close()

    # -- checks -------------------------------------------------------------------------

    @invariant()
    def stats_agree(self) -> None:
        stats = self.conn.stats()
        prefix = f"queue_{self.name}_"
        items = stats.get(prefix + "items", "0")
        size = stats.get(prefix + "bytes", "0")
        held = stats.get(prefix + "open_transactions", "0")
        assert (items, size, held) == (
            str(len(self.waiting)),
            str(sum(map(len, self.waiting))),
            "0" if self.held is None else "1",
        ), f"stats disagree with the model: waiting={list(self.waiting)} held={self.held!r}"

    def teardown(self) -> None:
        self.conn.close()  # after a failed step it may hold unread bytes: use a new one
        if self.server.running:
            with self.server.connect() as conn:
                assert conn.request(b"delete " + self.q) == b"DELETED\r\n"


@pytest.fixture(scope="module")
def machine_server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("state_machine"))
    yield factory("")
    factory.close()


def test_server_matches_a_plain_python_queue(machine_server):
    QueueMachine.server = machine_server
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
