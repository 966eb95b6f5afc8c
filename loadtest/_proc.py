"""Linux process facts for reports: memory and CPU of a server process, disk usage, pinning.

The server under test is another process, so everything is read from /proc by pid; no
cooperation from the server is needed and memcached, Kestrel and kestrelpy are measured alike.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of ``pid`` in bytes (absent fields are omitted).

    RssAnon is what a queue server cannot give back to the page cache: LMDB's mapped pages
    show in RssFile, a Python deque of items shows in RssAnon.
    """
    wanted = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "rss_peak"}
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in wanted:
                found[wanted[name]] = int(rest.split()[0]) * 1024  # the kernel reports kB
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        text = stat.read()
    # The command name (field 2) may contain spaces and parentheses; fields after the last ')'
    # start at field 3, so utime/stime (fields 14/15) are at offsets 11/12.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def dir_usage(path: str | os.PathLike[str]) -> dict[str, int]:
    """Disk usage of a directory tree: allocated bytes (as ``du``) and apparent size.

    Both matter for LMDB: its map file is sparse, so the apparent size says little and the
    allocated size is what fills the disk.
    """
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # a server may rotate files while we walk
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return {"allocated": allocated, "apparent": apparent}


def parse_cpus(spec: str) -> set[int]:
    """CPU list syntax as taskset: ``1``, ``0,2``, ``0-3``."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        cpus.update(range(int(low), int(high) + 1) if sep else (int(low),))
    if not cpus:
        raise ValueError(f"empty CPU list {spec!r}")
    return cpus


def pin(cpus: set[int] | None) -> None:
    """Pin the calling process (and children forked later) to ``cpus``; None = leave as is."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit).

    Returns the new soft limit, so callers can refuse to start rather than fail halfway.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"
