"""The ``http`` backend: send messages to another kestrelpy's ``POST /router/accept/<queue>``.

Send only. The other instance stores each message as one item of its own queue, and its
routers take it from there with a ``kestrel`` interface; :meth:`HttpBackend.take` raises
:class:`~kestrelpy.router.backends.base.SendOnly`.

```toml
[router.remote]
implementation = "http"
url = "http://10.0.0.7:2223"     # the other server's HTTP listener (a path prefix is kept)
token = "..."                     # its [server] router_accept_token
timeout_s = 10                    # on every connect, write and read
```

One POST per message over one keep-alive connection (stdlib ``http.client``), opened at the
first send. A message is taken when the reply is 2xx and says ``"stored": 1``: the receiver
answers after its commit, so :meth:`send` returns only once every message is durable there.
A keep-alive connection the peer closed while idle shows up as a dropped connection on the
next request; that request is sent once more on a new connection (at-least-once: if the
first one did arrive, the peer holds it twice). Anything else that fails raises
:class:`BackendError` naming the URL, the status and the peer's error text. Used from one
thread, as every backend.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from kestrelpy.router.backends.base import Backend, BackendError, Lease, SendOnly, checked_where
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import Message, pack

KEYS = ("url", "token", "timeout_s")
DEFAULT_TIMEOUT_S = 10.0
_MAX_REPLY_BYTES = 64 * 1024  # the accept endpoint answers a line of JSON; more is not it
_ERROR_TEXT_CHARS = 200
# What a request on a reused connection meets when the peer closed it while idle.
_DROPPED = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


def open_backend(name: str, options: Mapping[str, Any]) -> Backend:
    """An :class:`HttpBackend` from an interface's own keys, checked whole now."""
    where = checked_where(name, "http", options, KEYS)
    for key in ("url", "token"):
        if key not in options:
            raise RouterConfigError(f"{where}: missing key {key!r} (implementation 'http')")
    return HttpBackend(
        name,
        _url(options["url"], where),
        _token(options["token"], where),
        _timeout(options.get("timeout_s", DEFAULT_TIMEOUT_S), where),
    )


class HttpBackend:
    """Messages to a remote ``/router/accept/<queue>``, one POST each."""

    network = True

    def __init__(self, name: str, url: str, token: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.name = name  # the interface's, for error messages
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/octet-stream",
        }
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._reusable = False  # True once the connection has answered a request
        self._reused = False  # the request under way went out on a reusable connection
        self._closed = False

    def send(self, queue: str, messages: Sequence[Message]) -> None:
        """Each message in order; returns when the peer has committed every one.

        On an error, the messages before the failing one are stored there, the rest not.
        """
        if self._closed:
            raise BackendError(f"router interface {self.name!r}: {self.url}: backend closed")
        # The peer names queues by bytes, as its memcache port does: UTF-8, as the client.
        path = f"{self._prefix}/router/accept/{quote(queue, safe='')}"
        for message in messages:
            self._post(path, pack(message))

    def take(self, queue: str) -> Lease | None:
        raise SendOnly(
            "http interfaces only send: receive from the other instance's queue "
            "with a kestrel interface"
        )

    def close(self) -> None:
        """Nothing is ever leased here; only the connection to free. Idempotent."""
        self._closed = True
        self._drop()

    # ------------------------------------------------------------------ one request

    def _post(self, path: str, body: bytes) -> None:
        where = f"router interface {self.name!r}: POST {self._origin}{path}"
        try:
            status, reason, data = self._exchange(path, body)
        except _DROPPED as err:
            if not self._reused:
                raise self._failed(where, err) from err
            self._drop()  # a keep-alive connection closed while idle: once more, on a new one
            try:
                status, reason, data = self._exchange(path, body)
            except (OSError, http.client.HTTPException) as again:
                raise self._failed(where, again) from again
        except (OSError, http.client.HTTPException) as err:
            raise self._failed(where, err) from err
        if not 200 <= status < 300:
            raise BackendError(f"{where}: {status} {reason}: {_error_text(data)}")
        if not _says_stored(data):
            raise BackendError(
                f'{where}: {status} {reason} without {{"stored": 1}}: '
                f"is this a kestrelpy router_accept endpoint? {_error_text(data)}"
            )

    def _exchange(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        """One request and its whole reply. Sets ``_reused`` to whether the connection
        had answered before (only then is a dropped connection worth a second try)."""
        conn = self._connection()
        self._reused = self._reusable
        conn.request("POST", path, body=body, headers=self._headers)
        response = conn.getresponse()
        data = response.read(_MAX_REPLY_BYTES + 1)
        if response.will_close or not response.isclosed() or len(data) > _MAX_REPLY_BYTES:
            self._drop()  # the peer closes it, or unread bytes would garble the next reply
        else:
            self._reusable = True
        return response.status, response.reason, data[:_MAX_REPLY_BYTES]

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
            self._reusable = False
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._reusable = False

    def _failed(self, where: str, err: BaseException) -> BackendError:
        """The connection is in an unknown state after any failure: never reuse it."""
        self._drop()
        if isinstance(err, TimeoutError):
            why = f"no answer within {self._timeout_s:g}s"
        else:
            why = str(err) or type(err).__name__
        return BackendError(f"{where}: {why}")


def _says_stored(data: bytes) -> bool:
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(reply, dict) and reply.get("stored") == 1


def _error_text(data: bytes) -> str:
    """The peer's ``{"error": ...}``, or the start of whatever it answered."""
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError):
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        text: str = reply["error"]
    else:
        text = data.decode("utf-8", "replace").strip() or "(empty reply)"
    if len(text) > _ERROR_TEXT_CHARS:
        text = text[: _ERROR_TEXT_CHARS - 3] + "..."
    return text


# ------------------------------------------------------------------ options


def _url(value: Any, where: str) -> str:
    hint = 'a base URL such as "http://127.0.0.1:2223"'
    if not isinstance(value, str):
        raise RouterConfigError(f"{where}: url: expected {hint}, got {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as err:
        raise RouterConfigError(f"{where}: url {value!r}: {err}") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RouterConfigError(f"{where}: url {value!r}: expected {hint}")
    if parts.query or parts.fragment or parts.username is not None:
        raise RouterConfigError(
            f"{where}: url {value!r}: no query, fragment or user (the token is a key of its own)"
        )
    return value


def _token(value: Any, where: str) -> str:
    """As ``[server] router_accept_token``: printable ASCII without spaces, not empty."""
    if isinstance(value, str) and value and all("!" <= char <= "~" for char in value):
        return value
    raise RouterConfigError(
        f"{where}: token: expected the receiver's router_accept_token "
        "(printable ASCII without spaces)"
    )


def _timeout(value: Any, where: str) -> float:
    """Over 0: a zero timeout would make the socket non-blocking, not fast."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        value = None
    if value is None or not 0 < value < math.inf:
        raise RouterConfigError(f"{where}: timeout_s: expected a number of seconds over 0")
    return float(value)
