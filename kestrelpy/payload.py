"""The type of an item's payload as it travels from the wire to the store.

A payload is ``bytes`` when it arrived in one read, and a ``bytearray`` when it arrived in
pieces: the parser copies a large data block straight into one buffer and hands that
buffer on rather than copying it once more into ``bytes``. Nothing mutates it afterwards.
"""

from __future__ import annotations

from typing import TypeAlias

Payload: TypeAlias = bytes | bytearray

# Big payloads are handled apart: from this size on they commit in a lane of their own
# (commits), and above it a queue keeps one in memory only when it is next in line
# (read-ahead window). The boundary item (exactly 64 KiB) is large only for the lane.
LARGE_ITEM = 64 * 1024
