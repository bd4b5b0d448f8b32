# -*- test-case-name: tests.bench.test_procfs -*-
"""What ``/proc`` says of processes and of the machine: RSS, CPU seconds, busy cores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def proc_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (``/proc/<pid>/status``), or ``None``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def procs_rss_kib(pids: Sequence[int]) -> int | None:
    """The VmRSS of ``pids`` added up (several nodes), or ``None`` if one is gone."""
    values = [proc_rss_kib(pid) for pid in pids]
    return None if None in values else sum(v for v in values if v is not None)


def procs_cpu_s(pids: Sequence[int]) -> float | None:
    """The CPU seconds of ``pids`` added up, or ``None`` if one is gone."""
    values = [proc_cpu_s(pid) for pid in pids]
    return None if None in values else sum(v for v in values if v is not None)


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (``/proc/<pid>/stat``), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def find_pid(name: str) -> int | None:
    """The first process whose comm is ``name`` (e.g. ``mosquitto``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        return int(entry)
            except OSError:
                continue
    return None


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """utime+stime of every process now: {pid: (comm, seconds)}."""
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[int(entry)] = (comm, (int(fields[11]) + int(fields[12])) / tck)
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return float(total - idle), float(total)


def others_cpu(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    exclude: set[int],
    window: float,
    min_s: float = 0.05,
) -> list[dict[str, Any]]:
    """Other processes that used at least ``min_s`` CPU seconds in the window
    (those that ended inside the window are not seen)."""
    out = []
    for pid, (comm, t1) in after.items():
        if pid in exclude:
            continue
        d = t1 - before[pid][1] if pid in before else t1  # started in the window
        if d >= min_s:
            out.append({"pid": pid, "comm": comm, "cpu_s": round(d, 2),
                        "busy": round(d / window, 3) if window > 0 else None})
    return sorted(out, key=lambda e: -e["cpu_s"])
