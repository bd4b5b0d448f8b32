# -*- test-case-name: tests.bench.test_overload -*-
"""``msgplatform-bench overload``: twice the capacity offered, and how much of it is kept.

Overload behaviour is judged by one figure: offered twice what the node (or
cluster) can serve, how much does it still deliver within a second
(``goodput``), as a share of that capacity. The figure depends on what
"capacity" is measured with, so this command measures two and reports the
overload against each, in one run against the same nodes:

1. **closed-loop capacity**: ``--rate 0``, ``--window`` requests in flight per
   sending connection (c2c) or ``--concurrency`` HTTP requests (push); what it
   delivered per second over the whole run, its drain included (c2c's
   ``acked_per_s``, push's ``msgs_per_s``: the capacity of every earlier
   table; over the send window alone it is 1-2% higher). Pipelined, so a read brings several frames and a
   write answers several: the cheapest a message gets.
2. **open-loop capacity**: the highest rate of lone requests (an open loop, as
   phones send: one frame at a time, each at its own moment) that is
   *sustained*: at least ``--sustain`` (0.95) of the rate delivered within
   ``--goodput-within`` (1 s) of its intended time, and nothing left
   unanswered. Found over ``--probes`` runs of ``--probe-duration`` seconds:
   the first at the closed-loop capacity, then 1.5 times higher while each is
   sustained, then by bisection between the highest rate sustained and the
   lowest that was not. When every probe was sustained it is reported as "at
   least" (with one probe, at the closed-loop rate, twice the closed-loop
   capacity is the one overload run). Its value is the best sustained
   probe's goodput (what it delivered in time, not its rate). Short probes
   and the bisection's step make it a low estimate: goodput above 100% "of
   open" says so.
3. **the overload**: an open loop at twice each capacity for ``--duration``
   seconds: goodput, its share of both capacities, latency, refusals,
   anything unanswered.
4. with ``--rounds N`` (N > 1), N - 1 more **rounds** of a closed-loop
   capacity run followed at once by an open loop at twice that capacity: each
   round's share against its own capacity, and the median of the N shares
   (the first round is the capacity run and the overload at twice it above).
   A machine whose speed drifts from one minute to the next (a shared VM)
   moves a single capacity run by as much as the share's distance to a
   target; a share taken against a capacity measured just before it, over
   several rounds, is the steadier figure.

Lone frames cost a node more than pipelined ones (a read and a write per
frame instead of per several), so an open loop at twice the closed-loop
capacity offers several times what the nodes can serve of lone frames: that
row mixes what a lone frame costs with how overload is handled. The row at
twice the open-loop capacity offers the same kind of traffic at twice what
is sustained, and measures the overload handling alone. BENCHMARKS.md and
docs/operations.md ("Overload") say how each is read.

Before each run the nodes (``--node-pid``) are left to go idle
(:func:`versus.settle <daojia_msg.bench.versus.settle>`), and every run gets
its own block of uids (:data:`UID_STRIDE` apart, from ``--uid-base`` when
given). Options of the other scenario (``--pairs`` with ``--of push``,
``--recipients`` with ``--of c2c``) are ignored.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daojia_msg.bench.report import git_commit, machine_facts
from daojia_msg.bench.runner import BenchError, fresh_uid_base, node_pids, strip_samples, target
from daojia_msg.bench.runner import run as run_scenario
from daojia_msg.bench.versus import settle

#: The share of a probe's rate that must be delivered in time for the rate
#: to count as sustained (``--sustain``).
SUSTAIN = 0.95
#: Overload = this many times a capacity, offered open loop.
FACTOR = 2.0
#: While every probe is sustained, the next one offers this many times more.
CLIMB = 1.5


@dataclass(frozen=True)
class Figures:
    """Where a scenario's document keeps the figures this command reads."""

    served: str  # what the scenario served per second (its closed-loop capacity)
    latency: str  # the latency that goodput is judged on


FIGURES = {"c2c": Figures("acked_per_s", "push_latency"),
           "push": Figures("msgs_per_s", "request_latency")}


def unanswered(scenario: str, res: dict[str, Any]) -> int:
    """Requests the run never got an answer to: c2c's missing Results; for
    push, what was still waiting when the drain gave up (``missing``, those
    that never got a slot of the concurrency included), or what was sent and
    neither succeeded nor failed with a status, whichever is more."""
    if scenario == "c2c":
        return int(res.get("missing_results") or 0)
    errors = sum((res.get("errors") or {}).values())
    return max(int(res.get("missing") or 0),
               int(res.get("sent") or 0) - int(res.get("ok") or 0) - errors)


def sustained(got: dict[str, Any], sustain: float) -> bool:
    """Whether a probe (its :func:`figures`) was sustained: at least
    ``sustain`` of its rate (the intended one, not what a lagging generator
    managed to send) delivered in time, and nothing unanswered."""
    return (got["goodput_per_s"] or 0.0) >= sustain * got["rate"] and got["unanswered"] == 0


