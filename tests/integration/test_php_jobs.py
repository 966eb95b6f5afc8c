"""Jobs across languages: PHP's ``memcached`` extension on one side, kestrelpy.jobs on the other.

The PHP side (``php/job_client.php``, ``job_producer.php``, ``job_consumer.php``) is a thin
job client of the kind PHP shops wrote for Kestrel: it JSON-encodes bodies itself with the
extension's compression off, wraps jobs as ``{instance, jobName, data}`` on an
``<env>_<queue>`` queue, and reads with ``get("<q>/close/open/t=500")`` and a final
``get("<q>/close")``. The Python side is the real CLI (``kestrelpy consume``,
``kestrelpy produce``) and ``kestrelpy.jobs.Producer``, against a real ``kestrelpy serve``.

Each test checks that every job arrives exactly once, decoded, in order, and that the queue
ends empty with nothing open; one checks that a body the extension compressed (its default
for large values) is dead-lettered by the Python worker as the bytes it read, neither lost
nor retried forever.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from kestrelpy.client import Client
from kestrelpy.jobs import Producer

from . import test_php
from .conftest import ServerProcess, kestrelpy_command, subprocess_env
from .test_php import events, run_php

php = test_php.php  # the fixture: the php command with the memcached extension loaded

pytestmark = pytest.mark.timeout(120)

ENV = "test"  # the environment prefix: jobs for queue q live on "test_q"
CLI_TIMEOUT_S = 60.0

# The job command of the Python worker: records the item it got on stdin and the
# KESTRELPY_* variables, one JSON line per run, appended to the file named in argv[1].
RECORDER = """
import json, os, sys
record = {
    "stdin": json.loads(sys.stdin.read()),
    "env": {k: v for k, v in os.environ.items() if k.startswith("KESTRELPY_")},
}
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\\n")
"""


def kestrelpy(*args: object, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``kestrelpy ARGS`` to its end, ``stdin`` fed in; still running after CLI_TIMEOUT_S
    fails the test."""
    argv = [*kestrelpy_command(), *map(str, args)]
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            env=subprocess_env(),
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"{' '.join(argv)} still running after {CLI_TIMEOUT_S} s\n"
            f"stdout: {err.stdout!r}\nstderr: {err.stderr!r}"
        ) from None


def consume(server: ServerProcess, queue: str, jobs: int, record: Path) -> str:
    """``kestrelpy consume -m JOBS -d`` with RECORDER as the job command; its stdout."""
    done = kestrelpy(
        "consume",
        "-s",
        server.address,
        "-q",
        queue,
        "-e",
        ENV,
        "-m",
        jobs,
        "-d",
        "--",
        sys.executable,
        "-c",
        RECORDER,
        record,
    )
    assert done.returncode == 0, f"consume exited {done.returncode}\n{done.stderr}\n{server.log()}"
    return done.stdout


def recorded(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


def produce_php(php: list[str], server: ServerProcess, queue: str, *args: object) -> list[Any]:
    """Run job_producer.php; the ``put`` events, one per job, in order."""
    done = run_php(php, "job_producer.php", server.host, server.port, ENV, queue, *args)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log()}"
    evs = events(done.stdout)
    assert evs[-1]["event"] == "produced"
    return [e for e in evs if e["event"] == "put"]


def consume_php(php: list[str], server: ServerProcess, queue: str, jobs: int) -> list[Any]:
    """Run job_consumer.php until it has read ``jobs`` items; its ``job`` events, in order
    (an item it cannot read as a job fails the test)."""
    done = run_php(php, "job_consumer.php", server.host, server.port, ENV, queue, jobs, 30)
    assert done.returncode == 0, (
        f"php consumer exited {done.returncode}\n{done.stdout}\n{done.stderr}\n{server.log()}"
    )
    evs = events(done.stdout)
    assert not [e for e in evs if e["event"] == "invalid"], f"PHP could not read them: {evs}"
    assert evs[-1] == {"event": "exit", "jobs": jobs}, evs
    return [e for e in evs if e["event"] == "job"]


def assert_drained(server: ServerProcess, queue: str) -> None:
    """Nothing left in ``queue``, nothing open on it, and no dead letters."""
    with server.connect() as conn:
        stats = conn.stats()
    assert stats[f"queue_{queue}_items"] == "0", stats
    assert stats[f"queue_{queue}_open_transactions"] == "0", stats
    assert stats.get(f"queue_{queue}_errors_items", "0") == "0", stats


def php_job_seen_by_python(job: dict[str, Any], queue: str) -> dict[str, Any]:
    """What the worker's command should get for a job PHP put: the item as it is (PHP's
    ``jobName`` spelling included) and the variables naming it."""
    env = {
        "KESTRELPY_JOB_NAME": job["jobName"],
        "KESTRELPY_QUEUE": f"{ENV}_{queue}",
        "KESTRELPY_ATTEMPT": "0",
        "KESTRELPY_INSTANCE": job["instance"],
    }
    return {"stdin": job, "env": env}


