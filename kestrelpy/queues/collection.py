"""A server's queues by name, with their fanout children and aliases.

This is the queue API the command handler (and later the bundled client's embedded mode
and the router) use; none of them touch the store directly.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

from twisted.logger import Logger

from kestrelpy.clock import ReactorClock, now_s
from kestrelpy.config import Config
from kestrelpy.errors import TooManyQueuesError
from kestrelpy.payload import Payload
from kestrelpy.queues.expiry import expiry_ms
from kestrelpy.queues.item_store import ItemStore
from kestrelpy.queues.queue import Item, Queue
from kestrelpy.queues.waiters import Waiter
from kestrelpy.queues.window import CacheBudget, ReadAheadWindow
from kestrelpy.stats import ServerStats


class QueueCollection:
    """Name -> Queue, plus fanout children and aliases. Reactor thread only."""

    _log: ClassVar[Logger] = Logger()  # a class attribute in the compiled build too

    def __init__(
        self, store: ItemStore, config: Config, stats: ServerStats, clock: ReactorClock
    ) -> None:
        self._store = store
        self._clock = clock  # only for a new queue's create time (unix s)
        self._config = config
        self._stats = stats
        self._budget = CacheBudget(config.server.read_ahead_size)
        self._queues: dict[str, Queue] = {}
        self._children: dict[str, dict[str, Queue]] = {}
        self.aliases: dict[str, tuple[str, ...]] = dict(config.aliases)
        self.alias_put_items: dict[str, int] = {}
        self.alias_put_bytes: dict[str, int] = {}
        store.on_rollback(self._rollback)
        for record in store.load_queues():
            queue = self._new_queue(
                record.name,
                record.queue_id,
                record.create_time,
                head_id=record.head_id,
                tail_id=record.tail_id,
                items=record.items,
                payload_bytes=record.payload_bytes,
            )
            self._register(queue)

    # ------------------------------------------------------------------------ lookup

    @property
    def config(self) -> Config:
        return self._config

    def names(self) -> list[str]:
        return sorted(self._queues)

    def __len__(self) -> int:
        return len(self._queues)

    def queues(self) -> list[Queue]:
        return [self._queues[name] for name in sorted(self._queues)]

    def get(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def get_or_create(self, name: str) -> Queue:
        """The queue ``name``, created if missing.

        Raises :class:`TooManyQueuesError` when creating it would pass ``max_queues`` or its
        parent's ``max_fanout_children``: then nothing is created (no queue, no store record,
        no stats line). Queues loaded at start are never refused, only new ones.
        """
        queue = self._queues.get(name)
        if queue is None:
            self.check_room((name,))
            created = now_s(self._clock)
            queue_id = self._store.create_queue(name, created)
            queue = self._new_queue(name, queue_id, created)
            self._register(queue)
            self._stats.queue_creates += 1
        return queue

    def check_room(self, new: Collection[str]) -> None:
        """Raise :class:`TooManyQueuesError` unless the queues ``new`` (distinct names, none of
        them existing yet) can all be created within ``max_queues`` and
        ``max_fanout_children``. O(len(new)): runs only when a queue is about to be made.
        """
        server = self._config.server
        limit = server.max_queues
        if limit and len(self._queues) + len(new) > limit:
            raise TooManyQueuesError(f"too many queues (max_queues = {limit})")
        per_parent = server.max_fanout_children
        if not per_parent:
            return
        extra: dict[str, int] = {}
        for name in new:
            parent, plus, _child = name.partition("+")
            if plus:
                extra[parent] = extra.get(parent, 0) + 1
        for parent, count in extra.items():
            if len(self._children.get(parent, ())) + count > per_parent:
                raise TooManyQueuesError(
                    f"too many fanout children of {parent!r} (max_fanout_children = {per_parent})"
                )

    def children_of(self, name: str) -> list[str]:
        return sorted(self._children.get(name, {}))

    def _new_queue(
        self,
        name: str,
        queue_id: int,
        create_time: int,
        *,
        head_id: int = 0,
        tail_id: int = 0,
        items: int = 0,
        payload_bytes: int = 0,
    ) -> Queue:
        """A queue over its stored items ``[head_id, tail_id)``, counted by the store."""
        config = self._config.queue_config(name)
        window = ReadAheadWindow(
            self._store,
            queue_id,
            self._budget,
            self._config.server.read_ahead_items,
            config.max_memory_size,
            head_id=head_id if items else tail_id,
            tail_id=tail_id,
        )
        return Queue(
            name,
            queue_id,
            config,
            self._store,
            window,
            create_time=create_time,
            items=items,
            payload_bytes=payload_bytes,
            on_expired=self._expired,
        )

    def _register(self, queue: Queue) -> None:
        self._queues[queue.name] = queue
        parent, plus, _child = queue.name.partition("+")
        if plus:
            self._children.setdefault(parent, {})[queue.name] = queue

    # ------------------------------------------------------------------------ writes

    def put(self, name: str, flags: int, exptime: int, data: Payload, now_ms: int) -> bool:
        """Add to a queue, its fanout children, or an alias's destinations.

        True when the item was accepted (for an alias: by every destination). Raises
        :class:`TooManyQueuesError` before anything is stored when a queue it would create (the
        named one, or any of an alias's destinations) is over a limit.
        """
        expiry = expiry_ms(exptime, now_ms)
        destinations = self.aliases.get(name)
        if destinations is not None:
            new = [dest for dest in dict.fromkeys(destinations) if dest not in self._queues]
            if new:  # all or none: no destination gets the item if one cannot be made
                self.check_room(new)
                for dest in new:
                    self.get_or_create(dest)
            self.alias_put_items[name] = self.alias_put_items.get(name, 0) + 1
            self.alias_put_bytes[name] = self.alias_put_bytes.get(name, 0) + len(data)
            accepted = True
            for destination in destinations:
                accepted = self._put_one(destination, flags, expiry, data, now_ms) and accepted
            return accepted
        return self._put_one(name, flags, expiry, data, now_ms)

    def _put_one(self, name: str, flags: int, expiry: int, data: Payload, now_ms: int) -> bool:
        queue = self._queues.get(name) or self.get_or_create(name)  # refused: nothing put yet
        children = self._children.get(name)
        if children:
            for child in children.values():
                child.put(flags, expiry, data, now_ms)
        if queue.config.fanout_only and "+" not in name:
            return True  # a fanout-only parent keeps nothing, yet says STORED; children ignore it
        return queue.put(flags, expiry, data, now_ms)

    def _expired(self, queue: Queue, item: Item) -> None:
        target = queue.expire_to_queue
        if target and target != queue.name:
            try:
                self._put_one(target, item.flags, 0, item.data, item.added_ms)
            except TooManyQueuesError as err:  # the item has expired: dropped, as with no target
                self._log.warn(
                    "expired item of {queue} dropped, not moved to {target}: {why}",
                    queue=queue.name,
                    target=target,
                    why=err.reason,
                )

    def delete(self, name: str) -> list[Waiter]:
        """Drop a queue and its items; returns its blocked readers for the caller to end."""
        queue = self._queues.pop(name, None)
        if queue is None:
            return []
        parent, plus, _child = name.partition("+")
        if plus:
            self._children.get(parent, {}).pop(name, None)
        queue.deleted = True
        queue.forget_cache()
        self._store.drop_queue(name, queue.queue_id)
        self._stats.queue_deletes += 1
        return queue.release_waiters()

    def flush(self, name: str) -> None:
        queue = self._queues.get(name)
        if queue is not None:
            queue.flush()

    def flush_all(self) -> None:
        for queue in self._queues.values():
            queue.flush()

    def flush_expired(self, name: str, now_ms: int) -> int:
        queue = self._queues.get(name)
        return queue.expire_sweep(now_ms) if queue is not None else 0

    def flush_all_expired(self, now_ms: int) -> int:
        return sum(queue.expire_sweep(now_ms) for queue in list(self._queues.values()))

    def delete_aged_out_queues(self, now_ms: int) -> list[Waiter]:
        """``max_queue_age``: delete queues that are empty and older than the limit."""
        released: list[Waiter] = []
        now_s = now_ms // 1000
        for queue in list(self._queues.values()):
            limit = queue.config.max_queue_age
            if limit is None or queue.items or queue.open_transactions:
                continue
            if (now_s - queue.create_time) * 1000 >= limit:
                released.extend(self.delete(queue.name))
                self._stats.queue_expires += 1
        return released

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config to every queue and alias (RELOAD)."""
        self._config = config
        self.aliases = dict(config.aliases)
        for queue in self._queues.values():
            queue.reconfigure(config.queue_config(queue.name))

    def _rollback(self, lost: list[tuple[int, int, int]]) -> None:
        by_queue: dict[int, dict[int, int]] = {}
        for queue_id, item_id, size in lost:
            by_queue.setdefault(queue_id, {})[item_id] = size
        for queue in self._queues.values():
            ids = by_queue.get(queue.queue_id)
            if ids:
                queue.rollback(ids)
