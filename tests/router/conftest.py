"""Fixtures for the router tests: real STOMP brokers, each started once per test session.

- ``activemq``, ``rabbitmq``: a running :class:`brokers.Broker` (see
  ``brokers.py``), shared by every test of the session, stopped by pid at the end. Tests
  keep to queues of their own (``stomp_queue``), so sharing is safe.
- ``stomp_broker``: parametrized over both, for tests that run on each.

A broker that cannot start fails every test that asks for it, with the broker's log: it is
never skipped, because a suite that silently tests nothing looks the same as one that passes.
(pytest reports a fixture's failure as an error at setup; it is not retried per test.) A
failed test that used a broker also gets the broker's log as a report section.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from .brokers import Broker, BrokerError, running


def _broker(kind: str, factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A started broker for a session fixture; a start that fails fails the fixture."""
    try:
        with running(kind, factory.mktemp(kind)) as broker:  # stopped however the session ends
            yield broker
            return
    except BrokerError as err:
        failure = str(err)  # the reason and the broker's log
    pytest.fail(failure, pytrace=False)  # outside the except: no "during handling" echo


@pytest.fixture(scope="session")
def activemq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker("activemq", tmp_path_factory)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker("rabbitmq", tmp_path_factory)


@pytest.fixture(params=["activemq", "rabbitmq"])
def stomp_broker(request: pytest.FixtureRequest) -> Broker:
    broker: Broker = request.getfixturevalue(request.param)
    return broker


@pytest.fixture
def stomp_queue() -> str:
    """A queue name no other test uses (the brokers live for the whole session)."""
    return "kpr-test-" + uuid.uuid4().hex[:12]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach the log of every broker a failed test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    seen: set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Broker) and id(value) not in seen:
            seen.add(id(value))
            report.sections.append((f"{value.name} log (tail)", value.log()))
