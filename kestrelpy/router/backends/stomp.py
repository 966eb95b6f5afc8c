"""The ``stomp`` backend: queues on a STOMP 1.2 broker (ActiveMQ, RabbitMQ), through stomp.py.

Where things go:

- Queue ``q`` is the destination ``destination_prefix + q`` (``/queue/q``: a durable queue
  on both brokers).
- A router header ``h`` travels as the STOMP header ``kpr-h``, and a received message's
  headers are exactly its ``kpr-`` headers with the prefix taken off. The router's own
  names collide with STOMP's and the brokers' (``destination``, ``message-id``,
  ``timestamp``, ``content-encoding`` are all claimed or rewritten by one broker or the
  other), and each broker adds bookkeeping of its own to what it delivers (``ack``,
  ``subscription``, ``redelivered``; ActiveMQ's ``priority`` and ``expires``; RabbitMQ
  echoes the sender's ``receipt``). With the prefix neither can overwrite or leak into the
  router's headers. A message that another producer sent has no ``kpr-`` headers and comes
  back with none, like an item without the ``KPR/1`` marker on the byte backends.
  Names must be letters, digits, ``.``, ``_`` or ``-`` (stomp.py escapes values, not
  names); values are any text without NUL.
- The body travels as given, with its ``content-length`` always set (NUL bytes are safe, and
  ActiveMQ keeps it a bytes message), and ``content-type: application/json`` for a
  JSON-encoded body, ``application/octet-stream`` otherwise, for other consumers.

Guarantees (see ``backends/base.py`` for the contract):

- ``send`` marks every SEND ``persistent: true`` and asks for a receipt, and returns only
  when every receipt has come back: both brokers answer a persistent SEND's receipt once
  they have stored it (RabbitMQ after its publisher confirm).
- ``take`` subscribes once per queue, with ``client-individual`` acks and a prefetch of one
  (``activemq.prefetchSize`` and ``prefetch-count``: each broker ignores the other's), and
  waits up to ``receive_wait_ms`` for the broker to push a message. So a backend holds at
  most one unacknowledged message per queue: ``take`` on a queue whose lease is still open
  returns None.
- ``ack`` is an ACK frame, written and not waited for. A receipt per ACK would stall
  every message ~40 ms on ActiveMQ, whose STOMP connector does not set TCP_NODELAY: it
  holds the next MESSAGE until we acknowledge the RECEIPT's TCP segment, which Linux delays
  while we send nothing (measured: 47 ms per take and ack with a receipt, under 3 ms
  without). The broker handles the ACK before any later frame of the connection, and
  ``close`` waits for the DISCONNECT receipt; a connection lost before the broker read it
  means the message is delivered again, as when the consumer dies just before ``ack``.
- ``release`` gives the message back at its place in the queue, and waits for the receipt.
  RabbitMQ requeues a NACKed message; ActiveMQ 5 treats NACK as a poison acknowledgement
  and moves the message to ``ActiveMQ.DLQ``, so there ``release`` unsubscribes instead (the
  broker gives a removed consumer's unacknowledged messages back, first in line, marked
  ``redelivered``) and the next ``take`` subscribes again. ``release = "auto"`` picks by
  the ``server`` header of the broker's CONNECTED frame.
- A lost connection (broker restart, network) gives every leased message back to the broker;
  the next call connects again. ``release`` of a lease from a lost connection does nothing
  (the message is back already); ``ack`` raises BackendError (it will be delivered again:
  at least once). ``close`` disconnects, which gives back what is still leased.

Threads: a backend is used from one thread, but stomp.py reads frames on a thread of its
own. That thread only calls the ``on_*`` methods of :class:`_Link`, which hand messages over
through one ``queue.Queue`` per subscription and note receipts, errors and the end of the
connection under one Condition; nothing else is shared.
"""

from __future__ import annotations

import contextlib
import itertools
import queue as queues
import re
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kestrelpy.router.backends.base import BackendError, checked_where
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import Message

try:
    import stomp
except ImportError:  # the optional ``stomp`` extra; open_backend says how to install it
    stomp = None