def as_seen(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with KESTRELPY_JOB checked against stdin and dropped, for comparison."""
    seen = []
    for record in records:
        env = dict(record["env"])
        assert json.loads(env.pop("KESTRELPY_JOB")) == record["stdin"], record
        seen.append({"stdin": record["stdin"], "env": env})
    return seen


def test_php_producer_feeds_the_python_worker(
    shared_server: ServerProcess, php: list[str], qname: str, tmp_path: Path
) -> None:
    count = 12
    puts = produce_php(php, shared_server, qname, count)
    assert len(puts) == count and not any(p["compressed"] for p in puts)

    record = tmp_path / "jobs.jsonl"
    out = consume(shared_server, qname, count, record)

    expected = [php_job_seen_by_python(p["job"], qname) for p in puts]
    assert as_seen(recorded(record)) == expected, "each job once, in order, as PHP sent it"
    assert len(out.splitlines()) == count and all(": ok in " in line for line in out.splitlines())
    assert_drained(shared_server, f"{ENV}_{qname}")


def test_kestrelpy_produce_feeds_the_php_consumer(
    shared_server: ServerProcess, php: list[str], qname: str
) -> None:
    datas = [
        {"id": 0, "size": [640, 480], "name": "photo-\u00e9t\u00e9.jpg"},
        "a plain string",
        [1, 2, 3],
        42,
        None,  # no data: the envelope leaves the key out, PHP reads null
        {"id": 5, "pad": "p" * 3000},
    ]
    stdin = "".join(json.dumps(data) + "\n\n" for data in datas)  # blank lines are skipped
    done = kestrelpy(
        "produce",
        "-s",
        shared_server.address,
        "-q",
        qname,
        "-e",
        ENV,
        "--job",
        "Resize",
        "--instance",
        "dev",
        "-",
        stdin=stdin,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{shared_server.log()}"

    jobs = consume_php(php, shared_server, qname, len(datas))
    assert jobs == [
        {"event": "job", "job_name": "Resize", "instance": "dev", "data": data, "attempts": 0}
        for data in datas
    ]
    assert_drained(shared_server, f"{ENV}_{qname}")


def test_python_producer_feeds_the_php_consumer(
    shared_server: ServerProcess, php: list[str], qname: str
) -> None:
    with Client(shared_server.address) as client:
        producer = Producer(client, env=ENV, instance="web-1")
        producer.enqueue(qname, "Email", {"to": "a@example.com", "ratio": 0.5})
        producer.enqueue(qname, "Ping")
        producer.enqueue(qname, "Email", {"to": "b@example.com"}, instance="web-2")
        assert producer.enqueue_many(qname, "Resize", [{"id": n} for n in range(5)]) == 5

    jobs = consume_php(php, shared_server, qname, 8)
    assert [(j["job_name"], j["instance"], j["data"]) for j in jobs] == [
        ("Email", "web-1", {"to": "a@example.com", "ratio": 0.5}),
        ("Ping", "web-1", None),
        ("Email", "web-2", {"to": "b@example.com"}),
        *(("Resize", "web-1", {"id": n}) for n in range(5)),
    ]
    assert all(j["attempts"] == 0 for j in jobs)
    assert_drained(shared_server, f"{ENV}_{qname}")


def test_a_compressed_php_job_is_dead_lettered_not_lost_or_retried(
    shared_server: ServerProcess, php: list[str], qname: str, tmp_path: Path
) -> None:
    """The extension compresses large values unless told not to, and marks that in the
    flags; the body is then zlib bytes, not JSON. The worker cannot decode it, so it must
    move it, as read, to ``<queue>_errors`` and carry on with the next job."""
    count, compressed_at = 5, 2
    puts = produce_php(php, shared_server, qname, count, compressed_at)
    assert [p["compressed"] for p in puts] == [n == compressed_at for n in range(count)]

    record = tmp_path / "jobs.jsonl"
    out = consume(shared_server, qname, count, record)  # max-jobs counts the dead letter too

    plain = [p for p in puts if not p["compressed"]]
    assert as_seen(recorded(record)) == [php_job_seen_by_python(p["job"], qname) for p in plain]
    queue = f"{ENV}_{qname}"
    undecodable = [line for line in out.splitlines() if "undecodable" in line]
    assert len(undecodable) == 1 and f"dead-lettered to {queue}_errors" in undecodable[0], out

    with shared_server.connect() as conn:
        letter = conn.get(f"{queue}_errors")
        assert letter is not None, f"no dead letter on {queue}_errors\n{out}"
        assert conn.get(f"{queue}_errors") is None, "one dead letter, not one per retry"
        stats = conn.stats()
    with pytest.raises(ValueError):
        json.loads(letter)  # what made it undecodable: it is not JSON
    # The extension's compressed form: the original length (4 bytes) then zlib. The dead
    # letter holds exactly the bytes PHP sent, so nothing of the job was lost.
    assert zlib.decompress(letter[4:]).decode() == puts[compressed_at]["body"]
    assert stats[f"queue_{queue}_items"] == "0", stats
    assert stats[f"queue_{queue}_open_transactions"] == "0", stats
