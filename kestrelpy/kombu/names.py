"""Pure parts of the kombu transport: broker URLs to server lists, kombu names to queue names.

No I/O here, so every rule is tested on plain strings (tests/kombu).

**Servers.** kombu splits a URL on ``;`` into alternates before any transport sees it
(``kestrelpy://h1:22133;h2:22133//`` becomes ``kestrelpy://h1:22133`` and ``h2:22133//``)
and would use them one at a time for failover. Kestrel servers share nothing, so the
transport uses them all at once through the bundled client (writes spread, reads drain
each): :func:`servers_from_alternates` turns the alternates back into one list.

**Queue names.** kombu names may hold characters a kestrelpy queue name cannot (``/``,
spaces) or that mean something to it (``+`` makes a fanout child). :func:`queue_name`
percent-encodes those, so distinct kombu names stay distinct queue names and Celery's
ordinary names (``celery``, ``celery@host.celery.pidbox``) are unchanged.

**Routing that crosses processes.** kombu's virtual transports keep exchange bindings in
the memory of the process that declared them. Two kinds of binding must be visible to
other processes, and both are kept on the server as fanout children:

- a queue ``Q`` bound to a fanout exchange ``E`` *is* the child queue ``E+Q``, so a
  ``set E`` reaches every bound queue (:func:`fanout_child`);
- a queue ``Q`` bound to a direct exchange ``E`` with key ``K`` leaves an empty marker
  child ``E~K+Q`` (:func:`binding_marker`); a process that publishes to ``E`` with key
  ``K`` and has no binding of its own reads the markers' names from the server's stats and
  puts the message on each ``Q``. Celery's remote-control replies travel this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlsplit

from kestrelpy.errors import KestrelpyError

SCHEME = "kestrelpy"
DEFAULT_PORT = 22133
# What a kestrelpy queue name may hold unescaped: printable ASCII except the characters the
# server reads ('/' options, '+' fanout, ' ' framing), '~' (ours: marker names) and '%'.
_SAFE = frozenset(chr(code) for code in range(0x21, 0x7F) if chr(code) not in "/+~%")
MAX_NAME_BYTES = 230  # the server's 250-byte key, less room for /close/open/t=NNNNNNNNNN


class BrokerURLError(KestrelpyError, ValueError):
    """A ``kestrelpy://`` URL that names no usable server (a ValueError, as kombu's own URL
    parser raises for a bad port)."""


class UnmappableError(KestrelpyError, NotImplementedError):
    """Something kombu asked for that kestrelpy queues cannot do faithfully; the message
    says what and what to do instead. Raised rather than dropping messages silently."""


def servers_from_alternates(
    hostname: str | None, port: int | None, alternates: Sequence[object]
) -> list[str]:
    """``host:port`` of every server named by a kombu connection: its alternates (the
    ``;``-separated parts of the URL) when it has several, else its hostname and port.

    A part may be a whole URL (``kestrelpy://h1:22133//``), ``host:port`` with or without a
    path, or ``host`` alone (port 22133). Duplicates are kept out, order kept."""
    parts = [str(alt) for alt in alternates if str(alt).strip()]
    if len(parts) < 2:
        host = (hostname or "localhost").strip()
        if not host:
            raise BrokerURLError("broker URL names no host: expected kestrelpy://HOST:PORT//")
        return [_join(host, port or DEFAULT_PORT)]
    return list(dict.fromkeys(_server_of(part) for part in parts))


def _server_of(part: str) -> str:
    text = part.strip()
    if "://" not in text:
        text = f"{SCHEME}://{text}"
    split = urlsplit(text)
    if split.scheme != SCHEME:
        raise BrokerURLError(
            f"broker URL part {part!r}: scheme {split.scheme!r}, expected {SCHEME}://"
        )
    host = split.hostname
    if not host:
        raise BrokerURLError(f"broker URL part {part!r}: no host (expected HOST:PORT)")
    try:
        port = split.port
    except ValueError:
        raise BrokerURLError(
            f"broker URL part {part!r}: the port must be a number from 1 to 65535"
        ) from None
    if port == 0:
        raise BrokerURLError(f"broker URL part {part!r}: port 0 is not a server port")
    return _join(host, port or DEFAULT_PORT)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def queue_name(name: str) -> str:
    """The kestrelpy queue that holds kombu queue ``name``: unchanged when every character
    is safe, else with each unsafe byte (UTF-8) as ``%XX``. Raises :class:`UnmappableError`
    for an empty name or one too long for the memcache key limit."""
    if not name:
        raise UnmappableError("an empty queue name cannot be a kestrelpy queue")
    if all(char in _SAFE for char in name):
        encoded = name
    else:
        encoded = "".join(
            char if char in _SAFE else "".join(f"%{byte:02X}" for byte in char.encode())
            for char in name
        )
    if len(encoded) > MAX_NAME_BYTES:
        raise UnmappableError(
            f"queue or exchange name {name[:40]!r}...: {len(encoded)} bytes as a kestrelpy "
            f"queue name, at most {MAX_NAME_BYTES} fit in a memcache key"
        )
    return encoded


def kombu_name(queue: str) -> str:
    """Inverse of :func:`queue_name` (for names read back from the server's stats)."""
    return unquote(queue)


def fanout_parent(exchange: str) -> str:
    """The kestrelpy queue a fanout exchange publishes to: ``set`` on it copies the message
    into every child."""
    return queue_name(exchange)


def fanout_child(exchange: str, queue: str) -> str:
    """The kestrelpy queue that holds kombu queue ``queue`` bound to fanout ``exchange``."""
    return _checked(f"{queue_name(exchange)}+{queue_name(queue)}")


def binding_parent(exchange: str, routing_key: str) -> str:
    """The parent whose children name the queues bound to direct ``exchange`` with
    ``routing_key`` (see the module docstring)."""
    return _checked(f"{queue_name(exchange)}~{_key_part(routing_key)}")


def binding_marker(exchange: str, routing_key: str, queue: str) -> str:
    """The empty marker child that records the binding of ``queue`` on the server."""
    return _checked(f"{binding_parent(exchange, routing_key)}+{queue_name(queue)}")


def errors_queue(kestrel_queue: str) -> str:
    """Where items of ``kestrel_queue`` that are not kombu messages go: ``<queue>_errors``,
    with the ``+`` of a fanout child escaped, so the errors queue of ``news+reader`` is not
    one more child of ``news`` (which every broadcast would fill, and nobody read)."""
    return _checked(kestrel_queue.replace("+", "%2B") + "_errors")


def bound_queues(children: str) -> list[str]:
    """The kombu queue names in a ``queue_<parent>_children`` stats value (full child names,
    comma-separated)."""
    names = []
    for child in children.split(","):
        _, plus, queue = child.partition("+")
        if plus and queue:
            names.append(kombu_name(queue))
    return names


def _key_part(routing_key: str) -> str:
    return queue_name(routing_key) if routing_key else ""


def _checked(name: str) -> str:
    if len(name) > MAX_NAME_BYTES:
        raise UnmappableError(
            f"kestrelpy queue {name[:40]!r}... would be {len(name)} bytes; at most "
            f"{MAX_NAME_BYTES} fit in a memcache key: use shorter exchange and queue names"
        )
    return name


def unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
