"""The reliable reads a client holds, with no I/O.

Kestrel ties an open read to the TCP connection that opened it: ``close`` and ``abort``
only work on that connection, and if it drops, the server puts the item back. So each held
read remembers its server (the engine keeps one connection per server, and replacing it
voids the reads on the old one), and a lost connection marks the reads on it ``lost``: a
``close`` then must not report success for an item that is back on its queue.

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
    lost: bool = False  # its connection is gone: the server put the item back


class HeldReads:
    def __init__(self) -> None:
        self._held: dict[str, HeldRead] = {}

    def get(self, queue: str) -> HeldRead | None:
        return self._held.get(queue)

    def hold(self, queue: str, server: ServerAddress) -> None:
        self._held[queue] = HeldRead(server)

    def finish(self, queue: str) -> None:
        """The job succeeded: close it with the next request to its server (or forget it,
        if lost: there is nothing left to close, and the item will be delivered again)."""
        read = self._held[queue]
        if read.lost:
            del self._held[queue]
        else:
            read.finished = True

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
        held: those items are back on the queue. A finished read is forgotten (its close
        is moot); an unfinished one stays, ``lost``, until its ``close`` or ``abort``
        reports the loss (or the next ``open`` of its queue replaces it). Returns the
        queues affected."""
        queues = [q for q, read in self._held.items() if read.server == server and not read.lost]
        for queue in queues:
            read = self._held[queue]
            if read.finished:
                del self._held[queue]
            else:
                read.lost = True
        return queues

    def servers_owed_closes(self) -> set[ServerAddress]:
        return {read.server for read in self._held.values() if read.finished}
