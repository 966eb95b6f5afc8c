"""The router over the ``kestrel`` backend, against real ``kestrelpy serve`` processes:
matching, send/receive/consume, delivery and the invocation allow-list, every on_error
action, retries with their attempt header, the send buffer, the at-exit child process,
and a consumer killed with ``kill -9`` mid-message.

What a router claims is checked on the server through a raw connection (the items it
holds, unpacked), not only through the router itself.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrelpy.client import Client
from kestrelpy.router import DeliveryRefused, Frame, Invocation, NoInterface, Router
from kestrelpy.router.wire import Message, pack, unpack

from .conftest import ServerFactory, ServerProcess, subprocess_env, wait_until
from .router_support import RECORD_ENV, recorded

pytestmark = pytest.mark.timeout(60)

HERE = Path(__file__).parent
CHILD_TIMEOUT_S = 30.0


@pytest.fixture
def support(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``router_support`` importable (as the children import it), and its record file."""
    monkeypatch.syspath_prepend(str(HERE))
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(record))
    return record


def kestrel(server: ServerProcess, **extra: Any) -> dict[str, Any]:
    return {"implementation": "kestrel", "servers": [server.address], **extra}


def items(server: ServerProcess, queue: str) -> list[Message]:
    """Every item on ``queue`` (taken off it), unpacked."""
    taken = []
    with server.connect() as raw:
        while (data := raw.get(queue)) is not None:
            taken.append(unpack(data))
    return taken


def open_count(server: ServerProcess, queue: str) -> int:
    with server.connect() as raw:
        return int(raw.stats().get(f"queue_{queue}_open_transactions", "0"))


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    with Router(default_path=tmp_path / "default") as made:
        yield made


# -- matching ---------------------------------------------------------------------------------


def test_first_match_wins_and_default_is_tried_last(router: Router, server: ServerProcess) -> None:
    router.add_interface("mail", kestrel(server, queues="/mail_.*/"))
    router.add_interface("exact", kestrel(server, queues="mail_vip"))  # after mail: never wins
    router.add_interface("pair", kestrel(server, queues=["a", "b"]))
    assert router.interfaces == ["mail", "exact", "pair", "default"]
    assert router.interface_for("mail_vip").name == "mail"
    assert router.interface_for("b").name == "pair"
    assert router.interface_for("other").name == "default"
    router.remove_interface("mail")
    assert router.interface_for("mail_vip").name == "exact"
    router.remove_interface("default")
    with pytest.raises(NoInterface, match="'other'"):
        router.interface_for("other")
    router.add_interface("default", kestrel(server))  # a replacement default is last again
    router.add_interface("late", kestrel(server, queues="late"))
    assert router.interfaces[-1] == "default"