HEADER_PREFIX = "kpr-"
_HEADER_NAME = re.compile(r"[A-Za-z0-9._-]+")
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError,)
if stomp is not None:
    _NETWORK_ERRORS += (stomp.exception.StompException,)

Release = Literal["auto", "nack", "unsubscribe"]
_RELEASES = ("auto", "nack", "unsubscribe")


@dataclass(frozen=True, slots=True)
class StompOptions:
    """An interface's stomp settings, checked whole by :func:`open_backend`."""

    host: str = "127.0.0.1"
    port: int = 61613
    login: str = "guest"
    passcode: str = "guest"
    vhost: str = "/"  # the CONNECT frame's host header: RabbitMQ's virtual host
    destination_prefix: str = "/queue/"
    timeout_s: float = 10.0  # connecting, and every receipt (send, subscribe, release)
    heartbeat_ms: int = 0  # both ways; 0: none (a dead peer shows when TCP notices)
    receive_wait_ms: int = 200  # how long take() waits for a push; 0: only what has come
    release: Release = "auto"  # auto: unsubscribe on ActiveMQ 5, NACK elsewhere

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


_KEYS = frozenset(StompOptions.__dataclass_fields__)


def open_backend(name: str, options: Mapping[str, Any]) -> StompBackend:
    """A backend for interface ``name``; no network I/O until the first call."""
    where = checked_where(name, "stomp", options, _KEYS)
    default = StompOptions()
    host = _text(options, "host", default.host, where, empty=False)
    port = _whole(options, "port", default.port, where, lowest=1)
    if port > 65535:
        raise RouterConfigError(f"{where}: port: {port} is not a TCP port (1-65535)")
    timeout_s = options.get("timeout_s", default.timeout_s)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise RouterConfigError(f"{where}: timeout_s: expected a positive number of seconds")
    release = options.get("release", default.release)
    if release not in _RELEASES:
        raise RouterConfigError(f"{where}: release: {release!r}: expected one of {_RELEASES}")
    settings = StompOptions(
        host=host,
        port=port,
        login=_text(options, "login", default.login, where),
        passcode=_text(options, "passcode", default.passcode, where),
        vhost=_text(options, "vhost", default.vhost, where, empty=False),
        destination_prefix=_text(options, "destination_prefix", default.destination_prefix, where),
        timeout_s=float(timeout_s),
        heartbeat_ms=_whole(options, "heartbeat_ms", default.heartbeat_ms, where, lowest=0),
        receive_wait_ms=_whole(
            options, "receive_wait_ms", default.receive_wait_ms, where, lowest=0
        ),
        release=release,
    )
    if stomp is None:
        raise RouterConfigError(
            f"{where}: implementation 'stomp' needs stomp.py: pip install 'kestrelpy[stomp]'"
        )
    return StompBackend(name, settings)


def _text(
    options: Mapping[str, Any], key: str, default: str, where: str, empty: bool = True
) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or (not empty and not value):
        raise RouterConfigError(f"{where}: {key}: expected a{'' if empty else ' non-empty'} string")
    return value


def _whole(options: Mapping[str, Any], key: str, default: int, where: str, lowest: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise RouterConfigError(f"{where}: {key}: expected a whole number, at least {lowest}")
    return value


def stomp_headers(message: Message) -> dict[str, str]:
    """The SEND headers that carry ``message``'s headers and describe its body (without the
    destination, persistence and receipt). ValueError names a header that cannot travel."""
    headers = {}
    for name, value in message.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r}: use letters, digits, '.', '_' or '-'")
        if "\0" in value:
            raise ValueError(f"header {name!r}: a value cannot hold a NUL character")
        headers[HEADER_PREFIX + name] = value
    json_body = message.headers.get("content-encoding") == "json"
    headers["content-type"] = "application/json" if json_body else "application/octet-stream"
    headers["content-length"] = str(len(message.body))
    return headers


