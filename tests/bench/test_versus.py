"""``msgplatform-bench versus``: the sides, the ratios, the table and JSON, the
options, the run's order and its one-line failures (fed two result dicts; no
node, no broker), and one tiny run against a real node and Mosquitto (counts
only, never speed)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import cli, runner, versus
from daojia_msg.bench.runner import BenchError
from tests.nodes import NodeTestCase
from tests.servers import require_mosquitto


def c2c_doc() -> dict[str, Any]:
    """A ``c2c`` document as :func:`runner.run` returns it (the fields versus reads)."""
    return {
        "scenario": "c2c",
        "parameters": {"pairs": 200},
        "results": {
            "pairs": 200, "sent": 20_400, "ok": 20_400, "acked": 20_000, "elapsed_s": 5.0,
            "acked_per_s": 4000.0,
            "result_latency": {"count": 20_400, "p50_ms": 100.0, "p99_ms": 300.0,
                               "p99.9_ms": 350.0},
            "push_latency": {"count": 20_000, "p50_ms": 200.0, "p99_ms": 400.0,
                             "p99.9_ms": 450.0},
            "latency_us": [1, 2, 3],  # a raw sample list: never written
        },
        "generator": {"procs": [{"pid": 11, "cpu_s": 1.5, "wall_s": 5.0, "cpu_pct": 30.0},
                                {"pid": 12, "cpu_s": 1.6, "wall_s": 5.0, "cpu_pct": 32.0}],
                      "suspect": False},
        "node": {"pid": 100, "cpu_s": 4.8, "cpu_pct": 96.0},
    }


def mqtt_result() -> dict[str, Any]:
    """:func:`mqtt.run_mqtt`'s result (the fields versus reads)."""
    return {
        "mode": "closed", "sent": 100_000, "delivered": 100_000, "elapsed_s": 5.0,
        "delivered_per_s": 20_000.0, "throughput": 20_100.0,
        "p50_ms": 1.23456, "p99_ms": 4.0, "p999_ms": 8.0,
        "result_p99_ms": 2.0,
        "generator_cpu": [{"proc": 0, "busy": 0.9}, {"proc": 1, "busy": 0.5}],
        "broker_cpu": {"pid": 200, "cpu_s": 2.0, "busy": 0.4},
    }


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["versus", *argv])


class RatioTests(SynchronousTestCase):
    def test_ratio(self) -> None:
        self.assertEqual(versus.ratio(4000.0, 20_000.0), 0.2)
        self.assertEqual(versus.ratio(1.0, 3.0), 0.333)
        self.assertIsNone(versus.ratio(None, 2.0))
        self.assertIsNone(versus.ratio(2.0, None))
        self.assertIsNone(versus.ratio(2.0, 0))

    def test_sides_defined_alike(self) -> None:
        ours, theirs = versus.ours_side(c2c_doc()), versus.theirs_side(mqtt_result())
        self.assertEqual(set(ours), set(theirs))
        self.assertEqual((ours["throughput_per_s"], ours["completed"], ours["lost"]),
                         (4000.0, 20_000, 400))
        self.assertEqual((ours["delivery_p50_ms"], ours["delivery_p99_ms"],
                          ours["delivery_p999_ms"], ours["result_p99_ms"]),
                         (200.0, 400.0, 450.0, 300.0))
        self.assertEqual(ours["generator_cpu_pct"], [30.0, 32.0])
        self.assertFalse(ours["generator_suspect"])
        # 4.8 CPU seconds over 5 s and 20,000 messages
        self.assertEqual((ours["server_cpu_pct"], ours["server_cpu_us_per_msg"]), (96.0, 240.0))
        # the broker side: c2c's throughput definition, not the in-window one
        self.assertEqual(theirs["throughput_per_s"], 20_000.0)
        self.assertEqual(theirs["delivery_p50_ms"], 1.235)
        self.assertEqual(theirs["generator_cpu_pct"], [90.0, 50.0])
        self.assertTrue(theirs["generator_suspect"])
        self.assertEqual((theirs["server_cpu_pct"], theirs["server_cpu_us_per_msg"]),
                         (40.0, 20.0))
        self.assertEqual(versus.ratios(ours, theirs),
                         {"throughput": 0.2, "p99": 100.0, "cpu_per_msg": 12.0})

    def test_no_pid_no_cpu_figures(self) -> None:
        doc = c2c_doc()
        doc["node"] = {"pid": None}
        result = mqtt_result()
        del result["broker_cpu"]
        ours, theirs = versus.ours_side(doc), versus.theirs_side(result)
        self.assertIsNone(ours["server_cpu_us_per_msg"])
        self.assertIsNone(theirs["server_cpu_pct"])
        self.assertIsNone(versus.ratios(ours, theirs)["cpu_per_msg"])

    def test_nothing_delivered(self) -> None:
        result = dict(mqtt_result(), delivered=0, delivered_per_s=0.0, p50_ms=None,
                      p99_ms=None, p999_ms=None)
        theirs = versus.theirs_side(result)
        self.assertIsNone(theirs["server_cpu_us_per_msg"])
        ratios = versus.ratios(versus.ours_side(c2c_doc()), theirs)
        self.assertEqual(ratios, {"throughput": None, "p99": None, "cpu_per_msg": None})


