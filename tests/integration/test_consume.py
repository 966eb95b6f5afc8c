"""``kestrelpy consume`` against a real server: the worker loop of the PHP consumer, kept.

Contract (/tmp/spec/jobs.md, "Worker" and "CLI"): jobs are taken with reliable reads and
confirmed only once run, so a worker killed mid-job (kill -9) loses nothing and the job is
delivered again. A failed job is aborted (back to the head, retried: the PHP consumer's
behaviour) or, with ``--max-retries N``, retried N times with backoff and then put on
``<queue>_errors`` with its attempts and the reason. Undecodable items and invalid
envelopes are dead-lettered at once. SIGTERM lets the running job finish and confirms it,
exit 0; a second signal stops at once, the job going back on the queue. ``-m N`` exits 0
after N jobs; ``--concurrency N`` runs N at once. Bad input: one stderr line, exit 2.

No sleeps: tests wait for a job to reach the gate, for a consumer to exit, or (polling,
with a deadline) for records and stats.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys

import pytest

from .conftest import HOST, ROOT, Conn, assert_one_line_user_error
from .jobs_support import (
    JOBCODE,
    job_command,
    job_harness,
    produce,
    queue_state,
    run_cli,
    take_all,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def srv(shared_server):
    return shared_server


@pytest.fixture
def srv_factory_server(server_factory):
    """A server of the test's own, for tests that change its status."""
    return server_factory()


@pytest.fixture
def jobs(tmp_path):
    yield from job_harness(tmp_path)


def addr(server) -> str:
    return f"{HOST}:{server.port}"


def assert_drained(server, queue: str) -> None:
    """Nothing left and nothing open: every job taken was confirmed."""
    assert queue_state(server, queue) == (0, 0)


# -- the three ways to run a job ------------------------------------------------------------


def test_command_gets_each_item_on_stdin_and_in_env(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "resize", "--instance", "dev", '{"w": 1}')
    produce(srv, "-q", qname, input='[1, 2]\n"plain"\n')  # no --job: plain values
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 3, "-d", "--", *job_command("record")
    )
    consumer.assert_exit(0)

    records = jobs.records()
    envelope = {"instance": "dev", "job_name": "resize", "data": {"w": 1}}
    assert [(r["job_name"], r["data"], r["attempt"]) for r in records] == [
        ("resize", envelope, 0),
        ("-", [1, 2], 0),
        ("-", "plain", 0),
    ]
    assert all(r["env_item"] == r["data"] and r["queue"] == qname for r in records)
    lines = consumer.stdout().splitlines()
    assert len(lines) == 3, consumer.describe()
    assert re.fullmatch(
        rf"job 1 resize \(instance dev, attempt 0\) on {re.escape(addr(srv))}: ok in \d+ ms",
        lines[0],
    ), lines
    assert lines[1].startswith("job 2 - (attempt 0) on "), lines
    assert consumer.stderr() == ""
    assert_drained(srv, qname)


def test_handler_function_gets_data_and_job(srv, qname, jobs):
    produce(srv, "-q", qname, "-e", "staging", "--job", "hello", "--instance", "i1", '{"a": 1}')
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-e", "staging", "-m", 1,
        "--handler", "job_helpers:handle_record",
    )  # fmt: skip
    consumer.assert_exit(0)
    assert [(r["via"], r["job_name"], r["data"], r["instance"]) for r in jobs.records()] == [
        ("handler", "hello", {"a": 1}, "i1")
    ]
    assert_drained(srv, f"staging_{qname}")


def test_jobs_registry_dispatches_by_name_with_each_jobs_policy(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "record", "1")
    produce(srv, "-q", qname, "--job", "flaky", "2")  # registered with max_retries=1
    produce(srv, "-q", qname, "--job", "nobody", "3")
    # 4 items taken: record, flaky (fails), nobody (dead-lettered unrun), flaky's retry
    consumer = jobs.consume("-s", addr(srv), "-q", qname, "-m", 4, "-d", "--jobs", "job_helpers")
    consumer.assert_exit(0)

    assert [(r["job_name"], r["attempt"]) for r in jobs.records()] == [
        ("record", 0),
        ("flaky", 0),
        ("flaky", 1),
    ]
    (letter,) = take_all(srv, f"{qname}_errors")
    assert letter["job_name"] == "nobody"
    assert letter["data"] == 3
    assert letter["attempts"] == 0
    assert letter["error"].startswith("unknown job 'nobody' (registered: ")
    assert "dead-lettered to " in consumer.stdout()
    assert_drained(srv, qname)


