# -*- test-case-name: tests.bench.test_versus -*-
"""``msgplatform-bench versus``: msgplatform and an MQTT broker, side by side.

One run drives the ``c2c`` scenario against the node (:func:`runner.run
<daojia_msg.bench.runner.run>`), then the same load against the broker
(:func:`mqtt.run_mqtt <daojia_msg.bench.mqtt.run_mqtt>`, Mosquitto on this
machine), and divides the two. Both sides get the same options:

* ``--pairs`` sender/receiver pairs (2 connections each), bound to the same
  source addresses (``--source-first``, ``--per-address``);
* ``--size`` (or ``--payload``) bytes of content / MQTT payload; the first 8
  (c2c) or 12 (MQTT) carry the send time, so at least 12;
* ``--rate 0``: closed loop, ``--window`` in flight per sender, a message
  leaving the window with its answer (c2c's ``Result``, the broker's PUBACK);
  ``--rate R``: open loop, R messages/s in total over all ``--procs``, spread
  by each process's share of pairs, stamped with the intended send time;
* ``--duration`` seconds of sending, then at most ``--drain`` seconds for what
  is in flight; ``--procs`` generator processes.

The figures compared, the same definition on each side:

* ``throughput_per_s``: messages delivered to the receiver and ACKed
  (c2c: ACK answered by the node; MQTT: delivered, the receiver's PUBACK sent)
  over the run, the drain included (c2c's ``acked_per_s``);
* ``delivery_p*_ms``: send -> delivery to the receiver (c2c's push latency),
  over every message sent; ``result_p99_ms``: send -> Result / PUBACK;
* ``generator_cpu_pct``: each generator process's share of a core (above 85 %
  the side may have measured its generator: ``generator_suspect``);
* ``server_cpu_us_per_msg``: the server's CPU (``--node-pid``,
  ``--broker-pid``, from ``/proc``) over the run divided by the messages.

``ratios`` are ours / the broker's: throughput above 1, p99 and CPU per
message below 1 favour msgplatform. Both generators are lean (pre-built
frames or packets: Twisted for ours, asyncio and :mod:`.mqttcodec` for MQTT),
but they are not the same code: compare their CPU before trusting a ratio.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from daojia_msg.bench import mqtt
from daojia_msg.bench.mqttplan import Plan, make_plan
from daojia_msg.bench.procfs import proc_cpu_s
from daojia_msg.bench.report import calibrate, git_commit, machine_facts
from daojia_msg.bench.runner import BenchError, strip_samples, target
from daojia_msg.bench.runner import run as run_c2c
from daojia_msg.bench.stats import cpu_share, generator_verdict
from daojia_msg.bench.wire import source_address

OURS, THEIRS = "msgplatform", "mosquitto"
#: name in ``ratios`` -> the side's figure divided.
RATIOS = (("throughput", "throughput_per_s"), ("p99", "delivery_p99_ms"),
          ("cpu_per_msg", "server_cpu_us_per_msg"))
#: Under this share of a core a server counts as idle (:func:`settle`).
QUIET_PCT = 5.0
#: Options of the run that are the broker's only: not passed to c2c.
MQTT_ONLY = ("mqtt", "broker_pid")


def reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """``None`` if a TCP connection to ``host:port`` opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def settle(pid: int, cpu_s: Callable[[int], float | None] = proc_cpu_s,
           sleep: Callable[[float], object] = time.sleep, step: float = 0.5,
           limit: float = 10.0, quiet_pct: float = QUIET_PCT) -> float:
    """Wait until process ``pid`` used under ``quiet_pct`` of a core over
    ``step`` seconds (or ``limit`` passed, or it cannot be read): the seconds
    waited. The node may still be working off the c2c run (closing sessions,
    writing) when the broker's run starts; on 2 cores that skews it."""
    waited, before = 0.0, cpu_s(pid)
    while waited < limit and before is not None:
        sleep(step)
        waited += step
        after = cpu_s(pid)
        if after is None or 100.0 * (after - before) / step < quiet_pct:
            break
        before = after
    return waited


def sources(args: argparse.Namespace) -> list[str]:
    """The source addresses c2c's ``2 * pairs`` connections use."""
    return list(dict.fromkeys(source_address(i, args.per_address, args.source_first)
                              for i in range(2 * args.pairs)))


def mqtt_plan(args: argparse.Namespace) -> Plan:
    """The broker side's plan from the run's options; ``BenchError`` if the
    options do not suit it (a payload under 12 bytes, more --procs than pairs)."""
    try:
        return make_plan(
            args.mqtt[0], args.mqtt[1], args.pairs, args.size, args.duration, args.rate,
            args.window, args.procs, bind_addresses=sources(args),
            connect_timeout=args.setup_timeout, drain=args.drain)
    except ValueError as e:
        raise BenchError(f"versus: {e}") from None


