"""What the router carries: a :class:`Frame` (headers and a body), and the one kind of
body that runs itself, an :class:`Invocation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Frame:
    """A message: string headers and a body (any value its interface's encoding can carry).

    The router sets ``message-id``, ``destination``, ``timestamp`` (unix ms) and
    ``content-encoding`` on send, and ``x-attempts`` when a message is retried; a caller's
    own headers travel alongside, unchanged.
    """

    headers: dict[str, str]
    body: Any


@dataclass(frozen=True, slots=True)
class Invocation:
    """A message that is a call: ``target`` is ``"package.module:function"``. Delivered, it
    runs ``function(*args, **kwargs)``, but only when the module is in the receiving
    interface's allow-list (``delivery.allow``): a message never chooses code to run."""

    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]