def test_bad_items_are_dead_lettered_at_once_never_run(srv, qname, jobs):
    with Conn(srv) as conn:
        assert conn.set(qname, b"\xffnot json") == b"STORED\r\n"  # flags 0: decoded as JSON
        assert conn.set(qname, b"[1, 2]") == b"STORED\r\n"  # JSON, not an envelope
        assert conn.set(qname, b'{"data": 1}') == b"STORED\r\n"  # no job name
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 3, "--handler", "job_helpers:handle_record"
    )
    consumer.assert_exit(0)
    assert jobs.records() == []
    with Conn(srv) as conn:
        raw = conn.get(f"{qname}_errors")
    assert raw == b"\xffnot json"  # the bytes as read, not re-encoded
    invalid = take_all(srv, f"{qname}_errors")
    assert invalid == [
        {"item": [1, 2], "error": "invalid job: not a JSON object but an array"},
        {"data": 1, "error": "invalid job: no job name (job_name or jobName)"},
    ]
    assert_drained(srv, qname)


def test_php_producer_items_run_unchanged(srv, qname, jobs):
    """The seed's producer wrote ``{instance, jobName, data}`` with flags 0."""
    php = {"instance": "dev", "jobName": "HelloWorld", "data": {"foo": "bar"}}
    with Conn(srv) as conn:
        assert conn.set(f"enterprise_{qname}", json.dumps(php).encode()) == b"STORED\r\n"
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-e", "enterprise", "-m", 1,
        "--handler", "job_helpers:handle_record",
    )  # fmt: skip
    consumer.assert_exit(0)
    assert [(r["job_name"], r["data"], r["instance"]) for r in jobs.records()] == [
        ("HelloWorld", {"foo": "bar"}, "dev")
    ]


def test_example_jobs_module_runs_from_the_repository_root(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "HelloWorld", '{"foo": "bar"}')
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 1, "-d", "--jobs", "examples.jobs_example", cwd=ROOT
    )
    consumer.assert_exit(0)
    assert "Hello, world!" in consumer.stdout(), consumer.describe()
    assert ": ok in " in consumer.stdout()


# -- delivery guarantees --------------------------------------------------------------------


def test_kill9_mid_job_redelivers_it_to_the_next_worker(srv, qname, jobs):
    gate = jobs.gate()
    produce(srv, "-q", qname, "--job", "long", '{"n": 1}')
    first = jobs.consume("-s", addr(srv), "-q", qname, "--", *job_command("gated"))
    started = gate.accept()  # the job is running under the first worker
    assert queue_state(srv, qname) == (0, 1)
    first.kill9()
    started.drop()  # the orphaned job process exits (its worker cannot see it anyway)
    wait_for(lambda: queue_state(srv, qname) == (1, 0), "the open read to go back")

    second = jobs.consume("-s", addr(srv), "-q", qname, "-m", 1, "--", *job_command("gated"))
    again = gate.accept()
    assert again.entry["data"] == started.entry["data"] == {"job_name": "long", "data": {"n": 1}}
    assert again.entry["pid"] != started.entry["pid"]
    again.release()
    second.assert_exit(0)
    assert [r.get("finished") for r in jobs.records()] == [True]
    assert_drained(srv, qname)


def test_retries_with_backoff_then_dead_letter(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "doomed", '{"id": 7}')
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 3, "-d", "--max-retries", 2, "--backoff-s", 0.01,
        "--", *job_command("fail"),
    )  # fmt: skip
    consumer.assert_exit(0)

    assert [r["attempt"] for r in jobs.records()] == [0, 1, 2]
    (letter,) = take_all(srv, f"{qname}_errors")
    assert letter == {
        "job_name": "doomed",
        "data": {"id": 7},
        "attempts": 2,
        "error": "exit status 3",
    }
    out = consumer.stdout().splitlines()
    assert out[0].endswith("failed (exit status 3), retried as attempt 1 after 0.01 s"), out
    assert out[1].endswith("failed (exit status 3), retried as attempt 2 after 0.02 s"), out
    assert out[2].endswith(f"failed (exit status 3), dead-lettered to {qname}_errors"), out
    assert_drained(srv, qname)


