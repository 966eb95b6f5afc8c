"""Backends by implementation name; each module has ``open_backend(name, options)``.

Imported on demand, so an application that never routes to STOMP never imports stomp.py.
"""

from __future__ import annotations

import importlib

from kestrelpy.router.backends.base import Backend
from kestrelpy.router.config import InterfaceConfig


def open_backend(interface: InterfaceConfig) -> Backend:
    """The interface's backend, its options checked (a bad key raises RouterConfigError).
    Backends connect on first use, so this does no network I/O."""
    module = importlib.import_module(f"kestrelpy.router.backends.{interface.implementation}")
    backend: Backend = module.open_backend(interface.name, interface.options)
    return backend
