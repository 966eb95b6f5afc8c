"""The router: named interfaces that map queue names to backends.

An application sends to a queue name and does not care where the queue lives: the first
interface whose ``queues`` matcher fits the name handles it, with that interface's
backend, encoding, send options and delivery options. The ``default`` interface (every
queue, a local store, processed at exit) exists until removed and is always tried last.

What the router does the same way for every backend (a backend only moves bytes; see
``backends/base.py``):

- ``send``: encode the body, stamp the headers, hand it to the backend, or to the
  interface's send buffer (another queue, moved on by ``flush``).
- ``receive``: take, decode and return messages for the application to handle (``app_fetch``).
- ``consume``: take, decode and deliver each message (an allowed ``Invocation`` runs, else
  the interface's callback), confirming it only after delivery, so a consumer that dies
  mid-message has it delivered again; a failure goes through the ``on_error`` actions.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import time
import tomllib
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kestrelpy.router import exit_runs
from kestrelpy.router.backends import open_backend
from kestrelpy.router.backends.base import Backend, BackendError, Lease
from kestrelpy.router.config import InterfaceConfig, parse_interface
from kestrelpy.router.delivery import can_deliver, deliver, failure_actions
from kestrelpy.router.encodings import ENCODINGS
from kestrelpy.router.errors import DeliveryRefused, NoInterface, RouterConfigError, RouterError
from kestrelpy.router.frame import Frame
from kestrelpy.router.wire import Message

DEFAULT = "default"
DEFAULT_DIR_ENV = "KESTRELPY_ROUTER_DIR"
# The longest a retry's backoff is waited out while its lease is held: a wait past the
# lease would hand the message to another taker meanwhile (local lease_s defaults to 600).
MAX_HELD_BACKOFF_S = 60.0

_log = logging.getLogger("kestrelpy.router")


def default_interface_config(path: str | Path) -> dict[str, Any]:
    """The ``default`` interface: every queue, a local store, processed at exit."""
    return {"implementation": "local", "path": str(path), "send": {"on_exit": "all"}}


class Router:
    """Interfaces in the order they were added, ``default`` last.

    ``config`` maps interface names to their settings (see :mod:`kestrelpy.router.config`).
    ``default_path`` is the directory of the ``default`` interface's local store
    (``$KESTRELPY_ROUTER_DIR``, else ``./kestrelpy-router``). A Router is for one thread.
    """

    def __init__(
        self,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        default_path: str | Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        path = default_path or os.environ.get(DEFAULT_DIR_ENV) or "kestrelpy-router"
        self._interfaces: dict[str, InterfaceConfig] = {
            DEFAULT: parse_interface(DEFAULT, default_interface_config(Path(path).absolute()))
        }
        self._backends: dict[str, Backend] = {}
        self._sleep = sleep
        self._exit_work: dict[str, set[str]] = {}  # interface -> queues sent to, for at-exit runs
        # Collected before exit, this Router's exit work still runs (it holds no Router).
        weakref.finalize(self, _adopt, self._interfaces, self._exit_work).atexit = False
        for name, interface_config in (config or {}).items():
            self.add_interface(name, interface_config)

    @classmethod
    def from_toml(cls, path: str | Path, **options: Any) -> Router:
        """A Router from a file with a ``[router]`` table of interfaces (``[router.NAME]``)."""
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise RouterConfigError(f"{path}: {err}") from err
        table = data.get("router")
        if not isinstance(table, dict):
            raise RouterConfigError(f"{path}: no [router] table of interfaces")
        return cls(table, **options)

    # -- interfaces ---------------------------------------------------------------------------

    def add_interface(self, name: str, config: Mapping[str, Any]) -> None:
        """Add (or replace) an interface; it is tried after those added before it, and
        before ``default``. Its whole config is checked now, its backend opened (no I/O)."""
        interface = parse_interface(name, config)
        _check_exit_config(interface)
        backend = open_backend(interface)
        self.remove_interface(name)
        self._interfaces[name] = interface
        self._backends[name] = backend
        if name != DEFAULT and DEFAULT in self._interfaces:  # default stays last
            self._interfaces[DEFAULT] = self._interfaces.pop(DEFAULT)

    def remove_interface(self, name: str) -> None:
        self._interfaces.pop(name, None)
        backend = self._backends.pop(name, None)
        if backend is not None:
            backend.close()

    @property
    def interfaces(self) -> list[str]:
        """Interface names in the order they are tried."""
        return list(self._interfaces)

    def interface_named(self, name: str) -> InterfaceConfig:
        interface = self._interfaces.get(name)
        if interface is None:
            raise RouterConfigError(f"no router interface named {name!r}")
        return interface

    def sources(self) -> dict[str, dict[str, Any]]:
        """Every interface's config as given (for a child process to rebuild the router)."""
        return {name: dict(interface.source) for name, interface in self._interfaces.items()}

    def interface_for(self, queue: str) -> InterfaceConfig:
        for interface in self._interfaces.values():
            if interface.queues.matches(queue):
                return interface
        raise NoInterface(f"no router interface handles queue {queue!r}")

    def _backend(self, interface: InterfaceConfig) -> Backend:
        backend = self._backends.get(interface.name)
        if backend is None:  # the default's store is opened on first use, not at Router()
            backend = self._backends[interface.name] = open_backend(interface)
        return backend

    # -- sending ------------------------------------------------------------------------------

    def send(self, queue: str, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Encode ``body`` with the queue's interface encoding and send it (or buffer it).
        Returns when the backend has it as durably as it keeps anything."""
        interface = self.interface_for(queue)
        message = self._message(interface, queue, body, headers or {})
        buffer = interface.send.buffer
        if buffer is None:
            self._backend(interface).send(queue, [message])
        else:
            buffer_interface = self.interface_for(buffer)
            if buffer_interface is interface:
                raise RouterConfigError(
                    f"router interface {interface.name!r}: its buffer queue {buffer!r} must "
                    "belong to another interface (or flush would send to the buffer again)"
                )
            self._backend(buffer_interface).send(buffer, [message])
        self._note_exit_work(interface, queue)

    def _message(
        self, interface: InterfaceConfig, queue: str, body: Any, headers: Mapping[str, str]
    ) -> Message:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise RouterError("headers must map strings to strings")
        encoding = interface.encoding
        try:
            data = encoding.encode(body)
        except (TypeError, ValueError) as err:
            why = f"cannot encode the body for {queue!r} as {encoding.name}: {err}"
            raise RouterError(why) from err
        stamped = {"message-id": uuid.uuid4().hex, "timestamp": str(int(time.time() * 1000))}
        stamped.update(headers)
        stamped["destination"] = queue
        stamped["content-encoding"] = encoding.name
        return Message(stamped, data)

    def flush(self, queue: str, limit: int | None = None, *, interface: str | None = None) -> int:
        """Move the messages waiting in ``queue``'s interface's send buffer on to their
        destinations, through the destination's own backend. Returns how many moved. Each
        is confirmed in the buffer only once its destination has it (a crash in between
        sends it twice, never loses it). ``interface`` names the interface to use instead
        of the one whose ``queues`` match first."""
        sender = self._resolve(queue, interface)
        buffer = sender.send.buffer
        if buffer is None:
            return 0
        buffered = self._backend(self.interface_for(buffer))
        moved = 0
        while limit is None or moved < limit:
            lease = buffered.take(buffer)
            if lease is None:
                break
            destination = lease.message.headers.get("destination", queue)
            try:
                self._backend(self.interface_for(destination)).send(destination, [lease.message])
            except BaseException:
                lease.release()
                raise
            _ack(lease, f"flushing {buffer}")
            moved += 1
        return moved

    # -- receiving ----------------------------------------------------------------------------

    def receive(
        self, queue: str, limit: int | None = None, *, interface: str | None = None
    ) -> list[Frame]:
        """Take up to ``limit`` messages (when None, those waiting when the call started:
        see :meth:`consume`) for the application to handle itself. Each is confirmed as it
        is returned: from here on it is the application's. A message that cannot be
        decoded goes through ``on_error``. ``interface`` names the interface to use
        instead of the one whose ``queues`` match first (to drain an old one)."""
        chosen = self._resolve(queue, interface)
        backend = self._backend(chosen)
        frames: list[Frame] = []
        seen: set[str] = set()
        while limit is None or len(frames) < limit:
            lease = self._take_new(backend, queue, seen)
            if lease is None:
                break
            frame = self._decoded(chosen, queue, lease, seen)
            if frame is None:
                continue
            _ack(lease, f"receiving {queue}")
            frames.append(frame)
        return frames

    def consume(self, queue: str, limit: int | None = None, *, interface: str | None = None) -> int:
        """Take and deliver up to ``limit`` messages: an ``Invocation`` from an allowed
        module runs, anything else goes to the interface's callback. A message is
        confirmed after its delivery returns; one that raises goes through ``on_error``.
        A plain message on an interface without a callback is left at the head of the
        queue for :meth:`receive`, and consuming stops there (so the ``default``
        interface's exit run never drops what an application meant to fetch).

        One call handles each message once: it stops when it takes a message it already
        handled (a requeued or retried copy keeps its ``message-id``) and leaves that
        copy at the head for the next call. So ``limit=None`` means the messages waiting
        when the call started (and any sent meanwhile before the first copy), never an
        endless loop over a message that keeps failing. ``interface`` names the
        interface to use instead of the one whose ``queues`` match first. Returns how
        many messages were taken."""
        chosen = self._resolve(queue, interface)
        if chosen.delivery.app_fetch:
            raise DeliveryRefused(
                f"router interface {chosen.name!r} is app_fetch: take its messages with receive()"
            )
        backend = self._backend(chosen)
        taken = 0
        seen: set[str] = set()
        while limit is None or taken < limit:
            lease = self._take_new(backend, queue, seen)
            if lease is None:
                break
            frame = self._decoded(chosen, queue, lease, seen)
            if frame is None:
                taken += 1
                continue
            if not can_deliver(frame, chosen):
                lease.release()  # left for receive(): nothing here may deliver it
                _log.warning(
                    "router interface %s: a plain message on %s and no delivery.callback: "
                    "left on the queue for receive()",
                    chosen.name,
                    queue,
                )
                break
            taken += 1
            try:
                deliver(frame, chosen)
            except Exception as err:  # a delivery's failure is data for on_error
                self._failed(chosen, queue, lease, frame, err, seen)
                continue
            _ack(lease, f"consuming {queue}")
        return taken

    def _resolve(self, queue: str, interface: str | None) -> InterfaceConfig:
        return self.interface_for(queue) if interface is None else self.interface_named(interface)

    @staticmethod
    def _take_new(backend: Backend, queue: str, seen: set[str]) -> Lease | None:
        """The next lease, unless it holds a message this call already handled (then it
        goes back to the head, and None ends the call)."""
        lease = backend.take(queue)
        if lease is None:
            return None
        message_id = lease.message.headers.get("message-id")
        if message_id is not None and message_id in seen:
            lease.release()
            return None
        if message_id is not None:
            seen.add(message_id)
        return lease

    def _decoded(
        self, interface: InterfaceConfig, queue: str, lease: Lease, seen: set[str]
    ) -> Frame | None:
        """The leased message's frame; None if it cannot be decoded (then it has been
        through ``on_error``)."""
        try:
            return self.decode(interface, lease.message)
        except DeliveryRefused as err:
            self._failed(interface, queue, lease, _undecoded(lease.message), err, seen)
            return None

    def decode(self, interface: InterfaceConfig, message: Message) -> Frame:
        """The frame of a stored message, decoded with the encoding its
        ``content-encoding`` header names, if the interface accepts that encoding.

        A message without that header (another producer's item, which anyone reaching
        the queue can put there) is decoded with the interface's encoding, unless that
        encoding runs code: pickle is decoded only when the header names it.
        """
        named = message.headers.get("content-encoding")
        if named is None and interface.encoding.runs_code:
            raise DeliveryRefused(
                f"router interface {interface.name!r} refuses a message without a "
                f"content-encoding header: its own encoding is {interface.encoding.name}, "
                "and unpickling bytes nobody vouched for runs code"
            )
        name = interface.encoding.name if named is None else named
        encoding = ENCODINGS.get(name)
        if encoding is None:
            raise DeliveryRefused(f"unknown content-encoding {name!r}")
        if not interface.allows_encoding(encoding):
            raise DeliveryRefused(
                f"router interface {interface.name!r} refuses {name} messages: "
                "unpickling untrusted input runs code"
            )
        try:
            body = encoding.decode(message.body)
        except Exception as err:  # any decoder's complaint: the bytes are not what they say
            raise DeliveryRefused(f"cannot decode a {name} message: {err}") from err
        return Frame(dict(message.headers), body)

    def _failed(
        self,
        interface: InterfaceConfig,
        queue: str,
        lease: Lease,
        frame: Frame,
        error: BaseException,
        seen: set[str],
    ) -> None:
        """Apply ``on_error`` in order; the message is confirmed in the end (it was
        handled by the actions) unless an action put it back. A copy sent back to this
        queue is noted in ``seen``: this call does not take it again."""
        for step in failure_actions(interface, queue, frame, error):
            if step.delay_s:
                # a retry's backoff, holding the lease: never longer than the lease may last
                self._sleep(min(step.delay_s, MAX_HELD_BACKOFF_S))
            if step.resend_to is not None:
                copy_id = self._resend(
                    step.resend_to, lease.message, step.headers, immediate=step.immediate
                )
                seen.add(copy_id)
            if step.final:
                break
        _ack(lease, f"handling a failure on {queue}")

    def _resend(
        self, queue: str, message: Message, headers: Mapping[str, str], *, immediate: bool
    ) -> str:
        """Send a copy (with a ``message-id``: another producer's item gets one here, so
        the consume call that sent it knows it); returns its message-id."""
        copy = Message({"message-id": uuid.uuid4().hex, **message.headers, **headers}, message.body)
        interface = self.interface_for(queue)
        buffer = None if immediate else interface.send.buffer
        if buffer is None:
            self._backend(interface).send(queue, [copy])
        else:
            self._backend(self.interface_for(buffer)).send(buffer, [copy])
        return copy.headers["message-id"]

    # -- at exit ------------------------------------------------------------------------------

    def _note_exit_work(self, interface: InterfaceConfig, queue: str) -> None:
        if interface.send.on_exit == "none":
            return
        self._exit_work.setdefault(interface.name, set()).add(queue)
        _with_exit_work.add(self)

    def run_at_exit(self) -> None:
        """Start the detached child runs for what this process sent (``send.on_exit``).
        Runs once, at interpreter exit, for every live Router with such work (one hook
        for them all); calling it sooner starts them now."""
        try:
            _start_exit_runs([(self._interfaces, self._exit_work)])
        finally:
            self.close()

    def close(self) -> None:
        """Close every backend (their connections, their leases)."""
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- at exit, for every Router ---------------------------------------------------------------

ExitWork = tuple[Mapping[str, InterfaceConfig], dict[str, set[str]]]

# Routers with at-exit work, held weakly: a Router per request must not live on (nor
# start a child of its own) because it once sent. A collected Router's work is kept in
# _orphaned (its interfaces and queues, not the Router) and run with the others.
_with_exit_work: weakref.WeakSet[Router] = weakref.WeakSet()
_orphaned: list[ExitWork] = []


def _adopt(interfaces: Mapping[str, InterfaceConfig], work: dict[str, set[str]]) -> None:
    if work:
        _orphaned.append((interfaces, work))


def _run_all_at_exit() -> None:
    """The one atexit hook: every Router's exit runs, one child per configuration and
    interface however many Routers asked for it; then every Router is closed."""
    routers = list(_with_exit_work)
    _with_exit_work.clear()
    claims = [(r._interfaces, r._exit_work) for r in routers] + _orphaned[:]
    _orphaned.clear()
    try:
        _start_exit_runs(claims)
    finally:
        for router in routers:
            try:
                router.close()
            except Exception:  # at exit nothing is left to tell but the log
                _log.exception("router: closing at exit")


def _start_exit_runs(claims: list[ExitWork]) -> None:
    """Merge the claims (same configuration and interface: one run, queues united) and
    start each run. A configuration that JSON cannot carry is logged and skipped."""
    runs: dict[tuple[str, str], set[str]] = {}
    for interfaces, work in claims:
        if not work:
            continue
        names = sorted(work)
        sources = {name: dict(interface.source) for name, interface in interfaces.items()}
        try:
            text = json.dumps(sources, sort_keys=True)
        except (TypeError, ValueError) as err:
            bad = [name for name, source in sources.items() if not _json_able(source)]
            _log.error(
                "router: at-exit run of %s not started: the child rebuilds every interface "
                "from JSON, and interface(s) %s cannot be written as JSON (%s): give "
                "callbacks as 'module:function' strings",
                ", ".join(names),
                ", ".join(repr(name) for name in bad) or "?",
                err,
            )
            work.clear()
            continue
        for name in names:
            runs.setdefault((text, name), set()).update(work[name])
        work.clear()
    for (text, name), queues in sorted(runs.items(), key=lambda item: item[0][1]):
        try:
            exit_runs.start_run_json(text, name, sorted(queues))
        except Exception as err:  # at exit: say so, and go on with the other runs
            _log.error("router: cannot start the exit run of %s: %s", name, err)


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


atexit.register(_run_all_at_exit)


def _ack(lease: Lease, doing: str) -> None:
    """Confirm a lease; a late one (it ran out, or the link to the backend went) is
    logged, not raised: the message may be delivered twice (at least once), and the run
    goes on with the next one."""
    try:
        lease.ack()
    except BackendError as err:
        _log.warning("router: %s: %s", doing, err)


def _undecoded(message: Message) -> Frame:
    """The frame as bytes, for on_error when decoding itself failed."""
    return Frame(dict(message.headers), message.body)


def _check_exit_config(interface: InterfaceConfig) -> None:
    """An at-exit run rebuilds the config in a child process: callbacks must be named
    (``"module:function"``), not Python objects."""
    if interface.send.on_exit == "none":
        return
    delivery = interface.source.get("delivery", {})
    named = [delivery.get("callback")] + [
        next(iter(entry.values()))
        for entry in delivery.get("on_error", [])
        if isinstance(entry, Mapping) and "callback" in entry
    ]
    if any(value is not None and not isinstance(value, str) for value in named):
        raise RouterConfigError(
            f"router interface {interface.name!r}: on_exit runs in a child process, so its "
            "callbacks must be given as 'module:function' strings"
        )