def test_a_retry_keeps_the_producers_spelling_and_keys(srv, qname, jobs):
    """A PHP producer's envelope (``jobName``, a key of its own) comes back from a retry as
    it was sent, one attempt more: a PHP consumer may share the queue."""
    with Conn(srv) as raw:
        raw.set(qname, b'{"jobName": "php_job", "data": 1, "trace": "t-1"}')
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 1, "--max-retries", 1, "--backoff-s", 0,
        "--", *job_command("fail"),
    )  # fmt: skip
    consumer.assert_exit(0)
    (retried,) = take_all(srv, qname)
    assert retried == {"jobName": "php_job", "data": 1, "trace": "t-1", "attempts": 1}


def test_a_quiescent_server_makes_a_worker_wait_not_exit(srv_factory_server, qname, jobs):
    """Status quiescent (maintenance) refuses reads with SERVER_ERROR: the worker says so
    once on stderr, waits, and runs the job when the server is back up."""
    srv = srv_factory_server
    produce(srv, "-q", qname, "--job", "after_maintenance", "1")
    with Conn(srv) as raw:
        assert raw.request(b"status quiescent") == b"END\r\n"
    consumer = jobs.consume("-s", addr(srv), "-q", qname, "-m", 1, "--", *job_command("record"))
    consumer.wait_stderr("server is quiescent")
    with Conn(srv) as raw:
        assert raw.request(b"status up") == b"END\r\n"
    consumer.assert_exit(0)
    assert [r["job_name"] for r in jobs.records()] == ["after_maintenance"]
    assert_drained(srv, qname)


def test_handler_exception_is_the_dead_letter_reason(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "x", "1")
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 1, "--max-retries", 0,
        "--handler", "job_helpers:handle_fail",
    )  # fmt: skip
    consumer.assert_exit(0)
    (letter,) = take_all(srv, f"{qname}_errors")
    assert letter["error"] == "RuntimeError: failed on purpose"
    assert letter["attempts"] == 0


def test_without_a_policy_a_failed_job_is_aborted_and_comes_back(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "once", '"x"')
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 2, "-d", "--", *job_command("fail-once")
    )
    consumer.assert_exit(0)
    assert [(r["failing"], r["attempt"]) for r in jobs.records()] == [(True, 0), (False, 0)]
    assert consumer.stdout().splitlines()[0].endswith("failed (exit status 1), aborted")
    assert take_all(srv, f"{qname}_errors") == []
    assert_drained(srv, qname)


# -- stopping -------------------------------------------------------------------------------


def test_sigterm_lets_the_running_job_finish_and_confirms_it(srv, qname, jobs):
    gate = jobs.gate()
    produce(srv, "-q", qname, "--job", "slow", "1")
    produce(srv, "-q", qname, "--job", "next", "2")
    consumer = jobs.consume("-s", addr(srv), "-q", qname, "--", *job_command("gated"))
    running = gate.accept()
    consumer.send(signal.SIGTERM)
    consumer.wait_stderr("SIGTERM: finishing 1 running job, then exiting")
    running.release()
    consumer.assert_exit(0)

    assert [r["job_name"] for r in jobs.records()] == ["slow"]
    assert queue_state(srv, qname) == (1, 0)  # "next" was never taken
    assert take_all(srv, qname) == [{"job_name": "next", "data": 2}]


def test_second_signal_stops_now_and_the_job_goes_back(srv, qname, jobs):
    gate = jobs.gate()
    produce(srv, "-q", qname, "--job", "slow", "1")
    consumer = jobs.consume("-s", addr(srv), "-q", qname, "--", *job_command("gated"))
    running = gate.accept()
    consumer.send(signal.SIGTERM)
    consumer.wait_stderr("SIGTERM: finishing")
    consumer.send(signal.SIGINT)
    consumer.assert_exit(128 + signal.SIGINT)
    running.wait_gone()  # the job's process group was killed
    assert "SIGINT: second stop signal, stopping now" in consumer.stderr()
    wait_for(lambda: queue_state(srv, qname) == (1, 0), "the job to go back on the queue")
    assert jobs.records() == []


