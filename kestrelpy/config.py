"""Read ``server.conf`` (TOML) into frozen dataclasses, failing early and precisely.

Defaults live in one place: the field defaults of `QueueConfig` and `ServerConfig`. The loader
knows each key's *kind* (a converter such as "duration" or "size") but never its default, so a
default changes with a one-line edit. A bad file must stop the server at startup, not at the
first request, so every unknown table, unknown key and bad value raises `ConfigError` with a
single line naming the file, the line, the section and the key, and saying what was expected.

Durations are stored as integer milliseconds (``None`` = never), sizes as integer bytes.
Kestrel's journal options are accepted in queue sections but only produce a warning: the LMDB
store keeps no journal, and refusing them would break configs ported from Kestrel.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, get_args

from kestrelpy.errors import ConfigError

__all__ = [
    "QUEUE_DEFAULTS",
    "SERVER_DEFAULTS",
    "STATUSES",
    "Config",
    "QueueConfig",
    "ServerConfig",
    "SyncPolicy",
    "dump_config_lines",
    "load_config",
    "parse_duration_ms",
    "parse_size",
]

SyncPolicy = Literal["always", "periodic", "never"]
STATUSES: Final = ("up", "readonly", "quiescent", "writeavoid")

_T = TypeVar("_T")
_INT32_MAX: Final = 2**31 - 1
_INT64_MAX: Final = 2**63 - 1  # the largest TOML integer; also caps parsed sizes and durations


@dataclass(frozen=True)
class QueueConfig:
    """One queue's limits, as Kestrel's ``QueueConfig`` with snake_case names.

    Immutable so that a resolved config can be cached and shared by every queue that uses it.
    Durations are milliseconds, ``None`` meaning never; sizes count payload bytes only.
    """

    max_items: int = _INT32_MAX  # full when adding one more would exceed this count
    max_size: int = _INT64_MAX  # full when adding the item would exceed these payload bytes
    max_item_size: int = _INT64_MAX  # larger payloads are read, then refused with NOT_STORED
    max_age: int | None = None  # ms an item may wait before it expires
    discard_old_when_full: bool = False  # drop the oldest item instead of refusing the set
    expire_to_queue: str | None = None  # expired items move there (without expiry)
    max_expire_sweep: int = _INT32_MAX  # at most this many expiries per sweep
    max_queue_age: int | None = None  # ms: an empty queue older than this is deleted
    fanout_only: bool = False  # a fanout parent keeps nothing itself; children ignore it
    open_transaction_timeout: int | None = None  # ms before an open item is aborted
    keep_journal: bool = True  # False: the queue lives in memory only
    max_memory_size: int = 128 * 1024 * 1024  # bytes of this queue's payload cached in RAM
    enable_trace: bool = False  # log every operation on this queue


@dataclass(frozen=True)
class ServerConfig:
    """Server-wide settings; listener, paths and timers need a restart to change.

    After `load_config`, ``data_dir`` is absolute and ``status_file`` is never ``None``.
    """

    listen_address: str = "127.0.0.1"  # Kestrel: 0.0.0.0; loopback is the safe default
    memcache_port: int = 22133
    data_dir: Path = Path("data")
    sync: SyncPolicy = "always"  # one LMDB environment, so durability is server-wide
    sync_interval_ms: int = 50  # group-commit period for sync = "periodic"
    expiration_timer_frequency: int | None = 1000  # ms; None = no timer (Kestrel's default)
    client_timeout: int | None = None  # ms of idleness before a connection is closed
    max_open_transactions: int = 1  # open items per queue per connection
    connection_backlog: int = 1024
    status_file: Path | None = None  # None: data_dir / ".status"
    default_status: str = "up"  # one of STATUSES, used when status_file does not exist
    status_change_grace_period: int = 0  # ms before a tightening status is enforced
    connection_limit_refuse_writes: int = 0  # 0 = off
    connection_limit_refuse_reads: int = 0  # 0 = off
    # Admin protection (docs/protocol.md §6-§7): false refuses shutdown, flush_all,
    # status <new> and reload on the memcache port; the HTTP admin API has its own token.
    admin_commands: bool = True  # Kestrel: any client may run them
    max_queues: int = 100_000  # creating one more queue is refused; 0 = no limit
    max_fanout_children: int = 1000  # per fanout parent; 0 = no limit
    http: str = "127.0.0.1:2223"  # HTTP listener (metrics, admin, dashboard); "" = off
    admin_token: str = ""  # Bearer token of the HTTP mutating endpoints; "" = they are refused
    http_peers: tuple[str, ...] = ()  # other servers' "host:port" HTTP, shown by the dashboard
    router_accept: bool = False  # POST /router/accept/<queue>: other routers store items here
    router_accept_token: str = ""  # the Bearer token they present; required when accepting
    metrics_queue_series_limit: int = 1000  # above this many queues, no per-queue series
    honor_noreply: bool = True  # compatibility switches, docs/protocol.md §1-§7
    echo_requested_key: bool = True
    gets_cas: bool = True
    preserve_flags: bool = True
    bare_error_lines: bool = False
    max_line_length: int = 2048
    item_size_max: int = 16 * 1024 * 1024  # bytes; hard cap: SERVER_ERROR and close
    read_ahead_size: int = 64 * 1024 * 1024  # bytes: global budget of payload cached in RAM
    read_ahead_items: int = 1000  # per-queue cap of items cached in RAM
    # TLS (SECURITY.md): off unless a listener asks; the files are checked at load time.
    tls_cert: Path | None = None  # PEM: server certificate, then intermediates
    tls_key: Path | None = None  # PEM private key, unencrypted; None: inside tls_cert
    tls_memcache: bool = False  # the memcache listener speaks TLS only (needs tls_cert)
    tls_http: bool = False  # the HTTP listener speaks HTTPS only (needs tls_cert)


SERVER_DEFAULTS: Final = ServerConfig()
QUEUE_DEFAULTS: Final = QueueConfig()


@dataclass(frozen=True)
class Config:
    """A loaded ``server.conf``: immutable, so ``reload`` builds a new one and swaps it in."""

    server: ServerConfig
    defaults: QueueConfig  # built-in defaults overlaid with [defaults]
    # [queues."name"] entries, converted; keys are QueueConfig field names
    queue_overrides: Mapping[str, Mapping[str, object]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    # [aliases."name"] destination_queues
    aliases: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    source: Path | None = None  # the file read, absolute; None = built-in defaults
    warnings: tuple[str, ...] = ()  # ignored Kestrel journal keys, one line each
    _resolved: dict[str, QueueConfig] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def queue_config(self, name: str) -> QueueConfig:
        """The resolved config of queue ``name``, as Kestrel 2.3.4+ resolves it.

        defaults -> [queues.name]; a fanout child ``parent+child`` starts from the parent's
        resolved config, then applies its own entry. Unknown names get the resolved defaults.
        Results are cached (one entry per name asked for; O(1) after the first call), which is
        safe because the config never changes; a reload makes a new `Config`.
        """
        resolved = self._resolved.get(name)
        if resolved is None:
            parent, plus, _ = name.partition("+")
            base = self.queue_config(parent) if plus else self.defaults
            resolved = _overlay(base, self.queue_overrides.get(name, {}))
            self._resolved[name] = resolved
        return resolved


_Settings = TypeVar("_Settings", QueueConfig, ServerConfig)


def _overlay(base: _Settings, values: Mapping[str, Any]) -> _Settings:
    """``base`` with ``values`` replaced; the one place where values lose their static types.

    Every value comes from the converter registered for its key (``_QUEUE_KEYS``,
    ``_SERVER_KEYS``), which guarantees the field's type; a test checks both tables cover
    exactly the dataclass fields.
    """
    return replace(base, **values)


# --- value parsing ----------------------------------------------------------------------

_DURATION_UNITS_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE_UNITS: Final = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_AMOUNT: Final = re.compile(r"\s*([0-9]+)\s*([a-z]+)\s*")
_DURATION_HINT: Final = 'a duration such as "30s" or "never"'
_SIZE_HINT: Final = 'a size such as "16MB" or a number of bytes'

Converter = Callable[[object], object]


def parse_duration_ms(value: object) -> int | None:
    """Milliseconds from ``"500ms"``/``"30s"``/``"1m"``/``"2h"``/``"1d"`` or an int (ms).

    ``"never"`` gives ``None``. Amounts are whole, non-negative numbers: ``"0.5s"`` is
    refused rather than rounded, so the stored value is always what was written.
    Raises `ConfigError` saying what was expected.
    """
    if isinstance(value, str) and value.strip().lower() == "never":
        return None
    amount = _amount(value, _DURATION_UNITS_MS)
    if amount is None:
        raise _expected(_DURATION_HINT, value)
    return amount


def parse_size(value: object) -> int:
    """Bytes from an int or ``"512B"``/``"16KB"``/``"128MB"``/``"1GB"``/``"1TB"``.

    Units are binary (KB = 1024) and case-insensitive, as in Kestrel's configs; a bare
    numeric string is refused because its unit would be a guess. Raises `ConfigError`.
    """
    amount = _amount(value, _SIZE_UNITS)
    if amount is None:
        raise _expected(_SIZE_HINT, value)
    return amount


def _amount(value: object, units: Mapping[str, int]) -> int | None:
    """An int as is, or ``<digits><unit>`` scaled; ``None`` if neither or outside int64."""
    if isinstance(value, int) and not isinstance(value, bool):
        total = value
    elif isinstance(value, str) and (match := _AMOUNT.fullmatch(value.lower())):
        scale = units.get(match[2])
        if scale is None:
            return None
        total = int(match[1]) * scale
    else:
        return None
    return total if 0 <= total <= _INT64_MAX else None


def _expected(what: str, value: object) -> ConfigError:
    return ConfigError(f"expected {what}, got {_show(value)}")


def _show(value: object) -> str:
    """A value as TOML spells it, on one line, so error messages stay single-line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
    elif hasattr(value, "isoformat"):
        text = str(value.isoformat())
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- converters: one per kind of key; they check and convert, never supply defaults -------


