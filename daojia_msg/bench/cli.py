# -*- test-case-name: tests.bench.test_bench -*-
"""``msgplatform-bench``: load scenarios against a running node.

It starts no node; give it one (``--gate HOST:PORT``, ``--http URL``, and
``--node-pid PID`` to read the node's RSS and CPU from ``/proc``). Targets
must be loopback (127.0.0.0/8): this is a bench for one machine.

Start a node for each scenario (from the project directory; ``backlog`` above
Twisted's 50 keeps a burst of connects from being dropped and retried)::

    # connect, login, c2c, push, pull: the embedded default (SQLite, memory bus)
    .venv/bin/twistd -n --pidfile= msgplatform --data-dir /tmp/bench-var \\
        --gate tcp:7000:backlog=1024 --http tcp:8080:interface=127.0.0.1

    # c2s into Redis Streams (the gps topic gets msgtype 1)
    .venv/bin/twistd -n --pidfile= msgplatform --data-dir /tmp/bench-var \\
        --gate tcp:7000:backlog=1024 --bus redis://127.0.0.1:6379/14

    # c2c durable in MySQL
    mysql -uroot -h127.0.0.1 -e 'CREATE DATABASE IF NOT EXISTS msgbench'
    .venv/bin/twistd -n --pidfile= msgplatform --data-dir /tmp/bench-var \\
        --gate tcp:7000:backlog=1024 --mysql mysql://root@127.0.0.1:3306/msgbench

    # three nodes behind HAProxy (gate 127.0.0.1:7000, HTTP 127.0.0.1:8080);
    # pass no --node-pid (several processes), and tear down afterwards
    tools/cluster-up.sh ...  tools/cluster-up.sh down

Then, e.g.::

    msgplatform-bench connect -n 2000 --hold 10 --node-pid $(pgrep -f 'twistd -n' | head -1)
    msgplatform-bench login -n 5000 --procs 2
    msgplatform-bench c2s --conns 100 --rate 0 --duration 10
    msgplatform-bench c2c --pairs 200 --rate 0 --duration 10 --json c2c.json
    msgplatform-bench c2c --pairs 200 --rate 2000 --duration 10
    msgplatform-bench push --batch 1 --rate 0 --duration 10
    msgplatform-bench push --batch 100 --rate 0 --duration 10
    msgplatform-bench pull -n 10000
    msgplatform-bench versus --pairs 200 --size 64 --rate 0 --duration 10 \\
        --node-pid $(pgrep -f 'twistd -n' | head -1) --broker-pid $(pgrep mosquitto)

``versus`` runs ``c2c`` against the node and then the same load against an
MQTT broker (:mod:`daojia_msg.bench.versus`), and prints the ratios.

The generator runs in ``--procs`` worker processes (``python -m
daojia_msg.bench.worker``), each holding part of the connections, bound to
source addresses 127.0.0.2, .3, ... (``--per-address`` connections each: the
node admits at most 5,000 per peer address, loopback has ~28,000 ports per
source). Each worker reports its own CPU time over the run: a worker near
100 % of a core means the generator, not the node, may have set the pace
(``generator.suspect`` in the output). ``--node-pid`` adds the node's CPU
share over the same window: a Python node near 100 % is the bottleneck.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any
from urllib.parse import urlsplit

from daojia_msg.bench.report import (
    SAMPLE_KEYS,
    calibrate,
    git_commit,
    machine_facts,
    procs_cpu_s,
    procs_rss_kib,
    summarize,
    table,
)
from daojia_msg.bench.stats import cpu_share, generator_verdict, split

#: Hard bounds: the bench is bounded in count and time whatever the options.
MAX_CONNECTIONS = 200_000
MAX_DURATION_S = 600.0
MAX_PROCS = 32
MAX_RATE = 1_000_000.0
#: The node's default per-connection allowance (frames/s).
NODE_RATE_PER_CONN = 500


class BenchError(Exception):
    """A bad option or a failed run: one line for the user."""


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r}: only loopback (127.0.0.0/8) targets")


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return _loopback(host or "127.0.0.1"), int(port)


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {value!r}")
    _loopback(parts.hostname)
    return value.rstrip("/")


def bounded(kind: type, low: float, high: float) -> Any:
    def parse(value: str) -> Any:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"expected {low:g}..{high:g}, got {value}")
        return v
    return parse


class NodePids(argparse.Action):
    """``--node-pid 12,34``: ``node_pids`` all of them (their CPU and RSS are
    added up), ``node_pid`` the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        try:
            pids = tuple(int(p) for p in str(values).split(","))
        except ValueError:
            raise argparse.ArgumentError(self, f"not a pid list: {values!r}") from None
        if not pids or min(pids) < 1:
            raise argparse.ArgumentError(self, f"not a pid list: {values!r}")
        namespace.node_pids = pids
        namespace.node_pid = pids[0]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("target and generator")
    g.add_argument("--gate", type=host_port, default=("127.0.0.1", 7000),
                   help="the node's gate HOST:PORT (default 127.0.0.1:7000)")
    g.add_argument("--http", type=http_url, default="http://127.0.0.1:8080",
                   help="the node's HTTP API URL (default http://127.0.0.1:8080)")
    g.add_argument("--node-pid", action=NodePids, default=None, metavar="PID[,PID...]",
                   help="the node's pid: its RSS and CPU are read from /proc; several "
                        "nodes' pids (comma-separated) are added up")
    g.add_argument("--appcode", type=int, default=1001)
    g.add_argument("--secret", default=None, help="token secret (default demo-secret-APPCODE)")
    g.add_argument("--api-key", default=None, help="HTTP API key (default demo-key-APPCODE)")
    g.add_argument("--procs", type=bounded(int, 1, MAX_PROCS), default=1,
                   help="generator worker processes (default 1)")
    g.add_argument("--concurrency", type=bounded(int, 1, 10_000), default=None,
                   help="connects (or HTTP requests) in flight, over all workers")
    g.add_argument("--per-address", type=bounded(int, 1, 5000), default=4500,
                   help="connections per source address (default 4500; node cap 5000)")
    g.add_argument("--source-first", type=_loopback, default="127.0.0.2",
                   help="first source address (default 127.0.0.2)")
    g.add_argument("--uid-base", type=int, default=None,
                   help="first uid (default: a fresh block of 10^9 uids per run)")
    g.add_argument("--size", type=bounded(int, 8, 65_000), default=32,
                   help="content bytes per message (default 32)")
    g.add_argument("--drain", type=bounded(float, 0, 120), default=10.0,
                   help="seconds to wait for missing answers after a run (default 10)")
    g.add_argument("--setup-timeout", type=bounded(float, 1, 900), default=300.0,
                   help="seconds allowed for log-ins and seeding (default 300)")
    g.add_argument("--json", metavar="FILE", default=None, help="write JSON to FILE ('-': stdout)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(
        prog="msgplatform-bench", description="Load scenarios against a running msgplatform node.")
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    p = add("connect", "N logged-in idle connections; the node's RSS per connection")
    p.add_argument("-n", type=bounded(int, 1, MAX_CONNECTIONS), default=2000)
    p.add_argument("--hold", type=bounded(float, 0, MAX_DURATION_S), default=10.0,
                   help="seconds to hold the connections idle before reading RSS")
    p = add("login", "logins per second (connect + LOGIN)")
    p.add_argument("-n", type=bounded(int, 1, MAX_CONNECTIONS), default=5000)
    for name, text in (("c2s", "sustained C2S frames/s into the node's bus"),
                       ("c2c", "end-to-end C2C throughput and latency (durable, pushed, ACKed)"),
                       ("versus", "c2c against the node, then the same one-to-one QoS1 load "
                                  "against an MQTT broker (Mosquitto); the ratios ours/theirs")):
        p = add(name, text)
        if name == "c2s":
            p.add_argument("--conns", type=bounded(int, 1, 20_000), default=100)
            p.add_argument("--msgtype", type=int, default=1, help="1 = gps in the demo routes")
        else:
            p.add_argument("--pairs", type=bounded(int, 1, 10_000), default=200)
        if name == "c2c":
            p.add_argument("--ack", choices=("each", "read"), default="each",
                           help="one ACK per push, or one per socket read (default each)")
        p.add_argument("--rate", type=bounded(float, 0, MAX_RATE), default=0.0,
                       help="offered frames/s in total, open loop; 0 = closed loop")
        p.add_argument("--window", type=bounded(int, 1, 256), default=8,
                       help="closed loop: requests in flight per sending connection")
        p.add_argument("--duration", type=bounded(float, 0.1, MAX_DURATION_S), default=10.0)
        if name == "versus":
            p.add_argument("--payload", dest="size", type=bounded(int, 8, 65_000),
                           default=argparse.SUPPRESS, help="the same as --size")
            p.add_argument("--mqtt", type=host_port, default=("127.0.0.1", 1883),
                           help="the MQTT broker HOST:PORT (default 127.0.0.1:1883)")
            p.add_argument("--broker-pid", type=int, default=None,
                           help="the broker's pid: its CPU per message is read from /proc")
    p = add("push", "S2C through the HTTP API, single or batched")
    p.add_argument("--batch", type=bounded(int, 1, 1000), default=1,
                   help="messages per request (1: /v1/push, more: /v1/push/batch)")
    p.add_argument("--rate", type=bounded(float, 0, MAX_RATE), default=0.0,
                   help="offered messages/s, open loop; 0 = closed loop")
    p.add_argument("--duration", type=bounded(float, 0.1, MAX_DURATION_S), default=10.0)
    p.add_argument("--recipients", type=bounded(int, 1, 1_000_000), default=1000,
                   help="offline recipients pushed to round robin (default 1000)")
    p = add("pull", "drain a backlog of N pending messages (PULL pages + ACKs)")
    p.add_argument("-n", type=bounded(int, 1, 100_000), default=10_000)
    p.add_argument("--page", type=bounded(int, 1, 100), default=100)
    return parser


