"""The HTTP site: which handler answers which method and path, CORS, and the static files.

One ``twisted.web`` resource answers every path (``isLeaf``) through a small route table,
so queue names in paths are URL-decoded once and a name holding ``/`` is refused, not
taken for more path. Requests are not logged (a scraper every second would fill the log).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote

from twisted.web.resource import Resource
from twisted.web.server import Site

from kestrelpy.http import api, ostrich
from kestrelpy.http.app import CORS_HEADERS, HttpApp

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
]


class HttpRoot(Resource):
    """Every path of the listener."""

    isLeaf = True

    def __init__(self, app: HttpApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._app = app

    def render(self, request: Any) -> object:
        for name, value in CORS_HEADERS:
            request.setHeader(name, value)
        method = request.method
        if method == b"OPTIONS":  # a CORS preflight: the headers above are the answer
            request.setResponseCode(204)
            return b""
        if method == b"HEAD":
            method = b"GET"
        raw = request.path.decode("latin-1").strip("/")
        segments = [unquote(part) for part in raw.split("/")] if raw else []
        if not segments or segments[0] == "static":
            return self._static(request, method, segments)
        handler, args = _route(segments, method)
        if handler is None:
            code = 405 if args else 404
            return self._app.error(request, code, "method not allowed" if args else "not found")
        return handler(self._app, request, *args)

    def _static(self, request: Any, method: bytes, segments: list[str]) -> bytes:
        """The dashboard: ``/`` is its page, ``/static/<file>`` its other files."""
        if method != b"GET":
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
    """The handler and its path arguments; (None, []) not found, (None, [x]) wrong method."""
    for pattern, methods in _ROUTES:
        if len(pattern) != len(segments):
            continue
        args = [seg for want, seg in zip(pattern, segments, strict=True) if want == "*"]
        if all(want in ("*", seg) for want, seg in zip(pattern, segments, strict=True)):
            handler = methods.get(method)
            return (handler, args) if handler is not None else (None, ["wrong method"])
    return None, []


class QuietSite(Site):
    """A Site that writes no access log and no "starting factory" lines."""

    noisy = False

    def log(self, request: Any) -> None:
        """No line per request."""


def make_site(app: HttpApp) -> Site:
    return QuietSite(HttpRoot(app))  # type: ignore[no-untyped-call]
