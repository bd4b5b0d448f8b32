# -*- test-case-name: tests.bench.test_bench,tests.bench.test_tls -*-
"""One run of a scenario: its worker processes, their events, and the JSON document.

The generator runs in worker processes (``python -m daojia_msg.bench.worker``),
each holding its share of the connections, bound to source addresses 127.0.0.2,
.3, ... (``per_address`` connections each: the node admits at most 5,000 per peer
address, and loopback has ~28,000 ports per source address). Each worker reports
its own CPU time over the run: one near 100 % of a core means the generator, not
the node, may have set the pace (``generator.suspect``). ``--node-pid`` adds the
node's CPU share over the same window.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from typing import IO, Any
from urllib.parse import urlsplit

from daojia_msg.bench.procfs import procs_cpu_s, procs_rss_kib
from daojia_msg.bench.report import (
    GOODPUT_WITHIN_S,
    SAMPLE_KEYS,
    calibrate,
    git_commit,
    machine_facts,
    summarize,
)
from daojia_msg.bench.stats import cpu_share, generator_verdict, split

#: The node's default per-connection allowance (frames/s).
NODE_RATE_PER_CONN = 500


class BenchError(Exception):
    """A bad option or a failed run: one line for the user."""

def target(args: argparse.Namespace) -> tuple[str, int]:
    """Where the clients connect: ``--gate``, or ``--ws`` with ``--transport ws``."""
    return args.ws if getattr(args, "transport", "tcp") == "ws" else args.gate


def worker_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One spec per worker process: its share of connections, rate and concurrency."""
    scenario = args.scenario
    procs = 1 if scenario == "pull" else args.procs
    host, port = target(args)
    base: dict[str, Any] = {
        "scenario": scenario, "gate_host": host, "gate_port": port,
        "transport": getattr(args, "transport", "tcp"),
        "http_url": args.http, "appcode": args.appcode,
        "secret": args.secret or f"demo-secret-{args.appcode}",
        "api_key": args.api_key or f"demo-key-{args.appcode}",
        "uid_base": args.uid_base, "per_address": args.per_address,
        "source_first": args.source_first, "size": args.size, "drain_s": args.drain,
        "tls": args.tls, "ca": args.ca, "server_name": args.server_name,
    }
    for key in ("duration", "window", "batch", "msgtype", "ack", "page", "recipients",
                "goodput_within", "gps", "escalate_after_s", "backoff"):
        if hasattr(args, key):
            base[key] = getattr(args, key)
    if scenario == "c2s" and base.get("msgtype") is None:
        base["msgtype"] = 1 if base.get("gps") else 2
    if scenario == "pull":
        base["n"] = args.n
    units = {"connect": getattr(args, "n", 0), "login": getattr(args, "n", 0),
             "c2s": getattr(args, "conns", 0), "c2c": getattr(args, "pairs", 0),
             "push": procs, "pull": 1}[scenario]
    if units < procs:
        procs = max(1, units)
    default_conc = {"push": 16}.get(scenario, 64 * procs)
    concurrency = split(args.concurrency or default_conc, procs)
    rates = [float(args.rate) * n / max(1, units) for n in split(units, procs)] \
        if hasattr(args, "rate") and scenario != "push" else [0.0] * procs
    if scenario == "push":
        rates = [float(args.rate) / procs] * procs
    specs, lo = [], 0
    for i, count in enumerate(split(units, procs)):
        spec = dict(base, lo=lo, hi=lo + count, concurrency=max(1, concurrency[i]),
                    rate=rates[i], worker=i)
        lo += count
        specs.append(spec)
    return specs


def check(args: argparse.Namespace) -> list[str]:
    """Warnings about runs that measure the limits rather than the node."""
    warnings = []
    conns = {"c2s": getattr(args, "conns", 0), "c2c": getattr(args, "pairs", 0)}.get(
        args.scenario)
    if conns and getattr(args, "rate", 0):
        per_conn = args.rate / conns
        if per_conn > 0.9 * NODE_RATE_PER_CONN:
            warnings.append(f"{per_conn:.0f} frames/s per connection is near the node's "
                            f"{NODE_RATE_PER_CONN}/s allowance: use more connections")
    return warnings


