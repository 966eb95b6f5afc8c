"""Tests for kestrelpy.config: defaults, value forms, resolution, and precise error messages."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kestrelpy import config as config_module
from kestrelpy.config import (
    QUEUE_DEFAULTS,
    SERVER_DEFAULTS,
    Config,
    QueueConfig,
    ServerConfig,
    dump_config_lines,
    load_config,
    parse_duration_ms,
    parse_size,
)
from kestrelpy.errors import ConfigError, KestrelpyError

DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def write_conf(directory: Path, text: str) -> Path:
    """Write ``text`` (dedented; line 1 is the line after the opening quotes) to server.conf."""
    path = directory / "server.conf"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    """The one-line ConfigError message, with the file's directory cut off for brevity."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:"), message  # names the file as it was given
    return message.removeprefix(f"{path.parent}/")


def assert_located(message: str, line: int, section: str, key: str | None) -> None:
    """The message names file, line, section and key, in that order."""
    assert message.startswith(f"server.conf:{line}: "), message
    assert section in message, message
    if key is not None:
        assert f"{section} {key}:" in message, message


def toml_value(value: object) -> str:
    """A default value as it would be written in server.conf."""
    if value is None:
        return '"never"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


# --- defaults ---------------------------------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg.server == dataclasses.replace(
        SERVER_DEFAULTS, data_dir=tmp_path / "data", status_file=tmp_path / "data" / ".status"
    )
    assert cfg.defaults == QUEUE_DEFAULTS == QueueConfig()
    assert cfg.queue_config("anything") == QUEUE_DEFAULTS
    assert (cfg.source, cfg.warnings, dict(cfg.aliases), dict(cfg.queue_overrides)) == (
        None,
        (),
        {},
        {},
    )


def test_documented_defaults() -> None:
    assert ServerConfig() == SERVER_DEFAULTS
    assert (SERVER_DEFAULTS.memcache_port, SERVER_DEFAULTS.sync) == (22133, "always")
    assert SERVER_DEFAULTS.status_file is None  # resolved by load_config
    assert QUEUE_DEFAULTS.max_items == 2**31 - 1
    assert QUEUE_DEFAULTS.max_memory_size == 128 * 1024 * 1024


def test_key_tables_cover_exactly_the_dataclass_fields() -> None:
    queue_fields = [f.name for f in dataclasses.fields(QueueConfig)]
    server_fields = [f.name for f in dataclasses.fields(ServerConfig)]
    assert list(config_module._QUEUE_KEYS) == queue_fields
    assert list(config_module._SERVER_KEYS) == server_fields


def test_every_default_written_out_loads_back_unchanged(tmp_path: Path) -> None:
    """Each field is a valid key, and its converter accepts its own default."""
    queue_lines = [f"{f.name} = {toml_value(f.default)}" for f in dataclasses.fields(QueueConfig)]
    queue_lines = [
        'expire_to_queue = ""' if line.startswith("expire_to_queue") else line
        for line in queue_lines
    ]
    server_lines = [
        f"{f.name} = {toml_value(f.default)}"
        for f in dataclasses.fields(ServerConfig)
        if f.name not in ("status_file", "tls_cert", "tls_key")  # None: no TOML spelling
    ]
    path = write_conf(
        tmp_path, "\n".join(["[server]", *server_lines, "[defaults]", *queue_lines]) + "\n"
    )
    cfg = load_config(path)
    assert cfg.defaults == QUEUE_DEFAULTS
    assert cfg.server == dataclasses.replace(
        SERVER_DEFAULTS, data_dir=tmp_path / "data", status_file=tmp_path / "data" / ".status"
    )


