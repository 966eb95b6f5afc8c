"""The store's on-disk layout: how keys and values are encoded, without touching LMDB.

One LMDB environment in the data directory holds three named databases:

* ``items``: key = queue id (u32, big-endian) + item id (u64, big-endian), so every queue is
  one ordered key range and key order is FIFO order. Value = ``HEADER`` (flags, expiry ms,
  added ms) + payload.
* ``queues``: queue name (bytes) -> queue id + creation time. Ids are never reused, so a
  queue deleted and re-created in the same batch cannot collide with its old items.
* ``meta``: per-queue item/byte counters (updated in the same transaction as the items they
  count, so startup needs no scan), the next queue id, and small server records (status).

Pure ``struct`` encodings: the staged batches (:mod:`kestrelpy.commits`) encode their
writes with them, and the storage (:mod:`kestrelpy.storage.lmdb_store`) writes them as
they are.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from kestrelpy.payload import Payload

ITEM_KEY = struct.Struct(">IQ")  # queue id, item id
HEADER = struct.Struct(">Iqq")  # flags, expiry unix ms (0 = none), added unix ms
HEADER_SIZE = HEADER.size
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
item_header = HEADER.pack  # (flags, expiry ms, added ms) -> the start of an items value
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


def decode_item(key: bytes, value: Any) -> StoredItem:
    """An item from its key and value; the payload is copied, so ``value`` may be a
    buffer that dies with its read transaction."""
    flags, expiry_ms, added_ms = HEADER.unpack_from(value)
    return StoredItem(
        ITEM_KEY.unpack(key)[1], flags, expiry_ms, added_ms, bytes(value[HEADER_SIZE:])
    )
