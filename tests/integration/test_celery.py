"""Celery on kestrelpy: real ``kestrelpy serve`` processes, real ``celery worker`` processes.

The workers run the app in tests/integration/celeryapp (its tasks leave one line per run
in ``runs.log``, which is how a test sees what ran and how often). The test process sends
tasks through a Celery app of its own on the same broker and reads results through the
rpc backend, which travels on kestrelpy too. A few kombu-level tests (fanout, acks out of
order, refusals) need no worker.

Workers run ``-P solo`` unless a test needs the prefork pool (whose acks come from another
thread), without gossip (a topic exchange: see docs/celery.md), mingle or heartbeats, which
only slow the start. Each worker is its own process group, so ``kill -9`` takes its pool
children with it, as a machine dying would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

import kestrelpy.kombu  # noqa: F401  (registers kestrelpy://)
from kestrelpy.kombu.names import BrokerURLError, UnmappableError
from kestrelpy.kombu.transport import UnroutableError
from loadtest._servers import free_port

from .conftest import ServerFactory, ServerProcess, drain, subprocess_env, wait_until
from .kombu_support import broker_url, publish

HERE = Path(__file__).resolve().parent
CELERY = str(Path(sys.executable).with_name("celery"))
READY_TIMEOUT_S = 30.0  # a cold worker imports Celery on a shared 2-core machine
RESULT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
QUIET_WORKER = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class Worker:
    """One ``celery worker`` child process; ready when it logs "ready."."""

    def __init__(self, url: str, trace_dir: Path, name: str, *args: str) -> None:
        env = subprocess_env()
        env.update(KESTRELPY_BROKER=url, KESTRELPY_TRACE_DIR=str(trace_dir))
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        argv = [CELERY, "-A", "celeryapp.tasks", "worker", "-n", f"{name}@%h", "-l", "info"]
        self.proc = subprocess.Popen(
            [*argv, *QUIET_WORKER, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=trace_dir,
            start_new_session=True,  # its own process group: kill -9 takes the pool too
        )
        self.lines: list[str] = []
        self._terminated = False
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self.proc.poll() is not None:
            self.kill9()
            raise AssertionError(f"worker {name} did not get ready\n{self.log()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if " ready." in line:
                self._ready.set()
        self._ready.set()  # EOF: it died; __init__ tells which

    def log(self) -> str:
        return "---- worker output ----\n" + "".join(self.lines[-60:])

    def kill9(self) -> None:
        """SIGKILL to the whole process group, as a machine or OOM killer would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the main process, which stops its pool).
        Once only: Celery restores the default handler while it shuts down, so a second
        SIGTERM would kill it (-15)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Warm shutdown, which must end in exit 0."""
        self.terminate()
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"worker still running after SIGTERM\n{self.log()}") from None
        self._reader.join(STOP_TIMEOUT_S)
        assert code == 0, f"worker exited {code}\n{self.log()}"


class Workers:
    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = trace_dir
        self.started: list[Worker] = []

    def __call__(self, server: ServerProcess | str, name: str = "w1", *args: str) -> Worker:
        """``server``: one server, or a broker URL."""
        url = server if isinstance(server, str) else broker_url(server)
        worker = Worker(url, self.trace_dir, name, *(args or ("-P", "solo")))
        self.started.append(worker)
        return worker

    def close(self) -> None:
        """Stop them all at once: each takes up to one 2 s wait of Celery's loop to see it."""
        running = [worker for worker in self.started if worker.proc.poll() is None]
        for worker in running:
            worker.terminate()
        for worker in running:
            worker.stop()


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    path = tmp_path / "trace"
    path.mkdir()
    return path


@pytest.fixture
def workers(trace_dir: Path) -> Iterator[Workers]:
    started = Workers(trace_dir)
    yield started
    started.close()


def sender(*servers: ServerProcess) -> Celery:
    """The test's own app on ``servers``: sends by task name, reads rpc results."""
    app = Celery("sender", broker=broker_url(*servers), backend="rpc://")
    app.conf.broker_connection_retry_on_startup = False
    return app


