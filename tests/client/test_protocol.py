"""kestrelpy.client.protocol on plain byte strings: request bytes, reply parsing, and the
matching of pipelined replies to their waiters.

docs/protocol.md is the reference for the bytes; every expected value is written out by
hand. Replies are fed split at every offset, because TCP may cut them anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrelpy.client.errors import UsageError
from kestrelpy.client.protocol import (
    PendingReplies,
    ProtocolViolation,
    Reply,
    ReplyReader,
    Value,
    command_request,
    queue_key,
    read_request,
    set_request,
)

# -- requests --------------------------------------------------------------------------------


def test_set_request_bytes() -> None:
    assert set_request(b"jobs", 0, 0, b"hello") == b"set jobs 0 0 5\r\nhello\r\n"
    assert set_request(b"q", 1263534081, 60, b"") == b"set q 1263534081 60 0\r\n\r\n"
    assert set_request(b"q", 7, 0, b"a\r\nb") == b"set q 7 0 4\r\na\r\nb\r\n"


def test_read_request_options() -> None:
    assert read_request(b"q") == b"get q\r\n"
    assert read_request(b"q", timeout_ms=500) == b"get q/t=500\r\n"
    assert read_request(b"q", open_=True) == b"get q/open\r\n"
    assert read_request(b"q", close=True) == b"get q/close\r\n"
    assert read_request(b"q", abort=True) == b"get q/abort\r\n"
    assert read_request(b"q", peek=True, timeout_ms=1) == b"get q/peek/t=1\r\n"
    assert read_request(b"q", close=True, open_=True, timeout_ms=250) == (
        b"get q/close/open/t=250\r\n"
    )


def test_read_request_without_a_wait_sends_no_t_option() -> None:
    assert read_request(b"q", timeout_ms=0) == b"get q\r\n"
    assert read_request(b"q", timeout_ms=-5) == b"get q\r\n"


def test_command_request() -> None:
    assert command_request(b"stats") == b"stats\r\n"
    assert command_request(b"delete", b"q") == b"delete q\r\n"
    assert command_request(b"flush", b"jobs") == b"flush jobs\r\n"


def test_queue_key_accepts_names_the_server_accepts() -> None:
    assert queue_key("jobs") == b"jobs"
    assert queue_key("a.b~c+child") == b"a.b~c+child"
    assert queue_key("é") == "é".encode()
    assert queue_key("x" * 230) == b"x" * 230


@pytest.mark.parametrize(
    "name",
    ["", "x" * 231, "a b", "a/b", "a\tb", "a\rb", "a\nb", "a\x00b", "a\x7fb", "q/open", " "],
)
def test_queue_key_refuses_bad_names(name: str) -> None:
    with pytest.raises(UsageError, match="queue name"):
        queue_key(name)


# -- the reply reader ------------------------------------------------------------------------


def read_all(chunks: Iterable[bytes]) -> list[Reply]:
    """Feed ``chunks`` one by one, taking every reply as soon as it is complete."""
    reader = ReplyReader()
    replies: list[Reply] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.take()) is not None:
            replies.append(reply)
    assert reader.pending_bytes == 0
    return replies


def read_all_fast(chunks: Iterable[bytes]) -> list[Reply]:
    """As :func:`read_all`, but each chunk goes through ``take_line_reply`` first, the way
    a blocking link hands over what one ``recv`` returned."""
    reader = ReplyReader()
    replies: list[Reply] = []
    for chunk in chunks:
        fast = reader.take_line_reply(chunk)
        if fast is not None:
            replies.append(fast)
        while (reply := reader.take()) is not None:
            replies.append(reply)
    assert reader.pending_bytes == 0
    return replies


def splits(data: bytes) -> Iterable[list[bytes]]:
    """``data`` whole, then cut in two at every offset, then byte by byte."""
    yield [data]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


def assert_parses_at_every_split(data: bytes, expected: Sequence[Reply]) -> None:
    for chunks in splits(data):
        assert read_all(chunks) == list(expected), chunks
        assert read_all_fast(chunks) == list(expected), chunks


def test_one_line_replies() -> None:
    for line in (b"STORED", b"END", b"DELETED", b"NOT_STORED", b"ERROR", b"42", b"UP"):
        assert_parses_at_every_split(line + b"\r\n", [Reply(line)])
    assert_parses_at_every_split(
        b"SERVER_ERROR server is readonly\r\n", [Reply(b"SERVER_ERROR server is readonly")]
    )


def test_a_value_reply() -> None:
    data = b"VALUE jobs 1263534081 5\r\nhello\r\nEND\r\n"
    assert_parses_at_every_split(data, [Reply(b"END", [Value(b"jobs", 1263534081, b"hello")])])


def test_a_value_with_a_cas_field() -> None:
    data = b"VALUE q/open 0 2 17\r\nhi\r\nEND\r\n"
    assert_parses_at_every_split(data, [Reply(b"END", [Value(b"q/open", 0, b"hi")])])


def test_value_data_may_hold_crlf_and_reply_words() -> None:
    body = b"\r\nEND\r\nVALUE x 0 1\r\nSTAT a b\r\n\r\n"
    data = b"VALUE q 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
    assert_parses_at_every_split(data, [Reply(b"END", [Value(b"q", 0, body)])])


def test_an_empty_value() -> None:
    assert_parses_at_every_split(
        b"VALUE q 0 0\r\n\r\nEND\r\n", [Reply(b"END", [Value(b"q", 0, b"")])]
    )


def test_stat_lines_then_end() -> None:
    data = b"STAT uptime 12\r\nSTAT queue_q_items 3\r\nSTAT version kestrelpy-0.1.0\r\nEND\r\n"
    expected = Reply(b"END", stats=[b"uptime 12", b"queue_q_items 3", b"version kestrelpy-0.1.0"])
    assert_parses_at_every_split(data, [expected])


def test_pipelined_replies_come_back_in_order() -> None:
    data = (
        b"END\r\n"  # close
        b"STORED\r\n"
        b"VALUE q 0 1\r\na\r\nEND\r\n"
        b"NOT_STORED\r\n"
        b"STAT a 1\r\nEND\r\n"
        b"VALUE q 4 2\r\nbc\r\nEND\r\n"
        b"DELETED\r\n"
    )
    expected = [
        Reply(b"END"),
        Reply(b"STORED"),
        Reply(b"END", [Value(b"q", 0, b"a")]),
        Reply(b"NOT_STORED"),
        Reply(b"END", stats=[b"a 1"]),
        Reply(b"END", [Value(b"q", 4, b"bc")]),
        Reply(b"DELETED"),
    ]
    assert_parses_at_every_split(data, expected)


def test_values_and_stats_do_not_leak_into_the_next_reply() -> None:
    reader = ReplyReader()
    reader.feed(b"VALUE q 0 1\r\na\r\nEND\r\nEND\r\n")
    assert reader.take() == Reply(b"END", [Value(b"q", 0, b"a")])
    assert reader.take() == Reply(b"END")
    assert reader.take() is None


def test_take_waits_for_the_whole_data_block() -> None:
    reader = ReplyReader()
    reader.feed(b"VALUE q 0 10\r\n12345")
    assert reader.take() is None
    reader.feed(b"67890\r")
    assert reader.take() is None
    reader.feed(b"\nEND")
    assert reader.take() is None
    reader.feed(b"\r\n")
    assert reader.take() == Reply(b"END", [Value(b"q", 0, b"1234567890")])
    assert reader.pending_bytes == 0


def test_take_line_reply_fast_path() -> None:
    reader = ReplyReader()
    assert reader.take_line_reply(b"STORED\r\n") == Reply(b"STORED")
    assert reader.pending_bytes == 0
    # two replies in one read: not the fast path, both come out of take()
    assert reader.take_line_reply(b"STORED\r\nEND\r\n") is None
    assert reader.take() == Reply(b"STORED")
    assert reader.take() == Reply(b"END")
    # a value, a stat line or half a line: buffered for take()
    for data in (b"VALUE q 0 1\r\n", b"STAT a 1\r\n", b"STOR"):
        reader = ReplyReader()
        assert reader.take_line_reply(data) is None
        assert reader.pending_bytes == len(data)


@pytest.mark.parametrize(
    "first",
    [b"VALUE q 0 1\r\na\r\n", b"STAT a 1\r\n"],
    ids=["value", "stat"],
)
def test_take_line_reply_keeps_what_take_already_parsed(first: bytes) -> None:
    """A complete VALUE block or STAT line leaves the buffer empty but belongs to the reply
    whose closing line comes next; the fast path must not return that line without it."""
    reader = ReplyReader()
    reader.feed(first)
    assert reader.take() is None
    assert reader.pending_bytes == 0
    fast = reader.take_line_reply(b"END\r\n")
    reply = fast if fast is not None else reader.take()
    assert reply is not None
    assert reply.values or reply.stats
    assert reader.take() is None


@pytest.mark.parametrize(
    "data",
    [
        b"VALUE q x 1\r\na\r\nEND\r\n",  # flags not a number
        b"VALUE q 0 -1\r\na\r\nEND\r\n",  # negative size
        b"VALUE q 0\r\na\r\nEND\r\n",  # too few fields
        b"VALUE q 0 1 2 3\r\na\r\nEND\r\n",  # too many fields
        b"VALUE q 0 1\r\nabc\r\nEND\r\n",  # more data than announced
        b"VALUE q 0 3\r\na\r\nEND\r\n",  # less data than announced
    ],
)
def test_a_bad_value_block_is_a_protocol_violation(data: bytes) -> None:
    reader = ReplyReader()
    reader.feed(data)
    with pytest.raises(ProtocolViolation):
        while reader.take() is not None:
            pass


# -- any replies, cut anywhere ---------------------------------------------------------------

_LINE_BYTES = st.binary(max_size=30).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r"))
_KEY = st.binary(min_size=1, max_size=20).filter(lambda b: all(0x20 < byte < 0x7F for byte in b))
_VALUES = st.builds(Value, _KEY, st.integers(0, 2**32 - 1), st.binary(max_size=40))
_STATS = st.binary(max_size=30).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r"))
_FINAL = st.one_of(
    st.sampled_from([b"END", b"STORED", b"NOT_STORED", b"DELETED", b"ERROR", b"0", b""]),
    _LINE_BYTES.filter(lambda b: not b.startswith((b"VALUE ", b"STAT "))),
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    kind = draw(st.sampled_from(["line", "values", "stats"]))
    line = draw(_FINAL)
    if kind == "values":
        return Reply(line, draw(st.lists(_VALUES, min_size=1, max_size=3)))
    if kind == "stats":
        return Reply(line, stats=draw(st.lists(_STATS, min_size=1, max_size=4)))
    return Reply(line)


def render(reply: Reply, with_cas: bool) -> bytes:
    out = bytearray()
    for index, value in enumerate(reply.values):
        header = b"VALUE %s %d %d" % (value.key, value.flags, len(value.body))
        if with_cas:
            header += b" %d" % index
        out += header + b"\r\n" + value.body + b"\r\n"
    for stat in reply.stats:
        out += b"STAT " + stat + b"\r\n"
    return bytes(out + reply.line + b"\r\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(replies(), min_size=1, max_size=8), st.booleans(), st.data())
def test_any_replies_split_anywhere_parse_back_the_same(
    sent: list[Reply], with_cas: bool, data: st.DataObject
) -> None:
    stream = b"".join(render(reply, with_cas) for reply in sent)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert read_all(chunks) == sent
    assert read_all_fast(chunks) == sent


# -- pending replies -------------------------------------------------------------------------


def test_pending_replies_are_handed_out_in_the_order_asked() -> None:
    pending: PendingReplies[str] = PendingReplies()
    pending.expect("put", 1)
    pending.expect("close+get", 2)
    pending.expect("stats", 1)
    assert pending.feed(b"STORED\r\nEND\r\nVALUE q 0 1\r\n") == [("put", [Reply(b"STORED")])]
    assert pending.feed(b"x\r\nEND\r\nSTAT a 1\r\n") == [
        ("close+get", [Reply(b"END"), Reply(b"END", [Value(b"q", 0, b"x")])])
    ]
    assert pending.feed(b"END\r\n") == [("stats", [Reply(b"END", stats=[b"a 1"])])]
    assert pending.abandon() == []


def test_several_waiters_complete_in_one_feed() -> None:
    pending: PendingReplies[int] = PendingReplies()
    for waiter in range(3):
        pending.expect(waiter, 1)
    done = pending.feed(b"STORED\r\nSTORED\r\nNOT_STORED\r\n")
    assert done == [(0, [Reply(b"STORED")]), (1, [Reply(b"STORED")]), (2, [Reply(b"NOT_STORED")])]


def test_pending_replies_split_at_every_offset() -> None:
    data = b"STORED\r\nVALUE q 0 3\r\na\r\n\r\nEND\r\nDELETED\r\n"
    expected = [
        ("a", [Reply(b"STORED")]),
        ("b", [Reply(b"END", [Value(b"q", 0, b"a\r\n")]), Reply(b"DELETED")]),
    ]
    for chunks in splits(data):
        pending: PendingReplies[str] = PendingReplies()
        pending.expect("a", 1)
        pending.expect("b", 2)
        done: list[tuple[str, list[Reply]]] = []
        for chunk in chunks:
            done.extend(pending.feed(chunk))
        assert done == expected, chunks


def test_abandon_returns_every_waiter_still_owed() -> None:
    pending: PendingReplies[str] = PendingReplies()
    pending.expect("a", 1)
    pending.expect("b", 2)
    pending.expect("c", 1)
    assert pending.feed(b"STORED\r\nSTORED\r\n") == [("a", [Reply(b"STORED")])]
    # b got one of its two: still owed, with the one it got
    assert pending.abandon() == [("b", [Reply(b"STORED")]), ("c", [])]
    assert pending.abandon() == []


def test_a_reply_nobody_asked_for_is_a_protocol_violation() -> None:
    pending: PendingReplies[str] = PendingReplies()
    with pytest.raises(ProtocolViolation, match="nobody asked"):
        pending.feed(b"STORED\r\n")
    pending = PendingReplies()
    pending.expect("a", 1)
    with pytest.raises(ProtocolViolation, match="nobody asked"):
        pending.feed(b"STORED\r\nEND\r\n")


def test_a_bad_value_reaches_the_feeder() -> None:
    pending: PendingReplies[str] = PendingReplies()
    pending.expect("a", 1)
    with pytest.raises(ProtocolViolation, match="bad VALUE"):
        pending.feed(b"VALUE q zero 1\r\na\r\nEND\r\n")


def test_a_reply_handed_out_is_not_changed_by_later_bytes() -> None:
    """An event-loop face hands a reply to its waiter and keeps parsing the same chunk for
    the next waiter; the first waiter reads its reply later. An empty get must stay empty
    even when the next reply in the stream carries a value (else two tasks get one item)."""
    pending: PendingReplies[str] = PendingReplies()
    pending.expect("first get", 1)
    pending.expect("second get", 1)
    done = pending.feed(b"END\r\nVALUE q 0 1\r\nx\r\nEND\r\n")
    assert done == [
        ("first get", [Reply(b"END")]),
        ("second get", [Reply(b"END", [Value(b"q", 0, b"x")])]),
    ]
    first, second = done[0][1][0], done[1][1][0]
    assert first.values is not second.values
    assert first.stats is not second.stats
