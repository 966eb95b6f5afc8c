"""The bundled client: one protocol core, three faces with the same operations.

- :class:`Client`: blocking (scripts, workers).
- :class:`AsyncClient`: asyncio (``await client.put(...)``).
- :class:`TwistedClient`: Twisted (every operation returns a Deferred).

All three spread writes over several servers, keep a reader on one server while its
reliable read is open, back off from dead servers, and mark the codec of each item in its
memcache flags. See docs/client.md.
"""

from kestrelpy.client.asyncio_client import AsyncClient
from kestrelpy.client.blocking import Client
from kestrelpy.client.codecs import CODECS, JSON, MSGPACK, RAW, Codec
from kestrelpy.client.errors import (
    ClientError,
    DecodeError,
    NoServerAvailable,
    ServerRefused,
    ServerUnavailable,
    UsageError,
)
from kestrelpy.client.twisted_client import TwistedClient

__all__ = [
    "CODECS",
    "JSON",
    "MSGPACK",
    "RAW",
    "AsyncClient",
    "Client",
    "ClientError",
    "Codec",
    "DecodeError",
    "NoServerAvailable",
    "ServerRefused",
    "ServerUnavailable",
    "TwistedClient",
    "UsageError",
]
