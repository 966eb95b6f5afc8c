"""The HTTP listener of a real server (docs/http.md): Kestrel's admin endpoints, the probes,
the JSON API, the token, errors as JSON, and the listener off or on a busy port.

Plain ``urllib`` against ``kestrelpy serve --http 127.0.0.1:0``; every request has a
timeout. Mutations are checked through the memcache port as well.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    HOST,
    ServerFactory,
    ServerProcess,
    assert_one_line_user_error,
    run_kestrelpy,
    serve_argv,
)

TOKEN = "s3cret-token"
WITH_TOKEN = f'[server]\nadmin_token = "{TOKEN}"\nstatus_change_grace_period = "0s"\n'
TIMEOUT_S = 10.0


def call(
    srv: ServerProcess,
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; error statuses are answers, not raises."""
    request = urllib.request.Request(
        srv.http_url() + path, data=body, method=method, headers=headers or {}
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def call_json(srv: ServerProcess, path: str, **kwargs: Any) -> tuple[int, Any]:
    code, headers, body = call(srv, path, **kwargs)
    assert headers.get("Content-Type") == "application/json", (path, headers)
    return code, json.loads(body)


@pytest.fixture
def srv(server_factory: ServerFactory) -> ServerProcess:
    server = server_factory(WITH_TOKEN, http=True)
    with server.connect() as conn:
        for data in (b"hello", b"\xff\xfe", b"third"):
            assert conn.set("jobs", data) == b"STORED\r\n"
        assert conn.set("other", b"x") == b"STORED\r\n"
    return server


# ------------------------------------------------------------ Kestrel's admin port


def test_ping_and_probes(srv: ServerProcess) -> None:
    code, _headers, body = call(srv, "/ping")
    assert (code, body) == (200, b"pong")
    assert call_json(srv, "/healthz") == (200, {"alive": True})
    assert call_json(srv, "/readyz") == (200, {"ready": True})


def test_stats_json_has_ostrichs_shape_and_names(srv: ServerProcess) -> None:
    code, stats = call_json(srv, "/stats.json")
    assert code == 200
    assert set(stats) == {"counters", "gauges", "metrics", "labels"}
    assert stats["counters"]["cmd_set"] == 4
    assert stats["counters"]["q/jobs/total_items"] == 3
    assert stats["gauges"]["q/jobs/items"] == 3
    assert stats["gauges"]["q/other/bytes"] == 1
    assert stats["gauges"]["items"] == 4
    assert call_json(srv, "/admin/stats")[1]["gauges"]["q/jobs/items"] == 3


def test_reload_and_shutdown_need_the_token(srv: ServerProcess) -> None:
    assert call_json(srv, "/reload", method="POST")[0] == 401
    assert call_json(srv, "/shutdown", token="wrong")[0] == 403
    assert srv.running
    assert call_json(srv, "/reload", token=TOKEN) == (200, {"reloaded": True})
    assert call_json(srv, "/shutdown", method="POST", token=TOKEN) == (200, {"shutdown": True})
    assert srv.stop() == 0  # already on its way out: a SIGTERM now changes nothing


# ------------------------------------------------------------------------ JSON API


def test_server_and_queue_stats(srv: ServerProcess) -> None:
    code, server = call_json(srv, "/api/server")
    assert code == 200
    assert (server["status"], server["curr_items"], server["peers"]) == ("up", 4, [])
    code, listing = call_json(srv, "/api/queues")
    assert [q["name"] for q in listing["queues"]] == ["jobs", "other"]
    assert listing["queues"][0]["items"] == 3 and listing["queues"][0]["bytes"] == 12
    assert call_json(srv, "/api/queues/jobs")[1]["total_items"] == 3
    assert call_json(srv, "/api/queues/nope") == (404, {"error": "no queue 'nope'"})


def test_peek_shows_items_without_taking_them(srv: ServerProcess) -> None:
    code, peeked = call_json(srv, "/api/queues/jobs/peek?n=2")
    assert code == 200
    items = peeked["items"]
    assert [(i["data"], i["encoding"], i["size"]) for i in items] == [
        ("hello", "utf-8", 5),
        ("//4=", "base64", 2),
    ]
    with srv.connect() as conn:
        assert conn.get("jobs") == b"hello"  # still there, still first
    for bad in ("0", "101", "x", "-1"):
        code, err = call_json(srv, f"/api/queues/jobs/peek?n={bad}")
        assert code == 400 and "n must be" in err["error"]


def test_flush_and_delete_need_the_token_and_change_nothing_without_it(
    srv: ServerProcess,
) -> None:
    assert call_json(srv, "/api/queues/jobs/flush", method="POST")[0] == 401
    assert call_json(srv, "/api/queues/jobs/flush", method="POST", token="nope")[0] == 403
    assert call_json(srv, "/api/queues/other", method="DELETE", token="nope")[0] == 403
    with srv.connect() as conn:
        assert conn.stats()["queue_jobs_items"] == "3"
        assert "queue_other_items" in conn.stats()
    flushed = call_json(srv, "/api/queues/jobs/flush", method="POST", token=TOKEN)
    assert flushed == (200, {"flushed": "jobs"})
    deleted = call_json(srv, "/api/queues/other", method="DELETE", token=TOKEN)
    assert deleted == (200, {"deleted": "other"})
    with srv.connect() as conn:
        stats = conn.stats()
        assert stats["queue_jobs_items"] == "0"
        assert "queue_other_items" not in stats


def test_flush_is_durable_when_answered(srv: ServerProcess) -> None:
    assert call_json(srv, "/api/queues/jobs/flush", method="POST", token=TOKEN)[0] == 200
    srv.kill9()
    srv.start()
    with srv.connect() as conn:
        assert conn.get("jobs") is None
        assert conn.get("other") == b"x"


def test_status_change(srv: ServerProcess) -> None:
    body = json.dumps({"status": "readonly"}).encode()
    assert call_json(srv, "/api/status", method="POST", body=body)[0] == 401
    assert call_json(srv, "/readyz") == (200, {"ready": True})  # the 401 changed nothing
    assert call_json(srv, "/api/status", method="POST", body=body, token=TOKEN) == (
        200,
        {"status": "readonly"},
    )
    assert call_json(srv, "/readyz") == (503, {"ready": False, "status": "readonly"})
    with srv.connect() as conn:
        assert conn.request(b"status") == b"READONLY\r\n"
    for bad in (b'{"status": "down"}', b"not json", b"[1]"):
        code, err = call_json(srv, "/api/status", method="POST", body=bad, token=TOKEN)
        assert code == 400 and "status" in err["error"]


def test_bad_names_paths_and_methods_are_json_errors(srv: ServerProcess) -> None:
    assert call_json(srv, "/api/queues/a%20b") == (400, {"error": "bad queue name"})
    assert call_json(srv, "/api/queues/a%2Fb/peek") == (400, {"error": "bad queue name"})
    assert call_json(srv, "/api/nothing") == (404, {"error": "not found"})
    assert call_json(srv, "/api/queues", method="POST") == (405, {"error": "method not allowed"})
    assert call(srv, "/api/queues", method="POST")[1]["Allow"] == "GET"
    code, err = call_json(srv, "/api/queues/jobs/peek?n=" + "9" * 5000)
    assert code == 400 and "n must be" in err["error"]
    assert call_json(srv, "/api/queues/" + "x" * 251) == (400, {"error": "bad queue name"})


def test_cross_site_pages_get_no_cors_permission_and_foreign_hosts_no_answer(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory('[server]\nhttp_peers = ["10.1.2.3:2223"]\n', http=True)
    own = srv.http_url()
    for origin, allowed in (
        (own, True),
        ("http://10.1.2.3:2223", True),
        ("http://localhost:1", True),  # another server's dashboard on this machine
        ("http://evil.example", False),
        ("http://10.9.9.9:2223", False),
    ):
        _code, headers, _body = call(srv, "/api/queues", headers={"Origin": origin})
        assert headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)
    code, headers, _body = call(srv, "/api/queues", method="OPTIONS", headers={"Origin": own})
    assert code == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
    # DNS rebinding: a hostile name resolving to 127.0.0.1 reaches a loopback listener
    code, err = call_json(srv, "/api/queues", headers={"Host": "evil.example"})
    assert code == 421 and "loopback" in err["error"]
    assert call_json(srv, "/api/queues", headers={"Host": "localhost"})[0] == 200


def test_head_never_runs_a_mutation_and_big_bodies_are_refused(srv: ServerProcess) -> None:
    code, _headers, _body = call(srv, "/shutdown", method="HEAD", token=TOKEN)
    assert code == 405 and srv.running
    assert call(srv, "/api/queues", method="HEAD")[0] == 200
    huge = b"{" + b" " * (65 * 1024) + b"}"
    code, err = call_json(srv, "/api/status", method="POST", body=huge, token=TOKEN)
    assert code == 413 and "body" in err["error"]
    nested = b"[" * 100_000 + b"]" * 100_000
    assert call_json(srv, "/api/status", method="POST", body=nested[:60_000], token=TOKEN)[0] == 400
    with srv.connect() as conn:
        assert conn.request(b"status") == b"UP\r\n"


def test_queue_names_are_latin1_bytes_as_on_the_memcache_port(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory(WITH_TOKEN, http=True)
    with srv.connect() as conn:
        assert conn.set(b"caf\xe9", b"x") == b"STORED\r\n"
    code, queue = call_json(srv, "/api/queues/caf%E9")
    assert code == 200 and queue["name"] == "caf\u00e9" and queue["items"] == 1
    assert call_json(srv, "/api/queues/caf%E9/flush", method="POST", token=TOKEN)[0] == 200
    with srv.connect() as conn:
        assert conn.get(b"caf\xe9") is None


def test_unknown_queues_are_404_for_every_verb(srv: ServerProcess) -> None:
    for method, path in (("POST", "/api/queues/nope/flush"), ("DELETE", "/api/queues/nope")):
        assert call_json(srv, path, method=method, token=TOKEN) == (
            404,
            {"error": "no queue 'nope'"},
        )


def test_flush_all_and_delete_are_durable_when_answered(srv: ServerProcess) -> None:
    assert call_json(srv, "/api/queues/other", method="DELETE", token=TOKEN)[0] == 200
    assert call_json(srv, "/api/flush_all", method="POST", token=TOKEN) == (
        200,
        {"flushed_all": True},
    )
    srv.kill9()
    srv.start()
    with srv.connect() as conn:
        stats = conn.stats()
        assert stats["queue_jobs_items"] == "0"
        assert "queue_other_items" not in stats


def test_no_token_configured_refuses_every_mutation(server_factory: ServerFactory) -> None:
    srv = server_factory("", http=True)
    with srv.connect() as conn:
        assert conn.set("q", b"x") == b"STORED\r\n"
    status_body = json.dumps({"status": "readonly"}).encode()
    for method, path, body in (
        ("POST", "/api/queues/q/flush", None),
        ("DELETE", "/api/queues/q", None),
        ("POST", "/api/flush_all", None),
        ("POST", "/api/status", status_body),
        ("POST", "/reload", None),
        ("POST", "/shutdown", None),
    ):
        code, err = call_json(srv, path, method=method, token="anything", body=body)
        assert code == 403 and "admin_token" in err["error"], (path, code, err)
    assert srv.running
    with srv.connect() as conn:
        assert conn.stats()["queue_q_items"] == "1"
        assert conn.request(b"status") == b"UP\r\n"


# ----------------------------------------------------------------- the listener


def listening_sockets(pid: int) -> int:
    """How many TCP sockets process ``pid`` listens on (its fds against /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening += 1
    return listening


def test_http_off_listens_on_the_memcache_port_only(server_factory: ServerFactory) -> None:
    off = server_factory("")
    assert listening_sockets(off.pid) == 1
    assert "http listening" not in off.log()
    on = server_factory("", http=True)
    assert listening_sockets(on.pid) == 2


def test_a_busy_http_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_kestrelpy(*serve_argv((), tmp_path / "d", http=f"{HOST}:{port}"))
    assert_one_line_user_error(result, str(port))