class DocumentTests(SynchronousTestCase):
    def doc(self, *argv: str) -> dict[str, Any]:
        args = parse("--pairs", "200", "--size", "64", "--node-pid", "100",
                     "--broker-pid", "200", *argv)
        return versus.document(args, c2c_doc(), mqtt_result())

    def test_json(self) -> None:
        back = json.loads(json.dumps(self.doc()))
        self.assertEqual(set(back), {"scenario", "parameters", "comparison", "quiet",
                                     "msgplatform", "mosquitto", "git_commit", "machine",
                                     "time"})
        self.assertEqual(back["quiet"], {"node_busy_in_broker_run": 0.0})
        self.assertEqual(back["scenario"], "versus")
        self.assertEqual(back["parameters"]["mode"], "closed")
        self.assertEqual((back["parameters"]["gate"], back["parameters"]["mqtt"]),
                         ("127.0.0.1:7000", "127.0.0.1:1883"))
        self.assertEqual(back["comparison"]["ratios"]["cpu_per_msg"], 12.0)
        self.assertEqual(back["mosquitto"]["delivered"], 100_000)
        self.assertEqual(back["msgplatform"]["results"]["acked"], 20_000)
        self.assertNotIn("latency_us", back["msgplatform"]["results"])

    def test_machine_readings_before_ours_and_after_theirs(self) -> None:
        args = parse("--pairs", "200", "--node-pid", "100")
        ours = dict(c2c_doc(), machine={"nproc": 2, "calibration_ms": 11.0})
        machine = versus.document(args, ours, mqtt_result(), after_ms=19.5)["machine"]
        self.assertEqual((machine["calibration_ms"], machine["calibration_after_ms"]),
                         (11.0, 19.5))

    def test_table(self) -> None:
        text = versus.render(self.doc())
        lines = text.splitlines()
        self.assertEqual(lines[0], "msgplatform-bench versus: 200 pairs, 64 B, "
                                   "closed loop, 8 in flight per sender, 10 s, 1 proc(s)")
        self.assertEqual(lines[2].split(), ["metric", "msgplatform", "mosquitto", "ours/theirs"])
        rows = {line[:36].strip(): line[36:].split() for line in lines[4:-1]}
        self.assertEqual(rows["throughput msgs/s (delivered+acked)"],
                         ["4,000", "20,000", "0.200"])
        self.assertEqual(rows["delivery latency p99 ms"], ["400.00", "4.00", "100.000"])
        self.assertEqual(rows["delivery latency p50 ms"], ["200.00", "1.24"])
        self.assertEqual(rows["generator cpu % of a core, per proc"], ["30,", "32", "90,", "50"])
        self.assertEqual(rows["generator suspect (> 85 %)"], ["no", "yes"])
        self.assertEqual(rows["server cpu us per message"], ["240.0", "20.0", "12.000"])
        self.assertIn("favour msgplatform", lines[-1])

    def test_open_loop_title_and_missing_figures(self) -> None:
        args = parse("--rate", "1000", "--duration", "5", "--procs", "2", "--pairs", "10")
        doc = versus.document(args, dict(c2c_doc(), node={"pid": None}), mqtt_result())
        text = versus.render(doc)
        self.assertIn("open loop 1000 msgs/s in total, 5 s, 2 proc(s)", text)
        self.assertIn("server cpu us per message", text)
        [row] = [line for line in text.splitlines() if line.startswith("server cpu us")]
        self.assertEqual(row.split()[-3:], ["-", "20.0", "-"])

    def test_node_busy_in_the_broker_run(self) -> None:
        result = dict(mqtt_result(), others_cpu=[{"pid": 5, "busy": 0.9},
                                                 {"pid": 100, "busy": 0.54}])
        args = parse("--node-pid", "100")
        doc = versus.document(args, c2c_doc(), result, {"broker_s": None, "node_s": 10.0})
        self.assertEqual(doc["quiet"], {"broker_s": None, "node_s": 10.0,
                                        "node_busy_in_broker_run": 0.54})
        self.assertEqual(versus.render(doc).splitlines()[-1],
                         "(the node used 54 % of a core during the broker's run)")
        self.assertIsNone(versus.node_busy(result, None))
        self.assertEqual(versus.node_busy(result, 6), 0.0)

    def test_suspects(self) -> None:
        [warning] = versus.suspects(self.doc())
        self.assertIn("the mosquitto generator was near a full core", warning)


