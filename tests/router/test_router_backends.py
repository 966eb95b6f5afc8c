"""One behaviour suite, through the Router, over every backend that receives: ``local``,
``kestrel`` (a real ``kestrelpy serve``), and ``stomp`` on ActiveMQ and on RabbitMQ.

The router promises the same things whatever the backend (``backends/base.py``): what is
sent is received in order with its headers; a consumed message is gone; a failing one
goes through ``on_error`` (here: one retry with its attempt header, then a dead letter on
the same backend); an invocation runs only from an allowed module. (``http`` only sends:
its tests are in tests/integration/test_router_http.py.)
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrelpy.router import Frame, Invocation, Router

from .brokers import ROOT, Broker

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest._servers import Server, serve_argv

pytestmark = pytest.mark.timeout(120)

BACKENDS = ["local", "kestrel", "activemq", "rabbitmq"]
CALLS: list[Any] = []  # what the allowed invocation below was called with


def remember(*args: Any) -> None:
    CALLS.append(list(args))


@pytest.fixture(scope="module")
def kestrelpy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("kestrelpy")
    command = [sys.executable, "-m", "kestrelpy"]
    server = Server(serve_argv(command, data_dir / "data"), name="kestrelpy", data_dir=data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


InterfaceFor = Callable[..., dict[str, Any]]


@pytest.fixture(params=BACKENDS)
def interface_for(request: pytest.FixtureRequest, tmp_path: Path) -> InterfaceFor:
    """``interface_for(queues=..., **settings)``: an interface config on this backend."""
    kind = request.param
    if kind == "local":
        place: dict[str, Any] = {"implementation": "local", "path": str(tmp_path / "local")}
    elif kind == "kestrel":
        server: Server = request.getfixturevalue("kestrelpy_server")
        place = {"implementation": "kestrel", "servers": [server.address]}
    else:
        broker: Broker = request.getfixturevalue(kind)
        place = {"implementation": "stomp", **broker.options()}

    def make(**settings: Any) -> dict[str, Any]:
        return {**place, **settings}

    return make


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses (servers and brokers outlive a test)."""
    return "contract-" + uuid.uuid4().hex[:12]


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    with Router(default_path=tmp_path / "default") as made:
        yield made


def test_what_is_sent_is_received_in_order_with_headers(
    router: Router, interface_for: InterfaceFor, queue: str
) -> None:
    router.add_interface("q", interface_for(queues=queue))
    for n in range(3):
        router.send(queue, {"n": n, "text": "é"}, headers={"trace-id": f"t{n}"})
    frames = router.receive(queue)
    assert [frame.body for frame in frames] == [{"n": n, "text": "é"} for n in range(3)]
    assert [frame.headers["trace-id"] for frame in frames] == ["t0", "t1", "t2"]
    assert all(frame.headers["destination"] == queue for frame in frames)
    assert router.receive(queue) == []


def test_a_consumed_message_is_gone(
    router: Router, interface_for: InterfaceFor, queue: str
) -> None:
    seen: list[Frame] = []
    router.add_interface(
        "q", interface_for(queues=queue, delivery={"callback": lambda f, c: seen.append(f)})
    )
    router.send(queue, "one")
    router.send(queue, "two")
    assert router.consume(queue) == 2
    assert [frame.body for frame in seen] == ["one", "two"]
    assert router.receive(queue) == []


def test_a_failing_message_is_retried_then_dead_lettered(
    tmp_path: Path, interface_for: InterfaceFor, queue: str
) -> None:
    def fail(frame: Frame, config: dict[str, Any]) -> None:
        raise ValueError(f"cannot handle {frame.body}")

    on_error = [{"retry": {"max": 1, "base_s": 0.25}}, {"dead_letter": queue + "-dead"}]
    waits: list[float] = []
    with Router(default_path=tmp_path / "d", sleep=waits.append) as router:
        router.add_interface(
            "q", interface_for(queues=queue, delivery={"callback": fail, "on_error": on_error})
        )
        router.add_interface("dead", interface_for(queues=queue + "-dead"))
        router.send(queue, {"job": 7})
        # the delivery, then its one retry: a call leaves the retried copy for the next one
        assert [router.consume(queue), router.consume(queue)] == [1, 1]
        (dead,) = router.receive(queue + "-dead")
        assert router.receive(queue) == []
    assert waits == [0.25]
    assert dead.body == {"job": 7}
    assert dead.headers["x-attempts"] == "1"
    assert dead.headers["x-failed-queue"] == queue
    assert "cannot handle" in dead.headers["x-error"]


def test_only_an_allowed_invocation_runs(
    router: Router, interface_for: InterfaceFor, queue: str
) -> None:
    CALLS.clear()
    module = __name__
    router.add_interface(
        "q",
        interface_for(
            queues=queue,
            delivery={"allow": [module], "on_error": [{"dead_letter": queue + "-dead"}]},
        ),
    )
    router.add_interface("dead", interface_for(queues=queue + "-dead"))
    router.send(queue, Invocation(f"{module}:remember", (1, "a")))
    router.send(queue, Invocation("os:getpid"))  # a module nobody allowed
    assert router.consume(queue) == 2
    assert CALLS == [[1, "a"]]
    (refused,) = router.receive(queue + "-dead")
    assert "not in delivery.allow" in refused.headers["x-error"]
