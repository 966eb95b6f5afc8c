"""kestrelpy.client.codecs: round trips, the marks in the flags, and what a reader does
with items it did not write (docs/client.md, "Codecs and flags")."""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kestrelpy.client import CODECS, JSON, MSGPACK, RAW, Codec, DecodeError, UsageError
from kestrelpy.client.codecs import codec_named, decode


def _documents(integers: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | integers | st.text() | st.floats(allow_nan=False),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )


JSON_DATA = _documents(st.integers())
MSGPACK_DATA = _documents(st.integers(-(2**63), 2**64 - 1))  # msgpack's integer range


def test_the_marks_are_the_documented_numbers() -> None:
    assert JSON.flags == 0x4B010000
    assert RAW.flags == 0x4B020000
    assert MSGPACK.flags == 0x4B030000
    # the low half stays clear: PHP's memcached extension reads its value type in bits 0-3
    # and compression in 4-7, pymemcache and pylibmc their serde bits: to them a marked
    # item is a plain string
    assert all(codec.flags & 0xFFFF == 0 for codec in CODECS.values())
    assert all(0 < codec.flags < 2**31 for codec in CODECS.values())  # the server's range
    assert sorted(CODECS) == ["json", "msgpack", "raw"]


@given(JSON_DATA)
def test_json_round_trip(data: Any) -> None:
    assert decode(JSON.encode(data), JSON.flags, RAW) == data


def test_json_bytes_are_compact_utf8() -> None:
    assert JSON.encode({"id": 1, "name": "é"}) == '{"id":1,"name":"é"}'.encode()


@given(st.binary())
def test_raw_round_trip(data: bytes) -> None:
    assert decode(RAW.encode(data), RAW.flags, JSON) == data


def test_raw_takes_bytes_like_and_str() -> None:
    assert RAW.encode(bytearray(b"ab")) == b"ab"
    assert RAW.encode(memoryview(b"cd")) == b"cd"
    assert RAW.encode("é") == "é".encode()
    with pytest.raises(TypeError, match="raw codec"):
        RAW.encode(5)


@given(MSGPACK_DATA | st.binary())
def test_msgpack_round_trip(data: Any) -> None:
    assert decode(MSGPACK.encode(data), MSGPACK.flags, JSON) == data


def test_msgpack_bytes_are_msgpack() -> None:
    assert msgpack.unpackb(MSGPACK.encode({"a": [1, b"x"]}), raw=False) == {"a": [1, b"x"]}


def test_a_reader_decodes_by_the_mark_not_by_its_own_codec() -> None:
    item = {"job": "resize", "id": 7}
    for writer in (JSON, MSGPACK):
        for reader_default in CODECS.values():
            assert decode(writer.encode(item), writer.flags, reader_default) == item
    assert decode(b'{"a":1}', RAW.flags, JSON) == b'{"a":1}'  # raw stays bytes


def test_flags_zero_means_the_readers_codec() -> None:
    assert decode(b'{"a":1}', 0, JSON) == {"a": 1}
    assert decode(b'{"a":1}', 0, RAW) == b'{"a":1}'
    assert decode(msgpack.packb([1, 2]), 0, MSGPACK) == [1, 2]


@pytest.mark.parametrize(
    "flags",
    [1, 2, 16, 0x4B000000, 0x4B040000, 0x4B010001, 0x0B010000, 0x4B500001, 2**31 - 1],
)
def test_unknown_flags_are_refused_with_the_item(flags: int) -> None:
    with pytest.raises(DecodeError, match=f"unknown flags {flags}") as caught:
        decode(b"payload", flags, JSON)
    assert caught.value.body == b"payload"
    assert caught.value.flags == flags


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1,"])
def test_bad_json_is_a_decode_error(body: bytes) -> None:
    for flags in (JSON.flags, 0):
        with pytest.raises(DecodeError, match="not valid json") as caught:
            decode(body, flags, JSON)
        assert caught.value.body == body
        assert caught.value.flags == flags


@pytest.mark.parametrize("body", [b"\xc1", b"\x92\x01", b"\x01\x02"])
def test_bad_msgpack_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid msgpack") as caught:
        decode(body, MSGPACK.flags, JSON)
    assert caught.value.body == body


def test_codec_named() -> None:
    assert codec_named("json") is JSON
    assert codec_named("raw") is RAW
    assert codec_named("msgpack") is MSGPACK
    custom = Codec("upper", 0x4B5000FF, lambda data: str(data).upper().encode(), bytes)
    assert codec_named(custom) is custom
    with pytest.raises(UsageError, match="unknown codec 'pickle'"):
        codec_named("pickle")


def test_msgpack_missing_is_one_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # import msgpack -> ImportError
    with pytest.raises(UsageError, match="pip install"):
        codec_named("msgpack")
    with pytest.raises(DecodeError, match="pip install"):  # a marked item, read anyway
        decode(b"\x01", MSGPACK.flags, JSON)


def test_json_nested_too_deep_for_python_is_a_decode_error() -> None:
    """Valid JSON that json.loads cannot build (RecursionError) is still a poison item
    the worker must be able to dead-letter, not an unexpected crash."""
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(DecodeError, match="not valid json") as caught:
        decode(body, JSON.flags, RAW)
    assert caught.value.body == body


def test_by_flags_off_decodes_with_the_default_and_keeps_the_flags_in_errors() -> None:
    assert decode(b'{"a":1}', JSON.flags, RAW, False) == b'{"a":1}'
    assert decode(b"x\x9c", 16, RAW, False) == b"x\x9c"  # PHP: compressed
    with pytest.raises(DecodeError) as caught:
        decode(b"x\x9c", 16, JSON, False)
    assert (caught.value.body, caught.value.flags) == (b"x\x9c", 16)
