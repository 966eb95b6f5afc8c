"""The optional compiled build: the hot path's modules compiled to C with mypyc.

pyproject.toml describes the package; this file only adds extension modules, and only when
``KESTRELPY_MYPYC=1`` is set (``make compiled``). Without it the install is pure Python, as
always. The modules are those a request goes through from the wire to the store (parser,
session, output, queues, group commit, storage); each compiled module keeps its ``.py``
twin in the install, and Python imports the compiled one. Compiled modules check types at
run time, so a value that does not match its annotation raises ``TypeError`` there:
``make test-compiled`` runs the server-level tests against such a build.
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED_MODULES = [
    "kestrelpy/blocked_read.py",
    "kestrelpy/commits/__init__.py",
    "kestrelpy/commits/batch.py",
    "kestrelpy/commits/gate.py",
    "kestrelpy/commits/lanes.py",
    "kestrelpy/commits/scheduler.py",
    "kestrelpy/commits/stats.py",
    "kestrelpy/handler.py",
    "kestrelpy/open_reads.py",
    "kestrelpy/output.py",
    "kestrelpy/payload.py",
    "kestrelpy/queues/__init__.py",
    "kestrelpy/queues/collection.py",
    "kestrelpy/queues/counters.py",
    "kestrelpy/queues/deadlines.py",
    "kestrelpy/queues/expiry.py",
    "kestrelpy/queues/item_store.py",
    "kestrelpy/queues/leases.py",
    "kestrelpy/queues/queue.py",
    "kestrelpy/queues/waiters.py",
    "kestrelpy/queues/window.py",
    "kestrelpy/replies.py",
    "kestrelpy/server.py",
    "kestrelpy/stats.py",
    "kestrelpy/storage/layout.py",
    "kestrelpy/storage/lmdb_store.py",
    "kestrelpy/store.py",
    "kestrelpy/wire/memcache.py",
]


def compiled_extensions() -> list[object]:
    """mypyc's extension modules when the compiled build was asked for, else none."""
    if os.environ.get("KESTRELPY_MYPYC") != "1":
        return []
    from mypyc.build import mypycify  # a build dependency of this build only

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=compiled_extensions())
