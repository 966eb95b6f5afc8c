"""PHP's ``memcached`` extension (libmemcached) driving the server the way PHP workers do.

The producer and consumer scripts live in ``php/``. The consumer is a reliable-read loop:
``get("q/close/open/t=1000")`` confirms the previous job and opens the next, a failing job is
given back with ``get("q/abort")``, and a final ``get("q/close")`` confirms the last job.

PHP and the extension are test dependencies (the Makefile installs them): when they are
missing these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import wait_until

pytestmark = pytest.mark.timeout(90)

PHP_DIR = Path(__file__).parent / "php"
RUN_TIMEOUT_S = 45


@pytest.fixture(scope="module")
def php() -> list[str]:
    """The php command with the memcached extension loaded, or a failed test."""
    binary = shutil.which("php")
    if binary is None:
        pytest.fail("php CLI not found on PATH: install php-cli and php-memcached (make deps)")
    for argv in ([binary], [binary, "-d", "extension=memcached"]):
        probe = subprocess.run(
            [*argv, "-r", "echo class_exists('Memcached') ? 'yes' : 'no';"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.stdout.strip().endswith("yes"):
            return argv
    pytest.fail(
        "PHP's memcached extension is not available (php -m lacks 'memcached'): "
        "install php-memcached (make deps)"
    )


def run_php(php, script, *args, timeout=RUN_TIMEOUT_S):
    return subprocess.run(
        [*php, str(PHP_DIR / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_php(php, script, *args):
    return subprocess.Popen(
        [*php, str(PHP_DIR / script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, server):
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"php did not finish\n{out}\n{err}\n{server.log()}") from None
    return proc.returncode, out, err


def events(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_php_producer_and_reliable_consumer_with_aborts(server, php):
    queue = "php_jobs"
    count = 40
    fail_once = {3, 17, 30}

    # The consumer starts first, so its first reads block in the server until jobs arrive.
    consumer = start_php(php, "consumer.php", server.host, server.port, queue, count, 30)
    produced = run_php(
        php, "producer.php", server.host, server.port, queue, count, ",".join(map(str, fail_once))
    )
    assert produced.returncode == 0, f"{produced.stdout}\n{produced.stderr}\n{server.log()}"
    assert events(produced.stdout) == [{"event": "produced", "count": count}]

    code, out, err = finish(consumer, server)
    assert code == 0, f"consumer exited {code}\nstdout:\n{out}\nstderr:\n{err}\n{server.log()}"
    evs = [e for e in events(out) if e["event"] != "empty"]
    empties = [e for e in events(out) if e["event"] == "empty"]

    done = [e["id"] for e in evs if e["event"] == "done"]
    aborted = [e["id"] for e in evs if e["event"] == "abort"]
    assert done == list(range(count)), "each job exactly once, in FIFO order"
    assert sorted(aborted) == sorted(fail_once), "each fail-once job aborted exactly once"
    assert all(e["pad_ok"] for e in evs if e["event"] == "done"), "a body was mangled"
    # An aborted job goes back to the head: the very next delivery is the same job.
    for job_id in fail_once:
        i = evs.index({"event": "abort", "id": job_id})
        assert evs[i + 1]["event"] == "done" and evs[i + 1]["id"] == job_id, evs[i : i + 3]
    assert evs[-1] == {"event": "exit", "done": count}
    # Empty polls (before the producer ran) really waited for t=1000.
    assert all(e["ms"] >= 900 for e in empties), empties

    with server.connect() as conn:
        # A waiting get would also catch an item handed back by the consumer's disconnect.
        assert conn.get(queue + "/t=300") is None
        stats = conn.stats()
    assert stats[f"queue_{queue}_items"] == "0"
    assert stats[f"queue_{queue}_open_transactions"] == "0"


def test_php_crashed_worker_job_is_redelivered(server, php):
    queue = "php_crash"
    count = 6
    produced = run_php(php, "producer.php", server.host, server.port, queue, count, "")
    assert produced.returncode == 0, f"{produced.stdout}\n{produced.stderr}\n{server.log()}"

    # The first worker confirms two jobs, opens the third and dies holding it.
    code, out, err = finish(
        start_php(php, "consumer.php", server.host, server.port, queue, count, 20, 3), server
    )
    assert code == 3, f"consumer exited {code}\n{out}\n{err}"
    first = events(out)
    assert [e["id"] for e in first if e["event"] == "done"] == [0, 1]
    assert first[-1] == {"event": "die", "id": 2}

    # The server hands the job back when it sees the disconnect; wait for that, or a quick
    # second worker could be served job 3 first (docs/protocol.md §12).
    def released() -> bool:
        with server.connect() as conn:
            return conn.stats()[f"queue_{queue}_open_transactions"] == "0"

    wait_until(released, 10, "the dead worker's open job to be released", server)

    # The second worker gets the dead worker's job first, then the rest, once each.
    code, out, err = finish(
        start_php(php, "consumer.php", server.host, server.port, queue, count - 2, 20), server
    )
    assert code == 0, f"consumer exited {code}\n{out}\n{err}\n{server.log()}"
    second = [e["id"] for e in events(out) if e["event"] == "done"]
    assert second == [2, 3, 4, 5]
    with server.connect() as conn:
        assert conn.get(queue + "/t=300") is None


def test_php_default_compression_and_serializer_round_trip(shared_server, php, qname):
    """With preserve_flags, the extension's compression and serializer flags come back."""
    result = run_php(php, "roundtrip.php", shared_server.host, shared_server.port, qname)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{shared_server.log()}"
    assert events(result.stdout) == [
        {"big_ok": True, "array_ok": True, "int_ok": True, "empty_ok": True}
    ]