def test_protocol_example_file(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path,
        """
        [server]
        listen_address = "127.0.0.1"
        memcache_port = 22133
        data_dir = "data"
        sync = "always"
        sync_interval_ms = 50
        expiration_timer_frequency = "1s"
        client_timeout = "never"
        status_file = "data/.status"
        status_change_grace_period = "0s"
        http = "127.0.0.1:22134"
        item_size_max = "16MB"

        [defaults]
        max_items = 2147483647
        max_age = "never"
        max_memory_size = "128MB"

        [queues."jobs_pending"]
        max_age = "30s"
        expire_to_queue = "jobs_ready"

        [queues."orders+audit"]
        max_items = 100000

        [aliases."wx_updates"]
        destination_queues = ["weather_updates"]
        """,
    )
    cfg = load_config(path)
    assert cfg.source == path.absolute()
    assert cfg.server.expiration_timer_frequency == 1000
    assert cfg.server.client_timeout is None
    assert cfg.server.status_file == tmp_path / "data" / ".status"
    assert cfg.server.item_size_max == 16 * 1024 * 1024
    assert cfg.queue_config("jobs_pending").max_age == 30_000
    assert cfg.queue_config("jobs_pending").expire_to_queue == "jobs_ready"
    assert cfg.queue_config("orders+audit").max_items == 100_000
    assert cfg.aliases == {"wx_updates": ("weather_updates",)}


# --- durations and sizes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("1m", 60_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("0s", 0),
        (" 5 S ", 5_000),
        ("10MS", 10),
        ("never", None),
        ("NEVER", None),
        (250, 250),
        (0, 0),
    ],
)
def test_duration_forms(text: object, expected: int | None, tmp_path: Path) -> None:
    assert parse_duration_ms(text) == expected
    literal = f'"{text}"' if isinstance(text, str) else str(text)
    path = write_conf(tmp_path, f"[defaults]\nmax_age = {literal}\n")
    assert load_config(path).defaults.max_age == expected


@pytest.mark.parametrize(
    "value", [5.5, -1, True, False, None, "", "5", "5x", "1.5s", "-1s", "s", "1 2s", [], {}]
)
def test_bad_durations(value: object) -> None:
    with pytest.raises(ConfigError, match=r'expected a duration such as "30s" or "never", got'):
        parse_duration_ms(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512B", 512),
        ("16KB", 16 * 1024),
        ("128MB", 128 * 1024**2),
        ("1GB", 1024**3),
        ("2TB", 2 * 1024**4),
        ("16kb", 16 * 1024),
        ("1 mb", 1024**2),
        ("0B", 0),
        (42, 42),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_size_forms(text: object, expected: int, tmp_path: Path) -> None:
    assert parse_size(text) == expected
    literal = f'"{text}"' if isinstance(text, str) else str(text)
    path = write_conf(tmp_path, f"[defaults]\nmax_memory_size = {literal}\n")
    assert load_config(path).defaults.max_memory_size == expected


@pytest.mark.parametrize(
    "value", [1.5, -1, True, None, "", "512", "16K", "16KiB", "1.5MB", "-1KB", "9999999TB", []]
)
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ConfigError, match=r'expected a size such as "16MB"'):
        parse_size(value)


def random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def amounts(draw: st.DrawFn, units: dict[str, int]) -> tuple[str, int]:
    number = draw(st.integers(min_value=0, max_value=10**12))
    unit = draw(st.sampled_from(sorted(units)))
    spaces = draw(st.sampled_from(["", " ", "\t"]))
    return f"{spaces}{number}{spaces}{random_case(draw, unit)}{spaces}", number * units[unit]


@given(amounts(DURATION_UNITS))
def test_duration_property(case: tuple[str, int]) -> None:
    text, expected_ms = case
    if expected_ms < 2**63:
        assert parse_duration_ms(text) == expected_ms
    else:  # beyond int64, what stats and LMDB counters can hold
        with pytest.raises(ConfigError):
            parse_duration_ms(text)


@given(amounts(SIZE_UNITS))
def test_size_property(case: tuple[str, int]) -> None:
    text, expected_bytes = case
    if expected_bytes < 2**63:
        assert parse_size(text) == expected_bytes
    else:
        with pytest.raises(ConfigError):
            parse_size(text)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_plain_integers_pass_through(number: int) -> None:
    assert parse_duration_ms(number) == number
    assert parse_size(number) == number


