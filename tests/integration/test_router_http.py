"""The router's ``http`` backend and the accept endpoint it talks to (docs/http.md, "Router
accept endpoint"; kestrelpy/router/backends/http.py).

Contract: a message sent with the backend becomes one item of the receiving server's queue,
byte for byte the packed message, durable when ``send`` returns; the endpoint is off by
default (404), wants its own bearer token (401 none, 403 wrong), refuses bad queue names
(400), bodies over the listener's limit (413) and pickle, or any encoding that could run
code (415); ``router_accept = true`` without a token stops the server at start. The backend
keeps one keep-alive connection, tries a request once more when that connection turns out
to be dropped (never more, never on a fresh connection), times out every operation, and
raises BackendError naming the URL, the status and the peer's error; it never receives.

The receiving side is a real ``kestrelpy serve`` with its HTTP listener on a free port; the
client-side failures (a dropped keep-alive connection, a silent or foreign peer) need a peer
that misbehaves on cue: :class:`ScriptedPeer`, a plain socket server run by one thread.
"""

from __future__ import annotations

import json
import pickle
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrelpy.router import Router
from kestrelpy.router.backends.base import Backend, BackendError, SendOnly
from kestrelpy.router.backends.http import open_backend
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.wire import Message, pack, unpack

from .conftest import (
    HOST,
    IO_TIMEOUT_S,
    ServerFactory,
    ServerProcess,
    assert_one_line_user_error,
    run_kestrelpy,
    serve_argv,
)

pytestmark = pytest.mark.timeout(90)

TOKEN = "r0uter-t0ken"
ADMIN = "adm1n-t0ken"
ACCEPTING = f"""\
[server]
router_accept = true
router_accept_token = "{TOKEN}"
admin_token = "{ADMIN}"
status_change_grace_period = "0s"

[queues."small"]
max_items = 1
"""
JSON_MESSAGE = Message({"content-encoding": "json", "message-id": "m1"}, b'{"n":1}')


