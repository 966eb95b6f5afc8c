"""kestrelpy.wire.memcache on plain byte strings: framing, request values, errors, replies.

docs/protocol.md §1 (framing), §4 (get options), §7 (error replies and close decisions) and
§12 (the two item-size limits) are the reference; every expected value below is written
out by hand rather than computed by the code under test.
"""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrelpy.errors import KestrelpyError
from kestrelpy.wire.memcache import (
    MAX_KEY_LENGTH,
    Command,
    GetOptions,
    Invalid,
    MemcacheParser,
    ProtocolError,
    Retrieve,
    Store,
    key_problem,
    parse_get_key,
    stat_lines,
    value_reply,
)

EOLS = (b"\r\n", b"\n")


def parse(data: bytes, **options: object) -> list[object]:
    return MemcacheParser(**options).feed(data)  # type: ignore[arg-type]


def parse_bytewise(data: bytes, **options: object) -> list[object]:
    parser = MemcacheParser(**options)  # type: ignore[arg-type]
    requests: list[object] = []
    for index in range(len(data)):
        requests.extend(parser.feed(data[index : index + 1]))
    return requests


def invalid(reply: bytes, *, close: bool, noreply: bool = False) -> Invalid:
    return Invalid(reply + b"\r\n", close, noreply)


# ---------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("eol", EOLS)
def test_get_and_gets(eol: bytes) -> None:
    assert parse(b"get work" + eol) == [Retrieve(b"work", False)]
    assert parse(b"gets work" + eol) == [Retrieve(b"work", True)]


def test_get_keeps_the_options_in_the_key() -> None:
    assert parse(b"get work/t=500/close/open\r\n") == [Retrieve(b"work/t=500/close/open", False)]


def test_get_reads_only_the_first_key() -> None:
    assert parse(b"get a b c\r\n") == [Retrieve(b"a", False)]


@pytest.mark.parametrize("verb", [b"GET", b"Get", b"gET"])
def test_get_verb_is_case_insensitive(verb: bytes) -> None:
    # docs/protocol.md §1: only the command word is lower-cased; commands are case-insensitive.
    assert parse(verb + b" q\r\n") == [Retrieve(b"q", False)]


@pytest.mark.parametrize("verb", [b"GETS", b"Gets"])
def test_gets_verb_is_case_insensitive(verb: bytes) -> None:
    assert parse(verb + b" q\r\n") == [Retrieve(b"q", True)]


def test_queue_names_are_case_sensitive_bytes() -> None:
    assert parse(b"get Work\r\nget work\r\nget w\xe9rk\r\n") == [
        Retrieve(b"Work", False),
        Retrieve(b"work", False),
        Retrieve(b"w\xe9rk", False),
    ]


def test_trailing_spaces_are_dropped() -> None:
    assert parse(b"get q   \r\n") == [Retrieve(b"q", False)]
    assert parse(b"delete q \n") == [Command(b"delete", (b"q",), False)]


def test_get_without_key_keeps_the_connection() -> None:
    parser = MemcacheParser()
    assert parser.feed(b"get\r\n") == [invalid(b"CLIENT_ERROR missing key", close=False)]
    assert parser.feed(b"get \r\n") == [invalid(b"CLIENT_ERROR missing key", close=False)]
    assert not parser.closed
    assert parser.feed(b"get q\r\n") == [Retrieve(b"q", False)]


def test_double_space_is_an_empty_key_and_closes() -> None:
    # docs/protocol.md §1: `get  q` = empty name -> CLIENT_ERROR + close.
    parser = MemcacheParser()
    assert parser.feed(b"get  q\r\nget q\r\n") == [invalid(b"CLIENT_ERROR empty key", close=True)]
    assert parser.closed
    assert parser.feed(b"get q\r\n") == []


def test_key_length_limit() -> None:
    longest = b"k" * MAX_KEY_LENGTH
    assert parse(b"get " + longest + b"\r\n") == [Retrieve(longest, False)]
    assert parse(b"get " + longest + b"k\r\n") == [
        invalid(b"CLIENT_ERROR key too long", close=False)
    ]