class OptionsTests(SynchronousTestCase):
    def test_defaults_and_payload_alias(self) -> None:
        args = parse()
        self.assertEqual((args.mqtt, args.broker_pid, args.size, args.window, args.rate),
                         (("127.0.0.1", 1883), None, 32, 8, 0.0))
        self.assertEqual(parse("--payload", "64").size, 64)
        self.assertEqual(parse("--size", "100").size, 100)
        self.assertEqual(parse("--mqtt", "localhost:1884").mqtt, ("127.0.0.1", 1884))

    def test_rejected(self) -> None:
        for argv in (["--mqtt", "10.0.0.1:1883"], ["--mqtt", "1883"], ["--ack", "read"],
                     ["--pairs", "0"], ["--window", "0"], ["--payload", "70000"]):
            with contextlib.redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, parse, *argv)

    def test_plan_checks_the_broker_side(self) -> None:
        e = self.assertRaises(BenchError, versus.mqtt_plan, parse("--size", "8"))
        self.assertIn("payload_size must be 12..65000", str(e))
        e = self.assertRaises(BenchError, versus.mqtt_plan, parse("--pairs", "2", "--procs", "3"))
        self.assertIn("procs (3) must not exceed pairs (2)", str(e))

    def test_same_load_on_both_sides(self) -> None:
        args = parse("--pairs", "5", "--rate", "1000", "--procs", "2", "--window", "4",
                     "--duration", "3", "--drain", "2", "--per-address", "4",
                     "--broker-pid", "9", "--uid-base", "100")
        plan = versus.mqtt_plan(args)
        ours = versus.c2c_args(args)
        self.assertEqual((ours.scenario, ours.ack), ("c2c", "each"))
        self.assertFalse(hasattr(ours, "mqtt") or hasattr(ours, "broker_pid"))
        specs = runner.worker_specs(ours)
        # rate: in total, spread by share of pairs, on both sides
        self.assertEqual(sum(s["rate"] for s in specs), plan.rate)
        self.assertEqual((plan.pairs, plan.window, plan.procs, plan.duration, plan.drain),
                         (5, 4, 2, 3.0, 2.0))
        self.assertEqual({s["window"] for s in specs}, {4})
        # 10 connections, 4 per source address: the same three addresses
        self.assertEqual(plan.bind_addresses, ("127.0.0.2", "127.0.0.3", "127.0.0.4"))


