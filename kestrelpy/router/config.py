"""An interface's configuration, from a dict or a ``[router.<name>]`` TOML table, checked
whole when the interface is added: a wrong key fails then, naming interface and key, not
when the first message happens to need it.

```toml
[router.orders]
queues = ["orders", "refunds"]        # one name, a list, "/regex/", or absent: every queue
implementation = "kestrel"            # local | kestrel | http | stomp
servers = ["127.0.0.1:22133"]         # the backend's own keys sit beside the common ones
encoding = "json"                     # json | raw | pickle (pickle: trusted local/kestrel only)
send = { buffer = "orders_buffer", on_exit = "flush", message_limit = 1000, retrigger = true }
[router.orders.delivery]
callback = "shop.jobs:handle"         # callback(frame, config) for plain messages
allow = ["shop.tasks"]                # modules whose Invocations may run
on_error = ["log", { retry = { max = 5, backoff = "exp", base_s = 1 } }, { dead_letter = "dead" }]
```
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kestrelpy.importing import BadReference, load_callable
from kestrelpy.router.encodings import JSON, Encoding, encoding_named
from kestrelpy.router.errors import RouterConfigError

IMPLEMENTATIONS = ("local", "kestrel", "http", "stomp")
NETWORK_IMPLEMENTATIONS = ("http", "stomp")
ON_EXIT = ("flush", "consume", "all", "none")
COMMON_KEYS = frozenset({"queues", "implementation", "encoding", "trusted", "send", "delivery"})

OnExit = Literal["flush", "consume", "all", "none"]


@dataclass(frozen=True, slots=True)
class QueueMatcher:
    """Which queue names an interface handles: one, a list, a regex (``/…/``), or all."""

    text: str
    names: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None
    everything: bool = False

    def matches(self, queue: str) -> bool:
        if self.everything:
            return True
        if self.pattern is not None:
            return self.pattern.fullmatch(queue) is not None
        return queue in self.names


@dataclass(frozen=True, slots=True)
class SendOptions:
    buffer: str | None = None  # send into this queue; flush() moves them on later
    on_exit: OnExit = "none"  # at interpreter exit, in a detached child process
    message_limit: int | None = None  # messages per run of that child
    retrigger: bool = False  # another run while messages remain after the limit


@dataclass(frozen=True, slots=True)
class RetryRule:
    max: int
    backoff: Literal["exp", "fixed"] = "exp"
    base_s: float = 1.0
    max_s: float = 300.0

    def delay_s(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1 for the first retry)."""
        if self.backoff == "fixed":
            return min(self.base_s, self.max_s)
        return float(min(self.base_s * 2.0 ** (attempt - 1), self.max_s))


ErrorKind = Literal["log", "drop", "requeue", "callback", "retry", "dead_letter"]


@dataclass(frozen=True, slots=True)
class ErrorAction:
    """One entry of ``on_error``. ``log`` and ``callback`` are side effects and the list
    goes on; ``retry`` (while attempts remain), ``requeue``, ``dead_letter`` and ``drop``
    decide the message's fate and end it."""

    kind: ErrorKind
    queue: str | None = None  # requeue / dead_letter target (requeue: None = same queue)
    immediate: bool = False  # requeue: straight to the backend, past any send buffer
    callback: Callable[[BaseException, Any], object] | None = None
    retry: RetryRule | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    allow: tuple[str, ...] = ()  # modules whose Invocations may run (a package covers its own)
    callback: Callable[[Any, dict[str, Any]], object] | None = None  # callback(frame, config)
    app_fetch: bool = False  # the application pulls with receive(); consume() refuses
    on_error: tuple[ErrorAction, ...] = (ErrorAction("log"),)

    def allows(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.allow)


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    name: str
    queues: QueueMatcher
    implementation: str
    options: Mapping[str, Any]  # the backend's own keys, checked by the backend
    encoding: Encoding = JSON
    trusted: bool = False
    send: SendOptions = SendOptions()
    delivery: DeliveryOptions = DeliveryOptions()
    source: Mapping[str, Any] = field(default_factory=dict)  # as given: for the exit child

    @property
    def network(self) -> bool:
        return self.implementation in NETWORK_IMPLEMENTATIONS

    def allows_encoding(self, encoding: Encoding) -> bool:
        """Pickle only where the config trusts it and no network peer can send it."""
        return not encoding.runs_code or (self.trusted and not self.network)


def parse_interface(name: str, config: Mapping[str, Any]) -> InterfaceConfig:
    where = f"router interface {name!r}"
    if not isinstance(config, Mapping):
        raise RouterConfigError(f"{where}: expected a table of settings")
    implementation = config.get("implementation", "local")
    if implementation not in IMPLEMENTATIONS:
        known = ", ".join(IMPLEMENTATIONS)
        raise RouterConfigError(
            f"{where}: implementation {implementation!r}: expected one of {known}"
        )
    encoding = encoding_named(_str(config, "encoding", where, "json"), where=where)
    trusted = _bool(config, "trusted", where, False)
    interface = InterfaceConfig(
        name=name,
        queues=parse_queues(config.get("queues"), where),
        implementation=implementation,
        options={k: v for k, v in config.items() if k not in COMMON_KEYS},
        encoding=encoding,
        trusted=trusted,
        send=_send_options(config.get("send", {}), f"{where} send"),
        delivery=_delivery_options(config.get("delivery", {}), f"{where} delivery"),
        source=dict(config),
    )
    if not interface.allows_encoding(encoding):
        why = (
            "unpickling network input runs code"
            if interface.network
            else "set trusted = true if only your own processes write to it"
        )
        raise RouterConfigError(f"{where}: encoding 'pickle' refused on {implementation}: {why}")
    return interface


