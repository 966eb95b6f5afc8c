"""The JSON API: server and queue stats, peek, flush, delete, status (docs/http.md).

Reads need nothing; mutations need the admin token and answer after their commit, as
the memcache commands do. Numbers are numbers, keys are the ``stats`` names.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from kestrelpy import __version__
from kestrelpy.config import STATUSES
from kestrelpy.http.app import HttpApp, queue_name
from kestrelpy.queues.queue import Item, Queue
from kestrelpy.stats import queue_report, server_pairs

_MAX_PEEK = 100


def server(app: HttpApp, request: Any) -> bytes:
    ctx = app.ctx
    body: dict[str, object] = dict(server_pairs(ctx.stats, ctx.collection, app.now_ms()))
    body["version"] = __version__
    body["status"] = ctx.status
    body["peers"] = list(ctx.settings.http_peers)
    return app.json(request, body)


def queues(app: HttpApp, request: Any) -> bytes:
    now = app.now_ms()
    collection = app.ctx.collection
    rows = [_queue_object(app, queue, now) for queue in collection.queues()]
    return app.json(request, {"queues": rows})


def one_queue(app: HttpApp, request: Any, raw_name: str) -> bytes:
    queue = _existing(app, request, raw_name)
    if isinstance(queue, bytes):
        return queue
    return app.json(request, _queue_object(app, queue, app.now_ms()))


def peek(app: HttpApp, request: Any, raw_name: str) -> bytes:
    """Up to ``n`` items from the head, left in place."""
    queue = _existing(app, request, raw_name)
    if isinstance(queue, bytes):
        return queue
    raw_count = request.args.get(b"n", [b"1"])[0]
    if not (raw_count.isdigit() and len(raw_count) <= 3) or not 1 <= int(raw_count) <= _MAX_PEEK:
        return app.error(request, 400, f"n must be an integer from 1 to {_MAX_PEEK}")
    now = app.now_ms()
    items = [_item_object(item, now) for item in queue.peek_many(int(raw_count), now)]
    return app.json(request, {"queue": queue.name, "items": items})


def flush(app: HttpApp, request: Any, raw_name: str) -> object:
    """Remove a queue's waiting items (``flush <q>``); 404 for no such queue."""
    refused = app.authorized(request)
    if refused is not None:
        return refused
    queue = _existing(app, request, raw_name)
    if isinstance(queue, bytes):
        return queue
    app.ctx.collection.flush(queue.name)
    return app.after_commit(request, {"flushed": queue.name})


def flush_all(app: HttpApp, request: Any) -> object:
    """Remove every queue's waiting items (``flush_all``)."""
    refused = app.authorized(request)
    if refused is not None:
        return refused
    app.ctx.collection.flush_all()
    return app.after_commit(request, {"flushed_all": True})


def delete(app: HttpApp, request: Any, raw_name: str) -> object:
    """Drop a queue and its items (``delete <q>``); 404 for no such queue or alias."""
    refused = app.authorized(request)
    if refused is not None:
        return refused
    name = queue_name(raw_name)
    if name is not None and name in app.ctx.collection.aliases:
        return app.json(request, {"deleted": name})  # as delete <alias>: nothing to drop
    queue = _existing(app, request, raw_name)
    if isinstance(queue, bytes):
        return queue
    for waiter in app.ctx.collection.delete(queue.name):
        waiter.on_queue_deleted()
    return app.after_commit(request, {"deleted": queue.name})


def status(app: HttpApp, request: Any) -> bytes:
    refused = app.authorized(request)
    if refused is not None:
        return refused
    try:
        wanted = json.loads(request.content.read() or b"{}").get("status")
    except (ValueError, AttributeError, RecursionError):
        return app.error(request, 400, 'expected a JSON body {"status": "<status>"}')
    if wanted not in STATUSES:
        return app.error(request, 400, f"status must be one of {', '.join(STATUSES)}")
    app.ctx.set_status(wanted)
    return app.json(request, {"status": wanted})


def _existing(app: HttpApp, request: Any, raw_name: str) -> Queue | bytes:
    """The queue a path names, or the error reply (400 bad name, 404 no such queue)."""
    name = queue_name(raw_name)
    if name is None:
        return app.error(request, 400, "bad queue name")
    queue = app.ctx.collection.get(name)
    if queue is None:
        return app.error(request, 404, f"no queue {name!r}")
    return queue


def _queue_object(app: HttpApp, queue: Queue, now_ms: int) -> dict[str, object]:
    row: dict[str, object] = {"name": queue.name}
    row.update(queue_report(app.ctx.collection, queue, now_ms))
    return row


def _item_object(item: Item, now_ms: int) -> dict[str, object]:
    data = bytes(item.data)
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return {
        "id": item.item_id,
        "flags": item.flags,
        "size": len(data),
        "age_ms": max(now_ms - item.added_ms, 0),
        "data": text,
        "encoding": encoding,
    }
