# -*- test-case-name: tests.bench.test_mqtt -*-
"""One-to-one QoS1 load against an MQTT broker (the Mosquitto baseline).

Shaped like msgplatform's C2C loop so that the two can be divided:

* ``pairs`` pairs; sender *i* publishes QoS1 to ``bench/<run>/<i>`` and
  receiver *i* is subscribed QoS1 to it (clean session, MQTT 3.1.1).
* The broker's PUBACK to the sender stands for msgplatform's C2C ``Result``;
  the PUBLISH delivered to receiver *i* stands for the C2C push, and the
  receiver's PUBACK (sent as soon as the delivery is read) stands for the
  ``ACK``.
* Latency is publish -> delivery (c2c's ``push_latency_us``): the sender puts
  a ``time.monotonic_ns()`` stamp in the first 8 bytes of the payload and the
  receiver (in the same process) subtracts it on delivery; publish -> broker
  PUBACK (c2c's ``latency_us``, the Result) is reported as ``result_p*_ms``.
  The payload is padded to ``payload_size`` bytes.
* Closed loop (``rate == 0``): each sender keeps at most ``window`` messages in
  flight (default 8, like c2c).  As in c2c, a message leaves the window with
  its Result (the broker PUBACK); ``release="delivery"`` also waits for the
  delivery.  The stamp is the actual publish time.
  Open loop (``rate > 0``): ``rate`` msgs/s in all, spread over the processes
  by their share of pairs and round robin over the pairs; the stamp is the
  *intended* send time, so a late generator shows as latency (no coordinated
  omission), as c2c's open loop does.
* Publishing runs for ``duration`` seconds; then the load waits (at most
  ``drain`` seconds) for what is still in flight.  ``throughput`` counts the
  deliveries inside the window, divided by its length; the percentiles are
  over every message published in the window (those delivered during the
  drain included, so slow ones are not dropped).  ``delivered_per_s`` is
  c2c's ``acked_per_s`` instead: every delivery over the window plus the
  drain (``elapsed_s``); ``msgplatform-bench versus`` divides by that one.
* The generator's sockets set TCP_NODELAY (``nodelay=False`` leaves Nagle on).

The load runs in ``procs`` worker processes (:mod:`.mqttworker`; pairs dealt
round-robin, a pair's sender and receiver in the same process, so one clock is
used), each with its own asyncio loop.

Manual run::

    python -m daojia_msg.bench.mqtt --pairs 200 --duration 10
    python -m daojia_msg.bench.mqtt --pairs 200 --duration 10 --rate 5000 --procs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

from daojia_msg.bench.mqttplan import make_plan, split_pairs, summarize
from daojia_msg.bench.mqttworker import worker_main
from daojia_msg.bench.procfs import cpu_snapshot, find_pid, machine_busy, others_cpu, proc_cpu_s


def _recv(conn: Any, timeout: float, proc: int) -> tuple[str, Any]:
    if not conn.poll(timeout):
        raise RuntimeError(f"worker {proc} did not answer within {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"worker {proc} died") from None


def run_mqtt(
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
    broker_pid: int | None = None,
    run_id: str | None = None,
    bind_addresses: tuple[str, ...] | list[str] = (),
    connect_timeout: float = 30.0,
    drain: float = 5.0,
    nodelay: bool = True,
    release: str = "result",
) -> dict[str, Any]:
    """Run the load and return the figures (see the module docstring).

    ``rate`` 0 = closed loop with ``window`` in flight per sender.  ``count``
    (tests) sends exactly that many messages in all, closed loop, and waits
    for them (``duration`` is then only added to the time limit).
    ``broker_pid``: also report that process's CPU over the window.
    """
    plan = make_plan(
        host, port, pairs, payload_size, duration, rate, window, procs,
        count=count, run_id=run_id, bind_addresses=bind_addresses,
        connect_timeout=connect_timeout, drain=drain, nodelay=nodelay,
        release=release,
    )
    ctx = mp.get_context("spawn")
    workers = []
    try:
        for k, ids in enumerate(split_pairs(plan.pairs, plan.procs)):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(plan, k, ids, child), daemon=True)
            p.start()
            child.close()
            workers.append((p, parent))
        for k, (_, conn) in enumerate(workers):
            kind, payload = _recv(conn, plan.connect_timeout + 30, k)
            if kind != "ready":
                raise RuntimeError(f"worker {k}: {payload}")
        start_at = time.monotonic() + 0.2
        broker0 = proc_cpu_s(broker_pid) if broker_pid else None
        snap0, mach0 = cpu_snapshot(), machine_busy()
        for _, conn in workers:
            conn.send(start_at)
        limit = plan.duration + plan.drain + 30 + (plan.connect_timeout if count else 0)
        results: list[dict[str, Any]] = []
        broker1 = None
        for k, (_, conn) in enumerate(workers):
            kind, payload = _recv(conn, limit, k)
            if not results:  # the first worker done: about the end of the window
                broker1 = proc_cpu_s(broker_pid) if broker_pid else None
                snap1, mach1 = cpu_snapshot(), machine_busy()
            if kind != "done":
                raise RuntimeError(f"worker {k}: {payload}")
            results.append(payload)
    finally:
        for p, conn in workers:
            conn.close()
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()

    # the publishing window (open loop: longer than duration if the generator lagged)
    window_s = max(r["window_s"] for r in results)
    out: dict[str, Any] = {
        "mode": plan.mode,
        "broker": f"{host}:{port}",
        "pairs": plan.pairs,
        "payload_size": plan.payload_size,
        "duration": plan.duration,
        "rate": plan.rate,
        "window": plan.window,
        "release": plan.release,
        "procs": plan.procs,
        "nodelay": plan.nodelay,
        "run_id": plan.run_id,
    }
    out.update(
        summarize(
            [r["lat"] for r in results],
            duration=window_s,
            delivered_in_window=sum(r["delivered_in_window"] for r in results),
        )
    )
    res = summarize(
        [r["result_lat"] for r in results],
        duration=window_s,
        delivered_in_window=sum(r["acked_in_window"] for r in results),
    )
    out.update(
        result_rate=res["throughput"],
        result_p50_ms=res["p50_ms"],
        result_p99_ms=res["p99_ms"],
        result_p999_ms=res["p999_ms"],
    )
    sent = sum(r["sent"] for r in results)
    delivered = sum(r["delivered"] for r in results)
    # c2c's acked_per_s: every message, over the window and the drain
    elapsed_s = max(r["t_done"] for r in results) - min(r["t_start"] for r in results)
    out.update(
        sent=sent,
        delivered=delivered,
        elapsed_s=round(elapsed_s, 3),
        delivered_per_s=round(delivered / elapsed_s, 1) if elapsed_s > 0 else None,
        delivered_in_window=sum(r["delivered_in_window"] for r in results),
        broker_acked=sum(r["broker_acked"] for r in results),
        lost=sent - delivered,
        offered_rate=plan.rate if plan.mode == "open" else None,
        achieved_send_rate=sent / window_s if window_s > 0 else 0.0,
        disconnects=sum(r["disconnects"] for r in results),
        errors=[e for r in results for e in r["errors"]][:10],
        generator_cpu=[r["cpu"] for r in results],
        generator_cpu_total_s=[r["cpu_total_s"] for r in results],
    )
    exclude = {os.getpid(), *(p.pid for p, _ in workers if p.pid is not None)}
    if broker_pid:
        exclude.add(broker_pid)
    out["others_cpu"] = others_cpu(snap0, snap1, exclude, window_s)
    ncpu = os.cpu_count() or 1
    busy_j, total_j = mach1[0] - mach0[0], mach1[1] - mach0[1]
    out["machine_busy_cores"] = round(ncpu * busy_j / total_j, 2) if total_j > 0 else None
    out["machine_cores"] = ncpu
    if broker_pid:
        cpu = (broker1 - broker0) if broker0 is not None and broker1 is not None else None
        out["broker_cpu"] = {
            "pid": broker_pid,
            "cpu_s": round(cpu, 3) if cpu is not None else None,
            "busy": round(cpu / window_s, 3) if cpu is not None else None,
        }
    return out


def _format(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"mqtt {r['mode']} loop against {r['broker']}: {r['pairs']} pairs, "
        f"{r['payload_size']} B, {r['duration']:g} s, "
        + (f"rate {r['rate']:g}/s" if r["mode"] == "open" else f"window {r['window']}")
        + f", {r['procs']} proc(s)",
        f"  throughput {r['throughput']:.0f} msgs/s delivered+acked "
        f"(sent {r['sent']}, delivered {r['delivered']}, broker PUBACKs {r['broker_acked']}, "
        f"lost {r['lost']})",
        f"  latency publish->delivery ms: p50 {ms(r['p50_ms'])}  p99 {ms(r['p99_ms'])}  "
        f"p99.9 {ms(r['p999_ms'])}  max {ms(r['max_ms'])}",
        f"  broker PUBACKs (the Result) {r['result_rate']:.0f}/s, publish->PUBACK ms: "
        f"p50 {ms(r['result_p50_ms'])}  p99 {ms(r['result_p99_ms'])}  "
        f"p99.9 {ms(r['result_p999_ms'])}",
    ]
    for c in r["generator_cpu"]:
        lines.append(
            f"  generator proc {c['proc']} ({c['pairs']} pairs): cpu {c['cpu_s']} s "
            f"(user {c['user_s']}, sys {c['sys_s']}), busy {c['busy']}"
        )
    if "broker_cpu" in r:
        b = r["broker_cpu"]
        lines.append(f"  broker pid {b['pid']}: cpu {b['cpu_s']} s, busy {b['busy']}")
    lines.append(f"  machine: {r['machine_busy_cores']} of {r['machine_cores']} cores busy; others: "
                 + (", ".join(f"{o['comm']}[{o['pid']}] {o['cpu_s']} s" for o in r["others_cpu"][:6])
                    or "none above 0.05 s"))
    if r["errors"]:
        lines.append(f"  errors: {r['errors']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m daojia_msg.bench.mqtt",
        description="One-to-one QoS1 load against an MQTT broker (msgplatform c2c baseline).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--payload", type=int, default=64, help="payload bytes (>= 12)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open loop: total msgs/s over all pairs (0 = closed loop)")
    p.add_argument("--window", type=int, default=8,
                   help="closed loop: in flight per sender (c2c's default is 8)")
    p.add_argument("--release", choices=("result", "delivery"), default="result",
                   help="closed loop: a message leaves the window with its broker PUBACK "
                        "(result, like c2c) or once also delivered (delivery)")
    p.add_argument("--procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--count", type=int, default=None,
                   help="send exactly this many messages in all and wait for them")
    p.add_argument("--bind", action="append", default=[], metavar="ADDR",
                   help="source address(es) for the connections, e.g. 127.0.0.2 (repeatable)")
    p.add_argument("--broker-pid", type=int, default=None,
                   help="report this process's CPU (default: the local 'mosquitto', if any)")
    p.add_argument("--no-nodelay", dest="nodelay", action="store_false",
                   help="leave Nagle on for the generator's sockets (default: TCP_NODELAY)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    broker_pid = args.broker_pid
    if broker_pid is None and args.host.startswith("127."):
        broker_pid = find_pid("mosquitto")
    try:
        result = run_mqtt(
            args.host, args.port, args.pairs, args.payload, args.duration, args.rate,
            args.window, args.procs, count=args.count, broker_pid=broker_pid,
            bind_addresses=args.bind, nodelay=args.nodelay,
            release=args.release,
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(_format(result))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
