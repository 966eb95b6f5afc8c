"""``POST /router/accept/<queue>``: another instance's router stores one message here.

The receiving end of the router's ``http`` backend (docs/http.md). Off unless
``[server] router_accept = true``, and then only for requests carrying
``Authorization: Bearer <router_accept_token>`` (a token of its own, not the admin token:
a sending machine may fill queues, not flush them). Both are read per request, so a
``reload`` turns the endpoint on or off and rotates the token.

The body is the packed message (:mod:`kestrelpy.router.wire`) exactly as sent, and becomes
one item of ``<queue>``: this server's routers read it with a ``kestrel`` interface as any
other router item. The reply (201) is sent only after the commit that makes the item
durable, so a sender may forget a message once it is answered. Reactor thread only.

Pickle never crosses the network: a receiving router decodes a body by its
``content-encoding`` header, so a body is stored only when that header is present, spelled
exactly ``content-encoding`` (the only spelling a router reads; any other capitalisation
is refused), and names an encoding that runs no code (``json`` or ``raw``, exactly). The
header is read with the router's own ``unpack``, so this check sees exactly what the
receiving router will see. (The router, for its part, never unpickles a body whose header
does not name pickle.)
"""

from __future__ import annotations

import hmac
from typing import Any

from kestrelpy.errors import TooManyQueuesError
from kestrelpy.http.app import HttpApp, queue_name
from kestrelpy.router.encodings import ENCODINGS
from kestrelpy.router.wire import MARKER, BadMessage, unpack

# Encodings a network peer may name: decoding them runs no code the bytes choose.
SAFE_ENCODINGS = frozenset(name for name, encoding in ENCODINGS.items() if not encoding.runs_code)
_REFUSING_STATUSES = ("readonly", "quiescent")  # as the memcache port refuses a set


def accept(app: HttpApp, request: Any, raw_name: str) -> object:
    """Store the body as one item of the queue the path names; 201 after the commit.

    404 endpoint off, 401 no bearer token, 403 wrong token, 400 bad queue name or not a
    router message, 415 an encoding refused (pickle), 503 the server's status refuses
    writes, 507 the queue refused the item (full, or over its ``max_item_size``) or could
    not be created (``max_queues``, ``max_fanout_children``), 500 the
    commit failed. Bodies over the listener's limit were refused (413) before this runs.
    """
    settings = app.ctx.settings
    token = settings.router_accept_token
    if not settings.router_accept or not token:  # the config never allows on without a token
        return app.error(request, 404, "not found: [server] router_accept is off")
    refused = _authorized(app, request, token)
    if refused is not None:
        return refused
    name = queue_name(raw_name)
    if name is None:
        return app.error(request, 400, "bad queue name")
    status = app.ctx.status
    if status in _REFUSING_STATUSES:
        # 503: the sending router keeps the message and retries, as a memcache client
        # retries elsewhere on SERVER_ERROR.
        return app.error(request, 503, f"server is {status}")
    data = request.content.read()
    problem = message_problem(data)
    if problem is not None:
        return app.error(request, *problem)
    try:
        stored = app.ctx.collection.put(name, 0, 0, data, app.now_ms())
    except TooManyQueuesError as err:  # max_queues / max_fanout_children: nothing was created
        return app.error(request, 507, f"not stored: {err.reason}")
    if not stored:
        why = f"not stored: queue {name!r} is full or the item is over its max_item_size"
        return app.error(request, 507, why)
    return app.after_commit(request, {"queue": name, "stored": 1}, 201)


def message_problem(data: bytes) -> tuple[int, str] | None:
    """None when ``data`` is a packed router message a peer may send; else (code, why).

    O(size of the header line): the body after it is never parsed.
    """
    if not data.startswith(MARKER):
        return 400, "not a router message: expected a KPR/1 header line"
    try:
        headers = unpack(data).headers
    except BadMessage as err:
        return 400, str(err)
    except RecursionError:  # json.loads on deeply nested arrays
        return 400, "router item with a bad header line: nested too deep"
    # The receiving router reads exactly "content-encoding": another spelling of the name
    # would pass a check here and be ignored there (a trusted pickle interface would then
    # pick the encoding), so only the exact key, with an exact value, is accepted.
    spellings = [key for key in headers if key.lower() == "content-encoding"]
    if any(key != "content-encoding" for key in spellings):
        return 400, "content-encoding header must be spelled in lowercase, exactly once"
    value = headers.get("content-encoding")
    if value is None:
        return 415, "content-encoding header missing: the receiver would pick the encoding"
    if value.strip().lower() == "pickle":
        return 415, "pickle refused over the network"
    if value not in SAFE_ENCODINGS:
        known = ", ".join(sorted(SAFE_ENCODINGS))
        return 415, f"content-encoding {value!r} refused: expected one of {known}"
    return None


def _authorized(app: HttpApp, request: Any, token: str) -> bytes | None:
    """None when the request carries ``token``; else the error reply to send.

    As :meth:`HttpApp.authorized` (same header, constant-time compare), with the router's
    token in place of the admin token.
    """
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        request.setHeader(b"www-authenticate", b"Bearer")
        return app.error(request, 401, "missing bearer token")
    if not hmac.compare_digest(given.strip().encode("latin-1"), token.encode("ascii")):
        return app.error(request, 403, "wrong token")
    return None
