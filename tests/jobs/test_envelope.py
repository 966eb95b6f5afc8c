"""The job envelope and queue names (kestrelpy/jobs/envelope.py), on plain values.

Contract (docs: /tmp/spec/jobs.md, "Envelope"): the wire form is a JSON object with
``instance``, ``job_name``, ``data``, ``attempts``; keys at their defaults are left out, as
the PHP producer left out ``data``. Reading takes ``job_name`` or PHP's ``jobName``
(``job_name`` wins), ``attempts`` missing is 0, and anything else malformed is
``InvalidJob`` with a reason a person can read.
"""

from __future__ import annotations

import json

import pytest

from kestrelpy.errors import KestrelpyError
from kestrelpy.jobs import InvalidJob, Job, JobError, dead_letter, errors_queue, queue_name


def test_wire_form_leaves_out_defaults():
    assert Job("resize").to_wire() == {"job_name": "resize"}
    assert Job("resize", {"w": 1}, "dev", 2).to_wire() == {
        "instance": "dev",
        "job_name": "resize",
        "data": {"w": 1},
        "attempts": 2,
    }


@pytest.mark.parametrize(
    "job",
    [
        Job("a"),
        Job("a", 0),
        Job("a", False),
        Job("a", ""),
        Job("a", [1, "x"], "prod", 7),
        Job("ünï", {"nested": {"k": None}}),
    ],
)
def test_round_trip_through_json(job):
    assert Job.from_wire(json.loads(json.dumps(job.to_wire()))) == job


def test_falsy_data_is_kept_only_none_is_left_out():
    assert Job("a", 0).to_wire()["data"] == 0
    assert "data" not in Job("a", None).to_wire()


def test_reads_the_php_producer_spelling():
    php = {"instance": "dev", "jobName": "HelloWorld", "data": {"foo": "bar"}}
    assert Job.from_wire(php) == Job("HelloWorld", {"foo": "bar"}, "dev", 0)


def test_job_name_wins_over_jobName():
    assert Job.from_wire({"job_name": "new", "jobName": "old"}).job_name == "new"


def test_unknown_keys_are_ignored_so_a_dead_letter_reads_back():
    letter = dead_letter(Job("a", 1, attempts=3).to_wire(), "exit status 1", 3)
    assert Job.from_wire(letter) == Job("a", 1, attempts=3)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ([1, 2], "not a JSON object but an array"),
        ("resize", "not a JSON object but a string"),
        (None, "not a JSON object but null"),
        (3, "not a JSON object but a number"),
        ({"data": 1}, "no job name"),
        ({"job_name": None}, "no job name"),
        ({"job_name": 5}, "job name is a number, not a string"),
        ({"jobName": ["x"]}, "job name is an array, not a string"),
        ({"job_name": ""}, "job name is empty"),
        ({"job_name": "a", "instance": 1}, "instance is a number, not a string"),
        ({"job_name": "a", "attempts": -1}, "attempts is -1"),
        ({"job_name": "a", "attempts": "2"}, "attempts is '2'"),
        ({"job_name": "a", "attempts": 1.5}, "attempts is 1.5"),
        ({"job_name": "a", "attempts": True}, "attempts is True"),
    ],
)
def test_invalid_envelopes_say_why(item, reason):
    with pytest.raises(InvalidJob) as caught:
        Job.from_wire(item)
    assert reason in caught.value.reason
    assert isinstance(caught.value, JobError)
    assert isinstance(caught.value, KestrelpyError)


def test_retried_copy_counts_one_more_attempt_and_keeps_the_rest():
    job = Job("a", {"x": 1}, "dev", 1)
    assert job.retried() == Job("a", {"x": 1}, "dev", 2)
    assert job.attempts == 1  # frozen: the original is untouched


def test_queue_names():
    assert queue_name("hello_world") == "hello_world"
    assert queue_name("hello_world", "enterprise") == "enterprise_hello_world"
    assert errors_queue("enterprise_hello_world") == "enterprise_hello_world_errors"


def test_dead_letter_of_a_job_always_carries_attempts():
    assert dead_letter(Job("a"), "boom", 0) == {"job_name": "a", "error": "boom", "attempts": 0}


def test_dead_letter_keeps_the_item_as_read():
    php = {"jobName": "a", "instance": "dev", "extra": 1}
    assert dead_letter(php, "boom", 2) == {**php, "error": "boom", "attempts": 2}
    assert "error" not in php  # a copy


def test_dead_letter_wraps_what_is_not_an_object():
    assert dead_letter([1, 2], "invalid job: not a JSON object but an array") == {
        "item": [1, 2],
        "error": "invalid job: not a JSON object but an array",
    }
