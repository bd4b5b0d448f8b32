# -*- test-case-name: tests.bench.test_bench -*-
"""Merging the workers' reports into one result, and printing it.

``summarize(scenario, ...)`` turns the workers' raw reports (counts, windows,
latency samples) into the ``results`` object of the JSON document; ``table``
prints any flat mapping as aligned text.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from daojia_msg.bench.stats import latency_summary, rate, window

#: Raw sample lists: merged into summaries, never printed or written as is.
SAMPLE_KEYS = ("latency_us", "push_latency_us", "refused_latency_us", "send_lag_us")
#: Goodput counts what was delivered within this many seconds of its intended
#: send time (``--goodput-within``): the rest came too late to count.
GOODPUT_WITHIN_S = 1.0
#: Open loop with ``backoff``: the ``errors`` key of a C2C refused by its
#: sender itself, without reaching the node, because it came during the
#: sender's pause after a RATE_LIMITED (as the client library does).
HELD_BACK = "held back"
#: The result codes (gate) and HTTP statuses that say "refused, try later":
#: RATE_LIMITED, UNAVAILABLE, and 429 / 503; and :data:`HELD_BACK`.
REFUSALS = ("code 6", "code 11", "http 429", "http 503", HELD_BACK)


def merge_counts(dicts: list[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _sum(reports: list[dict[str, Any]], key: str) -> int:
    return sum(int(r.get(key) or 0) for r in reports)


def _samples(reports: list[dict[str, Any]], key: str) -> list[int]:
    out: list[int] = []
    for r in reports:
        out.extend(r.get(key) or [])
    return out


def within(samples_us: list[int], seconds: float) -> int:
    """How many of ``samples_us`` are at most ``seconds``."""
    bound = seconds * 1e6
    return sum(1 for v in samples_us if v <= bound)


def overload_figures(res: dict[str, Any], reports: list[dict[str, Any]], good: int,
                     send_secs: float, goodput_within_s: float) -> None:
    """Goodput (what was delivered within ``goodput_within_s`` of its intended
    time, per second of the send window), refusals (the codes of
    :data:`REFUSALS` added up), how fast the refusals came, and how late the
    generator sent (``send_lag``, open loop: its own lateness, part of every
    latency it reports)."""
    res["goodput_within_s"] = goodput_within_s
    res["goodput_per_s"] = rate(good, send_secs)
    res["refused"] = sum(v for k, v in res["errors"].items() if k in REFUSALS)
    res["refused_per_s"] = rate(res["refused"], send_secs)
    res["refusal_latency"] = latency_summary(_samples(reports, "refused_latency_us"))
    lags = _samples(reports, "send_lag_us")
    if lags:
        res["send_lag"] = latency_summary(lags)


def summarize(scenario: str, setups: list[dict[str, Any]],
              reports: list[dict[str, Any]],
              goodput_within_s: float = GOODPUT_WITHIN_S) -> dict[str, Any]:
    """The ``results`` of a run from the workers' setup and run reports."""
    res: dict[str, Any] = {}
    failed = merge_counts([s.get("failed", {}) for s in setups]
                          + [r.get("failed", {}) for r in reports])
    if failed:
        res["login_failures"] = failed
    if scenario == "connect":
        res["logged_in"] = _sum(setups, "logged_in")
        secs = window(setups)
        res["login_phase_s"] = round(secs, 3)
        res["logins_per_s"] = rate(res["logged_in"], secs)
        res["still_connected"] = _sum(reports, "still_connected")
        res["kicked"] = _sum(reports, "kicked")
    elif scenario == "login":
        res["ok"] = _sum(reports, "ok")
        secs = window(reports)
        res["elapsed_s"] = round(secs, 3)
        res["logins_per_s"] = rate(res["ok"], secs)
        res["login_latency"] = latency_summary(_samples(reports, "latency_us"))
    elif scenario in ("c2s", "c2c"):
        secs = window(reports)
        send_secs = window(reports, end="t_send_end")
        res["sent"] = _sum(reports, "sent")
        res["ok"] = _sum(reports, "ok")
        res["errors"] = merge_counts([r.get("errors", {}) for r in reports])
        res["send_window_s"] = round(send_secs, 3)
        res["elapsed_s"] = round(secs, 3)
        res["offered_per_s"] = rate(res["sent"], send_secs)
        res["result_latency"] = latency_summary(_samples(reports, "latency_us"))
        if scenario == "c2s":
            res["missing"] = _sum(reports, "missing")
            res["frames_per_s"] = rate(res["ok"], secs)
        else:
            res["pairs"] = _sum(setups, "pairs")
            res["pushes"] = _sum(reports, "pushes")
            res["duplicates"] = _sum(reports, "duplicates")
            res["acked"] = _sum(reports, "acked")
            res["missing_results"] = _sum(reports, "missing_results")
            res["acked_per_s"] = rate(res["acked"], secs)
            pushed = _samples(reports, "push_latency_us")
            res["push_latency"] = latency_summary(pushed)
            overload_figures(res, reports, within(pushed, goodput_within_s), send_secs,
                             goodput_within_s)
    elif scenario == "push":
        secs = window(reports)
        res["requests"] = _sum(reports, "requests")
        res["sent"] = _sum(reports, "sent")
        res["ok"] = _sum(reports, "ok")
        res["errors"] = merge_counts([r.get("errors", {}) for r in reports])
        res["missing"] = _sum(reports, "missing")
        res["elapsed_s"] = round(secs, 3)
        res["msgs_per_s"] = rate(res["ok"], secs)
        res["requests_per_s"] = rate(res["requests"], secs)
        res["request_latency"] = latency_summary(_samples(reports, "latency_us"))
        send_secs = window(reports, end="t_send_end")
        res["offered_per_s"] = rate(res["sent"], send_secs)
        overload_figures(res, reports, _sum(reports, "good"), send_secs, goodput_within_s)
    elif scenario == "pull":
        r = reports[0] if reports else {}
        secs = window(reports)
        res["seeded"] = _sum(setups, "seeded")
        res["seed_s"] = setups[0].get("seed_s") if setups else None
        res["login_s"] = r.get("login_s")
        for key in ("pulled", "acked", "pages", "left_after", "error"):
            res[key] = r.get(key)
        res["drain_s"] = round(secs, 4)
        res["msgs_per_s"] = rate(int(r.get("acked") or 0), secs)
    return res