INT32_MAX: Final = 2**31 - 1  # what the kernel and the C side take (listen backlog, timers)


def _count(minimum: int = 0, maximum: int = INT32_MAX) -> Converter:
    """An integer in range: a huge one would reach the kernel as an OverflowError."""

    def convert(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum:
            return value
        raise _expected(f"an integer from {minimum} to {maximum}", value)

    return convert


def _size(minimum: int = 0) -> Converter:
    def convert(value: object) -> int:
        size = parse_size(value)
        if size < minimum:
            raise _expected(f"a size of at least {minimum} bytes", value)
        return size

    return convert


def _duration(*, never: bool = True, minimum: int = 0, maximum: int | None = None) -> Converter:
    """``minimum=1`` for timers, where 0 would mean a busy loop rather than "off";
    ``maximum`` for timers too (``INT32_MAX`` ms, 24.8 days), which the event loop hands to
    the kernel in milliseconds."""
    off = ' or "never"' if never else ""

    def convert(value: object) -> int | None:
        ms = parse_duration_ms(value)
        if ms is None and not never:
            raise _expected('a duration such as "1s" ("never" is not allowed here)', value)
        if ms is not None and ms < minimum:
            raise _expected(f"a duration of at least {minimum}ms{off}", value)
        if ms is not None and maximum is not None and ms > maximum:
            raise _expected(f"a duration of at most {maximum}ms{off}", value)
        return ms

    return convert


def _flag(value: object) -> bool:
    """Only real TOML booleans: 0/1 or "yes" are more often a typo than an intent."""
    if isinstance(value, bool):
        return value
    raise _expected("true or false", value)


def _choice(options: tuple[str, ...]) -> Converter:
    """Case-insensitive, as Kestrel's ``status`` command; stored lower-case."""

    def convert(value: object) -> str:
        if isinstance(value, str) and value.lower() in options:
            return value.lower()
        raise _expected("one of " + ", ".join(json.dumps(option) for option in options), value)

    return convert


def _port(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise _expected("a port number 0..65535", value)


def _host(value: object) -> str:
    if isinstance(value, str) and value and not any(char.isspace() for char in value):
        return value
    raise _expected("an address such as 127.0.0.1", value)


def _http_address(value: object) -> str:
    """Empty (off) or ``host:port``; checked now so a typo fails at startup, not at bind."""
    if isinstance(value, str):
        _host_part, colon, port = value.rpartition(":")
        if value == "" or (colon and port.isascii() and port.isdigit() and int(port) <= 65535):
            return value
    raise _expected('"host:port" or "" (off)', value)


def _token(value: object) -> str:
    """Printable ASCII without spaces (it travels in an HTTP header); "" for none."""
    if isinstance(value, str) and all("!" <= char <= "~" for char in value):
        return value
    raise _expected('a token of printable ASCII without spaces, or "" (none)', value)


def _peers(value: object) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        peers = tuple(_http_address(item) for item in value)
        if "" not in peers:
            return peers
    raise _expected('a list of "host:port"', value)


def _path(value: object) -> Path:
    if isinstance(value, str) and value:
        return Path(value)
    raise _expected("a non-empty path string", value)


def _is_queue_name(name: str) -> bool:
    """docs/protocol.md §8: any non-empty name without spaces, control characters or "/"."""
    return bool(name) and not any(
        char == "/" or char.isspace() or unicodedata.category(char) == "Cc" for char in name
    )


_QUEUE_NAME_HINT: Final = 'a queue name without spaces, control characters or "/"'


def _optional_queue_name(value: object) -> str | None:
    """An empty string means none, so a queue can undo an ``expire_to_queue`` from defaults."""
    if value == "":
        return None
    if isinstance(value, str) and _is_queue_name(value):
        return value
    raise _expected(f'{_QUEUE_NAME_HINT}, or "" for none', value)


_QUEUE_KEYS: Final[Mapping[str, Converter]] = MappingProxyType(
    {
        "max_items": _count(),
        "max_size": _size(),
        "max_item_size": _size(),
        "max_age": _duration(),
        "discard_old_when_full": _flag,
        "expire_to_queue": _optional_queue_name,
        "max_expire_sweep": _count(),
        "max_queue_age": _duration(),
        "fanout_only": _flag,
        "open_transaction_timeout": _duration(maximum=INT32_MAX),
        "keep_journal": _flag,
        "max_memory_size": _size(),
        "enable_trace": _flag,
    }
)

_SERVER_KEYS: Final[Mapping[str, Converter]] = MappingProxyType(
    {
        "listen_address": _host,
        "memcache_port": _port,
        "data_dir": _path,
        "sync": _choice(get_args(SyncPolicy)),
        "sync_interval_ms": _duration(never=False, minimum=1, maximum=INT32_MAX),
        "expiration_timer_frequency": _duration(minimum=1, maximum=INT32_MAX),
        "client_timeout": _duration(minimum=1, maximum=INT32_MAX),
        "max_open_transactions": _count(1),
        "connection_backlog": _count(),
        "status_file": _path,
        "default_status": _choice(STATUSES),
        "status_change_grace_period": _duration(never=False, maximum=INT32_MAX),
        "connection_limit_refuse_writes": _count(),
        "connection_limit_refuse_reads": _count(),
        "admin_commands": _flag,
        "max_queues": _count(),
        "max_fanout_children": _count(),
        "http": _http_address,
        "admin_token": _token,
        "http_peers": _peers,
        "router_accept": _flag,
        "router_accept_token": _token,
        "metrics_queue_series_limit": _count(),
        "honor_noreply": _flag,
        "echo_requested_key": _flag,
        "gets_cas": _flag,
        "preserve_flags": _flag,
        "bare_error_lines": _flag,
        "max_line_length": _count(64),
        "item_size_max": _size(1),
        "read_ahead_size": _size(),
        "read_ahead_items": _count(),
        "tls_cert": _path,
        "tls_key": _path,
        "tls_memcache": _flag,
        "tls_http": _flag,
    }
)

# Kestrel journal options: accepted in queue sections so Kestrel configs port over, ignored.
_JOURNAL_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "default_journal_size": "the LMDB store keeps no journal",
        "max_journal_size": "the LMDB store keeps no journal",
        "min_journal_compact_delay": "the LMDB store keeps no journal",
        "disable_aggressive_rewrites": "the LMDB store keeps no journal",
        "sync_journal": "durability is server-wide: use [server] sync",
    }
)

