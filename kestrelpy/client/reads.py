"""The reliable reads a client holds, with no I/O.

Kestrel ties an open read to the TCP connection that opened it: ``close`` and ``abort``
only work on that connection, and if it drops, the server puts the item back. So each held
read remembers its server, and a lost connection voids the reads on it.

A finished read's close may wait (``finished``): it is sent ahead of the next request to
that server, or folded into the next ``open`` of the same queue as Kestrel's
``close/open``, so a worker loop pays one round trip per job, as the PHP consumers did.
"""

from __future__ import annotations

from dataclasses import dataclass

from kestrelpy.client.servers import ServerAddress


@dataclass(slots=True)
class HeldRead:
    server: ServerAddress
    finished: bool = False  # done with: its close has not been sent yet


class HeldReads:
    def __init__(self) -> None:
        self._held: dict[str, HeldRead] = {}

    def get(self, queue: str) -> HeldRead | None:
        return self._held.get(queue)

    def hold(self, queue: str, server: ServerAddress) -> None:
        self._held[queue] = HeldRead(server)

    def finish(self, queue: str) -> None:
        """The job succeeded: close it with the next request to its server."""
        self._held[queue].finished = True

    def release(self, queue: str) -> None:
        self._held.pop(queue, None)

    def take_finished(self, server: ServerAddress) -> list[str]:
        """The queues whose close is owed to ``server``; they are no longer held."""
        if not self._held:
            return []
        queues = [q for q, read in self._held.items() if read.finished and read.server == server]
        for queue in queues:
            del self._held[queue]
        return queues

    def drop_server(self, server: ServerAddress) -> list[str]:
        """The connection to ``server`` is gone, and with it (server side) every read it
        held: those items are back on the queue. Returns the queues affected."""
        queues = [q for q, read in self._held.items() if read.server == server]
        for queue in queues:
            del self._held[queue]
        return queues

    def servers_owed_closes(self) -> set[ServerAddress]:
        return {read.server for read in self._held.values() if read.finished}
