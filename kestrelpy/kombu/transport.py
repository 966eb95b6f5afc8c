"""kombu's virtual transport over kestrelpy (or Kestrel) servers, through the bundled client.

- Messages are kombu's JSON payloads, one per kestrelpy item; the body is base64 inside it,
  as in kombu's other virtual transports.
- Acks are reliable reads (see :mod:`kestrelpy.kombu.holds`): a delivered message stays
  open on the server until ``ack`` (``close``), ``reject(requeue=True)`` (``abort``) or the
  death of the process (the server puts it back). kombu's in-memory redelivery of unacked
  messages (``_restore``) is not used for any of them.
- Reads block on the server (``get q/open/t=MS``), one connection per consumed queue.
  kestrelpy cannot wait on two queues with one request, so a consumer checks each of its
  queues on every server without waiting, then waits on one: for the whole timeout with
  one queue, for at most ``polling_interval`` (0.1 s) with several (a Celery worker: its
  task queue and its remote-control queue), in turn.
- Exchanges: see :mod:`kestrelpy.kombu.names` for fanout (kestrelpy fanout queues) and
  direct (bindings in this process, else the binding markers on the servers). Topic and
  headers exchanges cannot share their bindings between processes: they raise.

Threads: kombu calls one channel from its consuming thread, except acks and rejects,
which a prefork Celery worker makes from its pool's result thread; see ``holds``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError, InconsistencyError
from kombu.exceptions import ConnectionError as KombuConnectionError
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from kestrelpy.client import (
    Client,
    ClientError,
    NoServerAvailable,
    ServerRefused,
    ServerUnavailable,
)
from kestrelpy.errors import KestrelpyError
from kestrelpy.kombu import names
from kestrelpy.kombu.holds import Held, Holds
from kestrelpy.kombu.pool import SharedServerPool, sharing

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # every connect, send and receive (transport option timeout_s)
DEFAULT_POLL_S = 0.1  # one wait of a multi-queue consumer; a remote-control reply's delay
DEFAULT_MAX_HELD = 256  # unacked messages per channel at most, whatever the prefetch count
MAX_WAIT_MS = 60_000  # one blocking read, when kombu asks to wait without a timeout


class UnroutableError(KestrelpyError, InconsistencyError):
    """No queue is bound to the exchange and routing key, in this process or on the
    servers: the message was not stored. An ``InconsistencyError``, which kombu's
    remote-control replies already expect when the asking client has gone."""


class QoS(virtual.QoS):
    """Acks and rejects act on the server's open item, on the connection holding it."""

    channel: KestrelChannel

    def ack(self, delivery_tag: str) -> None:
        self.channel.settle(delivery_tag, requeue=False)
        super().ack(delivery_tag)
        self.channel.wake()  # after the count drops: room under the prefetch limit

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """``requeue``: the item goes back to the head of its queue (``abort``); otherwise
        it is dropped (``close``), as kombu drops a rejected message."""
        self.channel.settle(delivery_tag, requeue=requeue)
        self._quick_ack(delivery_tag)
        self.channel.wake()

    def restore_unacked(self) -> list[tuple[BaseException, Any]]:
        """Give every unacknowledged message back to the server (newest first, so the
        oldest ends up at the head), instead of kombu's re-publishing of copies."""
        self._flush()
        for tag in reversed(self.channel.holds.tags()):
            self.channel.settle(tag, requeue=True)
        self._delivered.clear()
        return []


