"""Malformed and hostile input over the wire (docs/protocol.md §1, §2, §4, §7, §12).

kestrelpy rules checked here: unknown commands get ``ERROR`` and keep the connection; bad
input gets a ``CLIENT_ERROR <reason>`` line; where Kestrel dropped the connection silently,
kestrelpy sends the error line and then closes; a set over the hard cap gets
``SERVER_ERROR object too large`` and a close. After every case a new connection works and
items stored before are intact.
"""

from __future__ import annotations

import pytest

from .conftest import ServerFactory

pytestmark = pytest.mark.timeout(60)

LIMITED_CONFIG = """\
[server]
max_line_length = 256
item_size_max = 4096

[queues."small"]
max_item_size = 10
"""


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("limited"))
    yield factory(LIMITED_CONFIG)
    factory.close()


@pytest.fixture
def sentinel(shared_server, qname):
    """An item stored before the bad input; ``check()`` asserts it and the server are fine."""
    return Sentinel(shared_server, qname + "_sentinel")


class Sentinel:
    def __init__(self, server, queue):
        self.server = server
        self.queue = queue
        with server.connect() as conn:
            assert conn.set(queue, b"keep me", flags=3) == b"STORED\r\n"

    def check(self):
        assert self.server.running, f"server died\n{self.server.log()}"
        q = self.queue.encode()
        with self.server.connect() as conn:
            conn.send(b"get " + q + b"/peek\r\nversion\r\n")
            conn.expect(b"VALUE " + q + b"/peek 3 7\r\nkeep me\r\nEND\r\n")
            assert conn.read_line().startswith(b"VERSION ")


def is_client_error(line: bytes) -> bool:
    return line.endswith(b"\r\n") and line.split(b" ", 1)[0].rstrip() == b"CLIENT_ERROR"


def assert_kept(conn):
    assert conn.request(b"version").startswith(b"VERSION "), "connection unusable after error"


# -- unknown commands: ERROR, connection kept ------------------------------------------------


@pytest.mark.parametrize("line", [b"bogus", b"incr q 1", b"touch q 0", b"", b"GETX q"])
def test_unknown_command_is_error_and_connection_survives(shared_server, sentinel, line):
    with shared_server.connect() as conn:
        reply = conn.request(line)
        assert reply.split()[:1] == [b"ERROR"] and reply.endswith(b"\r\n"), reply
        assert_kept(conn)
    sentinel.check()


def test_unknown_storage_verb_consumes_its_data_block(shared_server, sentinel, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        # If "hello" were read as a command line, a second ERROR would come before VERSION.
        conn.send(b"add " + q + b" 0 0 5\r\nhello\r\nversion\r\n")
        assert conn.read_line().split()[:1] == [b"ERROR"]
        assert conn.read_line().startswith(b"VERSION ")
        assert conn.get(q) is None  # add stored nothing
    sentinel.check()


# -- malformed set: CLIENT_ERROR -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"set %s 0 0 abc\r\n",  # non-numeric byte count
        b"set %s 0 0 -1\r\n",  # negative byte count
        b"set %s 0 0\r\n",  # fewer than 5 tokens
        b"set %s 0 abc 1\r\nx\r\n",  # non-numeric exptime
    ],
    ids=["bad-n", "negative-n", "short", "bad-exptime"],
)
def test_malformed_set_is_client_error_then_close(shared_server, sentinel, qname, request_bytes):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(request_bytes % q)
        line = conn.read_line()
        assert is_client_error(line), line
        conn.expect_closed()
    sentinel.check()
    with shared_server.connect() as conn:
        assert conn.get(q + b"/peek") is None  # nothing was stored


@pytest.mark.parametrize("flags", [b"abc", b"4294967295", b"1.5"])
def test_bad_flags_is_client_error_and_connection_kept(shared_server, sentinel, qname, flags):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(b"set " + q + b" " + flags + b" 0 1\r\nx\r\n")
        line = conn.read_line()
        assert is_client_error(line), line
        assert_kept(conn)  # the data block was consumed with the request
        assert conn.get(q) is None
    sentinel.check()


def test_noreply_set_with_bad_flags_sends_nothing(shared_server, sentinel, qname):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(b"set " + q + b" abc 0 1 noreply\r\nx\r\nversion\r\n")
        assert conn.read_line().startswith(b"VERSION "), "noreply request got a reply"
    sentinel.check()


@pytest.mark.parametrize(
    "payload",
    [
        b"set %s 0 0 3\r\nabcdef\r\n",  # longer than declared: trailer is "de"
        b"set %s 0 0 5\r\nabc\r\nversion\r\n",  # shorter: the next line eats into it
    ],
    ids=["longer", "shorter"],
)
def test_data_block_length_mismatch_is_client_error_then_close(
    shared_server, sentinel, qname, payload
):
    q = qname.encode()
    with shared_server.connect() as conn:
        conn.send(payload % q)
        line = conn.read_line()
        assert is_client_error(line), line
        conn.expect_closed()
    sentinel.check()
    with shared_server.connect() as conn:
        assert conn.get(q) is None  # the bad item was not stored


# -- keys ------------------------------------------------------------------------------------


