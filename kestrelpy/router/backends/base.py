"""The contract between the router and a backend, written once.

A backend moves :class:`~kestrelpy.router.wire.Message` objects (headers plus encoded
body) to and from named queues of one place: a kestrelpy server, a directory, another
instance over HTTP, a STOMP broker. It knows nothing of interfaces, encodings, delivery or
error policies; the router does all of that the same way for every backend.

Call order and guarantees:

- ``send(queue, messages)``: returns when the place has taken every message durably (as
  durable as that place is configured to be); raises :class:`BackendError` otherwise,
  and then none, some or all may have been taken (at-least-once: the router may resend).
- ``take(queue)``: the next message, **leased** to the caller, or None when the queue is
  empty. Nobody else gets a leased message. Exactly one of ``lease.ack()`` (processed:
  gone for good) or ``lease.release()`` (back to the queue for someone else, at its head
  where the place can) must follow, on the same backend object. If the caller dies
  first, the place gives the message to another taker (the lease ends with the process
  or the connection).
- ``close()``: releases what is still leased and frees connections; the backend is
  unusable after.

A backend object is used from one thread. ``network`` says whether messages cross a
network to a peer that may not trust us (the router refuses pickle there).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from kestrelpy.errors import KestrelpyError
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import Message


class BackendError(KestrelpyError):
    """A backend could not do what was asked; the message names the place and the reason."""


class SendOnly(BackendError):
    """This backend only sends (``http``: receive on the other instance)."""


class Lease(Protocol):
    @property
    def message(self) -> Message: ...

    def ack(self) -> None:
        """Processed: remove the message for good."""

    def release(self) -> None:
        """Not processed: give it back to the queue, for this or another taker."""


class Backend(Protocol):
    network: bool

    def send(self, queue: str, messages: Sequence[Message]) -> None: ...

    def take(self, queue: str) -> Lease | None: ...

    def close(self) -> None: ...


def checked_where(
    name: str, implementation: str, options: Mapping[str, Any], keys: Collection[str]
) -> str:
    """How an interface's config errors start (``router interface 'name'``), once its keys
    are known to be among ``keys``: every backend checks its own the same way."""
    where = f"router interface {name!r}"
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise RouterConfigError(
            f"{where}: unknown key {unknown[0]!r} for implementation {implementation!r}: "
            f"expected {', '.join(sorted(keys))}"
        )
    return where
