"""How a frame is stored as one queue item on byte-carrying backends (local, kestrel, http).

``KPR/1 <headers as compact JSON>\\n<body bytes>``. The marker lets a router read items that
other producers put on a Kestrel queue with no headers (a PHP worker's JSON, say): an item
without it is a body with no headers, decoded with the interface's own encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MARKER = b"KPR/1 "


@dataclass(frozen=True, slots=True)
class Message:
    """A frame on its way through a backend: headers, and the body already encoded."""

    headers: dict[str, str]
    body: bytes


class BadMessage(ValueError):
    """Stored bytes that carry the marker but not a valid header line."""


def pack(message: Message) -> bytes:
    header_line = json.dumps(message.headers, separators=(",", ":"), sort_keys=True)
    return MARKER + header_line.encode() + b"\n" + message.body


def unpack(data: bytes) -> Message:
    if not data.startswith(MARKER):
        return Message({}, data)
    end = data.find(b"\n")
    if end < 0:
        raise BadMessage("router item without the end of its header line")
    try:
        headers = json.loads(data[len(MARKER) : end])
    except ValueError as err:
        raise BadMessage(f"router item with a bad header line: {err}") from err
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise BadMessage("router item headers must be a JSON object of strings")
    return Message(headers, data[end + 1 :])