@pytest.mark.parametrize("bad", [b"q\x00", b"q\tx", b"\x7fq", b"q\r"])
def test_key_with_control_character_is_refused(bad: bytes) -> None:
    assert parse(b"get " + bad + b"\r\n") == [
        invalid(b"CLIENT_ERROR bad key: control character or space", close=False)
    ]


def test_only_one_carriage_return_is_stripped() -> None:
    assert parse(b"get q\r\r\n") == [
        invalid(b"CLIENT_ERROR bad key: control character or space", close=False)
    ]


def test_key_problem() -> None:
    assert key_problem(b"q") is None
    assert key_problem(b"a/b+c.d~e=f") is None
    assert key_problem(b"") == b"empty key"
    assert key_problem(b"x" * 251) == b"key too long"
    assert key_problem(b"a b") == b"bad key: control character or space"


# ------------------------------------------------------------------------------ storage


@pytest.mark.parametrize("eol", EOLS)
def test_set(eol: bytes) -> None:
    assert parse(b"set q 5 0 3" + eol + b"abc\r\n") == [Store(b"q", 5, 0, b"abc", False)]


def test_set_with_noreply() -> None:
    assert parse(b"set q 0 0 1 noreply\r\nx\r\n") == [Store(b"q", 0, 0, b"x", True)]


def test_set_noreply_ignored_when_not_honoured() -> None:
    assert parse(b"set q 0 0 1 noreply\r\nx\r\n", honor_noreply=False) == [
        Store(b"q", 0, 0, b"x", False)
    ]


def test_set_verb_is_case_insensitive() -> None:
    assert parse(b"SET q 0 0 1\r\nx\r\n") == [Store(b"q", 0, 0, b"x", False)]


def test_set_trailing_spaces() -> None:
    assert parse(b"set q 1 2 1   \r\nx\r\n") == [Store(b"q", 1, 2, b"x", False)]


def test_set_data_may_contain_line_ends() -> None:
    data = b"a\r\nb\nc\r\n"
    request = b"set q 0 0 %d\r\n%b\r\nget q\r\n" % (len(data), data)
    assert parse(request) == [Store(b"q", 0, 0, data, False), Retrieve(b"q", False)]


def test_set_empty_data() -> None:
    assert parse(b"set q 0 0 0\r\n\r\n") == [Store(b"q", 0, 0, b"", False)]


def test_set_numbers() -> None:
    assert parse(b"set q 2147483647 -1 1\r\nx\r\n") == [Store(b"q", 2147483647, -1, b"x", False)]
    assert parse(b"set q 007 1700000000 1\r\nx\r\n") == [Store(b"q", 7, 1700000000, b"x", False)]


def test_data_block_split_across_feeds() -> None:
    request = b"set q 3 0 10\r\n0123456789\r\nget q\r\n"
    assert parse_bytewise(request) == [
        Store(b"q", 3, 0, b"0123456789", False),
        Retrieve(b"q", False),
    ]
    parser = MemcacheParser()
    assert parser.feed(b"set q 3 0 10\r\n0123") == []
    assert parser.feed(b"456789") == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\nget q\r\nget") == [
        Store(b"q", 3, 0, b"0123456789", False),
        Retrieve(b"q", False),
    ]
    assert parser.feed(b" r\n") == [Retrieve(b"r", False)]


@pytest.mark.parametrize("size", [1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 7])
def test_large_block_arriving_in_pieces(size: int) -> None:
    """Up to 1 MiB the block is allocated at once; beyond, it grows as data arrives."""
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    stream = b"set big 0 0 %d\r\n" % size + payload + b"\r\nget big\r\n"
    parser = MemcacheParser()
    parsed: list[object] = []
    for start in range(0, len(stream), 65536):
        parsed += parser.feed(stream[start : start + 65536])
    assert parsed == [Store(b"big", 0, 0, payload, False), Retrieve(b"big", False)]