def test_idle_worker_stops_at_once_on_sigterm(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "one", "1")
    consumer = jobs.consume("-s", addr(srv), "-q", qname, "-d", "--", *job_command("record"))
    jobs.files.wait_records(1)  # it is up and reading (its signal handlers are in place)
    wait_for(lambda: "ok in" in consumer.stdout(), "the job's -d line")
    consumer.send(signal.SIGTERM)
    consumer.assert_exit(0)
    assert consumer.stderr() == "kestrelpy consume: SIGTERM: exiting\n"
    assert_drained(srv, qname)


def test_max_jobs_exits_after_exactly_n(srv, qname, jobs):
    produce(srv, "-q", qname, "--job", "n", input="1\n2\n3\n4\n5\n")
    consumer = jobs.consume("-s", addr(srv), "-q", qname, "-m", 3, "--", *job_command("record"))
    consumer.assert_exit(0)
    assert [r["data"]["data"] for r in jobs.records()] == [1, 2, 3]
    assert queue_state(srv, qname) == (2, 0)


def test_concurrency_runs_jobs_at_the_same_time(srv, qname, jobs):
    gate = jobs.gate()
    produce(srv, "-q", qname, "--job", "c", input="1\n2\n3\n")
    consumer = jobs.consume(
        "-s", addr(srv), "-q", qname, "-m", 3, "--concurrency", 3, "--", *job_command("gated")
    )
    started = [gate.accept() for _ in range(3)]  # all three running, none released yet
    assert queue_state(srv, qname) == (0, 3)
    assert sorted(job.entry["data"]["data"] for job in started) == [1, 2, 3]
    for job in started:
        job.release()
    consumer.assert_exit(0)
    assert len(jobs.records()) == 3
    assert_drained(srv, qname)


def test_unreachable_server_is_waited_for_not_fatal(jobs):
    with socket.socket() as unused:
        unused.bind((HOST, 0))  # bound, not listening: connections are refused
        port = unused.getsockname()[1]
        consumer = jobs.consume("-s", f"{HOST}:{port}", "-q", "q", "--", "true")
        consumer.wait_stderr("cannot read q: no server available")
        consumer.send(signal.SIGTERM)
        consumer.assert_exit(0)
    assert consumer.stderr().count("cannot read q") == 1  # once per outage, not per retry


# -- bad input ------------------------------------------------------------------------------

JOB = [sys.executable, str(JOBCODE / "job_helpers.py"), "record"]


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["-s", "127.0.0.1:1", "--", *JOB], "-q/--queue is required"),
        (["-q", "q", "--", *JOB], "-s/--server is required"),
        (["-s", "localhost", "-q", "q", "--", *JOB], "expected host:port"),
        (["-s", "127.0.0.1:1", "-q", "q", "--handler", "no_such_mod:f"], "no module named"),
        (["-s", "127.0.0.1:1", "-q", "q", "--handler", "job_helpers:nope"], "has no 'nope'"),
        (["-s", "127.0.0.1:1", "-q", "q", "--jobs", "no_such_mod"], "no module named"),
        (["-s", "127.0.0.1:1", "-q", "q", "-m", "many", "--", *JOB], "-m/--max-jobs 'many'"),
        (["-s", "127.0.0.1:1", "-q", "q", "--handler", "job_helpers:handle_record", "--", *JOB],
         "not more than one"),
        (["-s", "127.0.0.1:1", "-q", "q", "--handler", "a:b", "--jobs", "c"], "not allowed with"),
        (["-s", "127.0.0.1:1", "-q", "q"], "one is required"),
        (["-s", "127.0.0.1:1", "-q", "q", "--bogus", "--", *JOB], "unrecognized arguments"),
        (["-s", "127.0.0.1:1", "-q", "q", "-m"], "expected one argument"),
        (["-s", "127.0.0.1:1", "-q", "q", "--", "no-such-command-kp"], "not found"),
        (["-s", "127.0.0.1:1", "-q", "bad name", "--", *JOB], "queue name"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(jobs, args, mention):
    result = jobs.cli("consume", *args)  # job_helpers importable: only its names fail
    line = assert_one_line_user_error(result, "kestrelpy consume: ", mention)
    assert line.endswith(")") and "(usage: kestrelpy consume -s HOST:PORT" in line


def test_existing_commands_keep_argparse_errors():
    """Only consume and produce have one-line argument errors; the others are unchanged."""
    result = run_cli("stats", "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kestrelpy")
    assert "error: unrecognized arguments: --bogus" in result.stderr