class KestrelChannel(virtual.Channel):
    QoS = QoS
    supports_fanout = True
    do_restore = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.servers: list[str] = connection.servers
        self.timeout_s = connection.timeout_s
        self.max_held = connection.max_held
        self._pool = SharedServerPool(self.servers, time.monotonic)
        self.holds: Holds[Client] = Holds(self._new_client)
        self._writer = self._new_client()
        self._write_lock = threading.Lock()
        self._targets: dict[str, Client] = {}  # host:port -> a client of that server only
        self._readers: dict[str, Client] = {}  # kestrelpy queue -> its reader (no item open)
        self._reading: Client | None = None  # the reader in a read now (consuming thread)
        self._state_lock = threading.Lock()  # _readers and _reading against close()
        self._no_ack: set[str] = set()  # kombu queues consumed without acks

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Client]:
        """The channel's writing client, for one request from any thread (a prefork
        worker's result thread publishes too), its refusals sorted for kombu."""
        with self._write_lock, _refusals_retried():
            yield self._writer

    def _new_client(self) -> Client:
        """A client on the channel's shared pool (see :mod:`kestrelpy.kombu.pool`)."""
        client = Client(self.servers, codec="raw", timeout_s=self.timeout_s, decode_by_flags=False)
        return sharing(client, self._pool)

    # -- names ---------------------------------------------------------------------------

    def kestrel_queue(self, queue: str) -> str:
        """The kestrelpy queue holding kombu ``queue``: its fanout child when it is bound
        to a fanout exchange here, else its own (encoded) name."""
        fanouts = [
            binding.exchange
            for binding in self.state.queue_bindings(queue)
            if self.typeof(binding.exchange).type == "fanout"
        ]
        if not fanouts:
            return names.queue_name(queue)
        if len(fanouts) > 1 or len(list(self.state.queue_bindings(queue))) > 1:
            raise names.UnmappableError(
                f"queue {queue!r} is bound to fanout exchange {fanouts[0]!r} and to another "
                "exchange: kestrelpy keeps it as the fanout child "
                f"{names.fanout_child(fanouts[0], queue)!r}, which only that exchange feeds; "
                "bind one queue per fanout exchange"
            )
        return names.fanout_child(fanouts[0], queue)

    # -- writes --------------------------------------------------------------------------

    def basic_publish(
        self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any
    ) -> Any:
        """An exchange this process never declared has no type here (kombu would take it
        for direct). When the servers know it as a fanout parent (it has children: queues
        bound in other processes, as Celery's ``Broadcast`` queues are), it is one."""
        if (
            exchange
            and exchange not in self.state.exchanges
            and self._is_fanout_on_servers(exchange)
        ):
            self._inplace_augment_message(message, exchange, routing_key)
            return self._put_fanout(exchange, message, routing_key, **kwargs)
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    def _is_fanout_on_servers(self, exchange: str) -> bool:
        key = f"queue_{names.fanout_parent(exchange)}_children"
        with self._writing() as writer:
            every = writer.stats()
        return any(stats.get(key) for stats in every.values())

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._store(self.kestrel_queue(queue), message)

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any
    ) -> None:
        """``set`` on the parent copies the message into every bound queue (child), on
        the server that takes it; the parent's own copy, which nobody reads, is flushed.
        With several servers, every child is first made to exist on every server (see
        :meth:`_spread_children`): a copy left in the parent would be flushed unread."""
        parent = names.fanout_parent(exchange)
        if len(self.servers) > 1:
            self._spread_children(parent)
        self._store(parent, message, expiry_s=_broadcast_expiry_s(message))
        with self._writing() as writer:
            writer.flush(parent)

    def _spread_children(self, parent: str) -> None:
        """Create on each server that is up every child of ``parent`` that some server
        has: a queue bound while a server was down (or a child deleted there since) has no
        child on it, and a broadcast taken by that server would reach nobody.

        One ``stats`` per server per broadcast, and only with several servers; broadcasts
        are rare (remote control, Broadcast queues). A server that comes back between the
        ``stats`` and the ``set`` can still take a broadcast it has no child for; readers
        create their child on each server they ask, so that window is one read long."""
        key = f"queue_{parent}_children"
        with self._writing() as writer:
            every = writer.stats()
        held = {
            server: set(filter(None, stats.get(key, "").split(",")))
            for server, stats in every.items()
        }
        wanted = set().union(*held.values())
        for server, children in held.items():
            missing = sorted(wanted - children)
            if missing:
                self._create_on(server, [parent, *missing])

    def _create_on(self, server: str, kestrel_queues: list[str]) -> None:
        """Create queues on one server (a peek creates; an existing queue is unchanged)."""
        with self._write_lock, _refusals_retried():
            client = self._targets.get(server)
            if client is None:
                client = self._targets[server] = Client(
                    [server], codec="raw", timeout_s=self.timeout_s, decode_by_flags=False
                )
            for name in kestrel_queues:
                client.peek(name)

    def _store(self, kestrel_queue: str, message: dict[str, Any], expiry_s: int = 0) -> None:
        body = dumps(message).encode()
        with self._writing() as writer:
            writer.put(kestrel_queue, body, expiry_s=expiry_s or _expiry_s(message))

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> list[str]:
        """Queues bound here, else (direct exchanges) those the servers' binding markers
        name; none anywhere raises :class:`UnroutableError` instead of dropping. A topic
        exchange raises :class:`~kestrelpy.kombu.names.UnmappableError`: its bindings
        cannot be shared between processes (see :meth:`queue_bind`)."""
        if not exchange:
            return [routing_key]
        kind = self.typeof(exchange).type
        if kind != "direct" and kind != "fanout":
            self._refuse_once(exchange, kind)
        try:
            local = self.typeof(exchange).lookup(
                self.get_table(exchange), exchange, routing_key, default
            )
        except KeyError:
            local = set()
        if local:
            return sorted(local)
        remote = self._bound_on_servers(exchange, routing_key) if kind == "direct" else []
        if remote:
            return remote
        raise UnroutableError(
            f"no queue is bound to {kind} exchange {exchange!r} with routing key "
            f"{routing_key!r}, in this process or on the kestrelpy servers; the message "
            "was not stored"
        )

    def _refuse_once(self, exchange: str, kind: str) -> None:
        """Raise for a topic (or other) exchange, and log it the first time: Celery's event
        dispatcher buffers a failed publish without a word, and events would pile up."""
        why = _unmappable(exchange, kind)
        if exchange not in _REFUSALS_LOGGED:
            _REFUSALS_LOGGED.add(exchange)
            log.error("kestrelpy: %s", why)
        raise names.UnmappableError(why)

    def _bound_on_servers(self, exchange: str, routing_key: str) -> list[str]:
        parent = names.binding_parent(exchange, routing_key)
        with self._writing() as writer:
            every = writer.stats()
        found: list[str] = []
        for stats in every.values():
            found += names.bound_queues(stats.get(f"queue_{parent}_children", ""))
        return names.unique(found)

    # -- bindings and queues --------------------------------------------------------------

    def exchange_declare(
        self, exchange: Any = None, type: Any = "direct", *args: Any, **kwargs: Any
    ) -> Any:
        """Any type may be declared (Celery declares its event exchange whether events are
        on or not); binding a queue to, or publishing on, one that is neither direct nor
        fanout raises. kombu's virtual channels know no other types, so those raise here."""
        if (type or "direct") not in ("direct", "fanout", "topic"):
            raise names.UnmappableError(_unmappable(exchange, type))
        return super().exchange_declare(exchange, type, *args, **kwargs)

    def queue_bind(
        self, queue: str, exchange: Any = None, routing_key: str = "", *args: Any, **kwargs: Any
    ) -> Any:
        kind = self.typeof(exchange or "amq.direct").type
        if kind not in ("direct", "fanout"):
            raise names.UnmappableError(_unmappable(exchange, kind))
        return super().queue_bind(queue, exchange, routing_key, *args, **kwargs)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        """Record the binding on the servers, for publishers in other processes: the fanout
        child or the direct binding marker exists from its first read (a ``peek`` here)."""
        kind = self.typeof(exchange).type
        if kind == "fanout":
            self._create(names.fanout_parent(exchange))  # lists its children in stats
            self._create(self.kestrel_queue(queue))
        elif kind == "direct" and exchange:
            # the parent lists its children in stats only once it is a queue itself
            self._create(names.binding_parent(exchange, routing_key))
            self._create(names.binding_marker(exchange, routing_key, queue))

    def _create(self, kestrel_queue: str) -> None:
        """A peek creates the queue; with nothing there it asks every server that is up."""
        with self._writing() as writer:
            writer.peek(kestrel_queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        """``queue_delete`` calls this once per binding, with (exchange, routing_key,
        pattern, queue): a direct binding's marker goes; the queue itself goes once, in
        :meth:`queue_delete`."""
        if len(args) >= 2 and args[0] and self.typeof(args[0]).type == "direct":
            with self._writing() as writer:
                writer.delete(names.binding_marker(args[0], args[1], queue))

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> Any:
        if if_empty and self._size(queue):
            return None
        kestrel_queue = self.kestrel_queue(queue)
        result = super().queue_delete(queue, if_unused=if_unused, if_empty=False, **kwargs)
        with self._writing() as writer:
            writer.delete(kestrel_queue)  # also when it had no bindings
        return result

    def _size(self, queue: str) -> int:
        name = self.kestrel_queue(queue)
        with self._writing() as writer:
            every = writer.stats()
        return sum(int(stats.get(f"queue_{name}_items", 0)) for stats in every.values())

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        name = self.kestrel_queue(queue)
        with self._writing() as writer:
            every = writer.stats()
        return any(f"queue_{name}_items" in stats for stats in every.values())

    def _purge(self, queue: str) -> int:
        size = self._size(queue)
        with self._writing() as writer:
            writer.flush(self.kestrel_queue(queue))
        return size

    # -- reads ---------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack.add(queue)
        else:
            self._no_ack.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        payload = self.read(queue, 0, no_ack=no_ack)
        if payload is None:
            return None
        message = self.Message(payload, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        payload = self.read(queue, 0, no_ack=queue in self._no_ack)
        if payload is None:
            raise Empty()
        return payload

    def read(self, queue: str, wait_ms: int, *, no_ack: bool) -> dict[str, Any] | None:
        """Open one message of kombu ``queue``, waiting up to ``wait_ms``. Acked reads keep
        it open on its connection (held under a fresh delivery tag, so a message that
        comes twice is two deliveries); ``no_ack`` reads confirm it with the next request.
        Consuming thread only; :meth:`close` (from any thread) cuts a read short, and a
        message such a read opened anyway goes back (its connection closes)."""
        kestrel_queue = self.kestrel_queue(queue)
        client = self._start_read(kestrel_queue)
        if client is None:
            return None
        try:
            with _refusals_retried():
                body = client.open(kestrel_queue, wait_ms)
        except Exception:
            if self._end_read(client):
                raise
            return None  # cut short by close(): not an error of the consumer
        if not self._end_read(client) or body is None:
            return None
        payload = self._decode(kestrel_queue, client, body)
        if payload is None:
            return None
        if no_ack:
            client.engine.finish(kestrel_queue)  # the close rides on this reader's next read
            return payload
        with self._state_lock:  # it holds this message now; a new reader reads on
            self._readers.pop(kestrel_queue, None)
        if not self.holds.hold(payload["properties"]["delivery_tag"], client, kestrel_queue):
            _disconnect(client)  # closed meanwhile: the message goes back
            return None
        return payload

    def _start_read(self, kestrel_queue: str) -> Client | None:
        """The reader of ``kestrel_queue``, marked as reading; None once closed."""
        with self._state_lock:
            if self.closed:
                return None
            client = self._readers.get(kestrel_queue)
            if client is None:
                client = self._readers[kestrel_queue] = self.holds.checkout()
            self._reading = client
            return client

    def _end_read(self, client: Client) -> bool:
        """The read of ``client`` is over; False if the channel closed meanwhile, and
        then ``client`` is disconnected (an item it opened goes back to its queue)."""
        with self._state_lock:
            self._reading = None
            closed = self.closed
        if closed:
            _disconnect(client)
        return not closed

    def _decode(self, kestrel_queue: str, client: Client, body: bytes) -> dict[str, Any] | None:
        """The kombu payload of an item, with a delivery tag of its own. An item that is not
        one (another producer's bytes, a body encoding kombu does not know) moves to the
        errors queue (see :meth:`_dead_letter`): kombu could neither deliver it nor give it
        back without reading it again forever.

        kombu's own Message is built here, as kombu builds it on delivery, so that whatever
        it raises on (any exception: a bad ``body_encoding`` is an AttributeError) is met
        while this reader still holds the item, not in kombu's callback after it."""
        try:
            payload = loads(body)
            if not isinstance(payload, dict) or not isinstance(payload["properties"], dict):
                raise TypeError("not a JSON object with properties")
            payload["properties"]["delivery_tag"] = str(uuid.uuid4())
            self.Message(payload, channel=self)
        except Exception as err:
            self._dead_letter(kestrel_queue, client, body, err)
            return None
        return payload

    def _dead_letter(self, kestrel_queue: str, client: Client, body: bytes, why: Exception) -> None:
        """Move the item ``client`` holds open to the errors queue, logged; if it cannot be
        stored there, give it back (to the head of its queue) and raise: the reader must
        not keep holding it, and the message must not be lost."""
        dead = names.errors_queue(kestrel_queue)
        log.error(
            "kestrelpy: item of %s is not a kombu message (%s: %s): moved to %s",
            kestrel_queue,
            type(why).__name__,
            why,
            dead,
        )
        try:
            with self._writing() as writer:
                writer.put(dead, body)
        except BaseException:
            _give_back(client, kestrel_queue)
            raise
        try:
            client.close(kestrel_queue)
        except ClientError as err:  # the server put it back: it is dead-lettered again
            log.warning("kestrelpy: close of a dead-lettered item of %s failed (%s)", dead, err)
            client.disconnect()

    def settle(self, delivery_tag: str, *, requeue: bool) -> None:
        """Close (done) or abort (back to the head) the held message of ``delivery_tag`` on
        its own connection. A connection that is gone has given the item back already: the
        message will be delivered again (logged, not raised: the ack cannot fail it)."""
        held, owner = self._take_hold(delivery_tag)
        if held is None:
            log.warning(
                "kestrelpy: no message is held under delivery tag %s (settled twice, or its "
                "channel closed and gave it back): nothing to %s",
                delivery_tag,
                "requeue" if requeue else "ack",
            )
            return
        client, queue = held.client, held.queue
        try:
            if requeue:
                client.abort(queue)
            else:
                client.close(queue)
        except ClientError as err:
            log.warning(
                "kestrelpy: %s of a message of %s failed (%s); the server has put "
                "it back and will deliver it again",
                "requeue" if requeue else "ack",
                queue,
                err,
            )
            _disconnect(client)
            return
        if not owner.holds.idle(client):
            _disconnect(client)  # the channel closed meanwhile: nobody would reuse it

    def _take_hold(self, delivery_tag: str) -> tuple[Held[Client] | None, KestrelChannel]:
        """The hold of ``delivery_tag``, taken, and the channel whose reader read it.

        kombu routes a delivery to the consumer callback of its queue, and there is one
        per queue per connection: when two channels of a connection consume one queue,
        messages one channel read are acked on the other. Delivery tags are uuid4, so the
        other channels of the connection are searched."""
        held = self.holds.take(delivery_tag)
        if held is not None:
            return held, self
        transport = self.connection
        for channel in list(transport.channels) if transport is not None else ():
            if channel is not self and isinstance(channel, KestrelChannel):
                held = channel.holds.take(delivery_tag)
                if held is not None:
                    return held, channel
        return None, self

    def wake(self) -> None:
        """Wake the consuming thread's wait; an ack may come from another thread after
        the channel closed (kombu then has cut it from its transport)."""
        transport = self.connection
        if transport is not None:
            transport.wake()

    def prefetch_full(self) -> bool:
        """Consumers wait for acks before reading more."""
        return bool(self._consumers) and not self.closed and not self._has_room()

    def consumed(self) -> list[str]:
        """kombu queues to read now: none while prefetch is used up."""
        if self.closed or not self._consumers or not self._has_room():
            return []
        return list(self._active_queues)

    def _has_room(self) -> bool:
        """Under the prefetch count, and under ``max_held``: each unacked message holds a
        connection (to each server its client has read from), and a prefetch count of 0,
        kombu's default without ``qos``, sets no limit at all."""
        return self.qos.can_consume() and len(self.holds) < self.max_held

    def close(self) -> None:
        """Give back every unacked message (kombu's close restores them), cut short a
        read in flight in the consuming thread (its sockets are shut down: a blocked recv
        returns at once, and that thread disconnects the reader, see :meth:`_end_read`),
        and close every other connection. Any thread."""
        self.wake()  # before kombu cuts this channel from its transport
        super().close()
        with self._state_lock:
            reading = self._reading
            readers = [client for client in self._readers.values() if client is not reading]
            self._readers.clear()
        if reading is not None:
            reading.interrupt()  # its thread then finds the channel closed, and disconnects
        for client in (*readers, *self.holds.drop_all()):
            _disconnect(client)
        with self._write_lock:
            for client in (self._writer, *self._targets.values()):
                _disconnect(client)


class Transport(virtual.Transport):
    """``kestrelpy://host:port[;host:port...]//``: every server at once, not failover."""

    Channel = KestrelChannel
    default_port = names.DEFAULT_PORT  # type: ignore[assignment]  # kombu says None
    driver_type = "kestrelpy"
    driver_name = "kestrelpy"
    polling_interval = DEFAULT_POLL_S

    # kombu annotates these as one-element tuples
    connection_errors = (  # type: ignore[assignment]
        KombuConnectionError,
        NoServerAvailable,
        ServerUnavailable,
        OSError,
    )
    channel_errors = (ChannelError, ServerRefused)  # type: ignore[assignment]
    recoverable_connection_errors = (
        KombuConnectionError,  # a server refusing for now (SERVER_ERROR): see _refusals_retried
        NoServerAvailable,
        ServerUnavailable,
        OSError,
    )
    recoverable_channel_errors = ()

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "fanout", "topic"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.servers = names.servers_from_alternates(
            client.hostname, client.port, getattr(client, "alt", ()) or ()
        )
        options = client.transport_options or {}
        self.timeout_s = float(options.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.max_held = int(options.get("max_held", DEFAULT_MAX_HELD))
        if self.max_held < 1:
            raise ValueError(f"transport option max_held={self.max_held}: expected 1 or more")
        self._wakeup = threading.Event()
        self._sticky: tuple[int, str] | None = None  # (channel id, queue) that delivered last
        self._others_asked_at = 0.0  # monotonic: when the other queues were last asked first

    def establish_connection(self) -> Any:
        """Check that some server answers, so a dead broker is kombu's usual connection
        error at connect time, not at the first publish."""
        transport = super().establish_connection()
        channel = self._avail_channels[-1]
        with channel._writing() as writer:
            writer.stats()
        return transport

    def wake(self) -> None:
        """An ack made room under the prefetch limit: a waiting ``drain_events`` reads."""
        self._wakeup.set()

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message from any consumed queue of any channel, or raise
        ``socket.timeout`` after ``timeout`` seconds (None: wait as long as it takes).

        While some consumer has used up its prefetch, no read blocks on the server: an
        ack (from another thread) must be able to end the wait at once, and a blocked read
        cannot be cut short. The other queues are then checked without waiting, between
        waits on the ack event of at most ``polling_interval``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wakeup.clear()
            sources, held_back = self._sources()
            if sources and self._read_one(sources, deadline, may_block=not held_back):
                return
            if held_back or not sources:
                left = _left_s(deadline)
                cap = self.polling_interval if sources or left is None else left
                self._wakeup.wait(cap if left is None else min(cap, left))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()

    def _sources(self) -> tuple[list[tuple[KestrelChannel, str]], bool]:
        """(channel, kombu queue) pairs to read, and whether some consumer is held back by
        its prefetch limit.

        The queue that delivered last is asked first (one request per message while it
        has a backlog), but only for ``polling_interval`` after the others were last asked
        first: a busy task queue must not starve the remote-control queue."""
        pairs: list[tuple[KestrelChannel, str]] = []
        held_back = False
        for channel in self.channels:
            queues = channel.consumed()
            held_back = held_back or (not queues and channel.prefetch_full())
            pairs += [(channel, queue) for queue in queues]
        sticky = self._sticky
        if sticky is not None and len(pairs) > 1:
            now = time.monotonic()
            others_first = now - self._others_asked_at >= self.polling_interval
            if others_first:
                self._others_asked_at = now
            # False sorts first: the sticky queue, or (others_first) every other queue
            pairs.sort(key=lambda pair: ((id(pair[0]), pair[1]) == sticky) is others_first)
        return pairs, held_back

    def _read_one(
        self, sources: list[tuple[KestrelChannel, str]], deadline: float | None, *, may_block: bool
    ) -> bool:
        """One pass: each source without waiting, then (``may_block``) a wait on the first,
        for what is left of the timeout when it is the only one, else for at most
        ``polling_interval``; True if a message was delivered.

        The pass without waiting comes first even for one source: a read asks every server
        (each without waiting) only after its wait on the first, and each delivered message
        leaves with its reading client, so the next read starts on a fresh client's first
        server. Without the pass, messages on any other server would each wait a whole
        timeout on the first one."""
        waits = [0] * len(sources)
        if may_block:
            cap = None if len(sources) == 1 else self.polling_interval
            wait_ms = _wait_ms(_left_s(deadline), cap)
            if wait_ms:
                waits.append(wait_ms)
                sources = [*sources, sources[0]]
        for (channel, queue), wait_ms in zip(sources, waits, strict=True):
            payload = channel.read(queue, wait_ms, no_ack=queue in channel._no_ack)
            if payload is not None:
                self._sticky = (id(channel), queue)
                self._deliver(payload, queue)
                return True
        self._sticky = None
        return False


def _disconnect(client: Client) -> None:
    """Close every connection of ``client``; what it held open goes back to its queue."""
    with contextlib.suppress(ClientError):
        client.disconnect()


def _give_back(client: Client, kestrel_queue: str) -> None:
    """Abort the item ``client`` holds open on ``kestrel_queue``; when that fails, drop the
    connection, which gives it back as well."""
    try:
        client.abort(kestrel_queue)
    except ClientError:
        with contextlib.suppress(ClientError):
            client.disconnect()


@contextlib.contextmanager
def _refusals_retried() -> Iterator[None]:
    """A ``SERVER_ERROR`` refusal (a server ``quiescent`` or ``readonly``, out of queues,
    every server refusing a read) means "not now, try again": it is raised as kombu's
    ``ConnectionError``, one of the transport's connection errors, which Celery retries by
    reconnecting. A channel error would make a Celery worker exit. Other refusals
    (``CLIENT_ERROR``, ``NOT_STORED``: a full queue, an item too large) stay
    :class:`ServerRefused`, a channel error: trying again would not help."""
    try:
        yield
    except ServerRefused as err:
        if err.reply.startswith("SERVER_ERROR"):
            raise KombuConnectionError(str(err)) from err
        raise


_REFUSALS_LOGGED: set[str] = set()  # exchanges already logged as unmappable


def _unmappable(exchange: str, kind: str) -> str:
    return (
        f"{kind} exchange {exchange!r} cannot be mapped onto kestrelpy queues: only direct "
        "and fanout bindings can be shared between processes (Celery's events, -E, "
        "'celery events' and Flower need a broker with topic exchanges; see docs/celery.md)"
    )


def _left_s(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _wait_ms(left_s: float | None, cap_s: float | None) -> int:
    """A blocking read's ``t=``: what is left of the caller's timeout, at most ``cap_s``."""
    wait_s = MAX_WAIT_MS / 1000 if left_s is None else left_s
    if cap_s is not None:
        wait_s = min(wait_s, cap_s)
    return min(int(wait_s * 1000), MAX_WAIT_MS)


ABSOLUTE_EXPTIME_S = 1_000_000  # memcache exptimes from here up are unix times (protocol §3)
MAX_EXPTIME_S = 2**31 - 1  # a signed 32-bit exptime; more is CLIENT_ERROR and a closed connection


def _expiry_s(message: dict[str, Any], now_s: Callable[[], float] = time.time) -> int:
    """kombu's per-message TTL (``expiration``, milliseconds as text) as the item's
    exptime: whole seconds from now, rounded up; 0 (none) when absent.

    A TTL of 1,000,000 s (11.6 days) or more cannot be sent as relative seconds: the server
    would read it as a unix time in 1970 and store the item already expired. It goes as
    ``now + TTL`` instead, clamped to the largest exptime the server takes."""
    expiration = message.get("properties", {}).get("expiration")
    if expiration in (None, ""):
        return 0
    try:
        secs = max(math.ceil(float(expiration) / 1000), 1)
    except (TypeError, ValueError, OverflowError):
        return 0
    if secs < ABSOLUTE_EXPTIME_S:
        return secs
    return min(int(now_s()) + secs, MAX_EXPTIME_S)


def _broadcast_expiry_s(message: dict[str, Any]) -> int:
    """kombu's remote-control broadcasts carry an ``expires`` header (unix seconds) after
    which nobody waits for the reply. The copies in fanout children get it as their absolute
    exptime, so the child of a worker that is gone does not fill up with them."""
    expires = (message.get("headers") or {}).get("expires")
    if isinstance(expires, int | float) and expires > 1_000_000:
        return math.ceil(expires)
    return 0