class Worker:
    """One worker process and its line-buffered stdout."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daojia_msg.bench.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.buffer = b""
        self.ready: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.cpu: dict[str, Any] | None = None
        self.setup_cpu: dict[str, Any] | None = None
        self.error: str | None = None
        self.eof = False
        self.send(json.dumps(spec))

    def send(self, line: str) -> None:
        try:
            self.stdin.write(line.encode() + b"\n")
            self.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def read(self) -> list[dict[str, Any]]:
        data = os.read(self.stdout.fileno(), 1 << 20)
        if not data:
            self.eof = True
            return []
        self.buffer += data
        events = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                events.append(json.loads(line))
        return events

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def start(self, desc: str, total: float | None) -> None:
        self.close()
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def pump(workers: list[Worker], until: Any, deadline: float, progress: Progress) -> None:
    """Read worker events until ``until()`` or ``deadline`` (monotonic)."""
    sel = selectors.DefaultSelector()
    for w in workers:
        if not w.eof:
            sel.register(w.stdout, selectors.EVENT_READ, w)
    try:
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("timed out waiting for the workers")
            if not sel.get_map():
                raise BenchError("the workers exited early")
            for key, _ in sel.select(min(left, 0.5)):
                w = key.data
                for ev in w.read():
                    kind = ev.get("ev")
                    if kind == "progress":
                        progress.update(ev["n"])
                    elif kind == "ready":
                        w.ready = ev.get("setup", {})
                        w.setup_cpu = ev.get("cpu")
                    elif kind == "result":
                        w.result, w.cpu = ev["result"], ev["cpu"]
                    elif kind == "error":
                        w.error = ev["error"]
                if w.eof:
                    sel.unregister(w.stdout)
                if w.error:
                    raise BenchError(f"worker {w.spec['worker']}: {w.error}")
    finally:
        sel.close()


def fresh_uid_base() -> int:
    """The first uid of a run not given ``--uid-base``: a block of 10^9 uids
    of the current second, so runs a second apart never share users."""
    return 10**9 * (1 + int(time.time()) % 1_000_000)


def node_pids(args: argparse.Namespace) -> tuple[int, ...]:
    """The nodes' pids of ``--node-pid`` (none when not given)."""
    return getattr(args, "node_pids", None) or ((args.node_pid,) if args.node_pid else ())