@given(st.one_of(st.text(), st.floats(), st.booleans(), st.integers(max_value=-1)))
def test_parsers_return_a_value_or_raise_config_error(value: object) -> None:
    """Whatever a user writes, the answer is a number, None, or a ConfigError: never a crash."""
    for parse in (parse_duration_ms, parse_size):
        try:
            result = parse(value)
        except ConfigError as err:
            assert "\n" not in str(err)
        else:
            assert result is None or (isinstance(result, int) and 0 <= result < 2**63)


# --- paths and CLI overrides ------------------------------------------------------------


def test_cli_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write_conf(
        conf_dir,
        """
        [server]
        listen_address = "0.0.0.0"
        memcache_port = 1234
        data_dir = "/var/lib/kestrel"
        """,
    )
    cfg = load_config(path, host="::1", port=0, data_dir=Path("cli-data"))
    assert (cfg.server.listen_address, cfg.server.memcache_port) == ("::1", 0)
    assert cfg.server.data_dir == tmp_path / "cli-data"  # CLI paths: relative to cwd
    assert cfg.server.status_file == tmp_path / "cli-data" / ".status"
    kept = load_config(path)
    assert (kept.server.listen_address, kept.server.memcache_port) == ("0.0.0.0", 1234)
    assert kept.server.data_dir == Path("/var/lib/kestrel")


def test_cli_overrides_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(port=9999, data_dir=tmp_path / "abs")
    assert cfg.server.memcache_port == 9999
    assert cfg.server.status_file == tmp_path / "abs" / ".status"


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"port": 70000}, "--port"), ({"port": -1}, "--port"), ({"host": ""}, "--host")],
)
def test_bad_cli_overrides(kwargs: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag}: expected"):
        load_config(**kwargs)  # type: ignore[arg-type]


def test_relative_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write_conf(conf_dir, '[server]\ndata_dir = "q"\nstatus_file = "run/status"\n')
    cfg = load_config(Path("..") / "conf" / "server.conf")  # relative path to the file too
    assert cfg.server.data_dir.is_absolute()
    assert cfg.server.data_dir.resolve() == conf_dir / "q"
    assert cfg.server.status_file is not None
    assert cfg.server.status_file.resolve() == conf_dir / "run" / "status"
    assert cfg.source is not None and cfg.source.resolve() == path


def test_default_data_dir_and_status_file_follow_the_file(tmp_path: Path) -> None:
    cfg = load_config(write_conf(tmp_path, ""))
    assert cfg.server.data_dir == tmp_path / "data"
    assert cfg.server.status_file == tmp_path / "data" / ".status"
    cfg = load_config(write_conf(tmp_path, '[server]\ndata_dir = "/srv/q"\n'))
    assert cfg.server.status_file == Path("/srv/q/.status")


# --- queue resolution and aliases -------------------------------------------------------

RESOLUTION_CONF = """
[defaults]
max_items = 1000
max_age = "1h"
expire_to_queue = "dead"

[queues."orders"]
max_items = 50
max_size = "1MB"

[queues."orders+audit"]
max_size = "2MB"
discard_old_when_full = true

[queues."jobs"]
expire_to_queue = ""
max_age = "never"
"""


@pytest.fixture
def resolved(tmp_path: Path) -> Config:
    return load_config(write_conf(tmp_path, RESOLUTION_CONF))


def test_defaults_overlay_built_ins(resolved: Config) -> None:
    assert resolved.defaults == dataclasses.replace(
        QUEUE_DEFAULTS, max_items=1000, max_age=3_600_000, expire_to_queue="dead"
    )
    assert resolved.queue_config("unknown") == resolved.defaults


def test_queue_entry_overlays_defaults(resolved: Config) -> None:
    orders = resolved.queue_config("orders")
    assert (orders.max_items, orders.max_size, orders.max_age) == (50, 1024**2, 3_600_000)
    jobs = resolved.queue_config("jobs")
    assert (jobs.expire_to_queue, jobs.max_age) == (None, None)  # "" and "never" undo defaults


