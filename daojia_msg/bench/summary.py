# -*- test-case-name: tests.bench.test_summary -*-
"""One table of a directory of ``--json`` results (``tools/bench-suite.sh``).

::

    python -m daojia_msg.bench.summary var/bench

reads ``<dir>/<setup>/<label>.json`` (each a ``msgplatform-bench`` document)
and prints, per run, its headline figure, its latency, the node's CPU (share
of a core, all nodes added up) and CPU per message, and the busiest generator
process, so one glance tells whether a figure is the node's or the generator's,
and the machine's calibration (``machine.calibration_ms`` and
``calibration_after_ms``: how long a fixed piece of Python took just before
and just after the run, median of 9 each; lower is faster), so one glance
says whether the machine was in a fast or a slow state (on a shared virtual
machine the same code measures very differently from one hour to the next).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

COLUMNS = ("setup", "run", "figure", "latency ms p50/p99/p99.9", "node cpu %",
           "node us/msg", "gen cpu % max", "machine ms before/after")


def _ms(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return "/".join(f"{summary.get(k, 0):.1f}" for k in ("p50_ms", "p99_ms", "p99.9_ms"))


def _count(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


def headline(doc: dict[str, Any]) -> tuple[str, str, float | None]:
    """``(figure, latency, messages)`` of one run: what the run measures, its
    latency percentiles, and the messages (or logins, connections) it counts
    for the CPU per message."""
    scenario, res = doc.get("scenario"), doc.get("results") or {}
    if scenario == "versus":
        cmp = doc["comparison"]
        ours, ratios = cmp["msgplatform"], cmp["ratios"]
        figure = (f"{_count(ours.get('throughput_per_s'), 'msgs/s')}; "
                  f"x{ratios.get('throughput') or 0:.2f} of Mosquitto's, "
                  f"p99 x{ratios.get('p99') or 0:.1f}, cpu/msg x{ratios.get('cpu_per_msg') or 0:.1f}")
        latency = "/".join(f"{ours.get(k) or 0:.1f}" for k in
                           ("delivery_p50_ms", "delivery_p99_ms", "delivery_p999_ms"))
        return figure, latency, ours.get("completed")
    if scenario == "connect":
        return (f"{res.get('logged_in', 0):,} held, "
                f"{res.get('node_rss_per_conn_kib', '-')} KiB/conn", "-",
                res.get("logged_in"))
    if scenario == "login":
        return (_count(res.get("logins_per_s"), "logins/s"), _ms(res.get("login_latency")),
                res.get("ok"))
    if scenario == "c2s":
        return (_count(res.get("frames_per_s"), "frames/s"), _ms(res.get("result_latency")),
                res.get("ok"))
    if scenario == "c2c":
        return (_count(res.get("acked_per_s"), "msgs/s"), _ms(res.get("push_latency")),
                res.get("acked"))
    if scenario == "push":
        return (_count(res.get("msgs_per_s"), "msgs/s"), _ms(res.get("request_latency")),
                res.get("ok"))
    if scenario == "pull":
        return (f"{res.get('acked', 0):,} in {res.get('drain_s', 0):.2f} s", "-",
                res.get("acked"))
    return "?", "-", None


def row(setup: str, label: str, doc: dict[str, Any]) -> tuple[str, ...]:
    figure, latency, messages = headline(doc)
    if doc.get("scenario") == "versus":
        node = doc["comparison"]["msgplatform"]
        cpu_s, cpu_pct = node.get("server_cpu_s"), node.get("server_cpu_pct")
        gens = node.get("generator_cpu_pct") or []
    else:
        node = doc.get("node") or {}
        cpu_s, cpu_pct = node.get("cpu_s"), node.get("cpu_pct")
        gens = [p.get("cpu_pct") for p in (doc.get("generator") or {}).get("procs", [])]
    per_msg = "-" if not cpu_s or not messages else f"{1e6 * cpu_s / messages:.0f}"
    busiest = max((g for g in gens if g is not None), default=None)
    return (setup, label, figure, latency, "-" if cpu_pct is None else f"{cpu_pct:.0f}",
            per_msg, "-" if busiest is None else f"{busiest:.0f}",
            machine_ms(doc.get("machine") or {}))


def machine_ms(machine: dict[str, Any]) -> str:
    """``before/after`` the run (``before`` alone in the first version), or ``-``."""
    readings = [machine.get(k) for k in ("calibration_ms", "calibration_after_ms")]
    return "/".join(f"{v:.1f}" for v in readings if v is not None) or "-"


def collect(directory: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for setup in sorted(os.listdir(directory)):
        path = os.path.join(directory, setup)
        if not os.path.isdir(path):
            continue
        for name in sorted(os.listdir(path)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(path, name)) as f:
                    doc = json.load(f)
            except (OSError, ValueError) as e:
                rows.append((setup, name[:-5], f"unreadable: {e}", "-", "-", "-", "-", "-"))
                continue
            rows.append(row(setup, name[:-5], doc))
    return rows


def render(rows: Sequence[tuple[str, ...]]) -> str:
    """Markdown, to paste into BENCHMARKS.md."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not os.path.isdir(args[0]):
        print("usage: python -m daojia_msg.bench.summary DIRECTORY", file=sys.stderr)
        return 2
    print(render(collect(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
