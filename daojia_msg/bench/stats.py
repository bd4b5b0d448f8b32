# -*- test-case-name: tests.bench.test_bench -*-
"""Summary math of the benchmark: latency percentiles (numpy), rates, CPU shares.

Pure functions over plain numbers, so the parent can merge what the worker
processes sent and the tests can check the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: The percentiles every latency summary reports.
PERCENTILES = (50.0, 99.0, 99.9)
#: A generator process above this share of one core during the run may have
#: been the bottleneck rather than the node.
CPU_SUSPECT_PCT = 85.0


def latency_summary(samples_us: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """``count``, ``mean``, ``p50``, ``p99``, ``p99.9`` and ``max`` in milliseconds.

    ``samples_us`` are microseconds. An empty input gives ``count`` 0 and
    ``None`` everywhere else (never a made-up zero).
    """
    arr = np.asarray(samples_us, dtype=np.float64)
    if arr.size == 0:
        out: dict[str, Any] = {"count": 0, "mean_ms": None, "max_ms": None}
        for p in PERCENTILES:
            out[f"p{p:g}_ms"] = None
        return out
    values = np.percentile(arr, PERCENTILES)
    out = {"count": int(arr.size), "mean_ms": round(float(arr.mean()) / 1000.0, 3),
           "max_ms": round(float(arr.max()) / 1000.0, 3)}
    for p, v in zip(PERCENTILES, values, strict=True):
        out[f"p{p:g}_ms"] = round(float(v) / 1000.0, 3)
    return out


def rate(count: int, seconds: float) -> float | None:
    """``count / seconds`` rounded to 0.1, or ``None`` for an empty interval."""
    if seconds <= 0:
        return None
    return round(count / seconds, 1)


def window(reports: Iterable[dict[str, Any]], start: str = "t_start",
           end: str = "t_end") -> float:
    """The wall time from the earliest start to the latest end of several
    workers' reports (``time.monotonic`` is one clock for the whole machine)."""
    starts, ends = [], []
    for r in reports:
        if r.get(start) is not None and r.get(end) is not None:
            starts.append(r[start])
            ends.append(r[end])
    if not starts:
        return 0.0
    return max(ends) - min(starts)


def cpu_share(cpu_s: float, wall_s: float) -> float | None:
    """CPU seconds as a percentage of one core over ``wall_s``."""
    if wall_s <= 0:
        return None
    return round(100.0 * cpu_s / wall_s, 1)


def generator_verdict(procs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Whether the load generator may have been the bottleneck.

    ``procs`` are the workers' ``cpu`` reports (``cpu_pct`` per process). The
    verdict is "suspect" when any process used more than
    :data:`CPU_SUSPECT_PCT` of a core while the run lasted.
    """
    shares = [p["cpu_pct"] for p in procs if p.get("cpu_pct") is not None]
    top = max(shares) if shares else None
    return {
        "max_cpu_pct": top,
        "sum_cpu_pct": round(sum(shares), 1) if shares else None,
        "suspect": bool(top is not None and top > CPU_SUSPECT_PCT),
        "threshold_pct": CPU_SUSPECT_PCT,
    }


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (sums to ``total``)."""
    parts = max(1, parts)
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