def router_message(headers: Mapping[str, str], body: bytes | None) -> Message:
    """A delivered MESSAGE frame as the router sees it: its ``kpr-`` headers, unprefixed."""
    ours = {k[len(HEADER_PREFIX) :]: v for k, v in headers.items() if k.startswith(HEADER_PREFIX)}
    return Message(ours, bytes(body or b""))


class _Link:
    """One STOMP connection and what stomp.py's receiver thread reports on it.

    The receiver thread calls only the ``on_*`` methods; the backend's thread does the rest.
    ``inboxes`` get each subscription's MESSAGE frames, and None when the link ends (so a
    waiting ``take`` wakes up at once).
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.server = ""  # the CONNECTED frame's server header, e.g. "ActiveMQ/5.17.2"
        self.subscriptions: dict[str, str] = {}  # queue -> subscription id
        self._cond = threading.Condition()
        self._connected = False
        self._failure: str | None = None  # why the link ended, once it has
        self._receipts: set[str] = set()  # receipt ids the broker has answered
        self._inboxes: dict[str, queues.Queue[Any]] = {}  # subscription id -> frames
        self._ids = itertools.count(1)

    @property
    def alive(self) -> bool:
        with self._cond:
            return self._connected and self._failure is None

    @property
    def failure(self) -> str:
        with self._cond:
            return self._failure or "not connected"

    def new_id(self, kind: str) -> str:
        return f"kpr-{kind}-{next(self._ids)}"

    def open_inbox(self, subscription: str) -> queues.Queue[Any]:
        inbox: queues.Queue[Any] = queues.Queue()
        with self._cond:
            self._inboxes[subscription] = inbox
            if self._failure is not None:
                inbox.put(None)
        return inbox

    def close_inbox(self, subscription: str) -> None:
        with self._cond:
            self._inboxes.pop(subscription, None)

    def inbox(self, subscription: str) -> queues.Queue[Any] | None:
        with self._cond:
            return self._inboxes.get(subscription)

    def wait_connected(self, timeout_s: float) -> None:
        """Until CONNECTED; _LinkFailed with the reason on refusal (ERROR) or timeout."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._connected or self._failure, timeout_s)
            if self._failure is not None:
                raise _LinkFailed(self._failure)
            if not done:
                raise _LinkFailed(f"no CONNECTED frame within {timeout_s:g} s")

    def wait_receipts(self, receipts: Iterable[str], timeout_s: float) -> None:
        """Until the broker has answered every receipt: it has done what those frames asked."""
        wanted = set(receipts)
        with self._cond:
            self._cond.wait_for(
                lambda: wanted <= self._receipts or self._failure is not None, timeout_s
            )
            if wanted <= self._receipts:
                self._receipts -= wanted
                return
            if self._failure is not None:
                raise _LinkFailed(self._failure)
            raise _LinkFailed(f"no RECEIPT within {timeout_s:g} s")

    def wait_ended(self, timeout_s: float) -> None:
        """Until the connection is over (after a DISCONNECT), or the time is up."""
        with self._cond:
            self._cond.wait_for(lambda: self._failure is not None, timeout_s)

    # -- stomp.py's receiver thread ---------------------------------------------------------

    def on_connected(self, frame: Any) -> None:
        with self._cond:
            self.server = frame.headers.get("server", "")
            self._connected = True
            self._cond.notify_all()

    def on_message(self, frame: Any) -> None:
        inbox = self.inbox(frame.headers.get("subscription", ""))
        if inbox is not None:  # else: unsubscribed meanwhile; the broker takes it back
            inbox.put(frame)

    def on_receipt(self, frame: Any) -> None:
        with self._cond:
            self._receipts.add(frame.headers.get("receipt-id", ""))
            self._cond.notify_all()

    def on_error(self, frame: Any) -> None:
        """The broker refused something; it closes the connection after an ERROR frame."""
        why = frame.headers.get("message", "").strip()
        detail = bytes(frame.body or b"").decode("utf-8", "replace").strip()
        self._end("broker ERROR: " + ": ".join(part for part in (why, detail) if part))

    def on_disconnected(self) -> None:
        self._end("connection lost")

    def on_heartbeat_timeout(self) -> None:
        self._end("no heart-beat from the broker")

    def _end(self, why: str) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = why
            for inbox in self._inboxes.values():
                inbox.put(None)
            self._cond.notify_all()


