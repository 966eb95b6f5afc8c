"""The router: named interfaces that send and receive through kestrelpy, an embedded local
store, another instance over HTTP, or a STOMP broker (see :mod:`kestrelpy.router.router`
and docs/router.md)."""

from kestrelpy.router.errors import (
    DeliveryRefused,
    NoInterface,
    RouterConfigError,
    RouterError,
)
from kestrelpy.router.frame import Frame, Invocation
from kestrelpy.router.router import Router

__all__ = [
    "DeliveryRefused",
    "Frame",
    "Invocation",
    "NoInterface",
    "Router",
    "RouterConfigError",
    "RouterError",
]
