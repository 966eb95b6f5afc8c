"""Hypothesis over the whole request grammar, against one live ``kestrelpy serve``.

Each example is a batch of requests, valid and malformed (keys with options, data blocks of
the wrong length, noreply, unknown commands, admin commands, random bytes), pipelined on one
connection and sent in random fragments; then the client half-closes and reads to EOF.
After every example: the server still runs, answers ``version`` on a fresh connection,
logged no traceback, and a control queue still holds exactly the items set before, in order.

The server runs with ``admin_commands = false`` so that ``shutdown``, ``flush_all``,
``status <new>`` and ``reload`` are fuzzed too (refused, never obeyed); no generated request
names the control queue, so nothing the grammar allows may touch it.

Profiles: ``fuzz-short`` (a few dozen examples) in ``make test``; ``fuzz-long`` when
``KESTRELPY_FUZZ_EXAMPLES`` is set (``make fuzz``). No deadline: a loaded CI box is slow, and
a slow reply is not what this looks for.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest
from fault_harness import (
    HOST,
    IO_TIMEOUT_S,
    Conn,
    Server,
    env_int,
    make_server,
    start,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

CONTROL = b"ctl_fz"
CONTROL_ITEMS = [b"control-0", b"control-1 " * 20, b"control-2\r\nEND\r\n"]
CONFIG = '[server]\nsync = "never"\nadmin_commands = false\n'

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("fuzz-short", max_examples=100, **_COMMON)  # type: ignore[arg-type]
settings.register_profile(
    "fuzz-long",
    max_examples=env_int("KESTRELPY_FUZZ_EXAMPLES", 2000),
    **_COMMON,  # type: ignore[arg-type]
)
PROFILE = "fuzz-long" if env_int("KESTRELPY_FUZZ_EXAMPLES", 0) else "fuzz-short"

# -- the grammar -------------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from([b"fz", b"fz2", b"fz+tap", b"fz_alias", b"a.b", b"x" * 200, b""]),
    st.binary(min_size=1, max_size=12).filter(lambda b: not any(c in b for c in b" \r\n")),
)
options = st.sampled_from(
    [b"open", b"close", b"abort", b"peek", b"t=0", b"t=20", b"t=-1", b"t=x", b"t=", b"", b"zz"]
)
keys = st.builds(lambda name, opts: b"/".join([name, *opts]), names, st.lists(options, max_size=4))
numbers = st.one_of(
    st.integers(-5, 300).map(lambda n: b"%d" % n),
    st.sampled_from([b"2147483648", b"-2147483649", b"99999999999999999999", b"0x10", b"", b"a"]),
)


@st.composite
def set_like(draw: st.DrawFn) -> bytes:
    """set (or a block command the server must skip) with a block that may not fit."""
    verb = draw(st.sampled_from([b"set", b"set", b"set", b"add", b"replace", b"append", b"cas"]))
    data = draw(st.binary(max_size=300))
    declared = draw(
        st.one_of(
            st.just(b"%d" % len(data)),
            st.integers(0, 310).map(lambda n: b"%d" % n),
            st.sampled_from([b"-1", b"16777217", b"x", b""]),
        )
    )
    extra = draw(st.sampled_from([b"", b" noreply", b" noreply junk", b" 0"]))
    key = draw(keys)
    head = b"%s %s %s %s %s%s\r\n" % (verb, key, draw(numbers), draw(numbers), declared, extra)
    return head + data + draw(st.sampled_from([b"\r\n", b"\r\n", b"", b"\n", b"XX"]))


simple = st.one_of(
    st.builds(lambda v, k: b"%s %s\r\n" % (v, k), st.sampled_from([b"get", b"gets"]), keys),
    st.builds(lambda a, b: b"get %s %s\r\n" % (a, b), keys, keys),
    st.builds(
        lambda v, k: b"%s %s\r\n" % (v, k),
        st.sampled_from([b"delete", b"flush", b"flush_expired", b"dump_stats", b"dump_config"]),
        names,
    ),
    st.builds(
        lambda k, s, m: b"monitor %s %s %s\r\n" % (k, s, m),
        names,
        st.sampled_from([b"0", b"1", b"x", b""]),
        numbers,
    ),
    st.builds(lambda k, n: b"confirm %s %s\r\n" % (k, n), names, numbers),
    st.sampled_from(
        [
            b"version\r\n",
            b"stats\r\n",
            b"stats detail\r\n",
            b"dump_stats\r\n",
            b"dump_config\r\n",
            b"flush_all_expired\r\n",
            b"status\r\n",
            b"status quiescent\r\n",
            b"status readonly\r\n",
            b"status bogus\r\n",
            b"flush_all\r\n",
            b"flush_all 0\r\n",
            b"reload\r\n",
            b"shutdown\r\n",
            b"quit\r\n",
            b"\r\n",
            b"incr fz 1\r\n",
            b"touch fz 1\r\n",
            b"VERSION\r\n",
            b"get\r\n",
            b"set\r\n",
            b"set fz\r\n",
            b"get /open\r\n",
            b"\n",
            b"\r",
        ]
    ),
    st.builds(
        lambda words: b" ".join(words) + b"\r\n",
        st.lists(st.binary(max_size=10), min_size=1, max_size=6),
    ),
    st.binary(max_size=200),
    st.just(b"get " + b"k" * 3000 + b"\r\n"),  # longer than any command line may be
)
requests = st.lists(st.one_of(set_like(), simple), min_size=1, max_size=8)

# -- the server ----------------------------------------------------------------------------------


class Live:
    """The one server, and what the checks between examples need."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.examples = 0
        self.bytes_sent = 0
        self.log_seen = 0

    def control_reset(self) -> None:
        with Conn(self.server) as conn:
            for data in CONTROL_ITEMS:
                assert conn.set(CONTROL, data) == b"STORED"

    def check(self, sent: bytes) -> None:
        """The server is up and sane after ``sent``; the control queue is intact."""
        why = f"after sending {sent!r}"
        assert self.server.running, f"server died {why}\n{self.server.log()}"
        with Conn(self.server) as conn:
            assert conn.line(b"version\r\n").startswith(b"VERSION "), why
            got = [conn.get(CONTROL) for _ in CONTROL_ITEMS]
            assert got == [[data] for data in CONTROL_ITEMS], f"control queue {got!r} {why}"
            assert conn.get(CONTROL) == [], f"control queue has more {why}"
        log = self.server.stderr_text()
        new, self.log_seen = log[self.log_seen :], len(log)
        assert "Traceback" not in new and "Unhandled" not in new, f"{why}\n{new[-4000:]}"
        self.control_reset()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = start(make_server(tmp_path_factory.mktemp("fuzz") / "data", CONFIG))
    state = Live(server)
    state.control_reset()
    yield state
    print(f"\nfuzz: {state.examples} examples, {state.bytes_sent} bytes sent, server survived")
    code = server.stop()
    assert code == 0, f"exit {code} after SIGTERM\n{server.log()}"


def send_and_read(server: Server, pieces: list[bytes]) -> None:
    """Send ``pieces`` one by one, half-close, read to EOF: the server must end the
    connection once our side is done (it owes no reply to a partial request)."""
    assert server.port is not None
    with socket.create_connection((HOST, server.port), timeout=IO_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN
            return  # it closed on us (quit, a fatal CLIENT_ERROR): allowed
        deadline = time.monotonic() + IO_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                if not sock.recv(1 << 16):
                    return
            except ConnectionResetError:
                return
            except TimeoutError:
                break
        raise AssertionError(f"connection still open {IO_TIMEOUT_S}s after EOF\n{server.log()}")


@settings(settings.get_profile(PROFILE))
@given(batch=requests, cuts=st.lists(st.integers(0, 4000), max_size=4))
def test_server_survives_any_request_batch(live: Live, batch: list[bytes], cuts: list[int]) -> None:
    sent = b"".join(batch)
    assume(CONTROL not in sent)
    bounds = sorted({c % (len(sent) + 1) for c in cuts} | {0, len(sent)})
    pieces = [sent[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    live.examples += 1
    live.bytes_sent += len(sent)
    send_and_read(live.server, pieces)
    live.check(sent)
