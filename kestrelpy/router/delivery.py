"""What happens to a message when it is consumed, and when that fails.

Delivery: an :class:`~kestrelpy.router.frame.Invocation` runs itself if its module is in
the interface's ``delivery.allow`` list (a message never chooses the code it runs);
anything else goes to ``delivery.callback(frame, config)``. An interface with neither
cannot consume.

Failure: the ``on_error`` actions in order. ``log`` and ``callback`` happen and the list
goes on; ``retry`` (while attempts remain), ``requeue``, ``dead_letter`` and ``drop``
decide the message's fate and end it. When the list ends without a decision the message
is dropped (it was logged, or handed to a callback, as configured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kestrelpy.importing import BadReference, load_callable
from kestrelpy.router.config import InterfaceConfig
from kestrelpy.router.errors import DeliveryRefused
from kestrelpy.router.frame import Frame, Invocation

ATTEMPTS = "x-attempts"
ERROR = "x-error"
FAILED_QUEUE = "x-failed-queue"
_MAX_ERROR_TEXT = 1000

_log = logging.getLogger("kestrelpy.router")


def deliver(frame: Frame, interface: InterfaceConfig) -> None:
    body = frame.body
    delivery = interface.delivery
    if isinstance(body, Invocation):
        if not delivery.allows(body.module):
            raise DeliveryRefused(
                f"router interface {interface.name!r}: invocation of {body.target!r} refused: "
                f"module {body.module!r} is not in delivery.allow"
            )
        _target(body, delivery.allows)(*body.args, **body.kwargs)
        return
    if delivery.callback is None:
        raise DeliveryRefused(
            f"router interface {interface.name!r}: no delivery for a plain message "
            "(set delivery.callback, or take it with receive())"
        )
    delivery.callback(frame, dict(interface.source))


def can_deliver(frame: Frame, interface: InterfaceConfig) -> bool:
    """Whether this interface has any way to deliver the frame: an invocation always has
    one (run, or refused by the allow-list), a plain message needs the callback."""
    return isinstance(frame.body, Invocation) or interface.delivery.callback is not None


def _target(invocation: Invocation, allows: Callable[[str], bool]) -> Callable[..., object]:
    """The function an invocation names, if it is one the allowed module defines: a name
    it merely imports (``from subprocess import check_call``) or keeps private (a leading
    underscore) is refused, so the allow-list means the module's own public functions."""
    attribute = invocation.target.partition(":")[2]
    if attribute.startswith("_") or "." in attribute:
        raise DeliveryRefused(
            f"invocation target {invocation.target!r} refused: only a module's public "
            "functions may be invoked"
        )
    try:
        target = load_callable(invocation.target)
    except BadReference as err:
        raise DeliveryRefused(f"invocation target {err}") from err
    defined_in = getattr(target, "__module__", None)
    if not isinstance(defined_in, str) or not (
        defined_in == invocation.module or allows(defined_in)
    ):
        raise DeliveryRefused(
            f"invocation target {invocation.target!r} refused: it is defined in "
            f"{defined_in!r}, not in {invocation.module!r} (only functions an allowed "
            "module defines may be invoked, not names it imports)"
        )
    return target


@dataclass(frozen=True, slots=True)
class FailureStep:
    """What the router does for one on_error action: wait, send a copy somewhere, stop."""

    resend_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    immediate: bool = True  # straight to the target's backend, past its send buffer
    delay_s: float = 0.0
    final: bool = False


def failure_actions(
    interface: InterfaceConfig, queue: str, frame: Frame, error: BaseException
) -> Iterator[FailureStep]:
    """The steps of ``on_error`` for this failure; side effects (log, callback) happen as
    the steps are taken."""
    why = f"{type(error).__name__}: {error}"[:_MAX_ERROR_TEXT]
    message_id = frame.headers.get("message-id", "?")
    attempts = _attempts(frame)
    for action in interface.delivery.on_error:
        if action.kind == "log":
            _log.error(
                "router interface %s: message %s on %s failed: %s",
                interface.name,
                message_id,
                queue,
                why,
                exc_info=error,
            )
        elif action.kind == "callback":
            assert action.callback is not None
            try:
                action.callback(error, frame)
            except Exception:  # the error callback's own failure must not lose the message
                _log.exception("router interface %s: on_error callback failed", interface.name)
        elif action.kind == "retry":
            assert action.retry is not None
            if attempts < action.retry.max:
                yield FailureStep(
                    resend_to=queue,
                    headers={ATTEMPTS: str(attempts + 1), ERROR: why},
                    delay_s=action.retry.delay_s(attempts + 1),
                    final=True,
                )
                return
        elif action.kind == "requeue":
            target = action.queue or queue
            yield FailureStep(target, {ERROR: why}, immediate=action.immediate, final=True)
            return
        elif action.kind == "dead_letter":
            assert action.queue is not None
            headers = {ERROR: why, FAILED_QUEUE: queue, ATTEMPTS: str(attempts)}
            yield FailureStep(action.queue, headers, final=True)
            return
        elif action.kind == "drop":
            yield FailureStep(final=True)
            return


def _attempts(frame: Frame) -> int:
    value = frame.headers.get(ATTEMPTS, "0")
    return int(value) if value.isdigit() else 0