class RunTests(SynchronousTestCase):
    """The order of a run and its failures, with both runners faked."""

    def setUp(self) -> None:
        self.calls: list[Any] = []

    def run_ours(self, args: argparse.Namespace) -> dict[str, Any]:
        self.calls.append(("c2c", args))
        return c2c_doc()

    def run_theirs(self, *a: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append(("mqtt", a, kw))
        return mqtt_result()

    def drive(self, args: argparse.Namespace, down: tuple[str, int] | None = None) -> Any:
        def probe(host: str, port: int) -> str | None:
            return "Connection refused" if (host, port) == down else None

        return versus.run(args, self.run_ours, self.run_theirs, probe, self.settle)

    def settle(self, pid: int) -> float:
        self.calls.append(("settle", pid))
        return 0.5

    def test_one_node_only(self) -> None:
        args = parse("--pairs", "4", "--no-progress", "--node-pid", "3,4")
        with self.assertRaises(runner.BenchError) as e:
            self.drive(args)
        self.assertIn("give one --node-pid", str(e.exception))
        self.assertEqual(self.calls, [])

    def test_c2c_then_mqtt(self) -> None:
        args = parse("--pairs", "4", "--size", "64", "--rate", "100", "--no-progress",
                     "--broker-pid", "7", "--node-pid", "3")
        doc = self.drive(args)
        [idle_broker, (first, ours), idle_node, (second, a, kw)] = self.calls
        self.assertEqual((idle_broker, first, idle_node, second),
                         (("settle", 7), "c2c", ("settle", 3), "mqtt"))
        self.assertEqual(ours.scenario, "c2c")
        self.assertEqual(a, ("127.0.0.1", 1883, 4, 64, 10.0, 100.0, 8, 1))
        self.assertEqual((kw["broker_pid"], kw["drain"], kw["bind_addresses"]),
                         (7, 10.0, ("127.0.0.2",)))
        self.assertEqual(doc["comparison"]["ratios"]["throughput"], 0.2)
        self.assertEqual(doc["quiet"], {"broker_s": 0.5, "node_s": 0.5,
                                        "node_busy_in_broker_run": 0.0})

    def test_no_pids_no_waiting(self) -> None:
        self.drive(parse("--no-progress"))
        self.assertEqual([c[0] for c in self.calls], ["c2c", "mqtt"])

    def test_broker_down_is_one_line_before_any_load(self) -> None:
        args = parse("--mqtt", "127.0.0.1:1999", "--no-progress")
        e = self.assertRaises(BenchError, self.drive, args, ("127.0.0.1", 1999))
        self.assertEqual(str(e), "the MQTT broker at 127.0.0.1:1999 is not reachable: "
                                 "Connection refused")
        self.assertEqual(self.calls, [])

    def test_node_down(self) -> None:
        e = self.assertRaises(BenchError, self.drive, parse("--no-progress"), ("127.0.0.1", 7000))
        self.assertIn("the node's gate at 127.0.0.1:7000 is not reachable", str(e))

    def test_mqtt_failure_is_one_line(self) -> None:
        def broken(*a: Any, **kw: Any) -> dict[str, Any]:
            raise RuntimeError("worker 0: proc 0: connect refused: Not authorized")

        e = self.assertRaises(BenchError, versus.run, parse("--no-progress"), self.run_ours,
                              broken, lambda host, port: None, self.settle)
        self.assertIn("the MQTT run against 127.0.0.1:1883 failed: worker 0", str(e))

    def test_no_pair_logged_in(self) -> None:
        doc = c2c_doc()
        doc["results"] = {"pairs": 0, "login_failures": {"ConnectionRefusedError": 2}}
        e = self.assertRaises(BenchError, versus.run, parse("--no-progress"), lambda a: doc,
                              self.run_theirs, lambda host, port: None, self.settle)
        self.assertIn("no pair logged in", str(e))
        self.assertEqual(self.calls, [])


class SettleTests(SynchronousTestCase):
    """Waiting for a server to go idle, on a fake clock and fake /proc."""

    def settle(self, cpu: list[float | None], **kw: Any) -> tuple[float, list[float]]:
        readings, slept = iter(cpu), []
        waited = versus.settle(42, cpu_s=lambda pid: next(readings), sleep=slept.append, **kw)
        return waited, slept

    def test_idle_at_once(self) -> None:
        self.assertEqual(self.settle([10.0, 10.01]), (0.5, [0.5]))

    def test_waits_out_the_busy_steps(self) -> None:
        # 0.4 s of CPU in each of two 0.5 s steps, then 0.01 s
        self.assertEqual(self.settle([1.0, 1.4, 1.8, 1.81])[0], 1.5)

    def test_bounded(self) -> None:
        waited, slept = self.settle([float(i) for i in range(100)], limit=2.0)
        self.assertEqual((waited, len(slept)), (2.0, 4))

    def test_unreadable_pid(self) -> None:
        self.assertEqual(self.settle([None]), (0.0, []))
        self.assertEqual(self.settle([1.0, None])[0], 0.5)


class MainTests(SynchronousTestCase):
    def test_unreachable_broker_one_line(self) -> None:
        gate = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(gate.close)
        with socket.create_server(("127.0.0.1", 0)) as gone:
            broker_port = gone.getsockname()[1]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["versus", "--gate", f"127.0.0.1:{gate.getsockname()[1]}",
                             "--mqtt", f"127.0.0.1:{broker_port}", "--no-progress"])
        self.assertEqual(code, 1)
        self.assertEqual(err.getvalue(), f"msgplatform-bench: the MQTT broker at "
                                         f"127.0.0.1:{broker_port} is not reachable: "
                                         "Connection refused\n")


class SmokeTests(NodeTestCase):
    """A tiny versus run against a real node and the local Mosquitto."""

    async def test_both_sides_deliver_everything(self) -> None:
        host, port = require_mosquitto()
        node = await self.start_node()
        self.addCleanup(self.stop_node, node)
        out = os.path.abspath(self.mktemp())
        argv = ["versus", "--gate", f"127.0.0.1:{self.port('gate')}", "--mqtt", f"{host}:{port}",
                "--pairs", "2", "--rate", "100", "--duration", "0.2", "--size", "64",
                "--no-progress", "--json", out]
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(await deferToThread(cli.main, argv), 0)
        with open(out) as f:
            cmp = json.load(f)["comparison"]
        for side in ("msgplatform", "mosquitto"):
            # 100/s for 0.2 s: 20 sends, give or take the last tick on a busy
            # machine; every one sent is delivered and ACKed.
            self.assertGreaterEqual(cmp[side]["sent"], 18, side)
            self.assertEqual(cmp[side]["completed"], cmp[side]["sent"], side)
        self.assertIsNotNone(cmp["ratios"]["throughput"])