def worker_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One spec per worker process: its share of connections, rate and concurrency."""
    scenario = args.scenario
    procs = 1 if scenario == "pull" else args.procs
    base: dict[str, Any] = {
        "scenario": scenario, "gate_host": args.gate[0], "gate_port": args.gate[1],
        "http_url": args.http, "appcode": args.appcode,
        "secret": args.secret or f"demo-secret-{args.appcode}",
        "api_key": args.api_key or f"demo-key-{args.appcode}",
        "uid_base": args.uid_base, "per_address": args.per_address,
        "source_first": args.source_first, "size": args.size, "drain_s": args.drain,
    }
    for key in ("duration", "window", "batch", "msgtype", "ack", "page", "recipients"):
        if hasattr(args, key):
            base[key] = getattr(args, key)
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario; the JSON document of the run."""
    if args.uid_base is None:
        args.uid_base = 10**9 * (1 + int(time.time()) % 1_000_000)
    specs = worker_specs(args)
    calibration_ms = calibrate()  # before the workers start: a quiet generator
    progress = Progress(not args.no_progress)
    for warning in check(args):
        print(f"msgplatform-bench: warning: {warning}", file=sys.stderr)
    pids: tuple[int, ...] = getattr(args, "node_pids", None) or (
        (args.node_pid,) if args.node_pid else ())
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
    results = summarize(scenario, setups, reports)
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


