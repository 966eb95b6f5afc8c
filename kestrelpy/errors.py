"""One exception hierarchy, so callers can catch everything kestrelpy raises in one place."""


class KestrelpyError(Exception):
    """Base class of every error kestrelpy raises on purpose."""


class ConfigError(KestrelpyError):
    """A configuration file or value is wrong; the message names file, line, section and key."""


class StoreError(KestrelpyError):
    """The durable store failed to commit; the writes in that commit were not made durable."""


class StoreFullError(StoreError):
    """The disk (or the store's size limit) is full; writes are refused until space returns."""