@pytest.fixture
def apps() -> Iterator[list[Celery]]:
    made: list[Celery] = []
    yield made
    for app in made:
        app.close()


def runs(trace_dir: Path) -> list[str]:
    path = trace_dir / "runs.log"
    return path.read_text().splitlines() if path.exists() else []


def queue_stat(server: ServerProcess, queue: str, key: str) -> int:
    with server.connect() as conn:
        return int(conn.stats().get(f"queue_{queue}_{key}", "0"))


# -- Celery workers ---------------------------------------------------------------------------


def test_tasks_run_on_two_servers_and_return_results_through_a_prefork_worker(
    server_factory: ServerFactory, workers: Workers, apps: list[Celery]
) -> None:
    """Tasks spread over both servers of the URL, the worker drains both, results come
    back over the rpc backend, and every ack (made by the prefork pool's result thread, in
    any order) closed its open item: nothing left waiting or open on either server."""
    servers = [server_factory(), server_factory()]
    worker = workers(broker_url(*servers), "w1", "-P", "prefork", "-c", "2")
    app = sender(*servers)
    apps.append(app)
    results = [app.send_task("celeryapp.tasks.add", args=(i, i)) for i in range(20)]
    assert [r.get(timeout=RESULT_TIMEOUT_S) for r in results] == [2 * i for i in range(20)]
    for srv in servers:
        assert queue_stat(srv, "celery", "total_items") > 0, "a server got no task"
        wait_until(
            lambda srv=srv: queue_stat(srv, "celery", "open_transactions") == 0,
            10,
            "every task's item closed",
            srv,
        )
        assert queue_stat(srv, "celery", "items") == 0, worker.log()


def test_worker_killed_mid_task_gives_it_to_the_next_worker(
    server: ServerProcess, workers: Workers, apps: list[Celery], trace_dir: Path
) -> None:
    token = uuid.uuid4().hex
    first = workers(server, "w1")
    app = sender(server)
    apps.append(app)
    result = app.send_task("celeryapp.tasks.hang_first_time", args=(token,))
    wait_until(lambda: f"hang {token}" in runs(trace_dir), 20, "the task to start", server)
    assert queue_stat(server, "celery", "open_transactions") == 1, first.log()
    first.kill9()
    workers(server, "w2")
    assert result.get(timeout=RESULT_TIMEOUT_S) == f"{token} redelivered"
    assert runs(trace_dir).count(f"hang {token}") == 2


def test_server_killed_between_delay_and_worker_start_loses_nothing(
    server_factory: ServerFactory, workers: Workers, apps: list[Celery], trace_dir: Path
) -> None:
    """Under sync = "always" a task is on disk once ``send_task`` returns."""
    server = server_factory('[server]\nsync = "always"\n')
    app = sender(server)
    apps.append(app)
    tokens = [uuid.uuid4().hex for _ in range(20)]
    for token in tokens:
        app.send_task("celeryapp.tasks.record", args=(token,), ignore_result=True)
    server.kill9()
    server.start()
    workers(server, "w1")
    wanted = {f"record {token}" for token in tokens}
    wait_until(lambda: wanted <= set(runs(trace_dir)), 30, "every task to run", server)
    assert sorted(runs(trace_dir)) == sorted(wanted), "a task ran twice"


def test_task_that_raises_is_retried_per_autoretry_for(
    server: ServerProcess, workers: Workers, apps: list[Celery], trace_dir: Path
) -> None:
    token = uuid.uuid4().hex
    workers(server, "w1")
    app = sender(server)
    apps.append(app)
    result = app.send_task("celeryapp.tasks.fail_twice", args=(token,))
    assert result.get(timeout=RESULT_TIMEOUT_S) == f"{token} after 3 runs"
    assert runs(trace_dir).count(f"fail {token}") == 3


