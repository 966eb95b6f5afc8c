"""What the router raises; everything derives from :class:`RouterError`."""

from __future__ import annotations

from kestrelpy.errors import ConfigError, KestrelpyError


class RouterError(KestrelpyError):
    """Base class of the router's errors."""


class RouterConfigError(RouterError, ConfigError):
    """An interface's configuration is wrong; the message names the interface and key."""


class NoInterface(RouterError):
    """No interface handles this queue name (the ``default`` interface was removed)."""


class DeliveryRefused(RouterError):
    """A message could not be delivered as its interface is configured: an invocation of
    a module not in the allow-list, an encoding the interface refuses, no delivery at all."""