def render(doc: dict[str, Any]) -> str:
    gen = doc["generator"]
    summary = {
        **doc["results"],
        "generator.procs": len(gen["procs"]),
        "generator.cpu_pct": [p["cpu_pct"] for p in gen["procs"]],
        "generator.suspect": gen["suspect"],
    }
    if doc["scenario"] == "connect":  # its log-ins are the setup phase
        summary["generator.setup_cpu_pct"] = [p["cpu_pct"] for p in gen.get("setup_procs", [])]
    node = {k: v for k, v in doc["node"].items() if v is not None}
    if len(node) > 1:
        summary["node"] = node
    return table(f"msgplatform-bench {doc['scenario']}", summary)


def suspects(doc: dict[str, Any]) -> list[str]:
    """Warnings for a run whose generator was near a full core."""
    if doc["generator"]["suspect"]:
        return ["a generator process was near a full core: "
                "the figures may be the generator's; try more --procs"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenario == "versus":
        from daojia_msg.bench import versus  # it builds on this module

        execute: Callable[[argparse.Namespace], dict[str, Any]] = versus.run
        show, warn = versus.render, versus.suspects
    else:
        execute, show, warn = run, render, suspects
    try:
        doc = execute(args)
    except BenchError as e:
        print(f"msgplatform-bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(show(doc))
    for warning in warn(doc):
        print(f"msgplatform-bench: {warning}", file=sys.stderr)
    if args.json:
        text = json.dumps(strip_samples(doc), indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
