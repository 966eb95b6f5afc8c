"""celery_bench: Celery tasks per second with kestrelpy as the broker, against Redis.

The same worker settings for both brokers: ``celery worker -P prefork -c 2``, prefetch
multiplier 4 (Celery's default), ``task_acks_late`` (the reliable mode docs/celery.md
recommends: an ack closes the open item), no result backend, no gossip, mingle or
heartbeats. Per round and broker: ``--tasks`` no-op tasks are sent first, then a worker is
started; each task appends its ``time.monotonic()`` (one clock for every process) to a file,
and the rate is tasks over the time from the first run to the last, so neither the sending
nor the worker's start-up counts. The worker is then stopped.

Redis is Debian's ``redis-server``, started here as a child on a free port with a temporary
directory (loadtest/_servers.py's ``redis_server``), pinned to the kestrelpy server's CPUs
(``--server-pid``); by default without persistence, Redis at its fastest, so the ratio is
against the hardest peer (``--redis-persistence always``: its AOF fsynced on every write).
kestrelpy is the server ``--server`` names, started by loadtest/bench.py with the sync
policy of its column. The brokers alternate within each round, the order reversed every
other round, and the ratio is the median of the per-round ratios (kestrelpy / Redis). The
issue's goal: at least 0.8.

The check: every task ran exactly once in every run (none lost, none twice).

This module is also the Celery app the workers run (``celery -A loadtest.celery_bench``):
the broker URL and the output file come from the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest._cli import (
    base_parser,
    base_report,
    header_line,
    positive_int,
    prepare,
    problems_check,
    run_tool,
)
from loadtest._report import table
from loadtest._servers import HOST, REDIS_PERSISTENCE, ServerError, redis_server, subprocess_env

ROOT = Path(__file__).resolve().parent.parent
LINE_BYTES = 24  # one task's line: a monotonic time, fixed width
WORKER_READY_S = 60.0
RUN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
WORKER_ARGS = ("-P", "prefork", "-c", "2", "--without-gossip", "--without-mingle")
WORKER_ARGS += ("--without-heartbeat", "-l", "warning")
PREFETCH_MULTIPLIER = 4

# -- the Celery app the workers run ------------------------------------------------------------

app: Any = None
if os.environ.get("CELERY_BENCH_BROKER"):
    from celery import Celery

    import kestrelpy.kombu  # noqa: F401  (registers kestrelpy://)

    app = Celery("celery_bench", broker=os.environ["CELERY_BENCH_BROKER"])
    app.conf.update(
        task_acks_late=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        task_default_queue=os.environ.get("CELERY_BENCH_QUEUE", "celery_bench"),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="celery_bench.noop")
    def noop() -> None:
        """Append this run's time: O_APPEND writes of one short line do not interleave."""
        line = f"{time.monotonic():<{LINE_BYTES - 1}.6f}\n".encode()
        fd = os.open(os.environ["CELERY_BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


# -- the runs ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One broker in one round."""

    broker: str
    tasks: int
    seconds: float  # first task's run to the last's
    ran: int  # lines written: tasks run, duplicates included

    @property
    def tasks_per_s(self) -> float:
        return (self.tasks - 1) / self.seconds if self.seconds > 0 else 0.0


def send_tasks(url: str, queue: str, count: int) -> None:
    """``count`` noop tasks on ``queue``, sent by this process (not timed)."""
    env = _app_env(url, queue, os.devnull)
    code = (
        "import sys\n"
        "from loadtest.celery_bench import app\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    app.send_task('celery_bench.noop')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(count)],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def _app_env(url: str, queue: str, out: str) -> dict[str, str]:
    env = subprocess_env()
    env.update(CELERY_BENCH_BROKER=url, CELERY_BENCH_QUEUE=queue, CELERY_BENCH_OUT=out)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def run_worker(name: str, url: str, queue: str, tasks: int, out: Path) -> Run:
    """Start a worker on ``queue``, wait (polling the output file's size, with a deadline)
    until ``tasks`` lines are there, stop it; the rate from the lines' times."""
    env = _app_env(url, queue, str(out))
    celery = str(Path(sys.executable).with_name("celery"))
    argv = [celery, "-A", "loadtest.celery_bench", "worker", "-Q", queue, *WORKER_ARGS]
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True)
    drain.start()
    try:
        _wait_for_lines(out, tasks, proc)
    except RuntimeError as err:
        tail = b"".join(errors[-5:]).decode("utf-8", "replace").strip()
        raise RuntimeError(f"{name}: {err}: {tail or 'no output'}") from None
    finally:
        # cold shutdown: the run is measured; a last ack lost with it leaves an item on
        # this round's queue, which nothing reads again
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
        drain.join(STOP_TIMEOUT_S)
    times = sorted(float(line) for line in out.read_text().split())
    return Run(name, tasks, times[-1] - times[0], len(times))


def _wait_for_lines(out: Path, tasks: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WORKER_READY_S + RUN_TIMEOUT_S
    while not out.exists() or out.stat().st_size < tasks * LINE_BYTES:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tasks} tasks not done within {deadline:g} s")
        time.sleep(0.01)  # a file's size has no event to wait on


def one_round(
    brokers: Sequence[tuple[str, str]], round_no: int, tasks: int, workdir: Path
) -> list[Run]:
    runs = []
    for name, url in brokers:
        queue = f"celery_bench_{name}_{round_no}"
        send_tasks(url, queue, tasks)
        out = workdir / f"{queue}.times"
        runs.append(run_worker(name, url, queue, tasks, out))
    return runs


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    info = prepare(args)
    if not info.is_queue:
        raise ValueError(f"celery_bench needs a kestrelpy server, not a {info.reason}")
    host, port = args.server
    server_cpus = os.sched_getaffinity(args.server_pid) if args.server_pid else None
    runs: dict[str, list[Run]] = {"kestrelpy": [], "redis": []}
    problems: list[str] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="celerybench-")))
        cpu = min(server_cpus) if server_cpus else None
        redis = redis_server(workdir, persistence=args.redis_persistence, cpu=cpu).start()
        stack.callback(redis.stop)
        brokers = [
            ("kestrelpy", f"kestrelpy://{host}:{port}//"),
            ("redis", f"redis://{HOST}:{redis.port}/0"),
        ]
        for round_no in range(args.rounds):
            order = brokers if round_no % 2 == 0 else brokers[::-1]
            for done in one_round(order, round_no, args.tasks, workdir):
                runs[done.broker].append(done)
                if done.ran != done.tasks:
                    problems.append(
                        f"{done.broker} round {round_no}: {done.ran} runs of {done.tasks}"
                    )
    report = _report(args, info, runs, problems)
    return report, _text(report)