def test_fanout_child_inherits_parent_then_own_entry(resolved: Config) -> None:
    audit = resolved.queue_config("orders+audit")
    assert audit.max_items == 50  # from the parent's entry
    assert audit.max_size == 2 * 1024**2  # its own entry wins
    assert audit.discard_old_when_full is True
    assert audit.max_age == 3_600_000  # from [defaults], through the parent
    assert resolved.queue_config("orders+mail") == resolved.queue_config("orders")
    assert resolved.queue_config("orders+audit+x") == resolved.queue_config("orders")
    assert resolved.queue_config("unknown+child") == resolved.defaults


def test_queue_config_is_cached_and_immutable(resolved: Config) -> None:
    assert resolved.queue_config("orders+audit") is resolved.queue_config("orders+audit")
    assert resolved.queue_overrides["orders"] == {"max_items": 50, "max_size": 1024**2}
    with pytest.raises(TypeError):
        resolved.queue_overrides["orders"]["max_items"] = 1  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.defaults.max_items = 1  # type: ignore[misc]
    assert isinstance(hash(resolved), int)


def test_aliases(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path,
        """
        [aliases."wx"]
        destination_queues = ["weather", "weather+archive"]

        [aliases."one"]
        destination_queues = ["solo"]
        """,
    )
    assert load_config(path).aliases == {"wx": ("weather", "weather+archive"), "one": ("solo",)}


@pytest.mark.parametrize(
    ("body", "line", "key", "why"),
    [
        ("", 1, None, "missing key destination_queues"),
        ("destination_queues = []", 2, "destination_queues", "got []"),
        ("destination_queues = [1]", 2, "destination_queues", "got [1]"),
        ('destination_queues = "q"', 2, "destination_queues", 'got "q"'),
        ('destination_queues = ["a b"]', 2, "destination_queues", "queue names"),
        ('destinations = ["q"]', 2, "destinations", "unknown key"),
    ],
)
def test_bad_aliases(tmp_path: Path, body: str, line: int, key: str | None, why: str) -> None:
    message = load_error(write_conf(tmp_path, f'[aliases."wx"]\n{body}\n'))
    assert_located(message, line, '[aliases."wx"]', key)
    assert why in message


# --- journal keys -----------------------------------------------------------------------


def test_journal_keys_warn_and_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so the warnings name "server.conf" as given
    write_conf(
        tmp_path,
        """
        [defaults]
        default_journal_size = "16MB"
        max_journal_size = "1GB"
        min_journal_compact_delay = "1m"

        [queues."jobs"]
        disable_aggressive_rewrites = true
        sync_journal = "100ms"
        max_items = 5
        """,
    )
    cfg = load_config(Path("server.conf"))
    assert cfg.warnings == (
        "server.conf:2: [defaults] default_journal_size: ignored (the LMDB store keeps no journal)",
        "server.conf:3: [defaults] max_journal_size: ignored (the LMDB store keeps no journal)",
        "server.conf:4: [defaults] min_journal_compact_delay: ignored "
        "(the LMDB store keeps no journal)",
        'server.conf:7: [queues."jobs"] disable_aggressive_rewrites: ignored '
        "(the LMDB store keeps no journal)",
        'server.conf:8: [queues."jobs"] sync_journal: ignored '
        "(durability is server-wide: use [server] sync)",
    )
    assert cfg.queue_overrides == {"jobs": {"max_items": 5}}
    assert cfg.defaults == QUEUE_DEFAULTS


def test_journal_keys_are_unknown_in_server(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, '[server]\nsync_journal = "1s"\n'))
    assert_located(message, 2, "[server]", "sync_journal")
    assert "unknown key" in message


# --- errors -----------------------------------------------------------------------------


def test_unknown_table(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, "[server]\nmemcache_port = 1\n\n[bogus]\nx = 1\n"))
    assert_located(message, 4, "[bogus]", None)
    assert "unknown table" in message
    assert '[queues."<name>"]' in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, "# a comment\nmemcache_port = 1\n"))
    assert message.startswith("server.conf:2: memcache_port: unknown top-level key")