def test_celery_inspect_ping_gets_every_workers_pong_while_they_are_busy(
    server: ServerProcess, workers: Workers, apps: list[Celery], trace_dir: Path
) -> None:
    """Remote control: a broadcast on the fanout exchange, replies on a direct one whose
    binding lives in the asking process (the servers' binding markers route them). The
    workers have a backlog longer than the ping's timeout: a worker that keeps reading
    its busy task queue must still look at its remote-control queue."""
    workers(server, "w1")
    workers(server, "w2")
    app = sender(server)
    apps.append(app)
    for _ in range(600):  # 12 s of work: 6 s per worker, longer than the ping takes
        app.send_task("celeryapp.tasks.pause", args=(20,), ignore_result=True)
    env = subprocess_env()
    env.update(KESTRELPY_BROKER=broker_url(server), KESTRELPY_TRACE_DIR=str(trace_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [CELERY, "-A", "celeryapp.tasks", "inspect", "ping", "--timeout", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("pong") == 2, done.stdout
    assert "w1@" in done.stdout and "w2@" in done.stdout


def test_a_worker_outlives_a_quiescent_server_and_runs_tasks_once_it_is_up(
    server: ServerProcess, workers: Workers, apps: list[Celery], trace_dir: Path
) -> None:
    """``SERVER_ERROR server is quiescent`` on the worker's reads is a connection error,
    which Celery retries by reconnecting; as a channel error it made the worker exit."""
    worker = workers(server, "w1")
    with server.connect() as admin:
        assert admin.request(b"status quiescent") == b"END\r\n"
    wait_until(
        lambda: any("quiescent" in line for line in worker.lines),
        20,
        "the worker to meet the refusal",
        server,
    )
    with server.connect() as admin:
        assert admin.request(b"status up") == b"END\r\n"
    app = sender(server)
    apps.append(app)
    token = uuid.uuid4().hex
    app.send_task("celeryapp.tasks.record", args=(token,), ignore_result=True)
    wait_until(lambda: f"record {token}" in runs(trace_dir), 30, "the task to run", server)
    assert worker.proc.poll() is None, worker.log()


# -- kombu, no worker ----------------------------------------------------------------------


def test_acks_out_of_order_close_the_right_items(server: ServerProcess) -> None:
    """With a prefetch of 4: ack the second, requeue the first, reject the fourth (dropped),
    ack the third. Only the first is back, and nothing stays open. Acks are immediate: the
    server shows the closes without another read."""
    url = broker_url(server)
    publish(url, "ooo", ({"n": i} for i in range(4)))
    with Connection(url) as conn:
        queue = conn.SimpleQueue("ooo")
        queue.consumer.qos(prefetch_count=4)
        got = [queue.get(timeout=5) for _ in range(4)]
        assert [m.payload["n"] for m in got] == [0, 1, 2, 3]
        assert queue_stat(server, "ooo", "open_transactions") == 4
        got[1].ack()
        got[0].requeue()
        got[3].reject()
        got[2].ack()
        assert queue_stat(server, "ooo", "open_transactions") == 0
        assert queue_stat(server, "ooo", "items") == 1
        again = queue.get(timeout=5)
        assert again.payload == {"n": 0}
        again.ack()
        queue.close()
    assert queue_stat(server, "ooo", "open_transactions") == 0
    assert queue_stat(server, "ooo", "items") == 0


def test_unacked_messages_go_back_when_the_connection_closes(server: ServerProcess) -> None:
    url = broker_url(server)
    with Connection(url) as conn:
        queue = conn.SimpleQueue("back")
        queue.put("a")
        queue.put("b")
        queue.consumer.qos(prefetch_count=2)
        assert queue.get(timeout=5).payload == "a"
        assert queue.get(timeout=5).payload == "b"
        queue.close()
    with Connection(url) as conn:
        queue = conn.SimpleQueue("back")
        first, second = queue.get(timeout=5), queue.get(timeout=5)
        assert [first.payload, second.payload] == ["a", "b"]
        first.ack()
        second.ack()
        queue.close()


def test_an_item_that_is_not_a_kombu_message_moves_to_the_errors_queue(
    server: ServerProcess,
) -> None:
    """Another producer's bytes can be neither delivered nor given back (they would come
    again forever): they go to ``<queue>_errors`` and the consumer reads on."""
    with server.connect() as raw:
        assert raw.set("mixed", b"not json") == b"STORED\r\n"
        assert raw.set("mixed", b"[1, 2]") == b"STORED\r\n"
    with Connection(broker_url(server)) as conn:
        queue = conn.SimpleQueue("mixed")
        queue.put({"ok": True})
        message = queue.get(timeout=5)
        assert message.payload == {"ok": True}
        message.ack()
        queue.close()
    with server.connect() as raw:
        assert drain(raw, "mixed_errors") == [b"not json", b"[1, 2]"]
        assert raw.stats()["queue_mixed_open_transactions"] == "0"


def test_fanout_exchange_copies_to_every_bound_queue(server: ServerProcess) -> None:
    url = broker_url(server)
    exchange = Exchange("news", type="fanout")
    with Connection(url) as a, Connection(url) as b, Connection(url) as producer:
        queue_a = a.SimpleQueue(Queue("reader-a", exchange))
        queue_b = b.SimpleQueue(Queue("reader-b", exchange))
        producer.Producer().publish({"x": 1}, exchange=exchange, declare=[exchange])
        for queue in (queue_a, queue_b):
            message = queue.get(timeout=5)
            assert message.payload == {"x": 1}
            message.ack()
            queue.close()
    assert queue_stat(server, "news", "items") == 0, "the parent's own copy stays"


def test_fanout_exchange_bound_only_in_another_process_is_found_on_the_servers(
    server: ServerProcess,
) -> None:
    """As Celery's Broadcast queues: the consumer declares the fanout exchange, the
    producer only names it."""
    url = broker_url(server)
    exchange = Exchange("bcast", type="fanout")
    with Connection(url) as consumer, Connection(url) as producer:
        queue = consumer.SimpleQueue(Queue("bcast.w1", exchange))
        producer.Producer().publish({"x": 2}, exchange="bcast", routing_key="bcast")
        message = queue.get(timeout=5)
        assert message.payload == {"x": 2}
        message.ack()
        queue.close()


def test_unroutable_and_unmappable_are_refused_not_dropped(server: ServerProcess) -> None:
    url = broker_url(server)
    with Connection(url) as conn:
        producer = conn.Producer()
        nobody = Exchange("nobody", type="direct")
        with pytest.raises(UnroutableError, match="no queue is bound"):
            producer.publish({"x": 1}, exchange=nobody, routing_key="k", declare=[nobody])
        headers = Exchange("hdrs", type="headers")
        with pytest.raises(UnmappableError, match="headers exchange 'hdrs' cannot be mapped"):
            producer.publish({"x": 1}, exchange=headers, declare=[headers])
        topic = Exchange("events", type="topic")
        with pytest.raises(UnmappableError, match="topic exchange 'events' cannot be mapped"):
            conn.SimpleQueue(Queue("watcher", topic, routing_key="task.#"))
        with pytest.raises(UnmappableError, match="topic exchange 'events' cannot be mapped"):
            producer.publish({"x": 1}, exchange=topic, routing_key="task.x", declare=[topic])


def test_unreachable_server_and_bad_urls_are_kombus_usual_errors() -> None:
    """``connect()`` raises one of the transport's ``connection_errors`` (what kombu callers
    catch), ``ensure_connection`` kombu's ``OperationalError``; a bad URL a ValueError."""
    closed = free_port()  # nothing listens there
    with Connection(f"kestrelpy://127.0.0.1:{closed}//") as conn:
        with pytest.raises(conn.connection_errors, match="Connection refused"):
            conn.connect()
        with pytest.raises(OperationalError, match="Connection refused"):
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    with pytest.raises(ValueError, match=r"could not be cast|invalid literal|port"):
        Connection("kestrelpy://127.0.0.1:notaport//").connect()
    with pytest.raises(BrokerURLError, match=re.escape("'127.0.0.1:notaport//'")):
        Connection(f"kestrelpy://127.0.0.1:{closed};127.0.0.1:notaport//").connect()
    app = Celery("unreachable", broker=f"kestrelpy://127.0.0.1:{closed}//")
    try:
        with pytest.raises(OperationalError):
            app.connection_for_write().ensure_connection(
                max_retries=1, interval_start=0, interval_step=0
            )
    finally:
        app.close()
