"""How job data becomes bytes on the queue, and how a reader knows which way back.

The codec that wrote an item is marked in the memcache flags, which kestrelpy stores and
returns (``preserve_flags``). Kestrel dropped flags, and a PHP or shell producer sends 0, so
flags 0 means "no mark": the reader decodes with its own configured codec. A mark this
module does not know is refused with :class:`DecodeError` rather than guessed at.

The marks are ``0x4B`` ("K") in the top byte and a codec number in the next one, with the
low half zero: other memcache clients read their own type and compression bits there
(pymemcache's serde, pylibmc, PHP's memcached extension: type in bits 0-3, compression in
4-7), so to all of them a marked item is a plain string and a PHP worker can read what a
kestrelpy producer wrote. (Marks in the low half made PHP take JSON for an integer, 0.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kestrelpy.client.errors import DecodeError, UsageError

_MARK = 0x4B00_0000
_MARK_MASK = 0xFF00_FFFF


@dataclass(frozen=True, slots=True)
class Codec:
    """One way of turning job data into bytes; ``flags`` marks items it wrote."""

    name: str
    flags: int
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


_JSON_DECODER = json.JSONDecoder()


def _json_decode(body: bytes) -> Any:
    # UTF-8, as every JSON producer here writes it; json.loads would first sniff for
    # UTF-16/32 in Python code, on every item
    return _JSON_DECODER.decode(body.decode())


def _json_encode(data: Any) -> bytes:
    # one encoder for every item: json.dumps with arguments builds a new one per call
    return _JSON_ENCODER.encode(data).encode()


def _raw_encode(data: Any) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    raise TypeError(f"the raw codec sends bytes or str, not {type(data).__name__}")


def _msgpack() -> Any:
    try:
        import msgpack
    except ImportError:
        raise UsageError(
            "the msgpack codec needs the msgpack package: pip install 'kestrelpy[msgpack]'"
        ) from None
    return msgpack


def _msgpack_encode(data: Any) -> bytes:
    packed: bytes = _msgpack().packb(data, use_bin_type=True)
    return packed


def _msgpack_decode(body: bytes) -> Any:
    return _msgpack().unpackb(body, raw=False)


JSON = Codec("json", _MARK | 1 << 16, _json_encode, _json_decode)
RAW = Codec("raw", _MARK | 2 << 16, _raw_encode, bytes)
MSGPACK = Codec("msgpack", _MARK | 3 << 16, _msgpack_encode, _msgpack_decode)

CODECS: dict[str, Codec] = {codec.name: codec for codec in (JSON, RAW, MSGPACK)}
_BY_FLAGS: dict[int, Codec] = {codec.flags: codec for codec in CODECS.values()}


def codec_named(name: str | Codec) -> Codec:
    """The codec for a ``codec=`` argument; msgpack is checked here, at construction, so a
    missing package is one clear error up front instead of one per item."""
    if isinstance(name, Codec):
        return name
    codec = CODECS.get(name)
    if codec is None:
        raise UsageError(f"unknown codec {name!r}: expected one of {', '.join(CODECS)}")
    if codec is MSGPACK:
        _msgpack()
    return codec


def decode(body: bytes, flags: int, default: Codec, by_flags: bool = True) -> Any:
    """Decode an item: by its mark, or with ``default`` when it carries none (flags 0) or
    when ``by_flags`` is off (a reader that wants every item its own way, marks and other
    clients' flags ignored). A :class:`DecodeError` carries the flags as read."""
    if flags == 0 or not by_flags:
        codec = default
    elif flags & _MARK_MASK == _MARK and flags in _BY_FLAGS:
        codec = _BY_FLAGS[flags]
    else:
        raise DecodeError(f"unknown flags {flags}: not written by a kestrelpy codec", body, flags)
    try:
        return codec.decode(body)
    except (ValueError, TypeError, RecursionError, UsageError) as err:  # json: deep nesting
        raise DecodeError(f"not valid {codec.name}: {err}", body, flags) from err
