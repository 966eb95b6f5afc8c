"""The HTTP site: which handler answers which method and path, CORS, and the static files.

One ``twisted.web`` resource answers every path (``isLeaf``) through a small route table,
so queue names in paths are URL-decoded once and a name holding ``/`` is refused, not
taken for more path. Who may ask is :mod:`kestrelpy.http.guard`'s business; a handler
that raises answers a JSON 500 and is logged. Requests are not logged one by one (a
scraper every second would fill the log).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from kestrelpy.http import accept, api, ostrich
from kestrelpy.http.app import CORS_HEADERS, HttpApp
from kestrelpy.http.guard import MAX_BODY_BYTES, BoundedRequest, allowed_origin, host_allowed

Handler = Callable[..., object]
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".png": b"image/png",
    ".svg": b"image/svg+xml",
}
# path (segments, "*" = a queue name) -> {method: handler}
_ROUTES: list[tuple[tuple[str, ...], dict[bytes, Handler]]] = [
    (("ping",), {b"GET": ostrich.ping}),
    (("stats.json",), {b"GET": ostrich.stats_json}),
    (("stats",), {b"GET": ostrich.stats_json}),
    (("admin", "stats"), {b"GET": ostrich.stats_json}),
    (("reload",), {b"GET": ostrich.reload, b"POST": ostrich.reload}),
    (("shutdown",), {b"GET": ostrich.shutdown, b"POST": ostrich.shutdown}),
    (("healthz",), {b"GET": ostrich.healthz}),
    (("readyz",), {b"GET": ostrich.readyz}),
    (("metrics",), {b"GET": ostrich.metrics}),
    (("api", "server"), {b"GET": api.server}),
    (("api", "queues"), {b"GET": api.queues}),
    (("api", "queues", "*"), {b"GET": api.one_queue, b"DELETE": api.delete}),
    (("api", "queues", "*", "peek"), {b"GET": api.peek}),
    (("api", "queues", "*", "flush"), {b"POST": api.flush}),
    (("api", "status"), {b"POST": api.status}),
    (("api", "flush_all"), {b"POST": api.flush_all}),
    (("router", "accept", "*"), {b"POST": accept.accept}),
]
# GET handlers that only read: HEAD may run them (not /reload, /shutdown).
_READS = frozenset(
    (
        ostrich.ping,
        ostrich.stats_json,
        ostrich.healthz,
        ostrich.readyz,
        ostrich.metrics,
        api.server,
        api.queues,
        api.one_queue,
        api.peek,
    )
)


class HttpRoot(Resource):
    """Every path of the listener."""

    isLeaf = True
    _log = Logger()

    def __init__(self, app: HttpApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._app = app

    def render(self, request: Any) -> object:
        app = self._app
        listen_host = app.address.rpartition(":")[0]
        if not host_allowed(listen_host, request.getHeader(b"host")):
            return app.error(request, 421, "this listener answers loopback names only")
        origin = allowed_origin(
            request.getHeader(b"origin"), app.address, app.ctx.settings.http_peers
        )
        request.setHeader(b"vary", b"Origin")
        if origin is not None:
            request.setHeader(b"access-control-allow-origin", origin)
            for name, value in CORS_HEADERS:
                request.setHeader(name, value)
        method = request.method
        if method == b"OPTIONS":  # a CORS preflight: the headers above are the answer
            request.setResponseCode(204)
            return b""
        if request.body_too_large:
            return app.error(request, 413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return self._dispatch(request, method)
        except Exception:
            self._log.failure("HTTP {method} {path}", method=method, path=request.path)
            return app.error(request, 500, "internal error (logged)")

    def _dispatch(self, request: Any, method: bytes) -> object:
        raw = request.path.decode("latin-1").strip("/")
        # Queue names are bytes read as latin-1 (as on the memcache port): %XX is one byte.
        segments = [unquote_to_bytes(part).decode("latin-1") for part in raw.split("/")]
        if segments == [""]:
            segments = []
        if not segments or segments[0] == "static":
            return self._static(request, method, segments)
        handler, args = _route(segments, method)
        if handler is None:
            if args:
                request.setHeader(b"allow", args[0].encode())
                return self._app.error(request, 405, "method not allowed")
            return self._app.error(request, 404, "not found")
        return handler(self._app, request, *args)

    def _static(self, request: Any, method: bytes, segments: list[str]) -> bytes:
        """The dashboard: ``/`` is its page, ``/static/<file>`` its other files."""
        if method not in (b"GET", b"HEAD"):
            return self._app.error(request, 405, "method not allowed")
        name = "index.html" if not segments else "/".join(segments[1:])
        if not _STATIC_NAME.match(name):
            return self._app.error(request, 404, "not found")
        path = resources.files("kestrelpy.http").joinpath("static", name)
        if not path.is_file():
            return self._app.error(request, 404, "not found")
        suffix = name[name.rfind(".") :]
        request.setHeader(b"content-type", _CONTENT_TYPES.get(suffix, b"application/octet-stream"))
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # The page has no inline script or style; it reads other servers (http_peers).
        request.setHeader(b"content-security-policy", b"default-src 'self'; connect-src *")
        return path.read_bytes()


def _route(segments: list[str], method: bytes) -> tuple[Handler | None, list[str]]:
    """The handler and its path arguments; (None, []) not found, (None, [allowed methods])
    for a wrong method. HEAD runs a GET handler only where GET changes nothing."""
    for pattern, methods in _ROUTES:
        if len(pattern) != len(segments):
            continue
        args = [seg for want, seg in zip(pattern, segments, strict=True) if want == "*"]
        if all(want in ("*", seg) for want, seg in zip(pattern, segments, strict=True)):
            handler = methods.get(method)
            if handler is None and method == b"HEAD" and methods.get(b"GET") in _READS:
                handler = methods[b"GET"]
            if handler is None:
                return None, [", ".join(sorted(m.decode() for m in methods))]
            return handler, args
    return None, []


class QuietSite(Site):
    """A Site that writes no access log line per request, with bounded request bodies."""

    noisy = False
    requestFactory = BoundedRequest

    def log(self, request: Any) -> None:
        """No line per request."""


def make_site(app: HttpApp) -> Site:
    return QuietSite(HttpRoot(app))  # type: ignore[no-untyped-call]