def preflight(args: argparse.Namespace) -> None:
    """Refuse, in one line, a run that could only measure an error: nothing
    listens where the clients would connect, or a ``--node-pid`` is no process."""
    places: list[tuple[str, int, str]] = []
    if args.scenario in ("push", "pull"):  # pull seeds its backlog over HTTP
        url = urlsplit(args.http)
        places.append((url.hostname or "", url.port or (443 if url.scheme == "https" else 80),
                       "--http"))
    if args.scenario != "push":
        host, port = target(args)
        places.append((host, port, "--ws" if getattr(args, "transport", "tcp") == "ws"
                       else "--gate"))
    for host, port, option in places:
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as e:
            why = e.strerror or str(e) or e.__class__.__name__
            raise BenchError(f"cannot connect to {host}:{port} ({option}): {why}: is the "
                             "node running there?") from None
    for pid in node_pids(args):
        if not os.path.exists(f"/proc/{pid}"):
            raise BenchError(f"--node-pid {pid}: no such process")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario; the JSON document of the run."""
    preflight(args)
    if args.uid_base is None:
        args.uid_base = fresh_uid_base()
    specs = worker_specs(args)
    calibration_ms = calibrate()  # before the workers start: a quiet generator
    progress = Progress(not args.no_progress)
    for warning in check(args):
        print(f"msgplatform-bench: warning: {warning}", file=sys.stderr)
    pids = node_pids(args)
    node: dict[str, Any] = {"pid": args.node_pid}
    if len(pids) > 1:
        node["pids"] = list(pids)
    if pids:
        node["rss_kib_before"] = procs_rss_kib(pids)
    scenario = args.scenario
    setup_total = {"connect": args.n if scenario == "connect" else None,
                   "c2s": getattr(args, "conns", None),
                   "c2c": 2 * getattr(args, "pairs", 0),
                   "pull": getattr(args, "n", None)}.get(scenario)
    workers = [Worker(spec) for spec in specs]
    try:
        progress.start("setup", setup_total)
        pump(workers, lambda: all(w.ready is not None for w in workers),
             time.monotonic() + args.setup_timeout, progress)
        progress.close()
        if pids:
            node["rss_kib_setup"] = procs_rss_kib(pids)
            cpu0 = procs_cpu_s(pids)
        wall0 = time.monotonic()
        run_total = {"connect": None, "login": args.n if scenario == "login" else None,
                     "pull": getattr(args, "n", None)}.get(scenario)
        if scenario in ("c2s", "c2c", "push") and args.rate:
            run_total = int(args.rate * args.duration)
        progress.start(scenario, run_total)
        for w in workers:
            w.send("go")
        if scenario == "connect":
            time.sleep(args.hold)
            if pids:
                node["rss_kib_held"] = procs_rss_kib(pids)
            for w in workers:
                w.send("stop")
        budget = getattr(args, "duration", 0) + args.drain + 120 + (
            args.hold if scenario == "connect" else 0)
        if scenario == "login":
            budget += args.setup_timeout
        pump(workers, lambda: all(w.result is not None for w in workers),
             time.monotonic() + budget, progress)
        wall1 = time.monotonic()
        progress.close()
        if pids:
            cpu1 = procs_cpu_s(pids)
            node["rss_kib_after"] = procs_rss_kib(pids)
            if cpu0 is not None and cpu1 is not None:
                node["cpu_s"] = round(cpu1 - cpu0, 3)
                node["cpu_pct"] = cpu_share(cpu1 - cpu0, wall1 - wall0)
    finally:
        progress.close()
        for w in workers:
            w.send("stop")
        for w in workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
    after_ms = calibrate()  # the machine may have changed state during the run
    setups = [w.ready or {} for w in workers]
    reports = [w.result or {} for w in workers]
    results = summarize(scenario, setups, reports,
                        getattr(args, "goodput_within", None) or GOODPUT_WITHIN_S)
    if scenario == "connect" and args.node_pid:
        held = node.get("rss_kib_held")
        before = node.get("rss_kib_before")
        if held is not None and before is not None and results.get("logged_in"):
            results["node_rss_per_conn_kib"] = round((held - before) / results["logged_in"], 3)
    cpus = [w.cpu for w in workers if w.cpu]
    setup_cpus = [w.setup_cpu for w in workers if w.setup_cpu]
    # connect measures its log-ins in the setup phase: judge the generator there.
    judged = setup_cpus + cpus if scenario == "connect" else cpus
    params = {k: v for k, v in vars(args).items()
              if k not in ("json", "no_progress", "scenario") and v is not None}
    params["gate"] = f"{args.gate[0]}:{args.gate[1]}"
    params["ws"] = f"{args.ws[0]}:{args.ws[1]}"
    params["procs"] = len(workers)
    return {
        "scenario": scenario,
        "parameters": params,
        "results": results,
        "generator": {"procs": cpus, "setup_procs": setup_cpus, **generator_verdict(judged)},
        "node": node,
        "git_commit": git_commit(),
        "machine": machine_facts(calibration_ms, after_ms),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def strip_samples(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_samples(v) for k, v in obj.items() if k not in SAMPLE_KEYS}
    return obj
