"""What the HTTP handlers share: the server's parts, JSON replies, the token, durable writes.

A handler is a function ``(app, request, *path_args) -> bytes | NOT_DONE_YET``. It answers
through :meth:`HttpApp.json` (or :meth:`HttpApp.error`). Mutations check the admin token
first (:meth:`HttpApp.authorized`) and answer only after the commit that makes them durable
(:meth:`HttpApp.after_commit`).
Reactor thread only.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.web.server import NOT_DONE_YET

from kestrelpy.clock import now_ms
from kestrelpy.commits import CommitGate
from kestrelpy.wire.memcache import is_queue_name

if TYPE_CHECKING:
    from kestrelpy.service import ServerContext

JSON_TYPE = b"application/json"
# Sent, with the allowed Origin itself, only to origins guard.allowed_origin accepts.
CORS_HEADERS = (
    (b"access-control-allow-headers", b"Authorization, Content-Type"),
    (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
)


@dataclass
class HttpApp:
    """The server as the HTTP handlers see it."""

    ctx: ServerContext
    commits: CommitGate
    render_metrics: Callable[[], bytes]
    ready: Callable[[], bool]
    address: str = ""  # "host:port" as bound (set once listening): CORS and Host checks

    def now_ms(self) -> int:
        return now_ms(self.ctx.clock)

    # ------------------------------------------------------------------ replies

    def json(self, request: Any, value: object, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", JSON_TYPE)
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"

    def error(self, request: Any, code: int, why: str) -> bytes:
        return self.json(request, {"error": why}, code)

    def text(self, request: Any, body: bytes, content_type: bytes = b"text/plain") -> bytes:
        request.setHeader(b"content-type", content_type)
        return body

    # ------------------------------------------------------------------ the token

    def authorized(self, request: Any) -> bytes | None:
        """None when the request carries the admin token; else the error reply to send.

        With no token configured every mutation is refused: an open admin port on a shared
        machine must not let anyone flush queues.
        """
        token = self.ctx.settings.admin_token
        if not token:
            return self.error(request, 403, "admin token not configured: set [server] admin_token")
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            request.setHeader(b"www-authenticate", b"Bearer")
            return self.error(request, 401, "missing bearer token")
        if not hmac.compare_digest(given.strip().encode("latin-1"), token.encode("ascii")):
            return self.error(request, 403, "wrong token")
        return None

    # ------------------------------------------------------------------ durable writes

    def after_commit(self, request: Any, reply: object, code: int = 200) -> object:
        """Answer ``reply`` (with ``code``) once the writes just staged are committed (500
        if that fails). No tickets: nothing was left to commit (an item handed straight to
        a waiting reader, say), so answer now."""
        tickets = self.commits.take_write_tickets()
        if not tickets:
            return self.json(request, reply, code)
        waiting = [len(tickets), True]
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _failure: gone.append(True))

        def committed(ok: bool) -> None:
            waiting[0] -= 1
            waiting[1] = waiting[1] and ok
            if waiting[0] or gone:
                return  # more commits to wait for, or the client hung up
            if waiting[1]:
                body = self.json(request, reply, code)
            else:
                body = self.error(request, 500, "store failure: write not committed")
            request.write(body)
            request.finish()

        for ticket in tickets:
            self.commits.when_committed(committed, ticket)
        return NOT_DONE_YET


def queue_name(raw: str) -> str | None:
    """The queue a path names, or None when it is no valid queue name."""
    try:
        encoded = raw.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return raw if is_queue_name(encoded) else None