#: Uids between two runs' blocks: more than any run logs in or pushes to.
UID_STRIDE = 10**7


def run_args(args: argparse.Namespace, rate: float, duration: float,
             uid_base: int) -> argparse.Namespace:
    """The options of one run of the scenario under test (a copy: the
    caller's are left as they are)."""
    values = dict(vars(args), scenario=args.of, rate=rate, duration=duration, uid_base=uid_base,
                  json=None)
    if args.of == "push" and rate:
        values["concurrency"] = args.open_concurrency
    return argparse.Namespace(**values)


def pct(part: float | None, whole: float | None) -> float | None:
    """``part`` as a percentage of ``whole``, or ``None`` (never made up)."""
    if part is None or not whole:
        return None
    return round(100.0 * part / whole, 1)


def figures(scenario: str, rate: float, doc: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one run at ``rate`` (0: closed loop)."""
    res = doc["results"]
    lat = res.get(FIGURES[scenario].latency) or {}
    lag = res.get("send_lag") or {}
    return {
        "rate": rate,
        "offered_per_s": res.get("offered_per_s"),
        "served_per_s": res.get(FIGURES[scenario].served),
        "goodput_per_s": res.get("goodput_per_s"),
        "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"),
        "refused_per_s": res.get("refused_per_s"),
        "refusal_p99_ms": (res.get("refusal_latency") or {}).get("p99_ms"),
        "send_lag_p99_ms": lag.get("p99_ms"),
        "unanswered": unanswered(scenario, res),
        "node_cpu_pct": (doc.get("node") or {}).get("cpu_pct"),
        "generator_cpu_pct": [p.get("cpu_pct") for p in
                              (doc.get("generator") or {}).get("procs", [])],
    }


class Overload:
    """One ``overload`` command: its runs in order, and the document."""

    def __init__(self, args: argparse.Namespace,
                 run_one: Callable[[argparse.Namespace], dict[str, Any]] = run_scenario,
                 wait_idle: Callable[[int], float] = settle) -> None:
        self.args = args
        self.run_one = run_one
        self.wait_idle = wait_idle
        self.runs: list[dict[str, Any]] = []
        #: The first run's uids (``--uid-base``, or a block of the current
        #: second as ``runner.run`` picks it); each run has its own block after it.
        self.uid_base = args.uid_base if args.uid_base is not None else fresh_uid_base()

    def _say(self, text: str) -> None:
        if not self.args.no_progress:
            print(f"msgplatform-bench overload: {text}", file=sys.stderr)

    def measure(self, label: str, rate: float, duration: float) -> dict[str, Any]:
        """One run at ``rate`` (0: closed loop): its figures, the run kept."""
        for pid in node_pids(self.args):
            self.wait_idle(pid)
        self._say(f"{label}: " + (f"open loop at {rate:,.0f}/s" if rate else "closed loop"))
        base = self.uid_base + UID_STRIDE * len(self.runs)
        doc = self.run_one(run_args(self.args, rate, duration, base))
        got = figures(self.args.of, rate, doc)
        self.runs.append({"label": label, **strip_samples(doc)})
        return got

    def capacity(self, label: str, where: str = "") -> dict[str, Any]:
        """A closed-loop capacity run's figures; one line (BenchError) when it
        served nothing, with what the clients got instead."""
        args = self.args
        got = self.measure(label, 0.0, args.duration)
        if not got["served_per_s"]:
            res = self.runs[-1]["results"]
            why = res.get("login_failures") or res.get("errors") or "no answer"
            raise BenchError(f"overload: the closed loop{where} served nothing ({args.of}: "
                             f"{why}): is the node up and the app configured?")
        return got

    def open_capacity(self, closed: float) -> tuple[float | None, bool, list[dict[str, Any]]]:
        """The open-loop capacity: (its value or ``None`` when no probe was
        sustained, whether it is only a lower bound, the probes). The first
        probe is at ``closed``; while every probe is sustained the next is
        :data:`CLIMB` times higher, and once one is not, the rest bisect
        between the highest sustained rate and the lowest one that was not."""
        args = self.args
        lo, hi, best = 0.0, None, None
        probes: list[dict[str, Any]] = []
        rate = closed
        for _ in range(args.probes):
            got = self.measure("probe", rate, args.probe_duration)
            ok = sustained(got, args.sustain)
            probes.append({**got, "sustained": ok})
            if ok:
                lo, best = rate, got["goodput_per_s"]
            else:
                hi = rate
            rate = CLIMB * lo if hi is None else (lo + hi) / 2
        return best, hi is None, probes

    def __call__(self) -> dict[str, Any]:
        args = self.args
        started = time.time()
        closed = self.capacity("capacity")
        open_cap, at_least, probes = self.open_capacity(closed["served_per_s"])
        if open_cap is None:
            raise BenchError(
                f"overload: no open-loop rate down to {probes[-1]['rate']:,.0f}/s was "
                f"sustained ({args.sustain:.0%} within {args.goodput_within:g} s)")
        over = []
        against_each = [("closed", closed["served_per_s"]), ("open", open_cap)]
        if at_least and len(probes) == 1:  # sustained at the closed-loop rate: one overload
            against_each.pop()
        for against, capacity in against_each:
            got = self.measure(f"{FACTOR:g}x {against}", FACTOR * capacity, args.duration)
            over.append({"against": against, **got,
                         "pct_of_closed": pct(got["goodput_per_s"], closed["served_per_s"]),
                         "pct_of_open": pct(got["goodput_per_s"], open_cap)})
        rounds = [round_figures(closed, over[0])]
        for k in range(2, args.rounds + 1):
            cap = self.capacity(f"capacity, round {k}", f" of round {k}")
            got = self.measure(f"{FACTOR:g}x closed, round {k}",
                               FACTOR * cap["served_per_s"], args.duration)
            rounds.append(round_figures(cap, got))
        return document(args, closed, open_cap, at_least, probes, over, rounds, self.runs,
                        started)


def round_figures(capacity: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """One round: the figures of its closed-loop capacity run (``capacity``)
    and of the overload at twice it, the goodput's share of that capacity."""
    return {"capacity": capacity,
            **{k: v for k, v in over.items() if k not in ("against", "pct_of_open")},
            "pct_of_closed": pct(over["goodput_per_s"], capacity["served_per_s"])}


def median_share(rounds: list[dict[str, Any]]) -> float | None:
    """The median of the rounds' shares of their capacity (None without one)."""
    shares = [r["pct_of_closed"] for r in rounds if r["pct_of_closed"] is not None]
    return round(statistics.median(shares), 1) if shares else None


def document(args: argparse.Namespace, closed: dict[str, Any], open_cap: float,
             at_least: bool, probes: list[dict[str, Any]], over: list[dict[str, Any]],
             rounds: list[dict[str, Any]], runs: list[dict[str, Any]],
             started: float) -> dict[str, Any]:
    """The ``overload`` JSON document."""
    first = runs[0].get("machine") or {}
    last = runs[-1].get("machine") or {}
    return {
        "scenario": "overload",
        "parameters": {
            "of": args.of, "size": args.size, "procs": args.procs,
            "duration": args.duration, "probe_duration": args.probe_duration,
            "probes": args.probes, "sustain": args.sustain,
            "goodput_within": args.goodput_within, "factor": FACTOR, "rounds": args.rounds,
            "transport": args.transport, "tls": args.tls,
            "gate": "{}:{}".format(*target(args)), "http": args.http,
            **({"pairs": args.pairs, "window": args.window, "backoff": args.backoff}
               if args.of == "c2c"
               else {"concurrency": args.concurrency,
                     "open_concurrency": args.open_concurrency}),
            "node_pids": list(node_pids(args)) or None,
        },
        "capacity": {"closed": closed, "open": open_cap, "open_at_least": at_least,
                     "probes": probes},
        "overload": over,
        "rounds": rounds,
        "median_pct_of_closed": median_share(rounds),
        "runs": runs,
        "git_commit": git_commit(),
        "machine": machine_facts(first.get("calibration_ms"),
                                 last.get("calibration_after_ms")),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "backoff", False) and args.of != "c2c":
        raise BenchError("overload: --backoff is for --of c2c (HTTP pushes have no backoff)")
    return Overload(args)()


def _n(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def _s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"


def render(doc: dict[str, Any]) -> str:
    par, cap = doc["parameters"], doc["capacity"]
    closed = cap["closed"]
    how = (f"{par['pairs']} pairs, {par['window']} in flight per sender" if par["of"] == "c2c"
           else f"{par['concurrency'] or 16} requests in flight")
    probes = ", ".join(f"{p['rate']:,.0f} {'yes' if p['sustained'] else 'no'}"
                       for p in cap["probes"])
    lines = [
        f"msgplatform-bench overload {par['of']}: {par['size']} B, runs of "
        f"{par['duration']:g} s (probes {par['probe_duration']:g} s), {par['procs']} proc(s)"
        + (", open-loop senders back off after RATE_LIMITED" if par.get("backoff") else ""),
        f"capacity, closed loop ({how}): {_n(closed['served_per_s'], '/s')}, "
        f"p50 / p99 {_s(closed['p50_ms'])} / {_s(closed['p99_ms'])} s, "
        f"cpu % of a core: node {_n(closed['node_cpu_pct'])}, "
        f"generator {_n(generator_cpu(closed, par['procs']))}",
        f"capacity, open loop (>= {par['sustain']:.0%} within {par['goodput_within']:g} s): "
        f"{'at least ' if cap['open_at_least'] else ''}{_n(cap['open'], '/s')} "
        f"(probes: {probes})",
    ]
    head = ("offered", "goodput", "of closed", "of open", "p50 / p99 s", "refused/s",
            "unanswered", "node cpu %", "generator cpu %")
    rows = [head]
    for o in doc["overload"]:
        rows.append((f"{par['factor']:g} x {o['against']}: {_n(o['rate'])}/s",
                     _n(o["goodput_per_s"], "/s"),
                     _pct(o["pct_of_closed"]), _pct(o["pct_of_open"]),
                     f"{_s(o['p50_ms'])} / {_s(o['p99_ms'])}", _n(o["refused_per_s"]),
                     str(o["unanswered"]), _n(o["node_cpu_pct"]),
                     _n(generator_cpu(o, par["procs"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  " + "  ".join(
            f"{c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True)))
    rounds = doc.get("rounds") or []
    if len(rounds) > 1:
        lines.append(f"{len(rounds)} rounds (a capacity run, then {par['factor']:g} x it at "
                     "once): " + ", ".join(
                         f"{_n(r['capacity']['served_per_s'], '/s')} -> {_n(r['goodput_per_s'], '/s')}"
                         f" ({_pct(r['pct_of_closed'])})" for r in rounds)
                     + f"; median {_pct(doc['median_pct_of_closed'])} of capacity")
    lines.append(f"goodput: delivered within {par['goodput_within']:g} s of its intended "
                 "time, per second offered")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def generator_cpu(figs: dict[str, Any], procs: int) -> float | None:
    """The CPU of a run's ``procs`` generator processes, in % of one core;
    None unless each of them reported it (a part is not the whole)."""
    shares = figs.get("generator_cpu_pct") or []
    if len(shares) < procs or any(p is None for p in shares):
        return None
    return float(sum(shares))


#: An overload run whose nodes had less than this share of the CPU they used
#: in the capacity run, while the generator's grew, is flagged by :func:`suspects`;
#: so is a capacity run whose nodes had less than this share of what they used
#: in the overload run measured against it.
CPU_SHORTFALL = 0.9


def suspects(doc: dict[str, Any]) -> list[str]:
    """A warning for each run whose generator was near a full core, for
    each overload run in which the nodes got clearly less CPU than in the
    capacity run while the generator took more (on a host they share, the
    generator's load grows with the offered rate and takes the nodes' CPU,
    so the share of the capacity then measures the host as well as the
    nodes), and for each capacity run in which the nodes got clearly less CPU
    than in the overload run measured against it (if something else took
    it, that capacity is too low and its share too high; a run the nodes'
    CPU did not limit is as measured)."""
    warnings = [f"the {r['label']} run's generator was near a full core: its figures may "
                "be the generator's; try more --procs"
                for r in doc["runs"] if (r.get("generator") or {}).get("suspect")]
    closed, procs = doc["capacity"]["closed"], doc["parameters"]["procs"]
    factor = doc["parameters"]["factor"]
    pairs = [(f"{factor:g} x {o['against']}", "", closed, o) for o in doc["overload"]]
    pairs += [(f"{factor:g} x closed in round {k}", f" of round {k}", r["capacity"], r)
              for k, r in enumerate(doc.get("rounds") or [], start=1) if k > 1]
    for where, of_round, before, after in pairs:
        node0, gen0 = before.get("node_cpu_pct"), generator_cpu(before, procs)
        node1, gen1 = after.get("node_cpu_pct"), generator_cpu(after, procs)
        if node0 and node1 and node0 < CPU_SHORTFALL * node1:
            # The other way round: the capacity run is the one that was short.
            warnings.append(
                f"in the closed-loop capacity run{of_round} the nodes had {node0:.0f}% of a "
                f"core against {node1:.0f}% at {where}: if something else on this host took "
                "their CPU then, that capacity is too low and the share of it at "
                f"{where} too high (if the nodes' CPU was not what limited that run, e.g. "
                "pushes behind a proxy's connection limit, it is as measured)")
        if (not node0 or gen0 is None or node1 is None or gen1 is None
                or node1 >= CPU_SHORTFALL * node0 or gen1 <= gen0):
            continue
        warnings.append(
            f"at {where} the nodes had {node1:.0f}% of a core against {node0:.0f}% in "
            f"the closed-loop capacity run, while the generator went from {gen0:.0f}% to "
            f"{gen1:.0f}%: if they share this host's cores, its share of the capacity "
            "measures the host as well as the nodes (give the nodes cores of their own: "
            "BENCHMARKS.md, \"Nodes on a core of their own\")")
    return warnings
