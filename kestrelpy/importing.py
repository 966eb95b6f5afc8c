"""``"package.module:function"`` references, as configs, messages and command lines name
code (router callbacks and invocations, job handlers)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


class BadReference(ValueError):
    """The reference is malformed, or names nothing callable; the message says which."""


def load_callable(reference: str) -> Callable[..., object]:
    """Import the module and return the callable. Importing runs the module's code: callers
    only pass references their own configuration or allow-list vouches for."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute or ":" in attribute:
        raise BadReference(f"{reference!r}: expected 'package.module:function'")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise BadReference(f"cannot load {reference!r}: {err}") from err
    if not callable(target):
        raise BadReference(f"{reference!r} is not callable")
    function: Callable[..., object] = target
    return function