def _no_delay(sock: socket.socket | None) -> None:
    """TCP_NODELAY: frames are small and we wait for the answers, so Nagle would only hold
    them back (and an ACK held back, then lost with the process, is a message delivered
    again). None or closed: the broker hung up at once, and wait_connected says why."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _LinkFailed(Exception):
    """Internal: a link could not do something; the backend adds the place and drops it."""


_FAILURES: tuple[type[BaseException], ...] = (_LinkFailed, *_NETWORK_ERRORS)


class StompLease:
    """One message taken from a subscription; ended by exactly one ack() or release()."""

    def __init__(
        self, backend: StompBackend, link: _Link, queue: str, ack_id: str, message: Message
    ) -> None:
        self._backend = backend
        self.link = link
        self.queue = queue
        self.ack_id = ack_id  # the MESSAGE frame's ack header, which ACK/NACK name
        self._message = message
        self._ended = False

    @property
    def message(self) -> Message:
        return self._message

    def ack(self) -> None:
        self._end("ack")
        self._backend.confirm(self)

    def release(self) -> None:
        self._end("release")
        self._backend.give_back(self)

    def _end(self, what: str) -> None:
        if self._ended:
            raise BackendError(f"{what}: this lease has already been acked or released")
        self._ended = True


class StompBackend:
    """Queues on one STOMP broker over one connection, opened on first use and again after
    it is lost. Used from one thread (see the module docstring)."""

    network = True  # a broker other programs write to: the router refuses pickle here

    def __init__(self, name: str, options: StompOptions) -> None:
        self._options = options
        self._where = f"router interface {name!r} (stomp {options.address})"
        self._link: _Link | None = None
        self._closed = False

    # -- the Backend contract ---------------------------------------------------------------

    def send(self, queue: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        destination = self._destination(queue)
        try:  # every message checked before any is sent
            frames = [(stomp_headers(message), message.body) for message in messages]
        except ValueError as err:
            raise BackendError(f"{self._where}: send to {destination}: {err}") from None
        link = self._connected()
        receipts = []
        try:
            for headers, body in frames:
                receipt = link.new_id("send")
                headers.update(persistent="true", receipt=receipt)
                link.conn.send(destination, body, headers=headers)
                receipts.append(receipt)
            link.wait_receipts(receipts, self._options.timeout_s)
        except _FAILURES as err:
            raise self._failed(link, f"send to {destination}", err) from None

    def take(self, queue: str) -> StompLease | None:
        link = self._connected()
        subscription = link.subscriptions.get(queue)
        if subscription is None:
            subscription = self._subscribe(link, queue)
        inbox = link.inbox(subscription)
        assert inbox is not None
        try:
            frame = inbox.get(timeout=self._options.receive_wait_ms / 1000)
        except queues.Empty:
            return None
        if frame is None:  # the link ended while we waited
            raise self._failed(link, f"take from {self._destination(queue)}", link.failure)
        headers = frame.headers
        ack_id = headers.get("ack") or headers.get("message-id", "")
        return StompLease(self, link, queue, ack_id, router_message(headers, frame.body))

    def close(self) -> None:
        """Disconnect (the broker gives back every message still leased). Idempotent."""
        self._closed = True
        link, self._link = self._link, None
        if link is None:
            return
        if link.alive:
            # DISCONNECT asks for a receipt; stomp.py closes the socket when it comes. On
            # error we go anyway: the broker notices the socket close.
            with contextlib.suppress(*_NETWORK_ERRORS):
                link.conn.disconnect()
                link.wait_ended(self._options.timeout_s)
        self._hang_up(link)

    # -- what leases call -------------------------------------------------------------------

    def confirm(self, lease: StompLease) -> None:
        link = self._current(lease)
        what = f"ack on {self._destination(lease.queue)}"
        if link is None:
            raise BackendError(
                f"{self._where}: {what}: the connection that took the message is gone; "
                "the broker will deliver it again"
            )
        try:
            link.conn.ack(lease.ack_id)
        except _FAILURES as err:
            raise self._failed(link, what, err) from None

    def give_back(self, lease: StompLease) -> None:
        link = self._current(lease)
        if link is None:
            return  # the connection is gone, and the broker took the message back with it
        what = f"release on {self._destination(lease.queue)}"
        receipt = link.new_id("release")
        try:
            if self._release_by(link) == "nack":
                link.conn.nack(lease.ack_id, receipt=receipt, requeue="true")
            else:
                subscription = link.subscriptions.pop(lease.queue)  # the lease's own
                link.close_inbox(subscription)  # what else it delivers goes back with it
                link.conn.unsubscribe(subscription, headers={"receipt": receipt})
            link.wait_receipts([receipt], self._options.timeout_s)
        except _FAILURES as err:
            raise self._failed(link, what, err) from None

    # -- connection ---------------------------------------------------------------------------

    def _connected(self) -> _Link:
        if self._closed:
            raise BackendError(f"{self._where}: the backend is closed")
        link = self._link
        if link is not None and link.alive:
            return link
        if link is not None:
            self._link = None
            self._hang_up(link)
        self._link = self._open()
        return self._link

    def _open(self) -> _Link:
        o = self._options
        heartbeat = (o.heartbeat_ms, o.heartbeat_ms)
        conn = stomp.Connection12(
            [(o.host, o.port)],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_attempts_max=1,  # we reconnect on the next call, not in a loop
            reconnect_sleep_initial=0,
            timeout=o.timeout_s,  # TCP connect
            heartbeats=heartbeat,
            heart_beat_receive_scale=2.0,  # ActiveMQ's beats run late by half an interval
            vhost=o.vhost,
            auto_decode=False,  # bodies stay bytes
        )
        link = _Link(conn)
        conn.set_listener("kestrelpy", link)
        try:
            conn.connect(o.login, o.passcode, wait=False)
            _no_delay(conn.transport.socket)
            link.wait_connected(o.timeout_s)
        except _FAILURES as err:
            self._hang_up(link)
            why = str(err) or "no TCP connection (refused, unreachable or timed out)"
            raise BackendError(f"{self._where}: cannot connect: {why}") from None
        return link

    def _subscribe(self, link: _Link, queue: str) -> str:
        subscription = link.new_id("sub")
        receipt = link.new_id("subscribe")
        link.open_inbox(subscription)  # before SUBSCRIBE: the first MESSAGE may come at once
        headers = {"activemq.prefetchSize": "1", "prefetch-count": "1", "receipt": receipt}
        destination = self._destination(queue)
        try:
            link.conn.subscribe(destination, subscription, ack="client-individual", headers=headers)
            link.wait_receipts([receipt], self._options.timeout_s)
        except _FAILURES as err:
            raise self._failed(link, f"subscribe to {destination}", err) from None
        link.subscriptions[queue] = subscription
        return subscription

    def _current(self, lease: StompLease) -> _Link | None:
        """The lease's link if it is still ours and alive: only there can ACK/NACK name it."""
        if lease.link is self._link and lease.link.alive:
            return lease.link
        return None

    def _release_by(self, link: _Link) -> Literal["nack", "unsubscribe"]:
        if self._options.release != "auto":
            return self._options.release
        return "unsubscribe" if link.server.startswith("ActiveMQ/") else "nack"

    def _destination(self, queue: str) -> str:
        return self._options.destination_prefix + queue

    def _failed(self, link: _Link, what: str, why: object) -> BackendError:
        """Drop a link that failed (the next call connects again) and say what happened."""
        if self._link is link:
            self._link = None
        self._hang_up(link)
        return BackendError(f"{self._where}: {what}: {str(why) or link.failure}")

    @staticmethod
    def _hang_up(link: _Link) -> None:
        """Close the socket; stomp.py's receiver thread then ends."""
        with contextlib.suppress(*_NETWORK_ERRORS):  # already closed
            link.conn.transport.disconnect_socket()
