"""kestrelpy: a durable, Kestrel-compatible message queue server."""

__version__ = "0.1.0"