def _report(
    args: argparse.Namespace, info: Any, runs: dict[str, list[Run]], problems: list[str]
) -> dict[str, Any]:
    ratios = [
        ours.tasks_per_s / theirs.tasks_per_s
        for ours, theirs in zip(runs["kestrelpy"], runs["redis"], strict=True)
        if theirs.tasks_per_s > 0
    ]
    ratio = round(statistics.median(ratios), 3) if ratios else None
    report = base_report("celery_bench", args, info)
    report.update(
        params={
            "rounds": args.rounds,
            "tasks": args.tasks,
            "worker": " ".join(WORKER_ARGS),
            "prefetch_multiplier": PREFETCH_MULTIPLIER,
            "acks_late": True,
            "redis_persistence": args.redis_persistence,
        },
        brokers={
            name: {
                "tasks_per_s": round(statistics.median(r.tasks_per_s for r in done), 1),
                "per_round": [round(r.tasks_per_s, 1) for r in done],
            }
            for name, done in runs.items()
            if done
        },
        ratio=ratio,
        per_round_ratios=[round(r, 3) for r in ratios],
        goal={"target": 0.8, "met": ratio is not None and ratio >= 0.8},
        check=problems_check(problems, "every task ran exactly once"),
        ok=not problems,
    )
    return report


def _text(report: dict[str, Any]) -> str:
    p = report["params"]
    rows = [
        [name, f"{b['tasks_per_s']:,.0f}", " ".join(f"{r:,.0f}" for r in b["per_round"])]
        for name, b in report["brokers"].items()
    ]
    ratio = report["ratio"]
    return "\n".join(
        [
            header_line(report),
            f"{p['rounds']} rounds x {p['tasks']:,} tasks per broker; worker {p['worker']}, "
            f"prefetch x{p['prefetch_multiplier']}, acks_late; Redis persistence "
            f"{p['redis_persistence']}",
            "",
            table(("broker", "tasks/s (median)", "per round"), rows),
            "",
            f"kestrelpy / redis: {ratio}x (goal >= 0.8: "
            f"{'met' if report['goal']['met'] else 'MISSED'})",
            f"check {'OK' if report['check']['ok'] else 'FAILED'}: {report['check']['note']}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("celery_bench", __doc__.split("\n")[0], "celery_bench", 120.0)
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (3)")
    parser.add_argument("--tasks", type=positive_int, default=2000, help="tasks per run (2000)")
    parser.add_argument(
        "--server-pid", type=int, default=0, help="pin Redis to this process's CPUs"
    )
    parser.add_argument(
        "--redis-persistence",
        choices=sorted(REDIS_PERSISTENCE),
        default="none",
        help="Redis without persistence (none, its fastest: the default) or with its AOF "
        "fsynced on every write (always)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_tool(build_parser(), run, argv)
    except ServerError as err:
        print(f"celery_bench: error: {err.summary()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
