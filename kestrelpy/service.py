"""Builds a running kestrelpy server from a :class:`~kestrelpy.config.Config`.

``make_service(config, reactor)`` is the one place the parts meet: store, queues,
sessions, listener, timers and status. Nothing here runs at import time and the reactor
is passed in, so tests build servers on any reactor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kestrelpy import __version__
from kestrelpy.config import STATUSES, Config, load_config
from kestrelpy.handler import ServerContext, now_ms
from kestrelpy.queues.collection import QueueCollection
from kestrelpy.queues.deadlines import Deadlines
from kestrelpy.server import MemcacheFactory
from kestrelpy.stats import ServerStats
from kestrelpy.storage.lmdb_store import LmdbStore


class StatusKeeper:
    """The server status (up/readonly/quiescent/writeavoid), persisted across restarts.

    Tightening takes effect after ``status_change_grace_period`` (clients get time to
    move away); loosening is immediate. Written atomically so a crash leaves a whole file.
    """

    _log = Logger()

    def __init__(self, ctx: ServerContext, path: Path, default: str, grace_ms: int) -> None:
        self._ctx = ctx
        self._path = path
        self._grace_s = grace_ms / 1000.0
        self._pending: Any = None
        ctx.status = self._read() or default
        ctx.set_status = self.change

    def _read(self) -> str | None:
        try:
            status = self._path.read_text(encoding="ascii").strip().lower()
        except OSError:
            return None
        return status if status in STATUSES else None

    def change(self, status: str) -> None:
        self._write(status)
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if _strictness(status) > _strictness(self._ctx.status) and self._grace_s > 0:
            self._pending = self._ctx.clock.callLater(self._grace_s, self._apply, status)
        else:
            self._apply(status)

    def _apply(self, status: str) -> None:
        self._pending = None
        self._ctx.status = status
        self._log.info("status is now {status}", status=status)

    def _write(self, status: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_name(self._path.name + ".tmp")
        temporary.write_text(status + "\n", encoding="ascii")
        os.replace(temporary, self._path)


def _strictness(status: str) -> int:
    return {"up": 0, "writeavoid": 0, "readonly": 1, "quiescent": 2}[status]


class KestrelService(MultiService):
    """The server: listens on start; on stop, stops accepting, commits, closes the store."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        server = config.server
        self.store = LmdbStore(
            server.data_dir, reactor, sync=server.sync, sync_interval_ms=server.sync_interval_ms
        )
        self.stats = ServerStats()
        self.collection = QueueCollection(self.store, config, self.stats)
        self.ctx = ServerContext(
            collection=self.collection,
            stats=self.stats,
            clock=reactor,
            store_bytes=self.store.store_bytes,
            shutdown=self._shutdown,
            reload=self.reload,
            deadlines=Deadlines(reactor),
        )
        status_file = server.status_file or server.data_dir / ".status"
        self.status = StatusKeeper(
            self.ctx, status_file, server.default_status, server.status_change_grace_period
        )
        self.port: Any = None  # IListeningPort once started
        self._expiry: LoopingCall | None = None
        for warning in config.warnings:
            self._log.warn("{warning}", warning=warning)

    def startService(self) -> None:
        """Bind the listener (raises CannotListenError when the port is busy)."""
        server = self.config.server
        factory = MemcacheFactory(self.ctx, self.store)
        self.port = self._reactor.listenTCP(
            server.memcache_port,
            factory,
            backlog=server.connection_backlog,
            interface=server.listen_address,
        )
        address = self.port.getHost()
        self._log.info(
            "kestrelpy {version} listening on {host}:{port} (data dir {data_dir}, sync {sync})",
            version=__version__,
            host=address.host,
            port=address.port,
            data_dir=str(server.data_dir),
            sync=server.sync,
        )
        frequency = server.expiration_timer_frequency
        if frequency:
            self._expiry = LoopingCall(self._sweep)
            self._expiry.clock = self._reactor
            self._expiry.start(frequency / 1000.0, now=False)
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Any:
        """Stop accepting, commit everything staged, and close the store."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        deferred = self.port.stopListening() if self.port is not None else None
        for session in list(self.ctx.sessions):
            session.end()
        self.store.close()
        self._log.info("kestrelpy stopped; store closed")
        return deferred

    def reload(self) -> Config:
        """RELOAD: re-read the file; a bad one raises and the running config stays."""
        source = self.config.source
        server = self.config.server
        fresh = load_config(
            source,
            host=server.listen_address,
            port=server.memcache_port,
            data_dir=server.data_dir,
        )
        self.config = fresh
        self.collection.reconfigure(fresh)
        return fresh

    def _sweep(self) -> None:
        """Timer: expire items at queue heads, then delete queues past ``max_queue_age``."""
        now = now_ms()
        self.collection.flush_all_expired(now)
        for session_waiters in self.collection.delete_aged_out_queues(now):
            session_waiters.cancel()

    def _shutdown(self) -> None:
        self._log.info("shutdown requested by a client")
        self._reactor.stop()


def make_service(config: Config, reactor: Any) -> KestrelService:
    """One pure builder for the whole server (see STYLE.md)."""
    return KestrelService(config, reactor)
