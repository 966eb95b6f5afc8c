"""Runners (kestrelpy/jobs/runners.py): a job in, success (None) or ``Failed(reason)`` out.

No server: a Delivery is a plain value. The subprocess runner runs real (tiny) commands.
"""

from __future__ import annotations

import json
import sys

import pytest

from kestrelpy.jobs import (
    Delivery,
    Failed,
    HandlerRunner,
    Job,
    JobRegistry,
    RegistryRunner,
    RetryPolicy,
    SubprocessRunner,
)


def delivery(item, queue="q"):
    try:
        return Delivery(queue, item, Job.from_wire(item))
    except Exception:
        return Delivery(queue, item, Job("-", item), plain=True)


# -- handler --------------------------------------------------------------------------------


def test_handler_gets_data_and_job():
    seen = []
    runner = HandlerRunner(lambda data, job: seen.append((data, job)))
    item = {"job_name": "a", "data": {"x": 1}, "instance": "dev", "attempts": 2}
    assert runner.run(delivery(item)) is None
    assert seen == [({"x": 1}, Job("a", {"x": 1}, "dev", 2))]
    assert runner.takes_plain_items is False


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ValueError("bad\nwidth"), "ValueError: bad width"),
        (KeyError("k"), "KeyError: 'k'"),
        (RuntimeError(), "RuntimeError"),
        (SystemExit(3), "SystemExit: 3"),
    ],
)
def test_handler_exception_is_a_one_line_failure(error, reason):
    def handler(data, job):
        raise error

    assert HandlerRunner(handler).run(delivery({"job_name": "a"})) == Failed(reason)


def test_handler_policy_is_the_one_given():
    policy = RetryPolicy(max_retries=3)
    assert HandlerRunner(lambda d, j: None, policy).policy(Job("a")) is policy
    assert HandlerRunner(lambda d, j: None).policy(Job("a")) == RetryPolicy()


# -- registry -------------------------------------------------------------------------------


def test_registry_dispatches_by_name_with_each_jobs_policy():
    registry = JobRegistry()
    ran = []
    registry.job("a", max_retries=1)(lambda data, job: ran.append(("a", data)))
    registry.job("b")(lambda data, job: ran.append(("b", data)))
    runner = RegistryRunner(registry)
    assert runner.run(delivery({"job_name": "b", "data": 2})) is None
    assert runner.run(delivery({"jobName": "a", "data": 1})) is None
    assert ran == [("b", 2), ("a", 1)]
    assert runner.policy(Job("a")) == RetryPolicy(max_retries=1)
    assert runner.policy(Job("b")) == RetryPolicy()


def test_registry_unknown_name_fails_for_good():
    registry = JobRegistry()
    registry.job("known")(lambda data, job: None)
    failed = RegistryRunner(registry).run(delivery({"job_name": "nope"}))
    assert failed == Failed("unknown job 'nope' (registered: known)", final=True)


# -- subprocess -----------------------------------------------------------------------------

ECHO_ENV = (
    "import json, os, sys; "
    "print(json.dumps({'stdin': sys.stdin.read(), "
    "'env': {k: v for k, v in os.environ.items() if k.startswith('KESTRELPY_')}}))"
)


def test_subprocess_gets_the_item_on_stdin_and_in_the_environment(capfd):
    item = {"jobName": "resize", "instance": "dev", "data": [1], "attempts": 1}
    runner = SubprocessRunner([sys.executable, "-c", ECHO_ENV])
    assert runner.run(delivery(item, queue="e_q")) is None
    seen = json.loads(capfd.readouterr().out)
    assert json.loads(seen["stdin"]) == item  # the item as read, PHP spelling included
    assert seen["stdin"].endswith("\n")
    assert seen["env"] == {
        "KESTRELPY_JOB": json.dumps(item, ensure_ascii=False),
        "KESTRELPY_JOB_NAME": "resize",
        "KESTRELPY_QUEUE": "e_q",
        "KESTRELPY_ATTEMPT": "1",
        "KESTRELPY_INSTANCE": "dev",
    }


def test_subprocess_takes_plain_items_as_job_dash(capfd):
    runner = SubprocessRunner([sys.executable, "-c", ECHO_ENV])
    assert runner.takes_plain_items is True
    assert runner.run(delivery([1, 2])) is None
    seen = json.loads(capfd.readouterr().out)
    assert json.loads(seen["stdin"]) == [1, 2]
    assert seen["env"]["KESTRELPY_JOB_NAME"] == "-"
    assert "KESTRELPY_INSTANCE" not in seen["env"]


def test_big_items_go_on_stdin_only(capfd):
    item = {"job_name": "big", "data": "x" * 100_000}
    runner = SubprocessRunner([sys.executable, "-c", ECHO_ENV])
    assert runner.run(delivery(item)) is None
    seen = json.loads(capfd.readouterr().out)
    assert json.loads(seen["stdin"]) == item
    assert "KESTRELPY_JOB" not in seen["env"]


def test_subprocess_exit_status_is_the_outcome():
    run = SubprocessRunner([sys.executable, "-c", "import sys; sys.exit(3)"]).run
    assert run(delivery({"job_name": "a"})) == Failed("exit status 3")


def test_subprocess_killed_by_a_signal():
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    failed = SubprocessRunner([sys.executable, "-c", code]).run(delivery({"job_name": "a"}))
    assert failed == Failed("killed by SIGKILL")


def test_subprocess_that_ignores_stdin_is_fine():
    item = {"job_name": "a", "data": "x" * 1_000_000}  # more than a pipe buffer
    assert SubprocessRunner(["true"]).run(delivery(item)) is None


def test_missing_command_is_a_failure_not_a_crash(tmp_path):
    failed = SubprocessRunner([str(tmp_path / "nope")]).run(delivery({"job_name": "a"}))
    assert failed is not None
    assert failed.reason.startswith("cannot run ")