def c2c_args(args: argparse.Namespace) -> argparse.Namespace:
    """The run's options as a ``c2c`` run takes them (one ACK per push, as the
    MQTT receiver PUBACKs each delivery)."""
    values = {k: v for k, v in vars(args).items() if k not in MQTT_ONLY}
    return argparse.Namespace(**dict(values, scenario="c2c", ack="each"))


def run(args: argparse.Namespace,
        run_ours: Callable[[argparse.Namespace], dict[str, Any]] = run_c2c,
        run_theirs: Callable[..., dict[str, Any]] = mqtt.run_mqtt,
        probe: Callable[[str, int], str | None] = reachable,
        wait_idle: Callable[[int], float] = settle) -> dict[str, Any]:
    """c2c against the node, then the broker: the JSON document of the run.
    Before each side the other side's server (when its pid is given) is
    left to go idle."""
    if len(getattr(args, "node_pids", None) or ()) > 1:
        raise BenchError("versus compares one node with the broker: give one --node-pid")
    plan = mqtt_plan(args)
    for what, (host, port) in (("the node's gate", target(args)), ("the MQTT broker", args.mqtt)):
        why = probe(host, port)
        if why is not None:
            raise BenchError(f"{what} at {host}:{port} is not reachable: {why}")
    settled = {"broker_s": wait_idle(args.broker_pid) if args.broker_pid else None}
    ours = run_ours(c2c_args(args))
    if not ours["results"].get("pairs"):
        raise BenchError(f"no pair logged in to the node: {ours['results'].get('login_failures')}")
    settled["node_s"] = wait_idle(args.node_pid) if args.node_pid else None
    if not args.no_progress:
        print(f"msgplatform-bench: the same load against {plan.host}:{plan.port}", file=sys.stderr)
    try:
        theirs = run_theirs(
            plan.host, plan.port, plan.pairs, plan.payload_size, plan.duration, plan.rate,
            plan.window, plan.procs, broker_pid=args.broker_pid,
            bind_addresses=plan.bind_addresses, connect_timeout=plan.connect_timeout,
            drain=plan.drain)
    except (ValueError, RuntimeError) as e:
        raise BenchError(f"the MQTT run against {plan.host}:{plan.port} failed: {e}") from None
    return document(args, ours, theirs, settled, calibrate())


def node_busy(theirs: dict[str, Any], node_pid: int | None) -> float | None:
    """The node's share of a core during the broker's run (``others_cpu``:
    0 when it stayed under 0.05 CPU seconds), ``None`` without its pid."""
    if not node_pid:
        return None
    return next((o["busy"] for o in theirs.get("others_cpu", []) if o["pid"] == node_pid), 0.0)


