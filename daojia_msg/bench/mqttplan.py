# -*- test-case-name: tests.bench.test_mqttplan -*-
"""The Mosquitto baseline's plan (:class:`Plan`, checked by :func:`make_plan`), how it
is dealt over processes, and the figures its results are summed up into."""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Payload header: publish time (``time.monotonic_ns()``) and per-pair sequence.
HEADER = struct.Struct("<qI")
MIN_PAYLOAD = HEADER.size
#: msgplatform's C2C content limit (docs/protocol.md §6.3); kept the same here.
MAX_PAYLOAD = 65_000
#: A process may hold at most 20,000 open files on the test machine (keep a margin),
#: ~28,000 ephemeral ports per source address and destination.
MAX_SOCKETS_PER_PROC = 19_000
PORTS_PER_SOURCE = 28_000


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    pairs: int
    payload_size: int
    duration: float
    rate: float  # total msgs/s; 0 = closed loop
    window: int
    procs: int
    count: int | None = None  # total messages (smoke tests); None = timed run
    run_id: str = ""
    bind_addresses: tuple[str, ...] = ()
    connect_timeout: float = 30.0
    drain: float = 5.0
    keepalive: int = 60
    nodelay: bool = True
    release: str = "result"  # closed loop: "result" (PUBACK) or "delivery" (PUBACK + push)

    @property
    def mode(self) -> str:
        if self.count is not None:
            return "count"
        return "open" if self.rate > 0 else "closed"


def make_plan(
    host: str,
    port: int,
    pairs: int,
    payload_size: int,
    duration: float,
    rate: float,
    window: int,
    procs: int,
    *,
    count: int | None = None,
    run_id: str | None = None,
    bind_addresses: tuple[str, ...] | list[str] = (),
    connect_timeout: float = 30.0,
    drain: float = 5.0,
    nodelay: bool = True,
    release: str = "result",
) -> Plan:
    """Check the arguments and return a :class:`Plan`; ``ValueError`` if bad."""
    if not host:
        raise ValueError("host is empty")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    if not MIN_PAYLOAD <= payload_size <= MAX_PAYLOAD:
        raise ValueError(
            f"payload_size must be {MIN_PAYLOAD}..{MAX_PAYLOAD} bytes "
            f"(the first {MIN_PAYLOAD} carry the publish time), not {payload_size}"
        )
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError("duration must be a positive number of seconds")
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError("rate must be >= 0 (0 = closed loop)")
    if window < 1:
        raise ValueError("window must be at least 1")
    if procs < 1:
        raise ValueError("procs must be at least 1")
    if procs > pairs:
        raise ValueError(f"procs ({procs}) must not exceed pairs ({pairs})")
    if release not in ("result", "delivery"):
        raise ValueError(f"release must be 'result' or 'delivery', not {release!r}")
    if count is not None and count < 1:
        raise ValueError("count must be at least 1")
    per_proc = 2 * math.ceil(pairs / procs)
    if per_proc > MAX_SOCKETS_PER_PROC:
        raise ValueError(
            f"{per_proc} connections in one process exceeds the {MAX_SOCKETS_PER_PROC} "
            "open-file budget: use more --procs"
        )
    sources = max(1, len(bind_addresses))
    if 2 * pairs > PORTS_PER_SOURCE * sources:
        raise ValueError(
            f"{2 * pairs} connections need more than {sources} source address(es) "
            f"(~{PORTS_PER_SOURCE} ephemeral ports each): add --bind 127.0.0.x"
        )
    return Plan(
        host=host,
        port=port,
        pairs=pairs,
        payload_size=payload_size,
        duration=float(duration),
        rate=float(rate),
        window=window,
        procs=procs,
        count=count,
        run_id=run_id or uuid.uuid4().hex[:8],
        bind_addresses=tuple(bind_addresses),
        connect_timeout=connect_timeout,
        drain=drain,
        nodelay=nodelay,
        release=release,
    )


def split_pairs(pairs: int, procs: int) -> list[list[int]]:
    """Deal pair indexes round-robin over the processes."""
    return [list(range(k, pairs, procs)) for k in range(procs)]


def split_count(count: int, pairs: int) -> list[int]:
    """Messages per pair so that they add up to ``count``."""
    base, extra = divmod(count, pairs)
    return [base + (1 if i < extra else 0) for i in range(pairs)]


def summarize(
    latencies_ns: list[np.ndarray],
    *,
    duration: float,
    delivered_in_window: int,
) -> dict[str, Any]:
    """Throughput and latency percentiles (ms, numpy's default linear method).

    ``None`` for the percentiles when nothing was delivered.
    """
    lat = np.concatenate(latencies_ns) if latencies_ns else np.empty(0, dtype=np.int64)
    out: dict[str, Any] = {
        "throughput": delivered_in_window / duration if duration > 0 else 0.0,
        "samples": int(lat.size),
    }
    if lat.size:
        ms = lat.astype(np.float64) / 1e6
        p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
        out.update(
            p50_ms=float(p50),
            p99_ms=float(p99),
            p999_ms=float(p999),
            mean_ms=float(ms.mean()),
            max_ms=float(ms.max()),
        )
    else:
        out.update(p50_ms=None, p99_ms=None, p999_ms=None, mean_ms=None, max_ms=None)
    return out


def cpu_entry(proc: int, pairs: int, user: float, system: float, window: float) -> dict[str, Any]:
    """One process's CPU over the measuring window; ``busy`` 1.0 = a full core."""
    cpu = user + system
    return {
        "proc": proc,
        "pairs": pairs,
        "user_s": round(user, 3),
        "sys_s": round(system, 3),
        "cpu_s": round(cpu, 3),
        "busy": round(cpu / window, 3) if window > 0 else None,
    }
