"""At-exit processing in a detached child process: ``kestrelpy router run``.

A web request (or any short process) sends messages and leaves; the interface's
``send.on_exit`` says what to do with them afterwards, without making that process wait:
``flush`` moves a send buffer on to the real backend, ``consume`` delivers the messages,
``all`` does both. The child gets the interfaces' config in a private temporary file (it
deletes it once read), works through at most ``message_limit`` messages, and starts
another run of itself (``retrigger``) while messages remain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kestrelpy.router.router import Router


def start_run(
    sources: Mapping[str, Mapping[str, Any]], interface: str, queues: Sequence[str]
) -> None:
    """Start ``kestrelpy router run`` for ``interface`` and ``queues``, detached (its own
    session, no stdin or stdout; errors go to this process's stderr) so it outlives this
    process. Raises TypeError (nothing written, nothing started) when a config is not
    JSON: a Python callable where the child needs ``"module:function"``."""
    start_run_json(json.dumps(dict(sources)), interface, queues)


def start_run_json(sources_json: str, interface: str, queues: Sequence[str]) -> None:
    """:func:`start_run` with the configs already written as JSON. The file holds secrets
    (tokens, passcodes): it is private (mode 0600) and removed again if the child cannot
    be started; the child removes it once read."""
    handle, path = tempfile.mkstemp(prefix="kestrelpy-router-", suffix=".json")
    started = False
    try:
        with os.fdopen(handle, "w") as file:
            file.write(sources_json)
        argv = [sys.executable, "-m", "kestrelpy", "router", "run", "--interface", interface]
        argv += ["--config-json", path, "--delete-config"]
        for queue in queues:
            argv += ["--queue", queue]
        _detached(argv)
        started = True
    finally:
        if not started:
            Path(path).unlink(missing_ok=True)


def start_run_from_file(config: Path, interface: str, queues: Sequence[str]) -> None:
    """Another run from the same TOML file (a retrigger of a run started by hand)."""
    argv = [sys.executable, "-m", "kestrelpy", "router", "run", "--interface", interface]
    argv += ["--config", str(config)]
    for queue in queues:
        argv += ["--queue", queue]
    _detached(argv)


def _detached(argv: list[str]) -> None:
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None,  # this process's stderr (its log): a failed run must be seen somewhere
        start_new_session=True,
        close_fds=True,
    )


def load_sources(path: Path, *, delete: bool) -> dict[str, dict[str, Any]]:
    try:
        with open(path) as file:
            sources: dict[str, dict[str, Any]] = json.load(file)
    finally:
        if delete:
            path.unlink(missing_ok=True)
    return sources


def run(router: Router, interface_name: str, queues: Sequence[str], mode: str) -> tuple[int, bool]:
    """One run: flush and/or consume ``queues`` of the interface, at most ``message_limit``
    messages in all. Returns (messages handled, whether the limit stopped it early)."""
    interface = router.interface_named(interface_name)
    limit = interface.send.message_limit
    done = 0
    for queue in queues:
        for step in ("flush", "consume"):
            if mode not in (step, "all"):
                continue
            if step == "consume" and interface.delivery.app_fetch:
                continue  # the application takes these itself
            left = None if limit is None else limit - done
            if left == 0:
                return done, True
            if step == "flush":
                done += router.flush(queue, left, interface=interface_name)
            else:
                done += router.consume(queue, left, interface=interface_name)
    return done, limit is not None and done >= limit
