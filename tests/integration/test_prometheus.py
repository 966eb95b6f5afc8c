"""A real Prometheus scrapes a real server's /metrics; the series come back through its API.

Debian's ``prometheus`` (installed by ``make test``'s system deps) runs as a child on a
free loopback port with a scratch data dir, a 1 s scrape of the server's HTTP listener,
and the shipped alert rules (contrib/prometheus/alerts.yml), so a rule Prometheus cannot
load fails here too. It is stopped by its PID in a ``finally``. There is no event that
says "scraped": the query API is polled, with a deadline.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest._servers import free_port  # the repo root is on sys.path: conftest puts it

from .conftest import HOST, ROOT, Server, ServerFactory

CONTRIB = ROOT / "contrib" / "prometheus"
SCRAPED_WITHIN_S = 60.0  # first sample is queryable ~5-6 s after start; generous for CI
HTTP_TIMEOUT_S = 10.0
POLL_S = 0.25  # between two queries while waiting for a scrape
# Grafana's template variables, as plain PromQL, to run the dashboard's queries
DASHBOARD_VARIABLES = {"$instance": ".*", "$queue": ".*", "$__rate_interval": "1m"}


class Prometheus:
    """One Prometheus child process and its HTTP API."""

    def __init__(self, process: Server, port: int) -> None:
        self.process = process
        self.url = f"http://{HOST}:{port}"

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(
            f"{self.url}/api/v1/{path}?{query}", timeout=HTTP_TIMEOUT_S
        ) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        return answer["data"]

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/-/ready`` until 200 (bounded): Prometheus says nothing when it is."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=HTTP_TIMEOUT_S):
                    return
            except urllib.error.HTTPError as err:
                if err.code != 503 or time.monotonic() > deadline:
                    raise AssertionError(
                        f"prometheus not ready: {err}\n{self.process.log()}"
                    ) from None
            time.sleep(POLL_S)

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: each result series' ``queue`` label (or "") -> its value."""
        data = self.api("query", query=expr)
        return {row["metric"].get("queue", ""): float(row["value"][1]) for row in data["result"]}

    def wait_for(
        self, expr: str, done: Callable[[dict[str, float]], bool], timeout_s: float
    ) -> dict[str, float]:
        """Poll ``expr`` until ``done`` holds for its result; fails with the last result."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expr}: {result} after {timeout_s:g} s\nprometheus log:\n{self.process.log()}"
                )
            time.sleep(POLL_S)  # bounded poll: nothing signals a completed scrape


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """``start("127.0.0.1:PORT")``: Prometheus scraping that ``/metrics`` every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found on PATH: `make test` installs it (.ci/system-deps)")
    started: list[Server] = []

    def start(target: str) -> Prometheus:
        base = tmp_path / "prometheus"
        base.mkdir()
        config = base / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(CONTRIB / 'alerts.yml'))}]\n"
            "scrape_configs:\n"
            "  - job_name: kestrelpy\n"
            "    metrics_path: /metrics\n"
            f"    static_configs: [{{targets: [{json.dumps(target)}]}}]\n",
            encoding="utf-8",
        )
        port = free_port()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address={HOST}:{port}",
        ]
        process = Server(argv, name="prometheus", port=port, cwd=base)
        started.append(process)
        process.start()  # accepting on its port; its API answers 503 until the TSDB is open
        prometheus = Prometheus(process, port)
        prometheus.wait_ready(SCRAPED_WITHIN_S)
        return prometheus

    try:
        yield start
    finally:
        for process in started:
            if process.running:
                process.stop()  # SIGTERM to its PID; SIGKILL after the stop timeout


def test_prometheus_reads_back_the_queue_series(
    server_factory: ServerFactory, prometheus: Callable[[str], Prometheus]
) -> None:
    srv = server_factory(http=True)
    with srv.connect() as conn:
        for data in (b"one", b"two", b"three"):
            assert conn.set("jobs", data) == b"STORED\r\n"
        assert conn.set("other", b"x") == b"STORED\r\n"
        assert conn.get("other") == b"x"
    prom = prometheus(srv.http_url().removeprefix("http://"))

    items = prom.wait_for(
        'kestrelpy_queue_items{job="kestrelpy"}', lambda r: "jobs" in r, SCRAPED_WITHIN_S
    )
    assert items == {"jobs": 3.0, "other": 0.0}
    assert prom.query('up{job="kestrelpy"}') == {"": 1.0}
    hits = prom.query('kestrelpy_queue_gets_total{result="hit"}')
    assert hits == {"jobs": 0.0, "other": 1.0}
    assert prom.query("kestrelpy_commit_duration_seconds_count")[""] >= 1

    rules = prom.api("rules")["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"KestrelpyDown", "KestrelpyOldestItemTooOld"} <= loaded


def test_the_dashboard_queries_run(
    server_factory: ServerFactory, prometheus: Callable[[str], Prometheus]
) -> None:
    srv = server_factory(http=True)
    with srv.connect() as conn:
        assert conn.set("jobs", b"x") == b"STORED\r\n"
    prom = prometheus(srv.http_url().removeprefix("http://"))
    prom.wait_for("kestrelpy_queue_items", lambda r: "jobs" in r, SCRAPED_WITHIN_S)
    dashboard = json.loads((CONTRIB / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    for expr in exprs:
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        prom.api("query", query=expr)  # a PromQL error is status "error" (HTTP 400)
