"""The reply parsers: whole replies, every split point, error lines, other servers' dialects."""

from __future__ import annotations

import lt_harness  # noqa: F401  (puts the repo root, home of loadtest, on sys.path)
import pytest

from loadtest._proto import (
    ReplyError,
    body_id,
    body_stamp,
    item_tag,
    make_body,
    make_stamped_body,
    parse_get_reply,
    parse_line,
    parse_store_reply,
)

HIT = b"VALUE q 0 5\r\nhello\r\nEND\r\n"


def test_hit_and_miss() -> None:
    assert parse_get_reply(HIT) == (len(HIT), b"hello")
    assert parse_get_reply(b"END\r\n") == (5, None)


def test_every_split_point_is_incomplete_until_the_last_byte() -> None:
    """A reply cut anywhere parses as "incomplete" (offset unchanged), never wrongly."""
    for cut in range(len(HIT)):
        assert parse_get_reply(HIT[:cut]) == (0, None), cut
    assert parse_get_reply(bytearray(HIT)) == (len(HIT), b"hello")


def test_pipelined_replies_parse_from_an_offset() -> None:
    buf = bytearray(HIT + b"END\r\n" + HIT)
    pos, first = parse_get_reply(buf, 0)
    pos2, second = parse_get_reply(buf, pos)
    pos3, third = parse_get_reply(buf, pos2)
    assert (first, second, third) == (b"hello", None, b"hello")
    assert pos3 == len(buf)


def test_value_line_variants() -> None:
    """memcached's gets adds a CAS field; kestrelpy echoes the requested key with options."""
    assert parse_get_reply(b"VALUE q 0 2 77\r\nhi\r\nEND\r\n")[1] == b"hi"
    assert parse_get_reply(b"VALUE q/t=500/open 7 2\r\nhi\r\nEND\r\n")[1] == b"hi"
    assert parse_get_reply(b"VALUE q 0 0\r\n\r\nEND\r\n")[1] == b""
    body = b"a\r\nEND\r\nb"  # a body may contain CRLF END CRLF: the length decides
    reply = b"VALUE q 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
    assert parse_get_reply(reply) == (len(reply), body)


@pytest.mark.parametrize(
    "reply",
    [
        b"ERROR\r\n",
        b"CLIENT_ERROR bad get options\r\n",
        b"SERVER_ERROR object too large\r\n",
        b"VALUE q 0 x\r\nhi\r\nEND\r\n",
        b"VALUE q 0 2\r\nhiXXEND\r\n",
        b"STORED\r\n",
    ],
)
def test_error_and_garbage_replies_raise(reply: bytes) -> None:
    with pytest.raises(ReplyError):
        parse_get_reply(reply)


def test_an_endless_line_is_an_error_not_a_wait() -> None:
    with pytest.raises(ReplyError):
        parse_get_reply(b"V" * 5000)


def test_store_replies() -> None:
    assert parse_store_reply(b"STORED\r\nSTORED\r\n", 8) == (16, True)
    assert parse_store_reply(b"NOT_STORED\r\n") == (12, False)
    assert parse_store_reply(b"STOR") == (0, False)
    assert parse_store_reply(b"NOT_STO") == (0, False)
    with pytest.raises(ReplyError, match="SERVER_ERROR"):
        parse_store_reply(b"SERVER_ERROR out of memory\r\n")


def test_single_lines() -> None:
    assert parse_line(b"DELETED\r\nEND") == (9, b"DELETED")
    assert parse_line(b"VERSION 1.6") == (0, None)
    with pytest.raises(ReplyError):
        parse_line(b"CLIENT_ERROR nope\r\n")


def test_bodies_carry_tag_id_and_stamp() -> None:
    body = make_body(0xABCD, 42, 64)
    assert len(body) == 64
    assert body_id(body, item_tag(0xABCD)) == 42
    assert body_id(body, item_tag(0xABCE)) == -1  # another run's item
    assert body_id(b"short", item_tag(0xABCD)) == -1
    stamped = make_stamped_body(1, 7, 123456789, 40)
    assert body_id(stamped, item_tag(1)) == 7 and body_stamp(stamped) == 123456789