def test_a_set_header_alone_does_not_reserve_the_whole_item() -> None:
    """A client that declares 16 MB and sends a byte cannot make the server hold 16 MB."""
    parser = MemcacheParser()
    tracemalloc.start()
    try:
        before, _peak = tracemalloc.get_traced_memory()
        assert parser.feed(b"set q 0 0 16000000\r\nx") == []
        after, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2 * 1024 * 1024


@pytest.mark.parametrize(
    "header",
    [
        b"set q 0 0",  # fewer than 5 tokens
        b"set q",
        b"set",
        b"set q 0 0 -1",  # negative n
        b"set q 0 0 x",
        b"set q 0 0 1x",
        b"set q 0 0 ",  # trailing space dropped: 4 tokens
    ],
)
def test_bad_set_header_closes(header: bytes) -> None:
    parser = MemcacheParser()
    assert parser.feed(header + b"\r\nx\r\nget q\r\n") == [
        invalid(b"CLIENT_ERROR bad command line format", close=True)
    ]
    assert parser.closed


def test_bad_data_chunk_closes() -> None:
    parser = MemcacheParser()
    assert parser.feed(b"set q 0 0 1\r\nab\r\nget q\r\n") == [
        invalid(b"CLIENT_ERROR bad data chunk", close=True)
    ]
    assert parser.closed
    assert parser.feed(b"get q\r\n") == []


def test_bad_data_chunk_split_across_feeds() -> None:
    assert parse_bytewise(b"get a\r\nset q 0 0 1\r\nxyz") == [
        Retrieve(b"a", False),
        invalid(b"CLIENT_ERROR bad data chunk", close=True),
    ]


@pytest.mark.parametrize(
    "header",
    [
        b"set q x 0 1",
        b"set q 2147483648 0 1",  # docs/protocol.md §3: flags are a signed 32-bit int
        b"set q 4294967295 0 1",
        b"set q 1.5 0 1",
        b"set q 0x10 0 1",
        b"set q  0 1",  # an empty flags token: still 5 tokens, n = 1
    ],
)
def test_bad_flags_keep_the_connection(header: bytes) -> None:
    parser = MemcacheParser()
    assert parser.feed(header + b"\r\nx\r\nget q\r\n") == [
        invalid(b"CLIENT_ERROR bad flags", close=False),
        Retrieve(b"q", False),  # the data block was consumed, framing kept
    ]


def test_bad_flags_with_noreply_is_silent() -> None:
    assert parse(b"set q x 0 1 noreply\r\nx\r\n") == [
        invalid(b"CLIENT_ERROR bad flags", close=False, noreply=True)
    ]


@pytest.mark.parametrize("exptime", [b"x", b"1.5", b"--1", b"1e3"])
def test_non_numeric_exptime_closes(exptime: bytes) -> None:
    # docs/protocol.md §7: a non-int exptime drops the connection in Kestrel, which kestrelpy
    # replaces with CLIENT_ERROR <reason> + close (unlike bad flags, which keep it).
    parser = MemcacheParser()
    requests = parser.feed(b"set q 0 " + exptime + b" 1\r\nx\r\nget q\r\n")
    assert requests == [invalid(b"CLIENT_ERROR bad exptime", close=True)]
    assert parser.closed


@pytest.mark.parametrize("exptime", [b"2147483648", b"-2147483649", b"9999999999999999999"])
def test_exptime_outside_int32_closes(exptime: bytes) -> None:
    # docs/protocol.md §3: exptime is an int32; Kestrel's toInt fails on anything wider (§7).
    parser = MemcacheParser()
    requests = parser.feed(b"set q 0 " + exptime + b" 1\r\nx\r\nget q\r\n")
    assert requests == [invalid(b"CLIENT_ERROR bad exptime", close=True)]
    assert parser.closed


@pytest.mark.parametrize("exptime", [b"2147483647", b"-2147483648"])
def test_exptime_int32_bounds_accepted(exptime: bytes) -> None:
    assert parse(b"set q 0 " + exptime + b" 1\r\nx\r\n") == [
        Store(b"q", 0, int(exptime), b"x", False)
    ]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"k" * 251, b"key too long"),
        (b"q\x01", b"bad key: control character or space"),
    ],
)
def test_bad_set_key_keeps_the_connection(key: bytes, reason: bytes) -> None:
    assert parse(b"set " + key + b" 0 0 1\r\nx\r\nget q\r\n") == [
        invalid(b"CLIENT_ERROR " + reason, close=False),
        Retrieve(b"q", False),
    ]