def document(args: argparse.Namespace, ours: dict[str, Any], theirs: dict[str, Any],
             settled: dict[str, float | None] | None = None,
             after_ms: float | None = None) -> dict[str, Any]:
    """The versus JSON document from the two runs' results (``settled``: the
    seconds waited for each server to go idle before the other's run)."""
    sides = {OURS: ours_side(ours), THEIRS: theirs_side(theirs)}
    return {
        "scenario": "versus",
        "parameters": {
            "pairs": args.pairs, "size": args.size, "mode": "open" if args.rate else "closed",
            "rate": args.rate, "window": args.window, "duration": args.duration,
            "procs": args.procs, "drain": args.drain,
            "gate": "{}:{}".format(*target(args)), "transport": getattr(args, "transport", "tcp"),
            "mqtt": f"{args.mqtt[0]}:{args.mqtt[1]}",
            "node_pid": args.node_pid, "broker_pid": args.broker_pid,
        },
        "comparison": {**sides, "ratios": ratios(sides[OURS], sides[THEIRS])},
        "quiet": {**(settled or {}),
                  "node_busy_in_broker_run": node_busy(theirs, args.node_pid)},
        OURS: strip_samples(ours),
        THEIRS: theirs,
        "git_commit": git_commit(),
        # Before our half (the c2c run took it), and after the broker's half.
        "machine": machine_facts((ours.get("machine") or {}).get("calibration_ms"),
                                 after_ms),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def side(*, throughput: float | None, sent: int, completed: int, elapsed_s: float | None,
         delivery_ms: tuple[float | None, float | None, float | None],
         result_p99_ms: float | None, generator_cpu_pct: list[float | None],
         server_pid: int | None, server_cpu_s: float | None) -> dict[str, Any]:
    """One side's figures, defined alike for both (see the module docstring)."""
    p50, p99, p999 = (_ms(v) for v in delivery_ms)
    per_msg = round(1e6 * server_cpu_s / completed, 1) \
        if server_cpu_s is not None and completed else None
    return {
        "throughput_per_s": throughput, "sent": sent, "completed": completed,
        "lost": sent - completed, "elapsed_s": elapsed_s,
        "delivery_p50_ms": p50, "delivery_p99_ms": p99, "delivery_p999_ms": p999,
        "result_p99_ms": _ms(result_p99_ms),
        "generator_cpu_pct": generator_cpu_pct,
        "generator_suspect": generator_verdict(
            [{"cpu_pct": c} for c in generator_cpu_pct])["suspect"],
        "server_pid": server_pid, "server_cpu_s": server_cpu_s,
        "server_cpu_pct": cpu_share(server_cpu_s, elapsed_s)
        if server_cpu_s is not None and elapsed_s else None,
        "server_cpu_us_per_msg": per_msg,
    }


def ours_side(doc: dict[str, Any]) -> dict[str, Any]:
    """msgplatform's figures from a ``c2c`` document (:func:`runner.run`)."""
    res, node = doc["results"], doc["node"]
    push = res.get("push_latency") or {}
    return side(
        throughput=res.get("acked_per_s"), sent=res.get("sent", 0),
        completed=res.get("acked", 0), elapsed_s=res.get("elapsed_s"),
        delivery_ms=(push.get("p50_ms"), push.get("p99_ms"), push.get("p99.9_ms")),
        result_p99_ms=(res.get("result_latency") or {}).get("p99_ms"),
        generator_cpu_pct=[p.get("cpu_pct") for p in doc["generator"]["procs"]],
        server_pid=node.get("pid"), server_cpu_s=node.get("cpu_s"))


def theirs_side(result: dict[str, Any]) -> dict[str, Any]:
    """The broker's figures from :func:`mqtt.run_mqtt`'s result."""
    broker = result.get("broker_cpu") or {}
    return side(
        throughput=result.get("delivered_per_s"), sent=result["sent"],
        completed=result["delivered"], elapsed_s=result.get("elapsed_s"),
        delivery_ms=(result.get("p50_ms"), result.get("p99_ms"), result.get("p999_ms")),
        result_p99_ms=result.get("result_p99_ms"),
        generator_cpu_pct=[None if c.get("busy") is None else round(100 * c["busy"], 1)
                           for c in result["generator_cpu"]],
        server_pid=broker.get("pid"), server_cpu_s=broker.get("cpu_s"))


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs`` to 3 decimals; ``None`` when either is unknown or
    the divisor is 0 (never a made-up figure)."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 3)


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    return {name: ratio(ours.get(key), theirs.get(key)) for name, key in RATIOS}


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_fmt(v, digits) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


#: (label, key in a side, decimals, ratio name or None): the table's rows.
ROWS = (
    ("throughput msgs/s (delivered+acked)", "throughput_per_s", 0, "throughput"),
    ("sent", "sent", 0, None),
    ("delivered+acked", "completed", 0, None),
    ("lost", "lost", 0, None),
    ("delivery latency p50 ms", "delivery_p50_ms", 2, None),
    ("delivery latency p99 ms", "delivery_p99_ms", 2, "p99"),
    ("delivery latency p99.9 ms", "delivery_p999_ms", 2, None),
    ("result latency p99 ms", "result_p99_ms", 2, None),
    ("generator cpu % of a core, per proc", "generator_cpu_pct", 0, None),
    ("generator suspect (> 85 %)", "generator_suspect", 0, None),
    ("server cpu % of a core", "server_cpu_pct", 1, None),
    ("server cpu us per message", "server_cpu_us_per_msg", 1, "cpu_per_msg"),
)


def render(doc: dict[str, Any]) -> str:
    """The comparison as a table: one column a side, and the ratios."""
    par, cmp = doc["parameters"], doc["comparison"]
    loop = (f"open loop {par['rate']:g} msgs/s in total" if par["mode"] == "open"
            else f"closed loop, {par['window']} in flight per sender")
    rows: list[tuple[str, ...]] = [("metric", OURS, THEIRS, "ours/theirs")]
    for label, key, digits, name in ROWS:
        rows.append((label, _fmt(cmp[OURS][key], digits), _fmt(cmp[THEIRS][key], digits),
                     _fmt(cmp["ratios"][name], 3) if name else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rows.insert(1, tuple("-" * w for w in widths))
    lines = [f"msgplatform-bench versus: {par['pairs']} pairs, {par['size']} B, {loop}, "
             f"{par['duration']:g} s, {par['procs']} proc(s)",
             f"{OURS}: c2c over {par.get('transport', 'tcp')} at {par['gate']}; "
             f"{THEIRS}: MQTT QoS1 at {par['mqtt']}"]
    for r in rows:
        cells = (f"{c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True))
        lines.append(f"{r[0]:<{widths[0]}}  " + "  ".join(cells))
    lines.append("ours/theirs: throughput above 1, p99 and cpu per message below 1 "
                 "favour msgplatform")
    busy = doc.get("quiet", {}).get("node_busy_in_broker_run")
    if busy is not None and 100 * busy >= QUIET_PCT:
        lines.append(f"(the node used {100 * busy:.0f} % of a core during the broker's run)")
    return "\n".join(lines)


def suspects(doc: dict[str, Any]) -> list[str]:
    """A warning per side whose generator was near a full core."""
    return [f"the {name} generator was near a full core: its figures may be the "
            "generator's; try more --procs"
            for name in (OURS, THEIRS) if doc["comparison"][name]["generator_suspect"]]
