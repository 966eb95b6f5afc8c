"""Which server a request goes to: Kestrel's scale-out model, with no I/O.

Kestrel servers share nothing, so a client spreads writes over every healthy server and a
reader drains whichever server it is on, moving on when that one is empty or down. A server
that fails is skipped until its backoff ends (doubling from ``BACKOFF_START_S`` up to
``backoff_max_s``); the first success clears it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from kestrelpy.client.errors import NoServerAvailable, UsageError

DEFAULT_PORT = 22133
BACKOFF_START_S = 0.1
_MAX_DOUBLINGS = 64  # 0.1 s * 2**64 is far past any backoff_max_s


class ServerAddress(NamedTuple):
    """A tuple, so the per-request dict lookups hash in C."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        """``host:port`` (``[v6]:port`` for IPv6). The port is required: a bare host is
        more often a typo than a wish for the default, and a silent guess hides it."""
        host, sep, port = text.strip().rpartition(":")
        if host.startswith("[") or host.endswith("]"):
            if not (host.startswith("[") and host.endswith("]")):
                raise UsageError(f"server {text!r}: expected host:port or [v6 address]:port")
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"server {text!r}: expected host:port")
        return cls(host, int(port))


def parse_servers(servers: str | Sequence[str]) -> list[ServerAddress]:
    """A comma-separated string or a list of ``host:port``; order and duplicates kept out."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = list(dict.fromkeys(ServerAddress.parse(item) for item in items if item.strip()))
    if not addresses:
        raise UsageError("no servers given: expected host:port[,host:port...]")
    return addresses


@dataclass(slots=True)
class _Health:
    failures: int = 0
    retry_at: float = 0.0  # down for everything until then
    write_retry_at: float = 0.0  # refusing writes (read-only, full disk) until then
    last_error: str = ""


class ServerPool:
    """Health and rotation over a fixed list of servers. ``clock`` is monotonic seconds."""

    def __init__(
        self,
        addresses: Sequence[ServerAddress],
        clock: Callable[[], float],
        *,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.addresses = tuple(addresses)
        self._clock = clock
        self._backoff_max_s = backoff_max_s
        self._health = {address: _Health() for address in self.addresses}
        self._troubled = 0  # servers with failures: none means every server is up
        self._writes = 0
        self._reader = 0
        # every rotation of the servers, for the common case of all up: no generators
        self._rotations = tuple(
            self.addresses[i:] + self.addresses[:i] for i in range(len(self.addresses))
        )

    def is_up(self, address: ServerAddress) -> bool:
        retry_at = self._health[address].retry_at
        return not retry_at or retry_at <= self._clock()

    def _takes_writes(self, address: ServerAddress) -> bool:
        health = self._health[address]
        now = None
        for until in (health.retry_at, health.write_retry_at):
            if until:
                now = self._clock() if now is None else now
                if until > now:
                    return False
        return True

    def writers(self) -> Iterator[ServerAddress]:
        """Servers to try for one write: each server taking writes once, starting one
        further along the servers taking writes than the previous write started, so writes
        spread evenly over those (a down server's share is not dumped on its neighbour)."""
        turn = self._writes
        self._writes += 1
        if not self._troubled:
            return iter(self._rotations[turn % len(self._rotations)])
        candidates = [a for a in self.addresses if self._takes_writes(a)]
        if not candidates:
            return iter(())
        start = turn % len(candidates)
        return iter(candidates[start:] + candidates[:start])

    def readers(self, first: ServerAddress | None = None) -> Iterator[ServerAddress]:
        """Servers to try for one read: ``first`` if given and up (the one owed a close),
        then the reader's current server, then the rest; each once."""
        if not self._troubled:
            order = self._rotations[self._reader]
            if first is None or first == order[0]:
                return iter(order)
            return iter((first, *(a for a in order if a != first)))
        return self._readers_slow(first)

    def _readers_slow(self, first: ServerAddress | None) -> Iterator[ServerAddress]:
        if first is None:
            yield from self._up_from(self._reader)
            return
        if self.is_up(first):
            yield first
        for address in self._up_from(self._reader):
            if address != first:
                yield address

    def read_from(self, address: ServerAddress) -> None:
        """Stay on ``address``: it just handed out an item."""
        if self.addresses[self._reader] != address:
            self._reader = self.addresses.index(address)

    def move_reader_on(self) -> None:
        """Every server was empty: the next read (and its wait) starts on the next one."""
        self._reader = (self._reader + 1) % len(self.addresses)

    def _up_from(self, start: int) -> Iterator[ServerAddress]:
        count = len(self.addresses)
        for offset in range(count):
            address = self.addresses[(start + offset) % count]
            if self.is_up(address):
                yield address

    def mark_down(self, address: ServerAddress, why: str, *, writes_only: bool = False) -> None:
        """Back off from ``address``: for everything, or (a refused write) for writes only."""
        health = self._health[address]
        if not health.failures:
            self._troubled += 1
        health.failures += 1
        doublings = min(health.failures - 1, _MAX_DOUBLINGS)  # 2.0 ** 1024 overflows a float
        backoff = min(BACKOFF_START_S * 2.0**doublings, self._backoff_max_s)
        if writes_only:
            health.write_retry_at = self._clock() + backoff
        else:
            health.retry_at = self._clock() + backoff
        health.last_error = why

    def mark_up(self, address: ServerAddress) -> None:
        """A success: clears a full backoff. A write backoff only ends with its time or a
        successful write (:meth:`mark_writable`), since reads succeed on a read-only server."""
        if not self._troubled:
            return
        health = self._health[address]
        if health.retry_at:
            health.retry_at = 0.0
            self._settle(health)

    def mark_writable(self, address: ServerAddress) -> None:
        if not self._troubled:
            return
        health = self._health[address]
        if health.write_retry_at or health.retry_at:
            health.write_retry_at = health.retry_at = 0.0
            self._settle(health)

    def _settle(self, health: _Health) -> None:
        if health.failures and not health.retry_at and not health.write_retry_at:
            health.failures = 0
            health.last_error = ""
            self._troubled -= 1

    def unavailable(self) -> NoServerAvailable:
        """The error for "nothing could be tried": each server backing off, with what it
        last failed with, and when the soonest of those comes off its backoff. When none
        is backing off (each failed this request without counting as down: answered,
        then closed), every server is named and the retry is due at once."""
        now = self._clock()
        backing_off = {
            address: until
            for address, health in self._health.items()
            if (until := max(health.retry_at, health.write_retry_at)) > now
        }
        named = backing_off or self._health
        failures = [f"{a}: {self._health[a].last_error or 'failed'}" for a in named]
        soonest = min(backing_off.values(), default=now)
        return NoServerAvailable(failures, soonest - now)