@pytest.mark.parametrize(
    ("header", "section"),
    [
        ("[server]", "[server]"),
        ("[defaults]", "[defaults]"),
        ('[queues."jobs"]', '[queues."jobs"]'),
        ("[queues.jobs]", '[queues."jobs"]'),
        ('[ queues . "jobs" ]  # comment', '[queues."jobs"]'),
    ],
)
def test_unknown_key_in_each_section(tmp_path: Path, header: str, section: str) -> None:
    text = f"[server]\nhonor_noreply = true\n\n{header}\n# comment\nmax_itmes = 5\n"
    if header == "[server]":
        text = f"{header}\nhonor_noreply = true\n\n# comment\n\nmax_itmes = 5\n"
    message = load_error(write_conf(tmp_path, text))
    assert_located(message, 6, section, "max_itmes")
    assert "unknown key" in message


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, "[server]\nmemcache_prot = 1\n"))
    assert message.endswith("unknown key; did you mean memcache_port?")
    message = load_error(write_conf(tmp_path, "[defaults]\nzzz = 1\n"))
    assert "expected one of max_items, max_size" in message


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("[server]", "memcache_port = true", "expected a port number 0..65535, got true"),
        ("[server]", 'memcache_port = "22133"', 'got "22133"'),
        ("[server]", "memcache_port = 70000", "expected a port number 0..65535, got 70000"),
        ("[server]", "gets_cas = 1", "expected true or false, got 1"),
        ("[server]", 'gets_cas = "yes"', 'expected true or false, got "yes"'),
        (
            "[server]",
            "max_open_transactions = 0",
            "expected an integer from 1 to 2147483647, got 0",
        ),
        ("[server]", "max_line_length = 10", "expected an integer from 64 to 2147483647, got 10"),
        ("[server]", "connection_backlog = -1", "expected an integer from 0 to 2147483647, got -1"),
        (
            "[server]",
            "connection_backlog = 99999999999999999999",  # was an OverflowError traceback
            "expected an integer from 0 to 2147483647, got 99999999999999999999",
        ),
        (
            "[server]",
            'client_timeout = "30d"',  # a timer the event loop hands the kernel in ms
            "expected a duration of at most 2147483647ms",
        ),
        ("[server]", "read_ahead_items = 1.0", "expected an integer from 0 to 2147483647, got 1.0"),
        ("[server]", "item_size_max = 0", "at least 1 bytes, got 0"),
        ("[server]", 'sync_interval_ms = "never"', '"never" is not allowed here'),
        ("[server]", "sync_interval_ms = 0", "at least 1ms, got 0"),
        ("[server]", 'status_change_grace_period = "never"', '"never" is not allowed here'),
        ("[server]", 'client_timeout = "0s"', 'at least 1ms or "never", got "0s"'),
        ("[server]", 'expiration_timer_frequency = "1.5s"', 'got "1.5s"'),
        ("[server]", 'data_dir = ""', 'expected a non-empty path string, got ""'),
        ("[server]", 'http = "localhost"', 'expected "host:port" or "" (off), got "localhost"'),
        ("[server]", 'listen_address = "a b"', 'got "a b"'),
        ("[server]", 'sync = "sometimes"', 'expected one of "always", "periodic", "never"'),
        ("[server]", 'default_status = "down"', '"writeavoid", got "down"'),
        ("[defaults]", "max_age = 5.5", 'expected a duration such as "30s" or "never", got 5.5'),
        ("[defaults]", "max_items = true", "expected an integer from 0 to 2147483647, got true"),
        ("[defaults]", 'max_size = "1.5GB"', 'expected a size such as "16MB"'),
        ("[defaults]", "keep_journal = 0", "expected true or false, got 0"),
        ("[defaults]", 'expire_to_queue = "a/b"', 'got "a/b"'),
        ('[queues."jobs"]', "max_age = 5.5", "got 5.5"),
        ('[queues."jobs"]', "max_queue_age = [1]", "got [1]"),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, section: str, line: str, expected: str) -> None:
    key = line.split(" = ")[0]
    text = f"# comment\n\n{section}\n# {line} (a comment is never the culprit)\n{line}\n"
    message = load_error(write_conf(tmp_path, text))
    assert_located(message, 5, section, key)
    assert expected in message