@pytest.mark.parametrize("verb", [b"add", b"replace", b"append", b"prepend", b"cas", b"ADD"])
def test_other_storage_verbs_consume_data_then_error(verb: bytes) -> None:
    # docs/protocol.md §2: storage verbs' data is consumed first; kp answers ERROR, kept.
    assert parse(verb + b" q 0 0 5\r\nget q\r\nget r\r\n") == [
        invalid(b"ERROR", close=False),
        Retrieve(b"r", False),
    ]


def test_other_storage_verb_with_noreply() -> None:
    assert parse(b"add q 0 0 1 noreply\r\nx\r\n") == [invalid(b"ERROR", close=False, noreply=True)]


def test_item_over_item_size_max_closes_without_reading_data() -> None:
    parser = MemcacheParser(item_size_max=10)
    assert parser.feed(b"set q 0 0 10\r\n0123456789\r\n") == [
        Store(b"q", 0, 0, b"0123456789", False)
    ]
    assert parser.feed(b"set q 0 0 11\r\n") == [
        invalid(b"SERVER_ERROR object too large", close=True)
    ]
    assert parser.closed
    assert parser.feed(b"01234567890\r\n") == []


def test_item_size_max_checked_before_the_data_arrives() -> None:
    parser = MemcacheParser(item_size_max=16 * 1024 * 1024)
    assert parser.feed(b"set q 0 0 99999999999\r\n") == [
        invalid(b"SERVER_ERROR object too large", close=True)
    ]


# ------------------------------------------------------------------------ other commands


@pytest.mark.parametrize("eol", EOLS)
def test_commands(eol: bytes) -> None:
    lines = [b"delete q", b"flush q", b"flush_all 0", b"stats", b"version", b"status up"]
    assert parse(eol.join(lines) + eol) == [
        Command(b"delete", (b"q",), False),
        Command(b"flush", (b"q",), False),
        Command(b"flush_all", (b"0",), False),
        Command(b"stats", (), False),
        Command(b"version", (), False),
        Command(b"status", (b"up",), False),
    ]


def test_command_verb_lower_cased_arguments_kept() -> None:
    assert parse(b"DELETE Queue\r\n") == [Command(b"delete", (b"Queue",), False)]


def test_command_noreply() -> None:
    assert parse(b"delete q noreply\r\nflush_all noreply\r\n") == [
        Command(b"delete", (b"q",), True),
        Command(b"flush_all", (), True),
    ]
    assert parse(b"delete q noreply\r\n", honor_noreply=False) == [
        Command(b"delete", (b"q", b"noreply"), False)
    ]


def test_noreply_alone_is_a_verb() -> None:
    assert parse(b"noreply\r\n") == [Command(b"noreply", (), False)]


def test_empty_line_and_unknown_command() -> None:
    assert parse(b"\r\n\nincr q 1\r\n") == [
        Command(b"", (), False),
        Command(b"", (), False),
        Command(b"incr", (b"q", b"1"), False),
    ]


def test_pipelined_mix_in_order() -> None:
    stream = b"set a 0 0 1\r\n1\r\nget a\ndelete a\r\nset b 0 0 2 noreply\r\n22\r\ngets b/open\n"
    expected = [
        Store(b"a", 0, 0, b"1", False),
        Retrieve(b"a", False),
        Command(b"delete", (b"a",), False),
        Store(b"b", 0, 0, b"22", True),
        Retrieve(b"b/open", True),
    ]
    assert parse(stream) == expected
    assert parse_bytewise(stream) == expected


def test_bytes_read_counts_everything_fed() -> None:
    parser = MemcacheParser()
    parser.feed(b"get q\r\nget")
    parser.feed(b" r\r\n")
    assert parser.bytes_read == 14