def flatten(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(flatten(value, name + "."))
        elif isinstance(value, list):
            rows.append((name, ", ".join(str(v) for v in value)))
        else:
            rows.append((name, "-" if value is None or value == {} else str(value)))
    return rows


def table(title: str, obj: Mapping[str, Any]) -> str:
    """``obj`` (nested mappings flattened to dotted keys) as aligned text."""
    rows = flatten(obj)
    width = max([len(k) for k, _ in rows] + [len("metric")])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _calibration_work() -> int:
    """A fixed piece of the kind of work the node's Python does per message:
    dict and attribute look-ups, small objects, bytes and str building."""
    index: dict[int, tuple[int, str]] = {}
    total = 0
    for i in range(20_000):
        key = (i * 7919) & 4095
        index[key] = (i, f"m{i}")
        total += len(index[key][1]) + len(i.to_bytes(8, "big").hex())
    return total


def calibrate(repeat: int = 9) -> float:
    """How fast this machine runs Python now: the median, in milliseconds, of
    ``repeat`` runs of :func:`_calibration_work`. Lower is faster. On a shared
    virtual machine the same code measures differently from one minute to the
    next; this says how much of a change is the machine's. The median, not the
    fastest: it is the speed a run of that moment gets."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _calibration_work()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def machine_facts(calibration_ms: float | None, after_ms: float | None) -> dict[str, Any]:
    """The ``machine`` of a JSON document: cores, load average now, and the
    :func:`calibrate` figures taken before the run and after it."""
    return {"nproc": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "calibration_ms": calibration_ms, "calibration_after_ms": after_ms}


def git_commit(directory: str | None = None) -> str | None:
    """``git rev-parse HEAD`` of the source tree, or ``None``."""
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
