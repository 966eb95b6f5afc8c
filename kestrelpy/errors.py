"""One exception hierarchy, so callers can catch everything kestrelpy raises in one place."""


class KestrelpyError(Exception):
    """Base class of every error kestrelpy raises on purpose."""


class ConfigError(KestrelpyError):
    """A configuration file or value is wrong; the message names file, line, section and key."""


class StoreError(KestrelpyError):
    """The durable store failed to commit; the writes in that commit were not made durable."""


class StoreFullError(StoreError):
    """The disk (or the store's size limit) is full; writes are refused until space returns."""


class PutsRefusedError(StoreFullError):
    """No room for a commit's puts: they were refused, but its removals and metadata were
    committed, in the room kept for them (so they must not be retried)."""


class DamagedStoreError(StoreError):
    """The store's data file is truncated or has damaged pages; the message names the file
    and what to do."""


class CorruptItemError(StoreError):
    """An item read from disk does not match the checksum written with it (flipped bits on
    the disk or in a copy): it is never served. ``item_id`` and ``payload_size`` say which
    item, so the queue can drop it and go on."""

    def __init__(self, item_id: int, payload_size: int) -> None:
        super().__init__(f"item {item_id} failed its checksum")
        self.item_id = item_id
        self.payload_size = payload_size


class TooManyQueuesError(KestrelpyError):
    """Creating a queue would pass ``max_queues`` or ``max_fanout_children``; none was made.

    ``reason`` is the wire text after ``SERVER_ERROR``, e.g. ``too many queues (max_queues
    = 100000)``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def wire_line(self) -> bytes:
        """``SERVER_ERROR <reason>`` without CRLF (queue names are latin-1 on the wire)."""
        return b"SERVER_ERROR " + self.reason.encode("latin-1", "replace")