def test_bare_errors() -> None:
    assert parse(b"set q x 0 1\r\nx\r\n", bare_errors=True) == [
        Invalid(b"CLIENT_ERROR\r\n", False, False)
    ]
    assert parse(b"set q 0 0 2\r\n", bare_errors=True, item_size_max=1) == [
        Invalid(b"SERVER_ERROR\r\n", True, False)
    ]


# ------------------------------------------------------------------------- line length


def test_line_too_long_with_newline() -> None:
    parser = MemcacheParser(max_line_length=32)
    long_line = b"get " + b"x" * 40 + b"\r\n"
    assert parser.feed(b"get a\r\n" + long_line + b"get b\r\n") == [
        Retrieve(b"a", False),
        invalid(b"CLIENT_ERROR line too long", close=True),
    ]
    assert parser.closed


def test_line_too_long_without_newline() -> None:
    parser = MemcacheParser(max_line_length=32)
    assert parser.feed(b"get a\r\nget " + b"x" * 28) == [Retrieve(b"a", False)]  # 32 bytes held
    assert parser.feed(b"x") == []  # 33 bytes: the 33rd could still be the line's "\r"
    assert parser.feed(b"x") == [invalid(b"CLIENT_ERROR line too long", close=True)]
    assert parser.feed(b"\r\n") == []


@pytest.mark.parametrize("eol", EOLS)
def test_line_of_exactly_max_length_is_accepted(eol: bytes) -> None:
    # The limit is on the line; the terminator (`\n` or `\r\n`, docs/protocol.md §1) is framing.
    key = b"k" * (32 - len(b"get "))
    assert parse(b"get " + key + eol, max_line_length=32) == [Retrieve(key, False)]
    assert parse_bytewise(b"get " + key + eol, max_line_length=32) == [Retrieve(key, False)]


@pytest.mark.parametrize("eol", EOLS)
def test_line_one_over_max_length_is_refused(eol: bytes) -> None:
    key = b"k" * (33 - len(b"get "))
    refused = [invalid(b"CLIENT_ERROR line too long", close=True)]
    assert parse(b"get " + key + eol, max_line_length=32) == refused
    assert parse_bytewise(b"get " + key + eol, max_line_length=32) == refused


def test_data_block_is_not_subject_to_line_length() -> None:
    data = b"d" * 500
    assert parse(b"set q 0 0 500\r\n" + data + b"\r\n", max_line_length=64) == [
        Store(b"q", 0, 0, data, False)
    ]


# ---------------------------------------------------------------------- parse_get_key


def options(queue: str = "q", wait_ms: int | None = None, **flags: bool) -> GetOptions:
    return GetOptions(
        queue,
        wait_ms,
        flags.get("open", False),
        flags.get("close", False),
        flags.get("abort", False),
        flags.get("peek", False),
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"q", options()),
        (b"q/open", options(open=True)),
        (b"q/close", options(close=True)),
        (b"q/abort", options(abort=True)),
        (b"q/peek", options(peek=True)),
        (b"q/close/open", options(open=True, close=True)),
        (b"q/open/close", options(open=True, close=True)),
        (b"q/t=500", options(wait_ms=500)),
        (b"q/t=500/open", options(wait_ms=500, open=True)),
        (b"q/open/t=500", options(wait_ms=500, open=True)),
        (b"q/t=10/close/open", options(wait_ms=10, open=True, close=True)),
        (b"q/open/t=10/close", options(wait_ms=10, open=True, close=True)),
        (b"q/peek/t=7", options(wait_ms=7, peek=True)),
        (b"q/t=7/abort", options(wait_ms=7, abort=True)),
        (b"q/t=7/close", options(wait_ms=7, close=True)),
    ],
)
def test_get_options_any_order(key: bytes, expected: GetOptions) -> None:
    assert parse_get_key(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"q/open/open", options(open=True)),
        (b"q/close/close/open", options(open=True, close=True)),
        (b"q/t=1/t=2", options(wait_ms=2)),
        (b"q/t=2/t=1", options(wait_ms=1)),
        (b"q/t=5/t=x", options()),  # the last t= wins, even a bad one
        (b"q/x", options()),
        (b"q//open", options(open=True)),
        (b"q/open/", options(open=True)),
        (b"q/T=5/opens/topen", options()),
        (b"q/", options()),
    ],
)
def test_get_options_repeats_and_unknown(key: bytes, expected: GetOptions) -> None:
    assert parse_get_key(key) == expected


