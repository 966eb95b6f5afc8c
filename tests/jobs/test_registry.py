"""Job registry and retry policy (kestrelpy/jobs/registry.py), on plain values.

Contract: ``@job(name, ...)`` registers ``handler(data, job)`` with its policy and returns
the function unchanged; ``lookup`` finds it or gives None. ``RetryPolicy()`` aborts failed
jobs (the PHP consumer's behaviour); ``max_retries=N`` retries while ``attempts < N`` with
``min(backoff_s * 2**attempts, backoff_max_s)`` seconds between, then dead-letters.
"""

from __future__ import annotations

import pytest

from kestrelpy.jobs import JobConfigError, JobRegistry, RetryPolicy, Step, default_registry, job


def test_decorator_registers_and_returns_the_function():
    registry = JobRegistry()

    @registry.job("resize", max_retries=2, backoff_s=0.5)
    def resize(data, job):
        return data * 2

    assert resize(3, None) == 6  # still a plain function
    found = registry.lookup("resize")
    assert found is not None
    assert found.handler is resize
    assert found.policy == RetryPolicy(max_retries=2, backoff_s=0.5, backoff_max_s=60.0)
    assert "resize" in registry
    assert len(registry) == 1
    assert registry.names() == ["resize"]


def test_lookup_of_an_unknown_name_is_none():
    assert JobRegistry().lookup("nope") is None


def test_default_policy_is_abort():
    registry = JobRegistry()
    registry.job("a")(lambda data, job: None)
    assert registry.lookup("a").policy == RetryPolicy()


def test_a_name_registered_to_two_functions_is_an_error():
    registry = JobRegistry()

    def first(data, job): ...

    def second(data, job): ...

    registry.job("a")(first)
    registry.job("a")(first)  # the same function again (a module imported twice): fine
    with pytest.raises(JobConfigError, match=r"already registered to .*first"):
        registry.job("a")(second)


@pytest.mark.parametrize("name", ["", None, 3])
def test_job_name_must_be_a_non_empty_string(name):
    with pytest.raises(JobConfigError):
        JobRegistry().job(name)


def test_module_level_job_fills_the_default_registry():
    name = "test_registry.default"

    @job(name)
    def handler(data, job): ...

    try:
        assert default_registry.lookup(name).handler is handler
    finally:
        default_registry._jobs.pop(name)


# -- retry policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [0, 1, 100])
def test_no_max_retries_aborts_whatever_the_attempts(attempts):
    assert RetryPolicy().next_step(attempts) is Step.ABORT


def test_max_retries_retries_then_dead_letters():
    policy = RetryPolicy(max_retries=2)
    assert [policy.next_step(n) for n in range(4)] == [
        Step.RETRY,
        Step.RETRY,
        Step.DEAD_LETTER,
        Step.DEAD_LETTER,
    ]


def test_zero_retries_dead_letters_the_first_failure():
    assert RetryPolicy(max_retries=0).next_step(0) is Step.DEAD_LETTER


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(max_retries=10, backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay_s(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay_s(10_000) == 3.0  # no overflow


def test_zero_backoff_retries_at_once():
    assert RetryPolicy(max_retries=1, backoff_s=0).delay_s(3) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"backoff_s": -0.1},
        {"backoff_s": float("nan")},
        {"backoff_max_s": float("inf")},
        {"backoff_s": "1"},
    ],
)
def test_bad_policy_values_are_refused(kwargs):
    with pytest.raises(JobConfigError):
        RetryPolicy(**kwargs)


def test_bad_policy_in_the_decorator_fails_at_import_time():
    with pytest.raises(JobConfigError):
        JobRegistry().job("a", max_retries=-1)
