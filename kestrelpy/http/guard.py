"""Who may use the HTTP listener from a browser: Host and Origin checks, and a body cap.

The API shows queue contents (peek) and, with the token, changes them. A web page the
operator happens to open must not reach it: responses carry CORS permission only for this
listener's own origin, the ``http_peers`` (whose dashboards merge this server) and, for a
listener on loopback, other loopback origins (several servers on one machine); and a
listener bound to loopback answers only requests addressed to a loopback name, which
defeats DNS rebinding (a hostile name resolving to 127.0.0.1). Request bodies are small
JSON documents: anything over ``MAX_BODY_BYTES`` is refused before it is stored.
"""

from __future__ import annotations

import ipaddress
from io import BytesIO
from typing import Any

from twisted.web.server import Request

MAX_BODY_BYTES = 64 * 1024
_LOOPBACK_NAMES = frozenset(("localhost", "localhost."))


def is_loopback(host: str) -> bool:
    """``localhost``, or an IPv4/IPv6 loopback literal (brackets allowed)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(listen_host: str, host_header: bytes | None) -> bool:
    """A loopback listener answers only requests addressed to a loopback name."""
    if not is_loopback(listen_host):
        return True  # bound to a real interface on purpose: names are the operator's
    if not host_header:
        return False
    host = host_header.decode("latin-1")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(name)


def allowed_origin(origin: bytes | None, own: str, peers: tuple[str, ...]) -> bytes | None:
    """The ``Origin`` to allow in CORS headers, or None: this listener or one of its peers."""
    if not origin:
        return None
    text = origin.decode("latin-1")
    if not text.startswith("http://"):
        return None
    address = text[len("http://") :]
    if address == own or address in peers:
        return origin
    host = address.rpartition(":")[0]
    if is_loopback(host) and is_loopback(own.rpartition(":")[0]):
        # Another listener on this machine (servers side by side on one host, or this one
        # opened as localhost): only local processes serve such pages.
        return origin
    return None


class BoundedRequest(Request):
    """A request whose body is kept in memory up to ``MAX_BODY_BYTES`` and refused beyond.

    Twisted spools a large body to a temporary file before any handler runs; an
    unauthenticated client could fill a disk that way.
    """

    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        self.content: Any = BytesIO()
        self.body_too_large = length is not None and length > MAX_BODY_BYTES

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large or self.content.tell() + len(data) > MAX_BODY_BYTES:
            self.body_too_large = True
            return
        self.content.write(data)
