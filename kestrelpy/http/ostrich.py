"""Kestrel's admin port as its scripts know it (Ostrich), and the probes systemd and k8s use.

``/ping``, ``/stats.json`` (counters and gauges under Kestrel's names, per queue
``q/<queue>/<stat>``), ``/reload`` and ``/shutdown`` (these two need the admin token,
which Kestrel did not ask for), ``/healthz`` and ``/readyz``. See docs/http.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from kestrelpy import __version__
from kestrelpy.http.app import HttpApp
from kestrelpy.stats import queue_report, server_pairs

# Which `stats` names Ostrich reported as counters (monotonic); the rest are gauges.
_SERVER_COUNTERS = frozenset(
    (
        "cmd_get",
        "cmd_set",
        "cmd_peek",
        "get_hits",
        "get_misses",
        "bytes_read",
        "bytes_written",
        "total_connections",
        "total_items",
        "queue_creates",
        "queue_deletes",
        "queue_expires",
    )
)
_SERVER_GAUGES = {"curr_connections": "connections", "curr_items": "items", "bytes": "bytes"}
_QUEUE_COUNTERS = frozenset(
    (
        "total_items",
        "expired_items",
        "discarded",
        "transactions",
        "canceled_transactions",
        "total_flushes",
    )
)
_QUEUE_GAUGES = frozenset(
    ("items", "bytes", "age_msec", "open_transactions", "mem_items", "mem_bytes", "waiters")
)


def ping(app: HttpApp, request: Any) -> bytes:
    return app.text(request, b"pong")


def stats_json(app: HttpApp, request: Any) -> bytes:
    """One object ``{"counters", "gauges", "metrics", "labels"}``, as Ostrich answered."""
    ctx = app.ctx
    now = app.now_ms()
    counters: dict[str, object] = {}
    gauges: dict[str, object] = {}
    for key, value in server_pairs(ctx.stats, ctx.collection, now):
        if key in _SERVER_COUNTERS:
            counters[key] = value
        elif key in _SERVER_GAUGES:
            gauges[_SERVER_GAUGES[key]] = value
        elif key == "uptime":
            gauges[key] = value
    for queue in ctx.collection.queues():
        prefix = f"q/{queue.name}/"
        for key, value in queue_report(ctx.collection, queue, now):
            if key in _QUEUE_COUNTERS:
                counters[prefix + key] = value
            elif key in _QUEUE_GAUGES:
                gauges[prefix + key] = value
        counters[prefix + "get_hits"] = queue.get_hits
        counters[prefix + "get_misses"] = queue.get_misses
    labels = {"version": __version__, "status": ctx.status}
    body = {"counters": counters, "gauges": gauges, "metrics": {}, "labels": labels}
    return app.json(request, body)


def reload(app: HttpApp, request: Any) -> bytes:
    refused = app.authorized(request)
    if refused is not None:
        return refused
    try:
        app.ctx.reload()
    except Exception as err:  # a bad file keeps the running config, as the memcache command
        return app.error(request, 400, f"config error: {err}")
    return app.json(request, {"reloaded": True})


def shutdown(app: HttpApp, request: Any) -> bytes:
    refused = app.authorized(request)
    if refused is not None:
        return refused
    app.ctx.clock.callLater(0, app.ctx.shutdown)  # after this reply is written
    return app.json(request, {"shutdown": True})


def healthz(app: HttpApp, request: Any) -> bytes:
    return app.json(request, {"alive": True})


def readyz(app: HttpApp, request: Any) -> bytes:
    """Ready: the store is open and the status lets clients in (``up``)."""
    status = app.ctx.status
    if app.ready() and status == "up":
        return app.json(request, {"ready": True})
    return app.json(request, {"ready": False, "status": status}, 503)


def metrics(app: HttpApp, request: Any) -> bytes:
    """Prometheus text, collected now from the same counters ``stats`` reads."""
    return app.text(request, app.render_metrics(), CONTENT_TYPE_LATEST.encode())