def test_key_of_250_bytes_works_251_is_client_error(shared_server, sentinel):
    name250 = b"k" * 250
    name251 = b"k" * 251
    with shared_server.connect() as conn:
        assert conn.set(name250, b"v") == b"STORED\r\n"
        assert conn.get(name250) == b"v"
        # Options count: name + "/t=10" must fit in 250 bytes as a whole.
        assert conn.get(b"k" * 245 + b"/t=10") is None
        line = conn.request(b"get " + b"k" * 246 + b"/t=10")
        assert is_client_error(line), line
        assert_kept(conn)
        line = conn.request(b"get " + name251)
        assert is_client_error(line), line
        assert_kept(conn)
        conn.send(b"set " + name251 + b" 0 0 1\r\nx\r\n")
        line = conn.read_line()
        assert is_client_error(line), line
        assert_kept(conn)
    sentinel.check()


@pytest.mark.parametrize("char", [b"\x00", b"\x01", b"\x1f", b"\x7f", b"\t"])
def test_key_with_control_char_is_client_error(shared_server, sentinel, char):
    key = b"bad" + char + b"name"
    with shared_server.connect() as conn:
        line = conn.request(b"get " + key)
        assert is_client_error(line), line
        assert_kept(conn)
        conn.send(b"set " + key + b" 0 0 1\r\nx\r\n")
        line = conn.read_line()
        assert is_client_error(line), line
        assert_kept(conn)
    sentinel.check()


# -- get options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [b"q/peek/open", b"q/close/peek", b"q/peek/abort", b"q/abort/open", b"q/close/abort", b"/open"],
)
def test_contradictory_get_options_are_client_error_then_close(shared_server, sentinel, key):
    with shared_server.connect() as conn:
        line = conn.request(b"get " + key)
        assert is_client_error(line), line
        conn.expect_closed()
    sentinel.check()


def test_empty_queue_name_from_double_space_is_client_error_then_close(shared_server, sentinel):
    with shared_server.connect() as conn:
        line = conn.request(b"get  " + sentinel.queue.encode())
        assert is_client_error(line), line
        conn.expect_closed()
    sentinel.check()


@pytest.mark.parametrize("line", [b"get", b"delete", b"flush"])
def test_missing_argument_is_client_error_and_connection_kept(shared_server, sentinel, line):
    with shared_server.connect() as conn:
        reply = conn.request(line)
        assert is_client_error(reply), reply
        assert_kept(conn)
    sentinel.check()


# -- open-transaction guards: ERROR + close, held item aborted ---------------------------------


@pytest.mark.parametrize("second", [b"/open", b""], ids=["second-open", "plain-get"])
def test_second_read_while_holding_is_error_close_and_aborts(
    shared_server, sentinel, qname, second
):
    q = qname.encode()
    with shared_server.connect() as other:
        assert other.set(q, b"a") == b"STORED\r\n"
        assert other.set(q, b"b") == b"STORED\r\n"
        with shared_server.connect() as conn:
            assert conn.get(q + b"/open") == b"a"
            reply = conn.request(b"get " + q + second)
            assert reply == b"ERROR\r\n", reply
            conn.expect_closed()
        # The held item went back to the head when the server closed the connection.
        assert other.get(q + b"/t=3000") == b"a"
        assert other.get(q) == b"b"
    sentinel.check()


# -- size limits -----------------------------------------------------------------------------


def test_line_over_default_max_length_is_error_then_close(shared_server, sentinel):
    with shared_server.connect() as conn:
        conn.send(b"x" * 3000)  # no newline, over the 2048 default
        line = conn.read_line()
        assert is_client_error(line), line
        conn.expect_closed()
    sentinel.check()


def test_set_over_default_item_size_max_is_server_error_then_close(shared_server, sentinel):
    with shared_server.connect() as conn:
        conn.send(b"set big 0 0 16777217\r\n")  # 16 MB + 1; the data block is never sent
        conn.expect(b"SERVER_ERROR object too large\r\n")
        conn.expect_closed()
    sentinel.check()


def test_configured_line_limit(limited_server):
    with limited_server.connect() as conn:
        assert conn.get(b"n" * 200) is None  # a 205-byte line is within 256
        conn.send(b"get " + b"n" * 300)  # no newline, over 256
        line = conn.read_line()
        assert is_client_error(line), line
        conn.expect_closed()
    with limited_server.connect() as conn:
        assert_kept(conn)


def test_configured_item_size_max(limited_server):
    with limited_server.connect() as conn:
        assert conn.set("cap", b"z" * 4096) == b"STORED\r\n"
        conn.send(b"set cap 0 0 4097\r\n")
        conn.expect(b"SERVER_ERROR object too large\r\n")
        conn.expect_closed()
    with limited_server.connect() as conn:
        assert conn.get("cap") == b"z" * 4096


def test_queue_max_item_size_is_not_stored_and_connection_kept(limited_server):
    with limited_server.connect() as conn:
        assert conn.set("small", b"x" * 11) == b"NOT_STORED\r\n"
        assert conn.set("small", b"y" * 10) == b"STORED\r\n"
        assert conn.get("small") == b"y" * 10
        assert conn.get("small") is None
