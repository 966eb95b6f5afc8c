"""The type of an item's payload as it travels from the wire to the store.

A payload is ``bytes`` when it arrived in one read, and a ``bytearray`` when it arrived in
pieces: the parser copies a large data block straight into one buffer and hands that
buffer on rather than copying it once more into ``bytes``. Nothing mutates it afterwards.
"""

from __future__ import annotations

from typing import TypeAlias

Payload: TypeAlias = bytes | bytearray

# Payloads of this many bytes and more are handled apart: they commit in a lane of their own
# (storage) and a queue keeps one in memory only when it is next in line (read-ahead window).
LARGE_ITEM = 64 * 1024
