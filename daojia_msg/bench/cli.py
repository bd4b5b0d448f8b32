# -*- test-case-name: tests.bench.test_bench,tests.bench.test_tls,tests.bench.test_extra -*-
"""``msgplatform-bench``: load scenarios against a running node.

It starts no node: give it one (``--gate HOST:PORT``, ``--http URL``, and
``--node-pid PID`` to read the node's RSS and CPU from ``/proc``). Targets must
be loopback (127.0.0.0/8): this is a bench for one machine.
``tools/bench-suite.sh`` starts the nodes and runs every scenario of
BENCHMARKS.md; by hand, e.g.::

    msgplatform-bench c2c --pairs 200 --rate 0 --duration 10 --json c2c.json
    msgplatform-bench versus --pairs 200 --size 64 --rate 0 --duration 10 \\
        --node-pid $(pgrep -f 'twistd -n' | head -1) --broker-pid $(pgrep mosquitto)

``versus`` runs ``c2c`` against the node, then the same load against an MQTT
broker (:mod:`daojia_msg.bench.versus`), and prints the ratios; ``overload``
offers twice the capacity and reports what is kept
(:mod:`daojia_msg.bench.overload`). A run's worker
processes and its JSON document are :mod:`daojia_msg.bench.runner`'s.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

#: What the ``bench`` extra of setup.cfg brings, which a plain install lacks.
BENCH_EXTRA = ("numpy", "tqdm")


def _need_bench_extra() -> None:
    """One clear line and exit 2, not a traceback, when the extra is missing."""
    missing = [name for name in BENCH_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(f"msgplatform-bench needs the bench extra ({', '.join(missing)} missing): "
              "pip install -e '.[bench]'", file=sys.stderr)
        raise SystemExit(2)


_need_bench_extra()

from daojia_msg.bench import overload, versus  # noqa: E402
from daojia_msg.bench.overload import SUSTAIN  # noqa: E402
from daojia_msg.bench.report import GOODPUT_WITHIN_S, table  # noqa: E402
from daojia_msg.bench.runner import BenchError, run, strip_samples  # noqa: E402
from daojia_msg.cliargs import writable_file  # noqa: E402

#: Hard bounds: the bench is bounded in count and time whatever the options.
MAX_CONNECTIONS = 200_000
MAX_DURATION_S = 600.0
MAX_PROCS = 32
MAX_RATE = 1_000_000.0


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


def goodput_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--goodput-within", type=bounded(float, 0.001, 60), default=GOODPUT_WITHIN_S,
                   metavar="SECONDS",
                   help="goodput counts what was delivered (answered, for push) within this "
                        f"many seconds of its intended send time (default {GOODPUT_WITHIN_S:g})")


def backoff_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backoff", action="store_true",
                   help="c2c open loop: each sender backs off after RATE_LIMITED as the client "
                        "library does (for 50 ms to 1 s it refuses its own C2C without sending "
                        "them, counted 'held back'; daojia_msg/client/backoff.py); default: "
                        "every frame is sent on time whatever the answers")


def _json_file(value: str) -> str:
    """``--json``: a writable file, or ``-`` for stdout."""
    return value if value == "-" else writable_file(value)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("target and generator")
    g.add_argument("--gate", type=host_port, default=("127.0.0.1", 7000),
                   help="the node's gate HOST:PORT (default 127.0.0.1:7000)")
    g.add_argument("--http", type=http_url, default="http://127.0.0.1:8080",
                   help="the node's HTTP API URL (default http://127.0.0.1:8080)")
    g.add_argument("--transport", choices=("tcp", "ws"), default="tcp",
                   help="how the clients reach the gate: tcp (--gate, the default) or ws, "
                        "the same frames over a WebSocket (--ws)")
    g.add_argument("--ws", type=host_port, default=("127.0.0.1", 7070),
                   help="with --transport ws: the node's WebSocket gate HOST:PORT, path "
                        "/v1/ws (default 127.0.0.1:7070; with --tls: wss)")
    g.add_argument("--tls", action="store_true",
                   help="connect to the gate over TLS, verifying the node's certificate")
    g.add_argument("--ca", metavar="FILE", default=None,
                   help="with --tls: the CA that signed the node's certificate (PEM; default: "
                        "the system's CAs)")
    g.add_argument("--server-name", metavar="NAME", default=None,
                   help="with --tls: the name the node's certificate must carry "
                        "(default: the --gate address)")
    g.add_argument("--node-pid", action=NodePids, default=None, metavar="PID[,PID...]",
                   help="the node's pid: its RSS and CPU are read from /proc; several "
                        "nodes' pids (comma-separated) are added up")
    g.add_argument("--appcode", type=int, default=1001,
                   help="the app the clients log in to (default 1001, a demo app)")
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
    g.add_argument("--json", metavar="FILE", default=None, type=_json_file,
                   help="write JSON to FILE ('-': stdout)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(
        prog="msgplatform-bench", description="Load scenarios against a running msgplatform node.")
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    p = add("connect", "N logged-in idle connections; the node's RSS per connection")
    p.add_argument("-n", type=bounded(int, 1, MAX_CONNECTIONS), default=2000,
                   help="connections (default 2000)")
    p.add_argument("--hold", type=bounded(float, 0, MAX_DURATION_S), default=10.0,
                   help="seconds to hold the connections idle before reading RSS")
    p = add("login", "logins per second (connect + LOGIN)")
    p.add_argument("-n", type=bounded(int, 1, MAX_CONNECTIONS), default=5000,
                   help="logins (default 5000)")
    for name, text in (("c2s", "sustained C2S frames/s into the node's bus"),
                       ("c2c", "end-to-end C2C throughput and latency (durable, pushed, ACKed)"),
                       ("versus", "c2c against the node, then the same one-to-one QoS1 load "
                                  "against an MQTT broker (Mosquitto); the ratios ours/theirs")):
        p = add(name, text)
        if name == "c2s":
            p.add_argument("--conns", type=bounded(int, 1, 20_000), default=100,
                           help="sending connections (default 100)")
            p.add_argument("--msgtype", type=int, default=None,
                           help="default 2 (order-events in the demo routes: the C2S-only "
                                "baseline), 1 with --gps (gps, a geo route)")
            p.add_argument("--gps", action="store_true",
                           help="each frame is its driver's next position, moving (for a geo "
                                "route: the demo's msgtype 1)")
        else:
            p.add_argument("--pairs", type=bounded(int, 1, 10_000), default=200,
                           help="sender/receiver pairs (default 200)")
        if name == "c2c":
            p.add_argument("--ack", choices=("each", "read"), default="each",
                           help="one ACK per push, or one per socket read (default each)")
            backoff_option(p)
        p.add_argument("--rate", type=bounded(float, 0, MAX_RATE), default=0.0,
                       help="offered frames/s in total, open loop; 0 = closed loop")
        p.add_argument("--window", type=bounded(int, 1, 256), default=8,
                       help="closed loop: requests in flight per sending connection")
        p.add_argument("--duration", type=bounded(float, 0.1, MAX_DURATION_S), default=10.0,
                       help="seconds of load (default 10)")
        if name == "c2c":
            goodput_option(p)
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
    p.add_argument("--duration", type=bounded(float, 0.1, MAX_DURATION_S), default=10.0,
                   help="seconds of load (default 10)")
    p.add_argument("--recipients", type=bounded(int, 1, 1_000_000), default=1000,
                   help="offline recipients pushed to round robin (default 1000)")
    p.add_argument("--escalate-after-s", type=bounded(int, 1, 3600), default=None,
                   help="each push asks for offline escalation after this many seconds "
                        "(the app needs an escalation_url)")
    goodput_option(p)
    p = add("overload", "twice the capacity offered, open loop: goodput against the closed-loop "
                        "capacity and against the highest sustained open-loop rate "
                        "(daojia_msg/bench/overload.py)")
    p.add_argument("--of", choices=("c2c", "push"), default="c2c",
                   help="the scenario overloaded (default c2c; push: single HTTP pushes)")
    p.add_argument("--pairs", type=bounded(int, 1, 10_000), default=200, help="c2c: pairs")
    p.add_argument("--window", type=bounded(int, 1, 256), default=8,
                   help="c2c closed loop: requests in flight per sending connection")
    p.set_defaults(ack="each", batch=1)  # one ACK per push; single HTTP pushes
    backoff_option(p)
    p.add_argument("--recipients", type=bounded(int, 1, 1_000_000), default=1000,
                   help="push: offline recipients pushed to round robin (default 1000)")
    p.add_argument("--open-concurrency", type=bounded(int, 1, 10_000), default=512,
                   help="push, open loop: HTTP requests in flight at most (default 512; "
                        "--concurrency is the closed loop's)")
    p.add_argument("--duration", type=bounded(float, 0.1, MAX_DURATION_S), default=10.0,
                   help="seconds of the capacity run and of each overload run (default 10)")
    p.add_argument("--probes", type=bounded(int, 1, 20), default=6,
                   help="open-loop runs to find the sustained rate: the first at the "
                        "closed-loop capacity, 1.5x higher while sustained, then by "
                        "bisection (default 6)")
    p.add_argument("--probe-duration", type=bounded(float, 0.1, MAX_DURATION_S), default=5.0,
                   help="seconds of each probe (default 5)")
    p.add_argument("--rounds", type=bounded(int, 1, 20), default=1,
                   help="rounds of a capacity run followed at once by twice it; the "
                        "table adds each round's share of its own capacity and their "
                        "median (default 1: the capacity and overload runs above only)")
    p.add_argument("--sustain", type=bounded(float, 0.5, 1.0), default=SUSTAIN,
                   help="a probe rate is sustained when this share of it is delivered "
                        f"within --goodput-within (default {SUSTAIN:g})")
    goodput_option(p)
    p = add("pull", "drain a backlog of N pending messages (PULL pages + ACKs)")
    p.add_argument("-n", type=bounded(int, 1, 100_000), default=10_000,
                   help="pending messages to drain (default 10000)")
    p.add_argument("--page", type=bounded(int, 1, 100), default=100)
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.ca or args.server_name) and not args.tls:
        parser.error("--ca and --server-name go with --tls")
    if args.transport == "ws" and "push" in (args.scenario, getattr(args, "of", None)):
        parser.error("push has no gate clients: --transport ws goes with the gate's scenarios")
    if args.scenario == "versus":
        execute: Callable[[argparse.Namespace], dict[str, Any]] = versus.run
        show, warn = versus.render, versus.suspects
    elif args.scenario == "overload":
        execute, show, warn = overload.run, overload.render, overload.suspects
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