def test_a_router_reads_its_interfaces_from_toml(tmp_path: Path, server: ServerProcess) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [router.orders]
            queues = ["orders"]
            implementation = "kestrel"
            servers = ["{server.address}"]
            [router.orders.delivery]
            app_fetch = true
            """
        )
    )
    with Router.from_toml(config, default_path=tmp_path / "d") as router:
        assert router.interfaces == ["orders", "default"]
        router.send("orders", {"n": 1})
        assert [frame.body for frame in router.receive("orders")] == [{"n": 1}]


# -- send, receive, consume ---------------------------------------------------------------------


def test_send_then_receive_round_trip_with_headers(router: Router, server: ServerProcess) -> None:
    router.add_interface("q", kestrel(server, queues="q"))
    router.send("q", {"id": 1, "text": "é"}, headers={"reply-to": "answers"})
    (stored,) = items(server, "q")  # as the server holds it: headers and the JSON body
    assert stored.headers["reply-to"] == "answers"
    assert stored.headers["destination"] == "q"
    assert stored.headers["content-encoding"] == "json"
    assert json.loads(stored.body) == {"id": 1, "text": "é"}
    router.send("q", [1])
    router.send("q", [2])
    frames = router.receive("q", limit=1)
    assert [frame.body for frame in frames] == [[1]]
    assert [frame.body for frame in router.receive("q")] == [[2]]
    assert router.receive("q") == []
    assert open_count(server, "q") == 0


def test_an_item_from_another_producer_is_a_body_without_headers(
    router: Router, server: ServerProcess
) -> None:
    router.add_interface("q", kestrel(server, queues="q"))
    with server.connect() as raw:
        raw.set("q", b'{"jobName": "x"}')  # a PHP worker's job, say
    (frame,) = router.receive("q")
    assert frame == Frame({}, {"jobName": "x"})


def test_consume_runs_an_allowed_invocation(
    router: Router, server: ServerProcess, support: Path
) -> None:
    router.add_interface("q", kestrel(server, queues="q", delivery={"allow": ["router_support"]}))
    router.send("q", Invocation("router_support:record", (1, "a"), {"k": True}))
    assert router.consume("q") == 1
    assert recorded(support) == [{"args": [1, "a"], "kwargs": {"k": True}}]
    assert items(server, "q") == [] and open_count(server, "q") == 0


def test_an_invocation_outside_the_allow_list_never_runs(
    router: Router, server: ServerProcess, support: Path
) -> None:
    delivery = {"allow": ["router_support_other"], "on_error": [{"dead_letter": "dead"}]}
    router.add_interface("q", kestrel(server, queues="q", delivery=delivery))
    router.add_interface("dead", kestrel(server, queues="dead"))
    router.send("q", Invocation("router_support:record", (1,)))
    assert router.consume("q") == 1
    assert recorded(support) == []
    (dead,) = items(server, "dead")
    assert "is not in delivery.allow" in dead.headers["x-error"]
    assert dead.headers["x-failed-queue"] == "q"


def test_consume_calls_the_callback_with_frame_and_config(
    router: Router, server: ServerProcess, support: Path
) -> None:
    router.add_interface(
        "q", kestrel(server, queues="q", delivery={"callback": "router_support:record_frame"})
    )
    router.send("q", {"n": 1}, headers={"h": "v"})
    router.send("q", {"n": 2})
    assert router.consume("q", limit=1) == 1
    assert router.consume("q") == 1
    got = recorded(support)
    assert [entry["body"] for entry in got] == [{"n": 1}, {"n": 2}]
    assert got[0]["headers"]["h"] == "v"


def test_an_app_fetch_interface_refuses_consume(router: Router, server: ServerProcess) -> None:
    router.add_interface("q", kestrel(server, queues="q", delivery={"app_fetch": True}))
    router.send("q", 1)
    with pytest.raises(DeliveryRefused, match="receive"):
        router.consume("q")
    assert [frame.body for frame in router.receive("q")] == [1]


# -- on_error ---------------------------------------------------------------------------------


def failing(server: ServerProcess, on_error: list[Any], **extra: Any) -> dict[str, Any]:
    delivery = {"callback": "router_support:fail", "on_error": on_error}
    return kestrel(server, queues="q", delivery=delivery, **extra)


def test_log_then_drop_by_default(
    router: Router, server: ServerProcess, support: Path, caplog: pytest.LogCaptureFixture
) -> None:
    router.add_interface("q", failing(server, ["log"]))
    router.send("q", 1)
    with caplog.at_level(logging.ERROR, logger="kestrelpy.router"):
        assert router.consume("q") == 1
    assert "this job always fails" in caplog.text
    assert items(server, "q") == [] and open_count(server, "q") == 0


def test_requeue_to_the_same_queue_and_to_another(router: Router, server: ServerProcess) -> None:
    router.add_interface("q", failing(server, [{"requeue": "again"}]))
    router.add_interface("again", kestrel(server, queues="again"))
    router.send("q", 1)
    router.consume("q")
    (moved,) = items(server, "again")
    assert json.loads(moved.body) == 1 and "this job always fails" in moved.headers["x-error"]
    router.add_interface("q", failing(server, ["requeue"]))
    router.send("q", 2)
    assert router.consume("q", limit=1) == 1
    (back,) = items(server, "q")
    assert json.loads(back.body) == 2


def test_a_requeue_goes_through_the_targets_buffer_unless_immediate(
    router: Router, server: ServerProcess
) -> None:
    router.add_interface("buffered", kestrel(server, queues="errors", send={"buffer": "errbuf"}))
    router.add_interface("buffer", kestrel(server, queues="errbuf"))
    router.add_interface("q", failing(server, [{"requeue": {"queue": "errors"}}]))
    router.send("q", 1)
    router.consume("q")
    assert [json.loads(m.body) for m in items(server, "errbuf")] == [1]
    router.add_interface(
        "q", failing(server, [{"requeue": {"queue": "errors", "immediate": True}}])
    )
    router.send("q", 2)
    router.consume("q")
    assert [json.loads(m.body) for m in items(server, "errors")] == [2]
    assert items(server, "errbuf") == []


def test_an_error_callback_gets_the_exception_and_frame(
    router: Router, server: ServerProcess
) -> None:
    seen: list[tuple[str, Any]] = []
    router.add_interface(
        "q",
        failing(server, [{"callback": lambda exc, frame: seen.append((str(exc), frame.body))}]),
    )
    router.send("q", {"n": 5})
    router.consume("q")
    assert seen == [("this job always fails", {"n": 5})]


def test_drop_ends_the_list(router: Router, server: ServerProcess) -> None:
    router.add_interface("q", failing(server, ["drop", {"dead_letter": "dead"}]))
    router.add_interface("dead", kestrel(server, queues="dead"))
    router.send("q", 1)
    router.consume("q")
    assert items(server, "q") == [] and items(server, "dead") == []


def test_retry_with_backoff_then_dead_letter(
    tmp_path: Path, server: ServerProcess, support: Path
) -> None:
    waits: list[float] = []
    on_error = [{"retry": {"max": 2, "backoff": "exp", "base_s": 0.5}}, {"dead_letter": "dead"}]
    with Router(default_path=tmp_path / "d", sleep=waits.append) as router:
        router.add_interface("q", failing(server, on_error))
        router.add_interface("dead", kestrel(server, queues="dead"))
        router.send("q", {"job": 1})
        # one delivery per call: a retried copy is left for the next call
        assert [router.consume("q") for _ in range(4)] == [1, 1, 1, 0]
    assert waits == [0.5, 1.0]
    (dead,) = items(server, "dead")
    assert dead.headers["x-attempts"] == "2"
    assert dead.headers["x-failed-queue"] == "q"
    assert json.loads(dead.body) == {"job": 1}
    assert items(server, "q") == [] and open_count(server, "q") == 0


# -- encodings --------------------------------------------------------------------------------


def test_pickle_on_a_trusted_kestrel_interface(router: Router, server: ServerProcess) -> None:
    router.add_interface("q", kestrel(server, queues="q", encoding="pickle", trusted=True))
    router.send("q", {"set": {1, 2}})
    assert [frame.body for frame in router.receive("q")] == [{"set": {1, 2}}]


def test_a_pickled_message_on_an_untrusted_interface_is_refused_unread(
    router: Router, server: ServerProcess
) -> None:
    router.add_interface("writer", kestrel(server, queues="q", encoding="pickle", trusted=True))
    router.send("q", {"x": 1})
    router.remove_interface("writer")
    router.add_interface(
        "q", kestrel(server, queues="q", delivery={"on_error": [{"dead_letter": "dead"}]})
    )
    router.add_interface("dead", kestrel(server, queues="dead"))
    assert router.receive("q") == []
    (dead,) = items(server, "dead")
    assert "refuses pickle messages" in dead.headers["x-error"]


# -- buffering, at exit ---------------------------------------------------------------------------


def test_buffer_then_flush(router: Router, server: ServerProcess) -> None:
    router.add_interface("remote", kestrel(server, queues="remote", send={"buffer": "remote_buf"}))
    router.add_interface("buffer", kestrel(server, queues="remote_buf"))
    router.send("remote", {"n": 1})
    router.send("remote", {"n": 2})
    with server.connect() as raw:
        assert raw.stats().get("queue_remote_items", "0") == "0"
    assert router.flush("remote") == 2
    assert [json.loads(m.body) for m in items(server, "remote")] == [{"n": 1}, {"n": 2}]
    assert items(server, "remote_buf") == []


def run_child(
    script: str, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**subprocess_env(), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), full_env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env=full_env,
    )


def test_on_exit_flush_moves_the_buffer_in_a_child_process(
    tmp_path: Path, server: ServerProcess
) -> None:
    """The sending process exits at once; a detached child it started moves the buffered
    messages on to the real queue afterwards."""
    script = f"""
        from kestrelpy.router import Router
        router = Router(
            {{
                "remote": {{"queues": "remote", "implementation": "kestrel",
                            "servers": ["{server.address}"],
                            "send": {{"buffer": "remote_buf", "on_exit": "flush"}}}},
                "buffer": {{"queues": "remote_buf", "implementation": "kestrel",
                            "servers": ["{server.address}"]}},
            }},
            default_path={str(tmp_path / "d")!r},
        )
        for n in range(3):
            router.send("remote", {{"n": n}})
        print("sent")
    """
    sender = run_child(script)
    assert sender.returncode == 0 and sender.stdout.strip() == "sent", sender.stderr

    def arrived() -> bool:
        with server.connect() as raw:
            return raw.stats().get("queue_remote_items") == "3"

    wait_until(arrived, CHILD_TIMEOUT_S, "the exit child to flush the buffer", server)
    assert [json.loads(m.body) for m in items(server, "remote")] == [{"n": n} for n in range(3)]
    assert items(server, "remote_buf") == []


def test_a_consumer_killed_mid_message_has_it_delivered_again(
    tmp_path: Path, server_factory: ServerFactory, support: Path
) -> None:
    server = server_factory()
    config = {
        "q": kestrel(server, queues="q", delivery={"callback": "router_support:record_frame"})
    }
    with Router(config, default_path=tmp_path / "d") as router:
        router.send("q", {"job": 1})
    child_config = {
        "q": kestrel(server, queues="q", delivery={"callback": "router_support:hold_then_block"})
    }
    script = f"""
        from kestrelpy.router import Router
        Router({child_config!r}, default_path={str(tmp_path / "d2")!r}).consume("q")
    """
    env = {**subprocess_env(), "PYTHONPATH": str(HERE)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        held = child.stdout.readline()  # printed while the message is taken, unconfirmed
        assert json.loads(held) == {"job": 1}, child.stderr.read() if child.stderr else ""
        assert open_count(server, "q") == 1
    finally:
        child.kill()
        child.wait(CHILD_TIMEOUT_S)
    wait_until(lambda: open_count(server, "q") == 0, 10, "the server to see the close", server)
    with Router(config, default_path=tmp_path / "d") as router:
        assert router.consume("q") == 1
    assert [entry["body"] for entry in recorded(support)] == [{"job": 1}]


def write_buffered_config(path: Path, server: ServerProcess, *, retrigger: bool) -> Path:
    retrigger_text = str(retrigger).lower()
    path.write_text(
        textwrap.dedent(
            f"""
            [router.remote]
            queues = "remote"
            implementation = "kestrel"
            servers = ["{server.address}"]
            send = {{ buffer = "remote_buf", message_limit = 2, retrigger = {retrigger_text} }}

            [router.buffer]
            queues = "remote_buf"
            implementation = "kestrel"
            servers = ["{server.address}"]
            """
        )
    )
    return path


def fill_buffer(path: Path, tmp_path: Path, count: int) -> None:
    with Router.from_toml(path, default_path=tmp_path / "d") as router:
        for n in range(count):
            router.send("remote", n)


def run_remote_interface(
    kestrelpy_argv: list[str], config: Path
) -> subprocess.CompletedProcess[str]:
    """``kestrelpy router run --interface remote`` by hand, in the config's directory."""
    return subprocess.run(
        [*kestrelpy_argv, "router", "run", "--interface", "remote", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env=subprocess_env(),
        cwd=config.parent,
    )


def test_a_run_stops_at_its_message_limit(
    tmp_path: Path, server: ServerProcess, kestrelpy_argv: list[str]
) -> None:
    config = write_buffered_config(tmp_path / "router.toml", server, retrigger=False)
    fill_buffer(config, tmp_path, 5)
    run = run_remote_interface(kestrelpy_argv, config)
    assert run.returncode == 0, run.stderr
    assert "2 message(s) handled" in run.stderr
    assert [json.loads(m.body) for m in items(server, "remote")] == [0, 1]
    assert [json.loads(m.body) for m in items(server, "remote_buf")] == [2, 3, 4]


def test_retrigger_starts_runs_until_the_buffer_is_empty(
    tmp_path: Path, server: ServerProcess, kestrelpy_argv: list[str]
) -> None:
    config = write_buffered_config(tmp_path / "router.toml", server, retrigger=True)
    fill_buffer(config, tmp_path, 5)
    run = run_remote_interface(kestrelpy_argv, config)
    assert run.returncode == 0, run.stderr

    def all_moved() -> bool:
        with server.connect() as raw:
            return raw.stats().get("queue_remote_items") == "5"

    wait_until(all_moved, CHILD_TIMEOUT_S, "the retriggered runs to move the rest", server)
    assert [json.loads(m.body) for m in items(server, "remote")] == [0, 1, 2, 3, 4]


def test_on_exit_consume_delivers_in_a_child_process(
    tmp_path: Path, server: ServerProcess, support: Path
) -> None:
    script = f"""
        from kestrelpy.router import Invocation, Router
        router = Router(
            {{"jobs": {{"queues": "jobs", "implementation": "kestrel",
                        "servers": ["{server.address}"], "send": {{"on_exit": "consume"}},
                        "delivery": {{"allow": ["router_support"]}}}}}},
            default_path={str(tmp_path / "d")!r},
        )
        router.send("jobs", Invocation("router_support:record", ("from the exit run",)))
    """
    sender = run_child(script, env={RECORD_ENV: str(support)})
    assert sender.returncode == 0, sender.stderr
    wait_until(lambda: support.exists(), CHILD_TIMEOUT_S, "the exit child to consume", server)
    assert recorded(support) == [{"args": ["from the exit run"], "kwargs": {}}]


def test_consume_leaves_a_plain_message_it_cannot_deliver_for_receive(
    router: Router, server: ServerProcess, support: Path
) -> None:
    """No callback: an invocation runs, the plain message behind it stays (at the head)
    for the application, and consuming stops there instead of dropping it."""
    router.add_interface("q", kestrel(server, queues="q", delivery={"allow": ["router_support"]}))
    router.send("q", Invocation("router_support:record", (1,)))
    router.send("q", {"plain": True})
    router.send("q", Invocation("router_support:record", (2,)))
    assert router.consume("q") == 1
    assert recorded(support) == [{"args": [1], "kwargs": {}}]
    assert [frame.body for frame in router.receive("q", limit=1)] == [{"plain": True}]
    assert router.consume("q") == 1
    assert open_count(server, "q") == 0


# -- regressions --------------------------------------------------------------------------------


class _RunsRecord:
    """Pickles to a call of ``router_support.record``: unpickled, it leaves a record."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import router_support

        return router_support.record, ("unpickled",)


def test_pickle_is_decoded_only_when_the_header_names_it(
    router: Router, server: ServerProcess, support: Path
) -> None:
    """Anyone who reaches the memcache port can put an item without a header (or with the
    name spelled otherwise): a trusted pickle interface refuses it instead of falling back
    to its own encoding and unpickling it."""
    payload = pickle.dumps(_RunsRecord())
    delivery = {"on_error": [{"dead_letter": "dead"}]}
    router.add_interface(
        "q", kestrel(server, queues="q", encoding="pickle", trusted=True, delivery=delivery)
    )
    router.add_interface("dead", kestrel(server, queues="dead"))
    with server.connect() as raw:
        raw.set("q", payload)  # no header at all
        raw.set("q", b'KPR/1 {"Content-Encoding":"json"}\n' + payload)  # the accept bypass
    assert router.receive("q") == []
    assert recorded(support) == []  # nothing was unpickled
    dead = items(server, "dead")
    assert len(dead) == 2
    assert all("without a content-encoding header" in m.headers["x-error"] for m in dead)
    router.send("q", {"still": "works"})  # named in its header: decoded as before
    assert [frame.body for frame in router.receive("q")] == [{"still": "works"}]


def test_items_with_memcache_flags_are_bodies_and_the_queue_keeps_working(
    router: Router, server: ServerProcess
) -> None:
    """The kestrel backend reads bytes whatever an item's flags say: kestrelpy's JSON
    codec marks its items, PHP marks compressed ones with 16. Before, the first raised out
    of unpack and the second out of the client, and the open read wedged every later take."""
    router.add_interface("q", kestrel(server, queues="q"))
    with Client(server.address, codec="json") as producer:
        producer.put("q", {"jobName": "x"})
    with server.connect() as raw:
        raw.set("q", b"[1, 2]", flags=16)
    assert [frame for frame in router.receive("q")] == [
        Frame({}, {"jobName": "x"}),
        Frame({}, [1, 2]),
    ]
    assert open_count(server, "q") == 0
    router.send("q", {"after": 1})
    assert [frame.body for frame in router.receive("q")] == [{"after": 1}]
    router.add_interface("raw", kestrel(server, queues="rawq", encoding="raw"))
    with Client(server.address, codec="json") as producer:
        producer.put("rawq", {"jobName": "y"})
    assert [frame.body for frame in router.receive("rawq")] == [b'{"jobName":"y"}']


def test_consume_with_requeue_handles_each_message_once_per_call(
    router: Router, server: ServerProcess, support: Path
) -> None:
    """A message that fails and is requeued to its own queue is not taken again by the
    same call (it used to be, forever): the copy waits at the head for the next call."""
    router.add_interface("q", failing(server, ["requeue"]))
    router.send("q", {"n": 1})
    router.send("q", {"n": 2})
    assert router.consume("q") == 2
    assert open_count(server, "q") == 0
    assert router.consume("q") == 2  # the next call: both copies, once each
    assert sorted(json.loads(m.body)["n"] for m in items(server, "q")) == [1, 2]


def test_a_requeued_headerless_item_is_taken_once_per_call(
    router: Router, server: ServerProcess
) -> None:
    router.add_interface("q", failing(server, ["requeue"]))
    with server.connect() as raw:
        raw.set("q", b'{"from": "php"}')
    assert router.consume("q") == 1
    (copy,) = items(server, "q")
    assert copy.headers["message-id"] and json.loads(copy.body) == {"from": "php"}


def test_an_invocation_may_run_only_what_the_allowed_module_defines(
    router: Router, server: ServerProcess, support: Path
) -> None:
    """``router_support`` imports ``getpid`` from os and has a private ``_append``: both
    are attributes of an allowed module, neither is a function it offers."""
    delivery = {"allow": ["router_support"], "on_error": [{"dead_letter": "dead"}]}
    router.add_interface("q", kestrel(server, queues="q", delivery=delivery))
    router.add_interface("dead", kestrel(server, queues="dead"))
    router.send("q", Invocation("router_support:getpid"))
    router.send("q", Invocation("router_support:_append", ({"private": True},)))
    router.send("q", Invocation("router_support:record", ("public",)))
    assert router.consume("q") == 3
    assert recorded(support) == [{"args": ["public"], "kwargs": {}}]
    imported, private = items(server, "dead")
    assert "not in 'router_support'" in imported.headers["x-error"]
    assert "public functions" in private.headers["x-error"]


def test_receive_consume_and_flush_can_name_the_interface(
    router: Router, server_factory: ServerFactory, support: Path
) -> None:
    """Draining a queue during a move: the new interface matches first, the old one is
    kept under another name and named explicitly."""
    old, new = server_factory(), server_factory()
    record = {"callback": "router_support:record_frame"}
    router.add_interface("old", kestrel(old, queues="jobs", delivery=record))
    router.send("jobs", {"on": "old"})
    router.send("jobs", {"on": "old", "n": 2})
    router.remove_interface("old")
    router.add_interface("jobs", kestrel(new, queues="jobs", delivery=record))
    router.add_interface("old", kestrel(old, queues="jobs", delivery=record))
    router.send("jobs", {"on": "new"})
    assert router.interface_for("jobs").name == "jobs"
    assert [f.body for f in router.receive("jobs", limit=1, interface="old")] == [{"on": "old"}]
    assert router.consume("jobs", interface="old") == 1
    assert [entry["body"] for entry in recorded(support)] == [{"on": "old", "n": 2}]
    assert [f.body for f in router.receive("jobs")] == [{"on": "new"}]
    router.add_interface("oldbuf", kestrel(old, queues="jobs_buf", delivery={"app_fetch": True}))
    router.add_interface("old", kestrel(old, queues="jobs", send={"buffer": "jobs_buf"}))
    with pytest.raises(DeliveryRefused):
        router.consume("nothing", interface="oldbuf")
    with old.connect() as raw:
        raw.set("jobs_buf", pack(Message({"destination": "jobs"}, b'{"buffered": 1}')))
    assert router.flush("jobs") == 0  # the interface that matches has no buffer
    assert router.flush("jobs", interface="old") == 1  # the old one's buffer: moved on to
    assert [json.loads(m.body) for m in items(new, "jobs")] == [{"buffered": 1}]  # the new
    assert items(old, "jobs_buf") == [] and items(old, "jobs") == []


def test_router_run_drains_the_interface_it_names(
    tmp_path: Path, server_factory: ServerFactory, kestrelpy_argv: list[str], support: Path
) -> None:
    old, new = server_factory(), server_factory()
    config = tmp_path / "router.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [router.invoices]
            queues = "invoices"
            implementation = "kestrel"
            servers = ["{new.address}"]

            [router.invoices_old]
            queues = "invoices"
            implementation = "kestrel"
            servers = ["{old.address}"]
            [router.invoices_old.delivery]
            callback = "router_support:record_frame"
            """
        )
    )
    with old.connect() as raw:
        raw.set("invoices", b'{"left": "on old"}')
    with new.connect() as raw:
        raw.set("invoices", b'{"already": "on new"}')
    run = subprocess.run(
        [*kestrelpy_argv, "router", "run", "--interface", "invoices_old", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env={**subprocess_env(), "PYTHONPATH": str(HERE), RECORD_ENV: str(support)},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert [entry["body"] for entry in recorded(support)] == [{"left": "on old"}]
    assert items(old, "invoices") == []
    assert [m.body for m in items(new, "invoices")] == [b'{"already": "on new"}']


def test_a_callable_config_skips_the_exit_run_and_leaves_no_file(tmp_path: Path) -> None:
    """A Python callable cannot reach the child: the run is skipped with one error naming
    the interface, and no temporary file (which would hold the tokens) is left."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    script = f"""
        from kestrelpy.router import Router
        router = Router(
            {{
                "inproc": {{"queues": "inproc", "delivery": {{"callback": print}},
                            "path": {str(tmp_path / "inproc")!r}}},
                "remote": {{"queues": "remote", "implementation": "http",
                            "url": "http://127.0.0.1:9", "token": "t0ken-secret",
                            "send": {{"buffer": "remote_buf", "on_exit": "flush"}}}},
                "buffer": {{"queues": "remote_buf", "path": {str(tmp_path / "buf")!r}}},
            }},
            default_path={str(tmp_path / "d")!r},
        )
        router.send("remote", {{"n": 1}})
        print("sent")
    """
    sender = run_child(script, env={"TMPDIR": str(scratch)})
    assert sender.returncode == 0 and sender.stdout.strip() == "sent", sender.stderr
    assert "at-exit run of remote not started" in sender.stderr
    assert "'inproc'" in sender.stderr and "Traceback" not in sender.stderr
    assert list(scratch.iterdir()) == []


def test_routers_share_one_exit_hook_and_start_one_run(
    tmp_path: Path, server: ServerProcess
) -> None:
    """A Router per request: none outlives its request because it sent, and at exit the
    same interface gets one child run, not one per Router."""
    script = f"""
        import gc, weakref
        from kestrelpy.router import Router, exit_runs
        started = []
        real = exit_runs.start_run_json
        def counted(*args):
            started.append(args[1])
            print("run", args[1], args[2], flush=True)
            real(*args)
        exit_runs.start_run_json = counted
        config = {{
            "remote": {{"queues": "remote", "implementation": "kestrel",
                        "servers": ["{server.address}"],
                        "send": {{"buffer": "remote_buf", "on_exit": "flush"}}}},
            "buffer": {{"queues": "remote_buf", "implementation": "kestrel",
                        "servers": ["{server.address}"]}},
        }}
        refs = []
        for n in range(5):  # five requests
            router = Router(config, default_path={str(tmp_path / "d")!r})
            router.send("remote", {{"n": n}})
            refs.append(weakref.ref(router))
        del router
        gc.collect()
        print("alive", sum(ref() is not None for ref in refs), flush=True)
    """
    sender = run_child(script)
    assert sender.returncode == 0, sender.stderr
    assert sender.stdout.splitlines() == ["alive 0", "run remote ['remote']"], sender.stderr

    def arrived() -> bool:
        with server.connect() as raw:
            return raw.stats().get("queue_remote_items") == "5"

    wait_until(arrived, CHILD_TIMEOUT_S, "the one exit run to flush all five", server)
    assert sorted(json.loads(m.body)["n"] for m in items(server, "remote")) == list(range(5))