def test_example_message_from_the_brief(tmp_path: Path) -> None:
    text = "# comment\n" * 12 + '[queues."jobs"]\nmax_age = 5.5\n'
    message = load_error(write_conf(tmp_path, text))
    assert message == (
        'server.conf:14: [queues."jobs"] max_age: '
        'expected a duration such as "30s" or "never", got 5.5'
    )


def test_status_names_are_case_insensitive(tmp_path: Path) -> None:
    path = write_conf(tmp_path, '[server]\ndefault_status = "ReadOnly"\nsync = "Periodic"\n')
    server = load_config(path).server
    assert (server.default_status, server.sync) == ("readonly", "periodic")


def test_error_in_inline_and_dotted_tables_points_at_the_line(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, "[queues]\n\njobs = { max_age = 5.5 }\n"))
    assert_located(message, 3, '[queues."jobs"]', "max_age")
    message = load_error(write_conf(tmp_path, '[queues]\n"jobs".max_age = 5.5\n'))
    assert_located(message, 2, '[queues."jobs"]', "max_age")


@pytest.mark.parametrize(
    ("text", "line", "section", "key", "why"),
    [
        ('[queues]\njobs = "x"\n', 2, "[queues]", "jobs", 'expected a table [queues."jobs"]'),
        ('[queues."a b"]\n', 1, '[queues."a b"]', None, "queue name without spaces"),
        ('[aliases."a/b"]\n', 1, '[aliases."a/b"]', None, "queue name without spaces"),
        ("server = 5\n", 1, "", "server", "expected a table [server], got 5"),
    ],
)
def test_bad_structure(
    tmp_path: Path, text: str, line: int, section: str, key: str | None, why: str
) -> None:
    message = load_error(write_conf(tmp_path, text))
    assert message.startswith(f"server.conf:{line}: {section}")
    if key is not None:
        assert f" {key}: " in message
    assert why in message


def test_toml_syntax_error_carries_line_and_column(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, "[server]\n\nmemcache_port = \n"))
    assert message.startswith("server.conf:3: invalid TOML: ")
    assert "line 3, column" in message


def test_duplicate_table_is_a_syntax_error(tmp_path: Path) -> None:
    message = load_error(write_conf(tmp_path, "[server]\n[server]\n"))
    assert message.startswith("server.conf:2: invalid TOML")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=r"nope\.conf: cannot read config file"):
        load_config(path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "server.conf"
    path.write_bytes(b'[server]\nhttp = "\xff"\n')
    assert load_error(path).startswith("server.conf: config file is not UTF-8")


def test_config_error_is_a_kestrelpy_error() -> None:
    assert issubclass(ConfigError, KestrelpyError)


# --- dump_config ------------------------------------------------------------------------


def test_dump_config_lines() -> None:
    cfg = dataclasses.replace(
        QUEUE_DEFAULTS, max_age=30_000, expire_to_queue="jobs_ready", enable_trace=True
    )
    assert dump_config_lines(cfg) == [
        "max_items=2147483647",
        "max_size=9223372036854775807",
        "max_item_size=9223372036854775807",
        "max_age=30000",
        "discard_old_when_full=false",
        "expire_to_queue=jobs_ready",
        "max_expire_sweep=2147483647",
        "max_queue_age=none",
        "fanout_only=false",
        "open_transaction_timeout=none",
        "keep_journal=true",
        "max_memory_size=134217728",
        "enable_trace=true",
    ]


def test_http_keys(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path,
        '[server]\nhttp = ""\nadmin_token = "abc"\nhttp_peers = ["10.0.0.2:2223"]\n'
        "metrics_queue_series_limit = 5\n",
    )
    server = load_config(path).server
    assert (server.http, server.admin_token, server.http_peers) == ("", "abc", ("10.0.0.2:2223",))
    assert server.metrics_queue_series_limit == 5
    assert load_config(path, http="127.0.0.1:0").server.http == "127.0.0.1:0"
    assert SERVER_DEFAULTS.http == "127.0.0.1:2223"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('admin_token = "a b"', "a token of printable ASCII without spaces"),
        ('admin_token = "caf\u00e9"', "printable ASCII"),
        ('http_peers = "host:1"', 'a list of "host:port"'),
        ('http_peers = ["nohost"]', '"host:port"'),
        ('http_peers = [""]', 'a list of "host:port"'),
    ],
)
def test_bad_http_keys(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write_conf(tmp_path, f"[server]\n{line}\n"))


