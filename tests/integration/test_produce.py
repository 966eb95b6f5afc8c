"""``kestrelpy produce`` against a real server.

Contract (/tmp/spec/jobs.md, "CLI"): DATA is JSON text; ``-`` or no DATA reads stdin, one
JSON value per line, blank lines skipped. With ``--job NAME`` each value becomes the data
of an envelope (``--instance`` stamped on it); without, the value is put as is. ``-e ENV``
writes ``ENV_QUEUE``. Success is silent, exit 0. Bad input: one stderr line, exit 2, and
nothing is sent (for stdin: nothing from the bad line on). A server that refuses or cannot
be reached: one line naming the server and its reply, exit 1.
"""

from __future__ import annotations

import socket

import pytest

from .conftest import HOST, assert_one_line_user_error
from .jobs_support import produce, queue_state, run_cli, take_all

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def srv(shared_server):
    return shared_server


def addr(server) -> str:
    return f"{HOST}:{server.port}"


def test_one_job(srv, qname):
    produce(srv, "-q", qname, "--job", "resize", '{"path": "a.png"}')
    assert take_all(srv, qname) == [{"job_name": "resize", "data": {"path": "a.png"}}]


def test_env_prefix_and_instance(srv, qname):
    produce(srv, "-q", qname, "-e", "enterprise", "--job", "HelloWorld", "--instance", "dev", "{}")
    assert take_all(srv, f"enterprise_{qname}") == [
        {"instance": "dev", "job_name": "HelloWorld", "data": {}}
    ]
    assert queue_state(srv, qname) == (0, 0)


def test_job_with_null_data_has_no_data_key(srv, qname):
    produce(srv, "-q", qname, "--job", "ping", "null")
    assert take_all(srv, qname) == [{"job_name": "ping"}]


def test_many_jobs_from_stdin_in_order_blank_lines_skipped(srv, qname):
    lines = "".join(f'{{"n": {n}}}\n' for n in range(1200))  # more than one batch
    produce(srv, "-q", qname, "--job", "count", input="\n" + lines + "\n  \n")
    items = take_all(srv, qname)
    assert items == [{"job_name": "count", "data": {"n": n}} for n in range(1200)]


def test_dash_reads_stdin_too(srv, qname):
    produce(srv, "-q", qname, "--job", "j", "-", input="1\n2")  # last line without newline
    assert take_all(srv, qname) == [{"job_name": "j", "data": 1}, {"job_name": "j", "data": 2}]


def test_without_job_values_go_as_they_are(srv, qname):
    produce(srv, "-q", qname, '{"any": "thing"}')
    produce(srv, "-q", qname, input='"text"\n[1, 2]\n3.5\n')
    assert take_all(srv, qname) == [{"any": "thing"}, "text", [1, 2], 3.5]


def test_empty_stdin_sends_nothing(srv, qname):
    produce(srv, "-q", qname, "--job", "j", input="\n\n")
    assert queue_state(srv, qname) == (0, 0)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["-s", "127.0.0.1:1", "--job", "j", "{}"], "-q/--queue is required"),
        (["-q", "q", "{}"], "-s/--server is required"),
        (["-s", "localhost", "-q", "q", "{}"], "expected host:port"),
        (["-s", "127.0.0.1:1", "-q", "q", "{not json"], "DATA is not JSON"),
        (["-s", "127.0.0.1:1", "-q", "q", "--instance", "i", "{}"], "--instance needs --job"),
        (["-s", "127.0.0.1:1", "-q", "q", "--job", "", "{}"], "the job name is empty"),
        (["-s", "127.0.0.1:1", "-q", "q", "{}", "extra"], "unrecognized arguments: extra"),
        (["-s", "127.0.0.1:1", "-q", "two words", "{}"], "queue name"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, mention):
    result = run_cli("produce", *args)
    line = assert_one_line_user_error(result, "kestrelpy produce: ", mention)
    assert "(usage: kestrelpy produce -s HOST:PORT" in line


def test_bad_stdin_line_stops_and_says_what_was_sent(srv, qname):
    result = run_cli("produce", "-s", addr(srv), "-q", qname, input='1\n2\n{"broken"\n4\n')
    assert_one_line_user_error(result, "stdin line 3 is not JSON", "2 items before it were stored")
    assert take_all(srv, qname) == [1, 2]


# -- refusals -------------------------------------------------------------------------------


def test_refusal_is_one_line_naming_server_and_reply_exit_1(server_factory):
    srv = server_factory('[queues."full"]\nmax_items = 0\n')
    result = run_cli("produce", "-s", addr(srv), "-q", "full", "--job", "j", "{}")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kestrelpy produce: {addr(srv)} refused set full"), lines
    assert "NOT_STORED" in lines[0]
    assert lines[0].endswith("(0 items stored)")
    assert result.stdout == ""


def test_no_server_is_one_line_exit_1():
    with socket.socket() as unused:
        unused.bind((HOST, 0))  # bound, not listening: connections are refused
        port = unused.getsockname()[1]
        result = run_cli("produce", "-s", f"{HOST}:{port}", "-q", "q", "1")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kestrelpy produce: no server available ({HOST}:{port}: ")
    assert "Traceback" not in result.stderr
