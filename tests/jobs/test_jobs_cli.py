"""Argument checks of ``consume``/``produce`` (kestrelpy/jobs/cli.py), without processes.

Contract: every mistake is one :class:`CommandLineError` naming the flag, raised before
any connection; ``--handler``/``--jobs`` import the user's module with the current
directory first on ``sys.path``. (The same errors through the real CLI, exit code and
stderr included, are in tests/integration/test_consume.py and test_produce.py.)
"""

from __future__ import annotations

import argparse
import sys

import pytest

from kestrelpy.jobs import JobRegistry, default_registry
from kestrelpy.jobs.cli import CommandLineError, load_handler, load_registry


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a module into a fresh directory, import-able by name; forget it afterwards."""
    written = []

    def write(name, source):
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)

    monkeypatch.chdir(tmp_path)  # the CLI puts the current directory on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_handler_spec_imports_from_the_current_directory(user_module):
    user_module("um_handlers", "def run(data, job):\n    return data\n")
    assert load_handler("um_handlers:run")(5, None) == 5


def test_handler_spec_may_name_a_method(user_module):
    user_module(
        "um_methods", "class Jobs:\n    @staticmethod\n    def run(data, job):\n        return 1\n"
    )
    assert load_handler("um_methods:Jobs.run")(None, None) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("um_nope:run", "no module named 'um_nope'"),
        ("um_pkg_nope.sub:run", "no module named 'um_pkg_nope.sub'"),
        ("um_ok:missing", "module um_ok has no 'missing'"),
        ("um_ok:VALUE", "VALUE is not callable"),
        ("um_ok", "expected MODULE:FUNCTION"),
        (":run", "expected MODULE:FUNCTION"),
        ("um_broken:run", "importing um_broken raised ZeroDivisionError: division by zero"),
        ("um_needs:run", "importing um_needs failed: No module named 'um_absent_dependency'"),
    ],
)
def test_handler_spec_errors_are_one_line(user_module, spec, message):
    user_module("um_ok", "VALUE = 1\ndef run(data, job): ...\n")
    user_module("um_broken", "1 / 0\n")
    user_module("um_needs", "import um_absent_dependency\n")
    with pytest.raises(CommandLineError) as caught:
        load_handler(spec)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith("--handler ")
    assert spec in text


def test_jobs_module_fills_the_default_registry(user_module):
    user_module(
        "um_jobs",
        "from kestrelpy.jobs import job\n@job('um_jobs.hello')\ndef hello(data, job): ...\n",
    )
    try:
        assert load_registry("um_jobs") is default_registry
        assert "um_jobs.hello" in default_registry
    finally:
        default_registry._jobs.pop("um_jobs.hello", None)


def test_jobs_module_may_name_its_own_registry(user_module):
    user_module(
        "um_own",
        "from kestrelpy.jobs import JobRegistry\nreg = JobRegistry()\n"
        "@reg.job('x')\ndef x(data, job): ...\nnot_reg = 1\n",
    )
    registry = load_registry("um_own:reg")
    assert isinstance(registry, JobRegistry)
    assert registry.names() == ["x"]
    with pytest.raises(CommandLineError, match=r"um_own\.not_reg is not a JobRegistry"):
        load_registry("um_own:not_reg")


def test_jobs_module_without_jobs_is_an_error(user_module, monkeypatch):
    monkeypatch.setattr(default_registry, "_jobs", {})
    user_module("um_empty", "X = 1\n")
    with pytest.raises(CommandLineError, match="no jobs registered"):
        load_registry("um_empty")


def consume_args(**overrides):
    values = {
        "server": "127.0.0.1:1",
        "queue": "q",
        "env": None,
        "max_jobs": None,
        "debug": False,
        "concurrency": None,
        "timeout_ms": None,
        "max_retries": None,
        "backoff_s": None,
        "handler": None,
        "jobs": None,
        "command": ["true"],
    }
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server": None}, "-s/--server is required"),
        ({"server": "localhost"}, "-s/--server: server 'localhost': expected host:port"),
        ({"queue": None}, "-q/--queue is required"),
        ({"queue": "a b"}, "-q/--queue: queue name"),
        ({"queue": "a/b"}, "-q/--queue: queue name"),
        ({"max_jobs": "x"}, "-m/--max-jobs 'x': expected a whole number >= 1"),
        ({"max_jobs": "0"}, "-m/--max-jobs '0': expected a whole number >= 1"),
        ({"concurrency": "0"}, "--concurrency '0'"),
        ({"timeout_ms": "-1"}, "--timeout-ms '-1': expected a whole number >= 1"),
        ({"timeout_ms": "0"}, "--timeout-ms '0': expected a whole number >= 1"),
        ({"max_retries": "1.5"}, "--max-retries '1.5'"),
        ({"max_retries": "1", "backoff_s": "soon"}, "--backoff-s 'soon': expected a number"),
        ({"max_retries": "1", "backoff_s": "nan"}, "--backoff-s 'nan'"),
        ({"backoff_s": "1"}, "--backoff-s needs --max-retries"),
        ({"command": []}, "(one is required)"),
        ({"handler": "m:f"}, "(not more than one)"),
        ({"command": [], "jobs": "m", "max_retries": "2"}, "with --jobs, each @job"),
        ({"command": ["kestrelpy-no-such-command"]}, "COMMAND 'kestrelpy-no-such-command'"),
    ],
)
def test_consume_argument_errors(overrides, message):
    from kestrelpy.jobs.cli import consume

    with pytest.raises(CommandLineError) as caught:
        consume(consume_args(**overrides))
    assert message in str(caught.value)
