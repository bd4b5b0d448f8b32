"""Tests for :mod:`daojia_msg.bench.mqttplan`: the Mosquitto baseline's plan and figures."""

from __future__ import annotations

from typing import Any

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import mqttplan


def plan(**kw: Any) -> Any:
    args: dict[str, Any] = dict(host="127.0.0.1", port=1883, pairs=200, payload_size=64,
                                duration=10.0, rate=0.0, window=4, procs=2)
    args.update(kw)
    return mqttplan.make_plan(**args)


class SummaryTests(SynchronousTestCase):
    def test_percentiles_in_ms(self) -> None:
        # 1..1000 ms over two processes' arrays, in ns
        a = np.arange(1, 501, dtype=np.int64) * 1_000_000
        b = np.arange(501, 1001, dtype=np.int64) * 1_000_000
        s = mqttplan.summarize([b, a], duration=10.0, delivered_in_window=1000)
        expect = np.percentile(np.arange(1, 1001, dtype=np.float64), [50, 99, 99.9])
        self.assertAlmostEqual(s["p50_ms"], expect[0])
        self.assertAlmostEqual(s["p99_ms"], expect[1])
        self.assertAlmostEqual(s["p999_ms"], expect[2])
        self.assertAlmostEqual(s["p50_ms"], 500.5)
        self.assertAlmostEqual(s["max_ms"], 1000.0)
        self.assertAlmostEqual(s["mean_ms"], 500.5)
        self.assertEqual(s["samples"], 1000)
        self.assertAlmostEqual(s["throughput"], 100.0)

    def test_nothing_delivered(self) -> None:
        s = mqttplan.summarize([np.empty(0, dtype=np.int64)], duration=5.0, delivered_in_window=0)
        self.assertEqual(s["throughput"], 0.0)
        self.assertIsNone(s["p50_ms"])
        self.assertIsNone(s["p99_ms"])
        self.assertIsNone(s["p999_ms"])
        self.assertEqual(mqttplan.summarize([], duration=5.0, delivered_in_window=0)["samples"], 0)

    def test_throughput_counts_the_window_only(self) -> None:
        lat = np.full(1200, 2_000_000, dtype=np.int64)  # 1,200 latencies (drain included)
        s = mqttplan.summarize([lat], duration=10.0, delivered_in_window=1000)
        self.assertAlmostEqual(s["throughput"], 100.0)
        self.assertEqual(s["samples"], 1200)
        self.assertAlmostEqual(s["p99_ms"], 2.0)

    def test_cpu_entry(self) -> None:
        c = mqttplan.cpu_entry(1, 100, 3.0, 1.0, 10.0)
        self.assertEqual(c, {"proc": 1, "pairs": 100, "user_s": 3.0, "sys_s": 1.0,
                             "cpu_s": 4.0, "busy": 0.4})

    def test_split_pairs_round_robin(self) -> None:
        parts = mqttplan.split_pairs(7, 3)
        self.assertEqual(parts, [[0, 3, 6], [1, 4], [2, 5]])
        self.assertEqual(sorted(i for p in parts for i in p), list(range(7)))

    def test_split_count(self) -> None:
        self.assertEqual(mqttplan.split_count(20, 2), [10, 10])
        self.assertEqual(mqttplan.split_count(7, 3), [3, 2, 2])
        self.assertEqual(sum(mqttplan.split_count(1001, 200)), 1001)

    def test_header_carries_time_and_sequence(self) -> None:
        self.assertEqual(mqttplan.MIN_PAYLOAD, 12)
        self.assertEqual(mqttplan.HEADER.unpack_from(mqttplan.HEADER.pack(123456789, 7) + b"\0" * 52),
                         (123456789, 7))



class PlanTests(SynchronousTestCase):
    def test_modes(self) -> None:
        self.assertEqual(plan().mode, "closed")
        self.assertEqual(plan(rate=5000).mode, "open")
        self.assertEqual(plan(count=20).mode, "count")

    def test_run_id_and_defaults(self) -> None:
        p = plan()
        self.assertEqual(len(p.run_id), 8)
        self.assertNotEqual(p.run_id, plan().run_id)
        self.assertEqual(plan(run_id="abc").run_id, "abc")
        self.assertEqual(p.release, "result")  # like c2c: the window counts Results
        self.assertEqual(plan(release="delivery").release, "delivery")
        self.assertTrue(p.nodelay)

    def test_rejects(self) -> None:
        bad: list[dict[str, Any]] = [
            dict(pairs=0), dict(payload_size=11), dict(payload_size=65_001), dict(duration=0),
            dict(duration=float("inf")), dict(rate=-1), dict(rate=float("nan")), dict(window=0),
            dict(procs=0), dict(procs=201), dict(count=0), dict(port=0), dict(host=""),
            dict(release="ack"),
        ]
        for kw in bad:
            with self.assertRaises(ValueError, msg=repr(kw)):
                plan(**kw)

    def test_open_file_and_port_budgets(self) -> None:
        # 20,000 open files per process: 10,000 pairs in one process is too many
        with self.assertRaises(ValueError):
            plan(pairs=10_000, procs=1)
        plan(pairs=10_000, procs=2)
        # ~28,000 ephemeral ports per source address
        with self.assertRaises(ValueError):
            plan(pairs=15_000, procs=4)
        plan(pairs=15_000, procs=4, bind_addresses=["127.0.0.1", "127.0.0.2"])