_TABLES_HINT: Final = 'expected [server], [defaults], [queues."<name>"] or [aliases."<name>"]'


def dump_config_lines(cfg: QueueConfig) -> list[str]:
    """``key=value`` lines for ``dump_config`` (docs/protocol.md §12), in field order.

    Durations in ms, sizes in bytes, booleans ``true``/``false``, unset or never as ``none``.
    """
    return [f"{item.name}={_dump_value(getattr(cfg, item.name))}" for item in fields(cfg)]


def _dump_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- locating errors in the file --------------------------------------------------------

_KEY_PART: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY_PATH: Final = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_HEADER_LINE: Final = re.compile(rf"[ \t]*\[[ \t]*({_KEY_PATH})[ \t]*\]")
_KEY_LINE: Final = re.compile(rf"[ \t]*({_KEY_PATH})[ \t]*=")
_TOML_LINE: Final = re.compile(r"at line (\d+)")


def _dotted(fragment: str, template: str) -> tuple[str, ...] | None:
    """The key path of a header or key, letting tomllib undo quoting and dotting."""
    try:
        node: object = tomllib.loads(template.format(fragment))
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        ((name, node),) = node.items()
        path.append(name)
    return tuple(path)


def _line_of(text: str, target: tuple[str, ...]) -> int | None:
    """The first line whose table header or key path starts with ``target``.

    Best effort: a line scan, not a TOML parser, so it can be fooled by text inside
    multi-line strings; it is only used to point at the culprit in an error message.
    """
    table: tuple[str, ...] | None = ()
    for number, line in enumerate(text.split("\n"), start=1):
        if (match := _HEADER_LINE.match(line)) is not None:
            table = _dotted(match[1], "[{}]")
            path = table
        elif table is not None and (match := _KEY_LINE.match(line)) is not None:
            key = _dotted(match[1], "{} = 0")
            path = None if key is None else table + key
        else:
            continue
        if path is not None and path[: len(target)] == target:
            return number
    return None


