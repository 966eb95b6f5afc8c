"""Time as the server reads it: the reactor's clock, passed in, in the units queues use.

Nothing in kestrelpy reads the wall clock itself. Every part that needs the time is given
the reactor (``IReactorTime``: its ``seconds()`` is the wall clock in unix seconds on a real
reactor), so tests of expiry, blocked reads, leases and grace periods run on
``twisted.internet.task.Clock`` and move time by hand instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class ReactorClock(Protocol):
    """The part of Twisted's ``IReactorTime`` kestrelpy uses (a reactor, or a test Clock)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any) -> Any: ...


def now_ms(clock: ReactorClock) -> int:
    """Unix milliseconds: the unit of item expiry, ages and leases (stored on disk).

    Rounded (by adding half a millisecond: no call on the hot path), not truncated, so a
    test clock moved by ``0.001`` moves this by exactly 1.
    """
    return int(clock.seconds() * 1000.0 + 0.5)


def now_s(clock: ReactorClock) -> int:
    """Whole unix seconds: queue create times and the ``time`` stat (as Kestrel's)."""
    return int(clock.seconds())
