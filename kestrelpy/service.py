"""Builds a running kestrelpy server from a :class:`~kestrelpy.config.Config`.

``make_service(config, reactor)`` is the one place the parts meet: store, queues, the
context every session shares, listener, timers and status. Nothing here runs at import
time and the reactor is passed in (it is also the clock), so tests build servers on a
``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kestrelpy import __version__
from kestrelpy.clock import ReactorClock, now_ms, now_s
from kestrelpy.config import STATUSES, Config, ServerConfig, load_config
from kestrelpy.http.app import HttpApp
from kestrelpy.http.guard import is_loopback
from kestrelpy.http.site import make_site
from kestrelpy.metrics import MetricsExporter
from kestrelpy.queues.collection import QueueCollection
from kestrelpy.queues.deadlines import Deadlines
from kestrelpy.server import MemcacheFactory
from kestrelpy.stats import ServerStats
from kestrelpy.store import Store
from kestrelpy.tls import ServerTls, load_server_tls, wrap_factory

if TYPE_CHECKING:
    from kestrelpy.handler import Session


class StatusKeeper:
    """The server status (up/readonly/quiescent/writeavoid), persisted across restarts.

    Tightening takes effect after ``status_change_grace_period`` (clients get time to
    move away); loosening is immediate. Written atomically so a crash leaves a whole file.
    """

    _log = Logger()

    def __init__(self, clock: ReactorClock, path: Path, default: str, grace_ms: int) -> None:
        self._clock = clock
        self._path = path
        self._grace_s = grace_ms / 1000.0
        self._pending: Any = None
        self.current = self._read() or default

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
        if _strictness(status) > _strictness(self.current) and self._grace_s > 0:
            self._pending = self._clock.callLater(self._grace_s, self._apply, status)
        else:
            self._apply(status)

    def _apply(self, status: str) -> None:
        self._pending = None
        self.current = status
        self._log.info("status is now {status}", status=status)

    def _write(self, status: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_name(self._path.name + ".tmp")
        temporary.write_text(status + "\n", encoding="ascii")
        os.replace(temporary, self._path)


def _strictness(status: str) -> int:
    return {"up": 0, "writeavoid": 0, "readonly": 1, "quiescent": 2}[status]


@dataclass
class ServerContext:
    """What every session shares: the queues, counters, clock and server controls."""

    collection: QueueCollection
    stats: ServerStats
    clock: ReactorClock
    deadlines: Deadlines
    status_keeper: StatusKeeper
    shutdown: Callable[[], None]
    reload: Callable[[], Config]
    sessions: set[Session] = field(default_factory=set)

    @property
    def settings(self) -> ServerConfig:
        return self.collection.config.server

    @property
    def status(self) -> str:
        """The status in force (a tightening waits out its grace period first)."""
        return self.status_keeper.current

    def set_status(self, status: str) -> None:
        self.status_keeper.change(status)


class KestrelService(MultiService):
    """The server: listens on start; on stop, stops accepting, commits, closes the store."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        server = config.server
        self.store = Store(
            server.data_dir, reactor, sync=server.sync, sync_interval_ms=server.sync_interval_ms
        )
        self.stats = ServerStats(started_s=now_s(reactor))
        self.collection = QueueCollection(self.store, config, self.stats, reactor)
        status_file = server.status_file or server.data_dir / ".status"
        self.status = StatusKeeper(
            reactor, status_file, server.default_status, server.status_change_grace_period
        )
        self.ctx = ServerContext(
            collection=self.collection,
            stats=self.stats,
            clock=reactor,
            deadlines=Deadlines(reactor),
            status_keeper=self.status,
            shutdown=self._shutdown,
            reload=self.reload,
        )
        self.port: Any = None  # IListeningPort once started
        self.http_port: Any = None  # the HTTP listener's, when [server] http is set
        self._metrics: MetricsExporter | None = None  # made at the first scrape
        self._expiry: LoopingCall | None = None
        self._tls: ServerTls | None = None  # loaded once, shared by both listeners
        if server.tls_cert is not None and (server.tls_memcache or server.tls_http):
            self._tls = load_server_tls(server.tls_cert, server.tls_key or server.tls_cert)
        for warning in config.warnings:
            self._log.warn("{warning}", warning=warning)

    def startService(self) -> None:
        """Bind the listener (raises CannotListenError when the port is busy)."""
        server = self.config.server
        factory: Any = MemcacheFactory(self.ctx, self.store)
        if server.tls_memcache:
            factory = self._with_tls(factory)  # decided once here: no per-request check
        if not is_loopback(server.listen_address):
            self._log.warn(
                "memcache listener on {host}: reachable from the network, and the memcache "
                "protocol has no authentication (see SECURITY.md)",
                host=server.listen_address,
            )
        self.port = self._reactor.listenTCP(
            server.memcache_port,
            factory,
            backlog=server.connection_backlog,
            interface=server.listen_address,
        )
        address = self.port.getHost()
        self._log.info(
            "kestrelpy {version} listening on {host}:{port} "
            "(data dir {data_dir}, sync {sync}{tls})",
            version=__version__,
            host=address.host,
            port=address.port,
            data_dir=str(server.data_dir),
            sync=server.sync,
            tls=", tls" if server.tls_memcache else "",
        )
        if server.http:
            self._listen_http(server.http)
        frequency = server.expiration_timer_frequency
        if frequency:
            self._expiry = LoopingCall(self._sweep)
            self._expiry.clock = self._reactor
            self._expiry.start(frequency / 1000.0, now=False)
        super().startService()  # type: ignore[no-untyped-call]

    def _listen_http(self, address: str) -> None:
        """The HTTP listener (metrics, admin API, dashboard); raises CannotListenError."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")  # "[::1]:2223" names an IPv6 address
        if not is_loopback(host):
            self._log.warn(
                "http listener on {host}: reachable from the network (set admin_token)",
                host=host or "every interface",
            )
        app = HttpApp(self.ctx, self.store, self._render_metrics, self._ready)
        site: Any = make_site(app)
        tls = self.config.server.tls_http
        if tls:
            site = self._with_tls(site)
        self.http_port = self._reactor.listenTCP(int(port), site, interface=host)
        bound = self.http_port.getHost()
        app.address = f"{host}:{bound.port}"
        self._log.info(
            "http listening on {host}:{port}{tls}",
            host=bound.host,
            port=bound.port,
            tls=" (https)" if tls else "",
        )

    def _with_tls(self, factory: Any) -> Any:
        """``factory`` behind TLS with the configured certificate (checked at load)."""
        assert self._tls is not None, "tls_memcache/tls_http without tls_cert (config check)"
        return wrap_factory(self._tls, factory)

    def _render_metrics(self) -> bytes:
        """/metrics; the registry is built at the first scrape (none if nobody scrapes)."""
        if self._metrics is None:
            self._metrics = MetricsExporter(self.ctx, self.store)
        return self._metrics.render()

    def _ready(self) -> bool:
        """The store is open: the service runs (stopService closes the store)."""
        return bool(self.running)

    def stopService(self) -> Any:
        """Stop accepting, commit everything staged, and close the store."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self.http_port is not None:
            self.http_port.stopListening()
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
            http=server.http,
        )
        self.config = fresh
        self.collection.reconfigure(fresh)
        return fresh

    def _sweep(self) -> None:
        """Timer: expire items at queue heads, then delete queues past ``max_queue_age``."""
        now = now_ms(self._reactor)
        self.collection.flush_all_expired(now)
        for session_waiters in self.collection.delete_aged_out_queues(now):
            session_waiters.on_queue_deleted()

    def _shutdown(self) -> None:
        self._log.info("shutdown requested by a client")
        self._reactor.stop()


def make_service(config: Config, reactor: Any) -> KestrelService:
    """One pure builder for the whole server: every part is made here, from the config."""
    return KestrelService(config, reactor)