def _label(section: tuple[str, ...]) -> str:
    """``[server]`` or ``[queues."jobs"]``: names quoted as they would be in the file."""
    if not section:
        return ""
    head, *names = section
    return "[" + ".".join([head, *(json.dumps(name, ensure_ascii=False) for name in names)]) + "]"


@dataclass(frozen=True)
class _Source:
    """The file being loaded, kept to build "file:line: [section] key: why" messages."""

    name: str
    text: str

    def where(self, section: tuple[str, ...], key: str | None = None) -> str:
        line = None
        if key is not None:
            line = _line_of(self.text, (*section, key))
        if line is None and section:
            line = _line_of(self.text, section)
        place = self.name if line is None else f"{self.name}:{line}"
        what = " ".join(part for part in (_label(section), _show_key(key)) if part)
        return f"{place}: {what}"

    def error(self, section: tuple[str, ...], key: str | None, why: str) -> ConfigError:
        return ConfigError(f"{self.where(section, key)}: {why}")

    def convert(
        self, section: tuple[str, ...], key: str, converter: Converter, value: object
    ) -> object:
        try:
            return converter(value)
        except ConfigError as err:
            raise self.error(section, key, str(err)) from err


def _show_key(key: str | None) -> str:
    if key is None:
        return ""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _unknown_key(key: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    return "unknown key; expected one of " + ", ".join(known)


# --- loading ----------------------------------------------------------------------------


def load_config(
    path: Path | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    http: str | None = None,
) -> Config:
    """Load ``path`` (or the built-in defaults when ``None``); CLI overrides win over the file.

    Relative paths in the file resolve against the file's directory, so a config works
    wherever the server is started from; a relative ``data_dir`` override resolves against
    the working directory, as any CLI path would. Raises `ConfigError` on any problem.
    """
    source = _Source("<defaults>", "") if path is None else _Source(str(path), _read_text(path))
    document = _parse_toml(source)
    _check_top_level(source, document)
    warnings: list[str] = []
    server = _server_config(source, document.get("server", {}))
    defaults = _queue_values(source, ("defaults",), document.get("defaults", {}), warnings)
    overrides = {
        name: MappingProxyType(_queue_values(source, ("queues", name), table, warnings))
        for name, table in _named_tables(source, document, "queues").items()
    }
    aliases = {
        name: _alias_destinations(source, name, table)
        for name, table in _named_tables(source, document, "aliases").items()
    }
    base = Path.cwd() if path is None else path.absolute().parent
    server = _finish_server(server, base, host=host, port=port, data_dir=data_dir, http=http)
    _check_tls(source, server)
    return Config(
        server=server,
        defaults=_overlay(QUEUE_DEFAULTS, defaults),
        queue_overrides=MappingProxyType(overrides),
        aliases=MappingProxyType(aliases),
        source=None if path is None else path.absolute(),
        warnings=tuple(warnings),
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: config file is not UTF-8: {err.reason}") from err


def _parse_toml(source: _Source) -> dict[str, object]:
    """tomllib's message already says "(at line N, column M)"; we add the file name."""
    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as err:
        match = _TOML_LINE.search(str(err))
        place = source.name if match is None else f"{source.name}:{match[1]}"
        raise ConfigError(f"{place}: invalid TOML: {err}") from err


def _check_top_level(source: _Source, document: Mapping[str, object]) -> None:
    """Only the four known tables may appear at the top level; a stray key is named as one."""
    for name, value in document.items():
        if name not in ("server", "defaults", "queues", "aliases"):
            if isinstance(value, dict):
                raise source.error((name,), None, f"unknown table; {_TABLES_HINT}")
            raise source.error((), name, f"unknown top-level key; {_TABLES_HINT}")


def _table(source: _Source, section: tuple[str, ...], value: object) -> Mapping[str, object]:
    if isinstance(value, dict):
        return value
    raise source.error(
        section[:-1], section[-1], f"expected a table {_label(section)}, got {_show(value)}"
    )


def _convert_keys(
    source: _Source,
    section: tuple[str, ...],
    value: object,
    keys: Mapping[str, Converter],
    warnings: list[str] | None = None,
) -> dict[str, object]:
    """Convert every key of one table; journal keys warn when ``warnings`` is given."""
    values: dict[str, object] = {}
    for key, raw in _table(source, section, value).items():
        if key in keys:
            values[key] = source.convert(section, key, keys[key], raw)
        elif warnings is not None and key in _JOURNAL_KEYS:
            warnings.append(f"{source.where(section, key)}: ignored ({_JOURNAL_KEYS[key]})")
        else:
            raise source.error(section, key, _unknown_key(key, keys))
    return values


def _queue_values(
    source: _Source, section: tuple[str, ...], value: object, warnings: list[str]
) -> dict[str, object]:
    return _convert_keys(source, section, value, _QUEUE_KEYS, warnings)


def _server_config(source: _Source, value: object) -> ServerConfig:
    server = _overlay(SERVER_DEFAULTS, _convert_keys(source, ("server",), value, _SERVER_KEYS))
    if server.router_accept and not server.router_accept_token:
        # An open accept endpoint would let anyone who reaches the port fill any queue.
        why = "needs router_accept_token (the Bearer token sending routers present)"
        raise source.error(("server",), "router_accept", why)
    return server


def _named_tables(
    source: _Source, document: Mapping[str, object], kind: str
) -> dict[str, Mapping[str, object]]:
    """The ``[kind."name"]`` sub-tables, each name checked to be a valid queue name."""
    tables: dict[str, Mapping[str, object]] = {}
    for name, value in _table(source, (kind,), document.get(kind, {})).items():
        if not _is_queue_name(name):
            raise source.error((kind, name), None, f"expected {_QUEUE_NAME_HINT}")
        tables[name] = _table(source, (kind, name), value)
    return tables


def _alias_destinations(source: _Source, name: str, table: Mapping[str, object]) -> tuple[str, ...]:
    """An alias is only a fan-out target list: sets go to every destination queue."""
    section = ("aliases", name)
    for key in table:
        if key != "destination_queues":
            raise source.error(section, key, "unknown key; expected only destination_queues")
    if "destination_queues" not in table:
        raise source.error(section, None, "missing key destination_queues (a list of queue names)")
    value = table["destination_queues"]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, str) and _is_queue_name(item) for item in value)
    ):
        return tuple(value)
    why = str(_expected('a non-empty list of queue names such as ["jobs"]', value))
    raise source.error(section, "destination_queues", why)