@pytest.mark.parametrize(
    ("raw", "wait_ms"),
    [
        (b"1", 1),
        (b"007", 7),
        (b"2147483647", 2147483647),
        (b"0", None),
        (b"-1", None),
        (b"-2147483648", None),
        (b"2147483648", None),
        (b"99999999999999999999", None),
        (b"", None),
        (b"abc", None),
        (b"+5", None),
        (b"1.5", None),
        (b"5ms", None),
        (b" 5", None),
    ],
)
def test_wait_edge_cases(raw: bytes, wait_ms: int | None) -> None:
    assert parse_get_key(b"q/t=" + raw).wait_ms == wait_ms


@pytest.mark.parametrize(
    "key",
    [
        b"q/peek/open",
        b"q/open/peek",
        b"q/peek/close",
        b"q/close/peek",
        b"q/peek/abort",
        b"q/abort/peek",
        b"q/abort/open",
        b"q/open/abort",
        b"q/abort/close",
        b"q/close/abort",
        b"q/t=5/close/abort/t=6",
        b"/open",
        b"/",
        b"",
    ],
)
def test_rejected_get_options(key: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_get_key(key)
    assert info.value.close is True
    assert info.value.reply.startswith(b"CLIENT_ERROR ")
    assert info.value.reply.endswith(b"\r\n")
    assert info.value.reply.count(b"\n") == 1
    assert isinstance(info.value, KestrelpyError)


def test_get_key_queue_name_is_latin1() -> None:
    assert parse_get_key(b"w\xe9rk/open").queue == "w\xe9rk"


# ------------------------------------------------------------------------------ replies


def test_value_reply() -> None:
    assert value_reply(b"q", 0, b"hello", None) == b"VALUE q 0 5\r\nhello\r\nEND\r\n"
    assert value_reply(b"q/open", 7, b"", None) == b"VALUE q/open 7 0\r\n\r\nEND\r\n"
    assert value_reply(b"q", 1, b"a\r\nb", 42) == b"VALUE q 1 4 42\r\na\r\nb\r\nEND\r\n"
    assert value_reply(b"q", 4294967295, b"x", 0) == b"VALUE q 4294967295 1 0\r\nx\r\nEND\r\n"


def test_stat_lines() -> None:
    assert stat_lines([("pid", 1), ("version", "x y")]) == (
        b"STAT pid 1\r\nSTAT version x y\r\nEND\r\n"
    )
    assert stat_lines([]) == b"END\r\n"


# --------------------------------------------------------------------------- properties

KEY_BYTES = st.lists(st.integers(0x21, 0x7E), min_size=1, max_size=40).map(bytes)
EOL = st.sampled_from(EOLS)
SPACES = st.sampled_from([b"", b" ", b"   "])


@st.composite
def retrieve_requests(draw: st.DrawFn) -> tuple[bytes, object]:
    key = draw(KEY_BYTES)
    verb = draw(st.sampled_from([b"get", b"gets"]))
    extra = draw(st.sampled_from([b"", b" other", b" a b"]))
    line = verb + b" " + key + extra + draw(SPACES) + draw(EOL)
    return line, Retrieve(key, verb == b"gets")


@st.composite
def store_requests(draw: st.DrawFn) -> tuple[bytes, object]:
    key = draw(KEY_BYTES)
    flags = draw(st.integers(0, 2**31 - 1))
    exptime = draw(st.integers(-(2**31), 2**31 - 1))
    data = draw(st.binary(max_size=64))
    noreply = draw(st.booleans())
    header = b"set %b %d %d %d" % (key, flags, exptime, len(data))
    if noreply:
        header += b" noreply"
    raw = header + draw(SPACES) + draw(EOL) + data + b"\r\n"
    return raw, Store(key, flags, exptime, data, noreply)


@st.composite
def command_requests(draw: st.DrawFn) -> tuple[bytes, object]:
    verb = draw(st.sampled_from([b"delete", b"flush", b"flush_all", b"stats", b"version"]))
    args = tuple(draw(st.lists(KEY_BYTES.filter(lambda a: a != b"noreply"), max_size=2)))
    noreply = draw(st.booleans())
    line = b" ".join((verb, *args))
    if noreply:
        line += b" noreply"
    return line + draw(SPACES) + draw(EOL), Command(verb, args, noreply)


REQUESTS = st.one_of(retrieve_requests(), store_requests(), command_requests())
REQUEST_TYPES = (Store, Retrieve, Command, Invalid)


def draw_pieces(data: st.DataObject, blob: bytes) -> list[bytes]:
    """``blob`` cut at up to 12 drawn offsets (possibly empty pieces)."""
    points = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12)))
    bounds = [0, *points, len(blob)]
    return [blob[a:b] for a, b in itertools.pairwise(bounds)]


