"""Bad ``server.conf`` at start and at ``reload`` (docs/protocol.md §2, §8, §12; issue 5 item 1).

Contract: unknown keys and wrong types are errors. At start the server prints one line on
stderr naming the file, the section and the key, and exits 2 (no traceback, nothing served).
At ``reload`` the reply is one line ``SERVER_ERROR config error: <why>`` naming the same, the
connection stays open and the running config (queue limits, aliases) stays in force. Kestrel's
journal keys are accepted with a warning.
"""

from __future__ import annotations

import pytest

from .conftest import ServerFactory, run_kestrelpy, serve_argv

pytestmark = pytest.mark.timeout(90)


# (config text, section label as the message shows it, key)
BAD_CONFIGS = [
    ('[queues."jobs"]\nmax_itemz = 3\n', '[queues."jobs"]', "max_itemz"),
    ('[defaults]\nmax_items = "ten"\n', "[defaults]", "max_items"),
    ("[defaults]\nfanout_only = 1\n", "[defaults]", "fanout_only"),
    ('[queues."q"]\ndiscard_old_when_full = "yes"\n', '[queues."q"]', "discard_old_when_full"),
    ('[queues."q"]\nmax_age = "soon"\n', '[queues."q"]', "max_age"),
    ('[queues."q"]\nmax_size = -1\n', '[queues."q"]', "max_size"),
    ('[queues."q"]\nexpire_to_queue = 5\n', '[queues."q"]', "expire_to_queue"),
    ("[server]\nexpiration_timer_frequency = 5.5\n", "[server]", "expiration_timer_frequency"),
    ('[server]\nsync = "sometimes"\n', "[server]", "sync"),
    ('[server]\ndefault_status = "down"\n', "[server]", "default_status"),
    ("[server]\nbogus_key = 1\n", "[server]", "bogus_key"),
    ('[aliases."a"]\ndestination_queues = "x"\n', '[aliases."a"]', "destination_queues"),
    ('[aliases."a"]\ndestinations = ["x"]\n', '[aliases."a"]', "destinations"),
]
IDS = [f"{section} {key}" for _, section, key in BAD_CONFIGS]


def run_serve(config_path, data_dir):
    return run_kestrelpy(*serve_argv((), data_dir, config_path))


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


@pytest.mark.parametrize(("config", "section", "key"), BAD_CONFIGS, ids=IDS)
def test_bad_config_at_start_is_one_line_naming_file_section_key_exit_2(
    tmp_path, config, section, key
):
    config_path = tmp_path / "server.conf"
    config_path.write_text(config)
    result = run_serve(config_path, tmp_path / "data")
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    line = one_error_line(result.stderr)
    for text in (str(config_path), section, key):
        assert text in line, f"{text!r} not in {line!r}"
    assert "listening" not in result.stderr


def test_unknown_table_at_start_is_named(tmp_path):
    config_path = tmp_path / "server.conf"
    config_path.write_text('[queue."x"]\nmax_items = 1\n')
    result = run_serve(config_path, tmp_path / "data")
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert str(config_path) in line and "[queue" in line, line


def test_kestrel_journal_keys_only_warn(server_factory):
    srv = server_factory('[queues."j"]\nmax_journal_size = "1GB"\nsync_journal = "100ms"\n')
    with srv.connect() as conn:
        assert conn.set("j", b"ok") == b"STORED\r\n"
        assert conn.get("j") == b"ok"
    log = srv.stderr_text()
    assert "max_journal_size" in log and "sync_journal" in log, log


# -- reload -----------------------------------------------------------------------------------

GOOD = """\
[queues."lim"]
max_items = 1

[aliases."al"]
destination_queues = ["al_dest"]
"""

BAD_RELOADS = [
    ('[queues."lim"]\nmax_items = 5\nmax_itemz = 5\n', '[queues."lim"]', "max_itemz"),
    ('[queues."lim"]\nmax_items = "five"\n', '[queues."lim"]', "max_items"),
    ('[queues."lim"]\nmax_items = 5\n[server]\nnope = true\n', "[server]", "nope"),
    ('[aliases."al"]\ndestination_queues = []\n', '[aliases."al"]', "destination_queues"),
    ('[aliases."al"]\ndest = ["x"]\n[queues."lim"]\nmax_items = 5\n', '[aliases."al"]', "dest"),
    ('[queues."lim"\nmax_items = 5\n', "", ""),  # not TOML: the file (and line) is named
]


@pytest.fixture(scope="module")
def reload_server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("reload"))
    srv = factory(GOOD)
    with srv.connect() as conn:
        assert conn.set("lim", b"held") == b"STORED\r\n"  # lim is now full (max_items = 1)
    yield srv
    factory.close()


@pytest.mark.parametrize(
    ("config", "section", "key"), BAD_RELOADS, ids=[c[1] + " " + c[2] for c in BAD_RELOADS]
)
def test_bad_reload_keeps_the_running_config_and_the_connection(
    reload_server, config, section, key
):
    srv = reload_server
    assert srv.config_path is not None
    srv.config_path.write_text(config)
    try:
        with srv.connect() as conn:
            conn.send(b"reload\r\nversion\r\n")
            line = conn.read_line().decode()
            assert line.startswith("SERVER_ERROR config error: "), line
            for text in (str(srv.config_path), section, key):
                assert text in line, f"{text!r} not in {line!r}"
            assert conn.read_line().startswith(b"VERSION "), "connection not kept"
            # The old config is still in force: lim holds at most 1, al is still an alias.
            assert conn.set("lim", b"more") == b"NOT_STORED\r\n"
            assert conn.set("al", b"via-alias") == b"STORED\r\n"
            assert conn.get("al") is None
            assert conn.get("al_dest") == b"via-alias"
            conn.send(b"dump_config lim\r\n")
            block = b""
            while not block.endswith(b"END\r\n"):
                block += conn.read_line()
            assert b"  max_items=1\r\n" in block, block
    finally:
        srv.config_path.write_text(GOOD)


def test_good_reload_after_a_bad_one_applies(reload_server):
    srv = reload_server
    assert srv.config_path is not None
    srv.config_path.write_text('[queues."lim"]\nmax_items = 2\nbad_key = 1\n')
    try:
        with srv.connect() as conn:
            assert conn.request(b"reload").startswith(b"SERVER_ERROR config error: ")
            srv.config_path.write_text(GOOD.replace("max_items = 1", "max_items = 2"))
            assert conn.request(b"reload") == b"Reloaded config.\r\n"
            assert conn.set("lim", b"second") == b"STORED\r\n"
            assert conn.set("lim", b"third") == b"NOT_STORED\r\n"
            assert conn.get("lim") == b"held"
            assert conn.get("lim") == b"second"
    finally:
        srv.config_path.write_text(GOOD)
        with srv.connect() as conn:
            assert conn.request(b"reload") == b"Reloaded config.\r\n"
            assert conn.set("lim", b"held") == b"STORED\r\n"