def test_bad_http_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--http"):
        load_config(None, http="nope")


def test_router_accept_keys(tmp_path: Path) -> None:
    assert (SERVER_DEFAULTS.router_accept, SERVER_DEFAULTS.router_accept_token) == (False, "")
    path = write_conf(tmp_path, '[server]\nrouter_accept = true\nrouter_accept_token = "t0k"\n')
    server = load_config(path).server
    assert (server.router_accept, server.router_accept_token) == (True, "t0k")
    path = write_conf(tmp_path, '[server]\nrouter_accept_token = "t0k"\n')  # a token alone: off
    assert not load_config(path).server.router_accept


@pytest.mark.parametrize(
    "text",
    [
        "[server]\n# off unless a token\nrouter_accept = true\n",
        '[server]\n# off unless a token\nrouter_accept = true\nrouter_accept_token = ""\n',
    ],
)
def test_router_accept_needs_a_token(tmp_path: Path, text: str) -> None:
    message = load_error(write_conf(tmp_path, text))
    assert_located(message, 3, "[server]", "router_accept")
    assert message.endswith("needs router_accept_token (the Bearer token sending routers present)")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('router_accept = "yes"', 'expected true or false, got "yes"'),
        ("router_accept = 1", "expected true or false, got 1"),
        ('router_accept_token = "a b"', "a token of printable ASCII without spaces"),
        ("router_accept_token = 5", "a token of printable ASCII without spaces"),
    ],
)
def test_bad_router_accept_keys(tmp_path: Path, line: str, expected: str) -> None:
    message = load_error(write_conf(tmp_path, f"[server]\n{line}\n"))
    assert_located(message, 2, "[server]", line.split(" = ")[0])
    assert expected in message


def test_admin_protection_keys(tmp_path: Path) -> None:
    """Issue 18 finding 6: Kestrel's open admin by default; limits generous but finite."""
    defaults = SERVER_DEFAULTS
    assert (defaults.admin_commands, defaults.max_queues, defaults.max_fanout_children) == (
        True,
        100_000,
        1000,
    )
    path = write_conf(
        tmp_path, "[server]\nadmin_commands = false\nmax_queues = 3\nmax_fanout_children = 0\n"
    )
    server = load_config(path).server
    assert (server.admin_commands, server.max_queues, server.max_fanout_children) == (False, 3, 0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('admin_commands = "no"', 'expected true or false, got "no"'),
        ("admin_commands = 0", "expected true or false, got 0"),
        ("max_queues = -1", "expected an integer from 0 to 2147483647, got -1"),
        ("max_queues = 99999999999999999999", "expected an integer from 0 to 2147483647"),
        ('max_queues = "10"', "expected an integer from 0 to 2147483647"),
        ("max_fanout_children = 1.5", "expected an integer from 0 to 2147483647, got 1.5"),
        ("max_fanout_children = true", "expected an integer from 0 to 2147483647, got true"),
    ],
)
def test_bad_admin_protection_keys(tmp_path: Path, line: str, expected: str) -> None:
    message = load_error(write_conf(tmp_path, f"[server]\n# limits\n{line}\n"))
    assert_located(message, 3, "[server]", line.split(" = ")[0])
    assert expected in message