def feed_chunks(parser: MemcacheParser, chunks: list[bytes]) -> list[object]:
    requests: list[object] = []
    for chunk in chunks:
        requests.extend(parser.feed(chunk))
    return requests


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REQUESTS, min_size=1, max_size=12), st.data())
def test_any_split_of_a_valid_stream_parses_the_same(
    pairs: list[tuple[bytes, object]], data: st.DataObject
) -> None:
    stream = b"".join(raw for raw, _ in pairs)
    expected = [request for _, request in pairs]
    assert MemcacheParser().feed(stream) == expected
    pieces = draw_pieces(data, stream)
    assert feed_chunks(MemcacheParser(), pieces) == expected


FRAGMENTS = st.sampled_from(
    [
        b"get ",
        b"gets ",
        b"set ",
        b"add ",
        b"q",
        b"/open",
        b"/t=5",
        b" 0",
        b" 1",
        b" 5",
        b" -1",
        b" noreply",
        b" ",
        b"\r\n",
        b"\n",
        b"\r",
        b"x" * 40,
        b"12345",
    ]
)
NOISE = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=8)), max_size=30).map(b"".join)
PARSER_OPTIONS = st.fixed_dictionaries(
    {
        "max_line_length": st.sampled_from([16, 64, 2048]),
        "item_size_max": st.sampled_from([0, 4, 1024]),
        "honor_noreply": st.booleans(),
        "bare_errors": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(NOISE, st.binary(max_size=200)), PARSER_OPTIONS, st.data())
def test_arbitrary_bytes_never_raise(
    blob: bytes, parser_options: dict[str, object], data: st.DataObject
) -> None:
    whole = MemcacheParser(**parser_options).feed(blob)  # type: ignore[arg-type]
    assert all(type(request) in REQUEST_TYPES for request in whole)
    for request in whole:
        if isinstance(request, Retrieve):
            try:
                parse_get_key(request.key)
            except ProtocolError as err:
                assert err.close and err.reply.endswith(b"\r\n")
    pieces = draw_pieces(data, blob)
    chunked = feed_chunks(MemcacheParser(**parser_options), pieces)  # type: ignore[arg-type]
    assert all(type(request) in REQUEST_TYPES for request in chunked)
    assert chunked == whole
    closing = [r for r in whole if isinstance(r, Invalid) and r.close]
    assert len(closing) <= 1
    if closing:
        assert whole[-1] is closing[0]  # nothing is parsed after a closing error


@settings(max_examples=200, deadline=None)
@given(store_requests())
def test_set_round_trip(pair: tuple[bytes, object]) -> None:
    raw, expected = pair
    assert isinstance(expected, Store)
    (request,) = MemcacheParser().feed(raw)
    assert isinstance(request, Store)
    assert (request.key, request.flags, request.exptime, request.data, request.noreply) == (
        expected.key,
        expected.flags,
        expected.exptime,
        expected.data,
        expected.noreply,
    )
