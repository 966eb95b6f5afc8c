"""The ``kestrelpy`` command line: version, startup errors, signals.

A user error (busy port, unusable data dir, bad config) prints one line on stderr, exits 2,
and never shows a traceback (the CLI rule: one line, exit 2).
"""

from __future__ import annotations

import signal
import socket

import pytest

from kestrelpy import __version__

from .conftest import (
    HOST,
    assert_one_line_user_error,
    is_our_version,
    kestrelpy_command,
    run_kestrelpy,
    serve_argv,
)

pytestmark = pytest.mark.timeout(60)


def run_cli(argv, *args):
    return run_kestrelpy(*args, command=argv)


def serve_args(data_dir, *extra):
    """``serve`` and its arguments, as every server the tests start gets them."""
    return serve_argv((), data_dir, extra_args=[str(arg) for arg in extra])


@pytest.mark.parametrize("use_module", [False, True], ids=["script", "python-m"])
def test_version_flag(use_module):
    result = run_cli(kestrelpy_command(use_module=use_module), "--version")
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_one_line_error_exit_2(kestrelpy_argv, tmp_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli(
            kestrelpy_argv, "serve", "--host", HOST, "--port", port, "--data-dir", tmp_path / "d"
        )
    assert_one_line_user_error(result, str(port))


def test_data_dir_under_a_regular_file_is_one_line_error(kestrelpy_argv, tmp_path):
    regular = tmp_path / "not-a-dir"
    regular.write_text("a file, not a directory\n")
    result = run_cli(kestrelpy_argv, *serve_args(regular / "data"))
    assert_one_line_user_error(result, str(regular / "data"))


def test_unknown_config_key_is_one_line_error_naming_file_and_key(kestrelpy_argv, tmp_path):
    config = tmp_path / "server.conf"
    config.write_text('[server]\nsync = "always"\nbogus_knob = 1\n')
    result = run_cli(kestrelpy_argv, *serve_args(tmp_path / "d", "--config", config))
    assert_one_line_user_error(result, str(config), "bogus_knob")


def test_bad_config_value_is_one_line_error_naming_file_and_key(kestrelpy_argv, tmp_path):
    config = tmp_path / "server.conf"
    config.write_text('[server]\nsync = "sometimes"\n')
    result = run_cli(kestrelpy_argv, *serve_args(tmp_path / "d", "--config", config))
    assert_one_line_user_error(result, str(config), "sync")


def test_unparsable_config_is_one_line_error_naming_file(kestrelpy_argv, tmp_path):
    config = tmp_path / "server.conf"
    config.write_text("[server\nsync = \n")
    result = run_cli(kestrelpy_argv, *serve_args(tmp_path / "d", "--config", config))
    assert_one_line_user_error(result, str(config))


def test_missing_config_file_is_one_line_error(kestrelpy_argv, tmp_path):
    config = tmp_path / "absent.conf"
    result = run_cli(kestrelpy_argv, *serve_args(tmp_path / "d", "--config", config))
    assert_one_line_user_error(result, str(config))


def test_cli_port_overrides_config_port(server_factory):
    # memcache_port = 1 would need root and clash with nothing useful; --port 0 must win.
    server = server_factory("[server]\nmemcache_port = 1\n")
    assert server.port not in (None, 1)
    with server.connect() as conn:
        line = conn.request(b"version")
        assert line.startswith(b"VERSION ") and is_our_version(line[8:-2]), line


def test_missing_data_dir_is_created(server_factory, tmp_path):
    data_dir = tmp_path / "new" / "nested" / "data"
    server = server_factory(data_dir=data_dir)
    with server.connect() as conn:
        assert conn.set("created", b"x") == b"STORED\r\n"
    assert data_dir.is_dir() and any(data_dir.iterdir())


def test_sigint_exits_zero(server_factory):
    server = server_factory()
    with server.connect() as conn:
        assert conn.set("sigint", b"kept") == b"STORED\r\n"
    server.stop(signal.SIGINT)  # asserts exit code 0
    server.start()
    with server.connect() as conn:
        assert conn.get("sigint") == b"kept"


def test_python_m_serve_works(server_factory):
    server = server_factory(use_module=True)
    assert "-m" in server.argv
    with server.connect() as conn:
        assert conn.request(b"version").startswith(b"VERSION ")
    server.stop()


def test_listening_line_and_clean_shutdown_log(server):
    text = server.stderr_text()
    assert f"listening on {HOST}:{server.port}" in text
    with server.connect() as conn:
        assert conn.request(b"version").startswith(b"VERSION ")
    server.stop()
    assert "Traceback" not in server.stderr_text(), server.log()