def parse_queues(value: Any, where: str) -> QueueMatcher:
    if value is None:
        return QueueMatcher("*", everything=True)
    if isinstance(value, str):
        if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
            try:
                return QueueMatcher(value, pattern=re.compile(value[1:-1]))
            except re.error as err:
                raise RouterConfigError(f"{where}: queues {value!r}: bad regex: {err}") from err
        if not value:
            raise RouterConfigError(f"{where}: queues: an empty name matches nothing")
        return QueueMatcher(value, names=frozenset([value]))
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v for v in value):
        return QueueMatcher(",".join(value), names=frozenset(value))
    raise RouterConfigError(
        f"{where}: queues: expected a name, a list of names or '/regex/', got {value!r}"
    )


def _send_options(value: Any, where: str) -> SendOptions:
    table = _table(value, where, {"buffer", "on_exit", "message_limit", "retrigger"})
    on_exit = _str(table, "on_exit", where, "none")
    if on_exit not in ON_EXIT:
        raise RouterConfigError(f"{where}: on_exit {on_exit!r}: expected one of {ON_EXIT}")
    limit = table.get("message_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RouterConfigError(f"{where}: message_limit: expected a positive integer")
    buffer = table.get("buffer")
    if buffer is not None and (not isinstance(buffer, str) or not buffer):
        raise RouterConfigError(f"{where}: buffer: expected a queue name")
    return SendOptions(buffer, on_exit, limit, _bool(table, "retrigger", where, False))  # type: ignore[arg-type]


def _delivery_options(value: Any, where: str) -> DeliveryOptions:
    table = _table(value, where, {"allow", "callback", "app_fetch", "on_error"})
    allow = table.get("allow", [])
    if not isinstance(allow, list | tuple) or not all(isinstance(m, str) and m for m in allow):
        raise RouterConfigError(f"{where}: allow: expected a list of module names")
    on_error = table.get("on_error", ["log"])
    if not isinstance(on_error, list | tuple):
        raise RouterConfigError(f"{where}: on_error: expected a list of actions")
    return DeliveryOptions(
        allow=tuple(allow),
        callback=_callable(table.get("callback"), f"{where} callback"),
        app_fetch=_bool(table, "app_fetch", where, False),
        on_error=tuple(_error_action(entry, f"{where} on_error") for entry in on_error),
    )


def _error_action(entry: Any, where: str) -> ErrorAction:
    if entry in ("log", "drop"):
        return ErrorAction(entry)
    if entry == "requeue":
        return ErrorAction("requeue")
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise RouterConfigError(
            f"{where}: {entry!r}: expected 'log', 'drop', 'requeue' or a one-key table "
            "(requeue, callback, retry, dead_letter)"
        )
    ((kind, value),) = entry.items()
    if kind == "requeue":
        return _requeue(value, where)
    if kind == "callback":
        return ErrorAction("callback", callback=_callable(value, f"{where} callback"))
    if kind == "retry":
        return ErrorAction("retry", retry=_retry_rule(value, f"{where} retry"))
    if kind == "dead_letter":
        if not isinstance(value, str) or not value:
            raise RouterConfigError(f"{where}: dead_letter: expected a queue name")
        return ErrorAction("dead_letter", queue=value)
    raise RouterConfigError(f"{where}: unknown action {kind!r}")


def _requeue(value: Any, where: str) -> ErrorAction:
    if value is True:
        return ErrorAction("requeue")
    if isinstance(value, str) and value:
        return ErrorAction("requeue", queue=value)
    table = _table(value, f"{where} requeue", {"queue", "immediate"})
    queue = table.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise RouterConfigError(f"{where}: requeue queue: expected a queue name")
    return ErrorAction(
        "requeue", queue=queue, immediate=_bool(table, "immediate", f"{where} requeue", False)
    )


def _retry_rule(value: Any, where: str) -> RetryRule:
    table = _table(value, where, {"max", "backoff", "base_s", "max_s"})
    most = table.get("max")
    if isinstance(most, bool) or not isinstance(most, int) or most < 0:
        raise RouterConfigError(f"{where}: max: expected a number of retries (0 or more)")
    backoff = _str(table, "backoff", where, "exp")
    if backoff not in ("exp", "fixed"):
        raise RouterConfigError(f"{where}: backoff {backoff!r}: expected 'exp' or 'fixed'")
    base_s = _seconds(table, "base_s", where, 1.0)
    max_s = _seconds(table, "max_s", where, 300.0)
    return RetryRule(most, backoff, base_s, max_s)  # type: ignore[arg-type]


def _callable(value: Any, where: str) -> Any:
    """A callable, or ``"package.module:function"`` imported now (so a typo fails at
    configuration, and the exit child can rebuild the same config from text)."""
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise RouterConfigError(f"{where}: expected 'package.module:function', got {value!r}")
    try:
        return load_callable(value)
    except BadReference as err:
        raise RouterConfigError(f"{where}: {err}") from err


def _table(value: Any, where: str, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RouterConfigError(f"{where}: expected a table, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise RouterConfigError(
            f"{where}: unknown key {unknown[0]!r}: expected one of {', '.join(sorted(known))}"
        )
    return value


def _str(table: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise RouterConfigError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise RouterConfigError(f"{where}: {key}: expected true or false, got {value!r}")
    return value


def _seconds(table: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RouterConfigError(f"{where}: {key}: expected a number of seconds (0 or more)")
    return float(value)