def _finish_server(
    server: ServerConfig,
    base: Path,
    *,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    http: str | None = None,
) -> ServerConfig:
    """Apply CLI overrides and make paths absolute, so later code never sees a relative one."""
    data = Path.cwd() / data_dir if data_dir is not None else base / server.data_dir
    status = data / ".status" if server.status_file is None else base / server.status_file
    return replace(
        server,
        listen_address=server.listen_address if host is None else _cli("--host", _host, host),
        memcache_port=server.memcache_port if port is None else _cli("--port", _port, port),
        http=server.http if http is None else _cli("--http", _http_address, http),
        data_dir=data,
        status_file=status,
        tls_cert=None if server.tls_cert is None else base / server.tls_cert,
        tls_key=None if server.tls_key is None else base / server.tls_key,
    )


def _check_tls(source: _Source, server: ServerConfig) -> None:
    """TLS keys agree, and the files are readable, valid and match; ConfigError if not.

    Checked here, not when the listener starts, so a bad file is one line naming the key,
    and a ``reload`` with a bad file keeps the running config.
    """
    section = ("server",)
    wanted = [key for key in ("tls_memcache", "tls_http") if getattr(server, key)]
    if server.tls_cert is None:
        if wanted:
            raise source.error(section, wanted[0], "needs tls_cert (a PEM certificate file)")
        if server.tls_key is not None:
            raise source.error(section, "tls_key", "needs tls_cert (a PEM certificate file)")
        return
    if not wanted:
        why = "unused: set tls_memcache and/or tls_http = true (or remove it)"
        raise source.error(section, "tls_cert", why)
    from kestrelpy.tls import TlsFileError, load_server_tls  # pyOpenSSL only when TLS is on

    try:
        load_server_tls(server.tls_cert, server.tls_key or server.tls_cert)
    except TlsFileError as err:
        key = "tls_key" if err.which == "key" and server.tls_key is not None else "tls_cert"
        raise source.error(section, key, str(err)) from err


def _cli(flag: str, converter: Callable[[object], _T], value: object) -> _T:
    """CLI values are checked like file values, but the message names the flag."""
    try:
        return converter(value)
    except ConfigError as err:
        raise ConfigError(f"{flag}: {err}") from err
