"""The store's on-disk layout: how keys and values are encoded, without touching LMDB.

One LMDB environment in the data directory holds three named databases:

* ``items``: key = queue id (u32, big-endian) + item id (u64, big-endian), so every queue is
  one ordered key range and key order is FIFO order. Value = ``HEADER`` (flags, expiry ms,
  added ms, then a CRC-32 of those three fields and the payload) + payload. The checksum is
  verified whenever an item is read back from disk: a flipped bit is refused, never served.
* ``queues``: queue name (bytes) -> queue id + creation time. Ids are never reused, so a
  queue deleted and re-created in the same batch cannot collide with its old items.
* ``meta``: per-queue item/byte counters (updated in the same transaction as the items they
  count, so startup needs no scan), the next queue id, small server records (status), and
  the format of the item values (``FORMAT_KEY``): stores written before the checksum (no
  format key, ``HEADER_V1``) are upgraded in place when the server opens them.

Pure ``struct`` encodings: the staged batches (:mod:`kestrelpy.commits`) encode their
writes with them, and the storage (:mod:`kestrelpy.storage.lmdb_store`) writes them as
they are.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple
from zlib import crc32

from kestrelpy.errors import CorruptItemError
from kestrelpy.payload import Payload

ITEM_KEY = struct.Struct(">IQ")  # queue id, item id
HEADER = struct.Struct(">IqqI")  # flags, expiry unix ms (0 = none), added unix ms, CRC-32
HEADER_SIZE = HEADER.size
FIELDS = struct.Struct(">Iqq")  # the header before its checksum; all of format 1's header
FIELDS_SIZE = FIELDS.size
HEADER_V1 = FIELDS  # format 1 (no checksum): upgraded when a server opens it
CHECKSUM = struct.Struct(">I")
FORMAT_KEY = b"format"  # in meta: the item value format; absent in format 1 stores
FORMAT = b"2"
QUEUE_RECORD = struct.Struct(">Iq")  # queue id, create time unix s
COUNTERS = struct.Struct(">qq")  # items, payload bytes
U32 = struct.Struct(">I")  # a queue id alone: the prefix of its key range, or next_qid
NEXT_QID_KEY = b"next_qid"
COUNTER_PREFIX = b"c"  # + queue id (U32) -> COUNTERS
RECORD_PREFIX = b"r"  # + record name -> record bytes
MAX_ID = 2**64 - 1

# Per-item encoders, bound once, for the hot paths to call as plain functions: CPython 3.11
# compiles a method call on an imported name (``ITEM_KEY.pack(...)``) as an attribute load
# that builds a bound method on every call.
item_key = ITEM_KEY.pack  # (queue id, item id) -> items key
item_fields = FIELDS.pack  # (flags, expiry ms, added ms) -> a value's first bytes
item_checksum = CHECKSUM.pack  # crc32(payload, crc32(fields)) -> the next four
key_fields = ITEM_KEY.unpack  # items key -> (queue id, item id)
queue_of_key = U32.unpack_from  # items key (or a longer buffer) -> (queue id,)


class StoredItem(NamedTuple):
    """One queued item as the store hands it back (payload copied out of LMDB)."""

    item_id: int
    flags: int
    expiry_ms: int
    added_ms: int
    data: Payload


class QueueRecord(NamedTuple):
    """What startup learns about a stored queue without scanning its items."""

    name: str
    queue_id: int
    create_time: int
    head_id: int  # first stored item id (== tail_id when empty)
    tail_id: int  # one past the last stored item id
    items: int
    payload_bytes: int


def encode_item(flags: int, expiry_ms: int, added_ms: int, data: Payload) -> bytes:
    """An items value: the header fields, their and the payload's checksum, the payload."""
    fields = item_fields(flags, expiry_ms, added_ms)
    return b"".join((fields, item_checksum(crc32(data, crc32(fields))), data))


def decode_item(key: bytes, value: Any) -> StoredItem:
    """An item from its key and value; the payload is copied, so ``value`` may be a
    buffer that dies with its read transaction. Raises :class:`CorruptItemError` when the
    header or the payload does not match the checksum (or the value is too short to hold
    a header)."""
    item_id = ITEM_KEY.unpack(key)[1]
    if len(value) < HEADER_SIZE:
        raise CorruptItemError(item_id, 0)
    flags, expiry_ms, added_ms, checksum = HEADER.unpack_from(value)
    data = bytes(value[HEADER_SIZE:])
    if crc32(data, crc32(value[:FIELDS_SIZE])) != checksum:
        raise CorruptItemError(item_id, len(data))
    return StoredItem(item_id, flags, expiry_ms, added_ms, data)


def upgrade_value(value: Any) -> bytes:
    """A format 1 items value (no checksum) in the current format."""
    flags, expiry_ms, added_ms = HEADER_V1.unpack_from(value)
    return encode_item(flags, expiry_ms, added_ms, bytes(value[HEADER_V1.size :]))
