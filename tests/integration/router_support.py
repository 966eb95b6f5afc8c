"""Code that router messages and configs name by ``module:function``, for the router tests
(in-process and in the child processes they start). Kept out of any package so a child
imports it with this directory on its ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import sys
from os import getpid  # noqa: F401  imported, not defined here: never an invocation target
from pathlib import Path
from typing import Any

RECORD_ENV = "ROUTER_TEST_RECORD"  # a file: one JSON line per delivered message


def record(*args: Any, **kwargs: Any) -> None:
    """An allowed invocation target: appends its arguments to the record file."""
    _append({"args": list(args), "kwargs": kwargs})


def record_frame(frame: Any, config: dict[str, Any]) -> None:
    """A delivery callback: appends the frame's body and headers."""
    _append({"body": frame.body, "headers": frame.headers})


def fail(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("this job always fails")


def hold_then_block(frame: Any, config: dict[str, Any]) -> None:
    """A callback that says which message it holds (stdout line), then blocks on stdin:
    the test kills the process while the message is taken but not confirmed."""
    print(json.dumps(frame.body), flush=True)
    sys.stdin.readline()


def _append(entry: dict[str, Any]) -> None:
    path = Path(os.environ[RECORD_ENV])
    with path.open("a") as file:
        file.write(json.dumps(entry) + "\n")


def recorded(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