def post(
    srv: ServerProcess,
    path: str,
    body: bytes,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one POST; error statuses are answers, not raises."""
    request = urllib.request.Request(
        srv.http_url() + path, data=body, method="POST", headers=headers or {}
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT_S) as reply:
            status, reply_headers, data = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        status, reply_headers, data = err.code, dict(err.headers), err.read()
    assert reply_headers.get("Content-Type") == "application/json", (path, reply_headers)
    return status, reply_headers, json.loads(data)


def accept(srv: ServerProcess, queue: str, body: bytes, **kwargs: Any) -> tuple[int, Any]:
    status, _headers, reply = post(srv, f"/router/accept/{queue}", body, **kwargs)
    return status, reply


def queue_items(srv: ServerProcess, queue: bytes | str) -> list[bytes]:
    """Every item of ``queue`` on the memcache port, taken in order."""
    items = []
    with srv.connect() as conn:
        while (item := conn.get(queue)) is not None:
            items.append(item)
            assert len(items) < 100, "queue never drained"
    return items


def queue_exists(srv: ServerProcess, queue: str) -> bool:
    with srv.connect() as conn:
        return f"queue_{queue}_items" in conn.stats()


@pytest.fixture
def receiver(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(ACCEPTING, http=True)


@pytest.fixture
def backend(receiver: ServerProcess) -> Iterator[Backend]:
    sender = open_backend("peer", {"url": receiver.http_url(), "token": TOKEN})
    yield sender
    sender.close()


# ------------------------------------------------------------------ the round trip


def test_sent_messages_arrive_whole_in_order_and_durable(
    receiver: ServerProcess, backend: Backend
) -> None:
    messages = [
        JSON_MESSAGE,
        Message({"content-encoding": "raw", "x-note": "caf\u00e9 \u2603"}, b"\xff\x00\r\nEND\r\n"),
        Message({"content-encoding": "json"}, b""),
    ]
    backend.send("jobs", messages)
    backend.send("jobs", [JSON_MESSAGE])  # the same connection again
    backend.send("caf\u00e9", [JSON_MESSAGE])  # a name travels as its UTF-8 bytes
    receiver.kill9()  # answered means committed: nothing may be lost now
    receiver.start()
    stored = queue_items(receiver, "jobs")
    assert stored == [pack(m) for m in [*messages, JSON_MESSAGE]]  # byte for byte as sent
    assert [unpack(item) for item in stored] == [*messages, JSON_MESSAGE]
    assert [unpack(i) for i in queue_items(receiver, "caf\u00e9".encode())] == [JSON_MESSAGE]


def test_a_router_sends_over_http_and_a_kestrel_interface_receives(
    receiver: ServerProcess, tmp_path: Path
) -> None:
    """The whole path: Router.send on an http interface, Router.receive on the other side."""
    partner = {"queues": "inbox", "implementation": "http", "url": receiver.http_url()}
    with Router({"partner": {**partner, "token": TOKEN}}, default_path=tmp_path / "s") as sender:
        sender.send("inbox", {"order": 7, "lines": ["a", "\u00e9"]}, headers={"x-trace": "t1"})
        sender.send("inbox", [1, 2])
    inbox = {"queues": "inbox", "implementation": "kestrel", "servers": [receiver.address]}
    with Router({"inbox": inbox}, default_path=tmp_path / "r") as getter:
        frames = getter.receive("inbox")
    assert [frame.body for frame in frames] == [{"order": 7, "lines": ["a", "\u00e9"]}, [1, 2]]
    assert frames[0].headers["x-trace"] == "t1"
    assert frames[0].headers["content-encoding"] == "json"


def test_the_reply_says_what_was_stored(receiver: ServerProcess) -> None:
    assert accept(receiver, "jobs", pack(JSON_MESSAGE)) == (201, {"queue": "jobs", "stored": 1})
    assert queue_items(receiver, "jobs") == [pack(JSON_MESSAGE)]


def test_a_full_queue_refuses_with_507_and_keeps_what_came_before(
    receiver: ServerProcess, backend: Backend
) -> None:
    second = Message({"content-encoding": "json"}, b"2")
    with pytest.raises(BackendError) as info:
        backend.send("small", [JSON_MESSAGE, second])  # small: max_items = 1
    assert "507" in str(info.value) and "not stored" in str(info.value)
    assert queue_items(receiver, "small") == [pack(JSON_MESSAGE)]


def test_the_backend_only_sends(backend: Backend) -> None:
    assert backend.network is True
    with pytest.raises(SendOnly, match="kestrel interface"):
        backend.take("jobs")
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.send("jobs", [JSON_MESSAGE])


# ------------------------------------------------------------------ who may send


def test_no_token_is_401_and_a_wrong_one_403(receiver: ServerProcess) -> None:
    body = pack(JSON_MESSAGE)
    status, headers, reply = post(receiver, "/router/accept/jobs", body, token=None)
    assert (status, reply) == (401, {"error": "missing bearer token"})
    assert headers["WWW-Authenticate"] == "Bearer"
    basic = {"Authorization": "Basic dXNlcjpwdw=="}
    assert accept(receiver, "jobs", body, token=None, headers=basic)[0] == 401
    assert accept(receiver, "jobs", body, token="nope") == (403, {"error": "wrong token"})
    assert accept(receiver, "jobs", body, token=ADMIN)[0] == 403  # not the admin token
    assert accept(receiver, "jobs", body, token=TOKEN + "x")[0] == 403
    assert not queue_exists(receiver, "jobs")


def test_backend_errors_name_the_url_the_status_and_the_reason(receiver: ServerProcess) -> None:
    sender = open_backend("peer", {"url": receiver.http_url(), "token": "wrong-token"})
    try:
        with pytest.raises(BackendError) as info:
            sender.send("jobs", [JSON_MESSAGE])
    finally:
        sender.close()
    text = str(info.value)
    for part in ("'peer'", f"{receiver.http_url()}/router/accept/jobs", "403", "wrong token"):
        assert part in text, text


def test_off_by_default_404(server_factory: ServerFactory) -> None:
    srv = server_factory(f'[server]\nadmin_token = "{ADMIN}"\n', http=True)
    for token in (TOKEN, ADMIN, None):
        status, reply = accept(srv, "jobs", pack(JSON_MESSAGE), token=token)
        assert status == 404 and "router_accept is off" in reply["error"], (token, reply)
    sender = open_backend("peer", {"url": srv.http_url(), "token": TOKEN})
    with pytest.raises(BackendError, match="404 Not Found: not found"):
        sender.send("jobs", [JSON_MESSAGE])
    sender.close()
    assert not queue_exists(srv, "jobs")


def test_reload_turns_it_off_and_rotates_the_token(receiver: ServerProcess) -> None:
    assert receiver.config_path is not None
    body = pack(JSON_MESSAGE)
    receiver.config_path.write_text(ACCEPTING.replace(TOKEN, "n3w-t0ken"))
    assert post(receiver, "/reload", b"", token=ADMIN)[0] == 200
    assert accept(receiver, "jobs", body)[0] == 403
    assert accept(receiver, "jobs", body, token="n3w-t0ken")[0] == 201
    receiver.config_path.write_text(ACCEPTING.replace("router_accept = true", ""))
    assert post(receiver, "/reload", b"", token=ADMIN)[0] == 200
    assert accept(receiver, "jobs", body, token="n3w-t0ken")[0] == 404
    receiver.config_path.write_text(ACCEPTING.replace(TOKEN, ""))  # on without a token
    status, _headers, reply = post(receiver, "/reload", b"", token=ADMIN)
    assert status == 400 and "needs router_accept_token" in reply["error"]
    assert accept(receiver, "jobs", body, token="n3w-t0ken")[0] == 404  # the running config
    assert len(queue_items(receiver, "jobs")) == 1


def test_accept_without_a_token_stops_the_server_at_start(tmp_path: Path) -> None:
    config = tmp_path / "server.conf"
    config.write_text('[server]\nrouter_accept = true\nrouter_accept_token = ""\n')
    result = run_kestrelpy(*serve_argv((), tmp_path / "data", config, http=f"{HOST}:0"))
    assert_one_line_user_error(
        result, str(config), "[server] router_accept", "needs router_accept_token"
    )


# ------------------------------------------------------------------ what may be sent


def test_pickle_and_unknown_encodings_are_415(receiver: ServerProcess, backend: Backend) -> None:
    pickled = pickle.dumps({"x": 1})
    for headers in (
        {"content-encoding": "pickle"},
        {"content-encoding": " pickle "},
    ):
        status, reply = accept(receiver, "jobs", pack(Message(headers, pickled)))
        assert (status, reply) == (415, {"error": "pickle refused over the network"}), headers
    for headers in ({}, {"content-encoding": "msgpack"}, {"content-encoding": "JSON"}):
        status, reply = accept(receiver, "jobs", pack(Message(headers, b"{}")))
        assert status == 415 and "content-encoding" in reply["error"], (headers, reply)
    with pytest.raises(BackendError, match="415 Unsupported Media Type: pickle refused"):
        backend.send("jobs", [Message({"content-encoding": "pickle"}, pickled)])
    assert not queue_exists(receiver, "jobs")


def test_the_encoding_header_name_must_be_exactly_lowercase(receiver: ServerProcess) -> None:
    """A receiving router reads only ``content-encoding``: a check that accepted another
    spelling let a pickle through to a trusted pickle interface, which then unpickled it."""
    pickled = pickle.dumps({"x": 1})
    bodies = [
        b'KPR/1 {"Content-Encoding":"json"}\n' + pickled,  # the reported bypass, exactly
        pack(Message({"content-encoding": "json", "Content-Encoding": "PICKLE"}, pickled)),
        pack(Message({"CONTENT-ENCODING": "raw"}, b"x")),
    ]
    for body in bodies:
        status, reply = accept(receiver, "jobs", body)
        assert status == 400 and "lowercase" in reply["error"], (body[:50], reply)
    assert not queue_exists(receiver, "jobs")
    assert accept(receiver, "jobs", pack(Message({"content-encoding": "raw"}, b"x")))[0] == 201


def test_bodies_that_are_no_router_message_are_400(receiver: ServerProcess) -> None:
    for body in (
        b"",
        b'{"plain": "json"}',
        b"KPR/1 no end of header line",
        b"KPR/1 not json\nbody",
        b'KPR/1 {"n": 1}\nbody',
        b'KPR/1 ["list"]\nbody',
        b"KPR/1 " + b"[" * 30_000 + b"]" * 30_000 + b"\nbody",  # JSON nested too deep
    ):
        status, reply = accept(receiver, "jobs", body)
        assert status == 400 and reply["error"], (body[:40], reply)
    assert not queue_exists(receiver, "jobs")


def test_bad_queue_names_are_400(receiver: ServerProcess) -> None:
    for path in ("a%20b", "a%2Fb", "x" * 251, "tab%09", "%00"):
        assert accept(receiver, path, pack(JSON_MESSAGE)) == (400, {"error": "bad queue name"})


def test_a_body_over_the_limit_is_413(receiver: ServerProcess, backend: Backend) -> None:
    big = Message({"content-encoding": "raw"}, b"x" * (65 * 1024))
    status, reply = accept(receiver, "jobs", pack(big))
    assert status == 413 and "body" in reply["error"]
    with pytest.raises(BackendError, match="413"):
        backend.send("jobs", [big])
    assert not queue_exists(receiver, "jobs")


def test_a_readonly_server_refuses_with_503(receiver: ServerProcess, backend: Backend) -> None:
    status_body = json.dumps({"status": "readonly"}).encode()
    assert post(receiver, "/api/status", status_body, token=ADMIN)[0] == 200
    assert accept(receiver, "jobs", pack(JSON_MESSAGE)) == (503, {"error": "server is readonly"})
    with pytest.raises(BackendError, match="503"):
        backend.send("jobs", [JSON_MESSAGE])
    assert not queue_exists(receiver, "jobs")


# ------------------------------------------------------------------ the connection


class ScriptedPeer:
    """An HTTP/1.1 peer on 127.0.0.1 that takes connections one by one and does with each
    what its script says; one thread, every socket operation with a timeout.

    Steps: ``answer`` (read one request, reply 201 stored, keep-alive, then close the
    connection anyway: a keep-alive connection the peer dropped while idle), ``close``
    (close at once), ``silent`` (read one request, answer nothing until released),
    ``foreign`` (read one request, reply 200 with an HTML page).
    """

    def __init__(self, *steps: str) -> None:
        self.steps = steps
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(8)
        self.listener.settimeout(IO_TIMEOUT_S)
        self.url = f"http://{HOST}:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, name="scripted-peer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for step in self.steps:
                conn, _address = self.listener.accept()
                with conn:
                    conn.settimeout(IO_TIMEOUT_S)
                    self._serve(conn, step)
        except BaseException as err:
            self.error = err

    def _serve(self, conn: socket.socket, step: str) -> None:
        if step == "close":
            return
        with conn.makefile("rb") as stream:
            request_line = stream.readline()
            headers: dict[bytes, bytes] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers.get(b"content-length", b"0")))
        self.requests.append((request_line, headers, body))
        if step == "silent":
            assert self.release.wait(IO_TIMEOUT_S), "never released"
            return
        if step == "foreign":
            reply = b"<html>hello</html>"
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
        else:
            reply = b'{"queue":"jobs","stored":1}\n'
            head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(reply) + reply)

    def finish(self) -> None:
        """Wait for the script's end; no connection beyond it may have been made."""
        self.release.set()
        self.thread.join(IO_TIMEOUT_S)
        assert not self.thread.is_alive(), f"peer still on its script: {self.steps}"
        try:
            if self.error is not None:
                raise AssertionError(f"peer failed: {self.error!r}") from self.error
            self.listener.setblocking(False)
            try:
                extra, _address = self.listener.accept()
            except BlockingIOError:
                return  # the client made no connection the script did not expect
            extra.close()
            raise AssertionError(f"a connection beyond the script {self.steps}")
        finally:
            self.listener.close()


@pytest.fixture
def peers() -> Iterator[list[ScriptedPeer]]:
    made: list[ScriptedPeer] = []
    yield made
    for peer in made:
        peer.release.set()
        peer.listener.close()  # idempotent; the thread ends on its accept timeout at worst


def peer_with(peers: list[ScriptedPeer], *steps: str) -> ScriptedPeer:
    peer = ScriptedPeer(*steps)
    peers.append(peer)
    return peer


def test_a_dropped_keep_alive_connection_is_replaced_once(peers: list[ScriptedPeer]) -> None:
    peer = peer_with(peers, "answer", "answer", "answer")
    sender = open_backend("peer", {"url": peer.url + "/prefix/", "token": TOKEN})
    for n in range(3):
        sender.send("jobs", [Message({"content-encoding": "json"}, b"%d" % n)])
    sender.close()
    peer.finish()  # three connections: each request after the first met a dropped one
    assert [body for _line, _headers, body in peer.requests] == [
        pack(Message({"content-encoding": "json"}, b"%d" % n)) for n in range(3)
    ]
    line, headers, _body = peer.requests[0]
    assert line == b"POST /prefix/router/accept/jobs HTTP/1.1\r\n"
    assert headers[b"authorization"] == f"Bearer {TOKEN}".encode()


def test_a_second_drop_is_an_error_not_a_loop(peers: list[ScriptedPeer]) -> None:
    peer = peer_with(peers, "answer", "close")
    sender = open_backend("peer", {"url": peer.url, "token": TOKEN})
    sender.send("jobs", [JSON_MESSAGE])
    with pytest.raises(BackendError) as info:
        sender.send("jobs", [JSON_MESSAGE])
    sender.close()
    peer.finish()  # the reused connection and exactly one more
    assert f"POST {peer.url}/router/accept/jobs" in str(info.value)


def test_a_fresh_connection_dropped_is_not_retried(peers: list[ScriptedPeer]) -> None:
    peer = peer_with(peers, "close")
    sender = open_backend("peer", {"url": peer.url, "token": TOKEN})
    with pytest.raises(BackendError, match="router/accept/jobs"):
        sender.send("jobs", [JSON_MESSAGE])
    sender.close()
    peer.finish()


def test_a_silent_peer_times_out(peers: list[ScriptedPeer]) -> None:
    peer = peer_with(peers, "silent")
    sender = open_backend("peer", {"url": peer.url, "token": TOKEN, "timeout_s": 0.2})
    with pytest.raises(BackendError, match=r"no answer within 0\.2s"):
        sender.send("jobs", [JSON_MESSAGE])
    sender.close()
    peer.finish()


def test_a_2xx_that_is_not_the_endpoint_is_an_error(peers: list[ScriptedPeer]) -> None:
    peer = peer_with(peers, "foreign")
    sender = open_backend("peer", {"url": peer.url, "token": TOKEN})
    with pytest.raises(BackendError, match=r"router_accept endpoint.*<html>hello</html>"):
        sender.send("jobs", [JSON_MESSAGE])
    sender.close()
    peer.finish()


def test_nobody_listening_is_an_error_naming_the_url() -> None:
    with socket.socket() as closed:
        closed.bind((HOST, 0))  # bound, never listening: connections are refused
        url = f"http://{HOST}:{closed.getsockname()[1]}"
        sender = open_backend("peer", {"url": url, "token": TOKEN})
        with pytest.raises(BackendError, match=f"POST {url}/router/accept/jobs: .*refused"):
            sender.send("jobs", [JSON_MESSAGE])
        sender.close()


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"token": TOKEN}, "missing key 'url'"),
        ({"url": "http://127.0.0.1:1"}, "missing key 'token'"),
        ({"url": "http://127.0.0.1:1", "token": TOKEN, "servers": []}, "unknown key 'servers'"),
        ({"url": "ftp://127.0.0.1:1", "token": TOKEN}, "url 'ftp://127.0.0.1:1'"),
        ({"url": "127.0.0.1:2223", "token": TOKEN}, "url '127.0.0.1:2223'"),
        ({"url": "http://127.0.0.1:99999", "token": TOKEN}, "url 'http://127.0.0.1:99999'"),
        ({"url": "http://h:1/?q=1", "token": TOKEN}, "no query"),
        ({"url": "http://u:p@h:1", "token": TOKEN}, "no query, fragment or user"),
        ({"url": 2223, "token": TOKEN}, "url: expected a base URL"),
        ({"url": "http://h:1", "token": ""}, "token: expected"),
        ({"url": "http://h:1", "token": "a b"}, "token: expected"),
        ({"url": "http://h:1", "token": TOKEN, "timeout_s": 0}, "timeout_s"),
        ({"url": "http://h:1", "token": TOKEN, "timeout_s": "10"}, "timeout_s"),
        ({"url": "http://h:1", "token": TOKEN, "timeout_s": True}, "timeout_s"),
        ({"url": "http://h:1", "token": TOKEN, "timeout_s": float("inf")}, "timeout_s"),
        ({"url": "http://h:1", "token": TOKEN, "timeout_s": float("nan")}, "timeout_s"),
    ],
)
def test_bad_options_name_the_interface_and_key(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(RouterConfigError) as info:
        open_backend("remote", options)
    assert str(info.value).startswith("router interface 'remote': "), str(info.value)
    assert expected in str(info.value)


def test_good_options_open_without_connecting() -> None:
    sender = open_backend("remote", {"url": "https://[::1]:1/base", "token": TOKEN, "timeout_s": 1})
    assert sender.network is True
    sender.close()
