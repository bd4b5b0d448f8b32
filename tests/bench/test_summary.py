"""The summary table of a directory of benchmark results."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import summary


def c2c(acked: int = 40_000, cpu_s: float = 9.0) -> dict[str, Any]:
    return {"scenario": "c2c",
            "results": {"acked_per_s": 4000.0, "acked": acked,
                        "push_latency": {"p50_ms": 1.0, "p99_ms": 8.25, "p99.9_ms": 12.0}},
            "node": {"pid": 1, "cpu_s": cpu_s, "cpu_pct": 90.0},
            "generator": {"procs": [{"cpu_pct": 6.0}, {"cpu_pct": 7.5}]},
            "machine": {"nproc": 2, "calibration_ms": 12.345, "calibration_after_ms": 20.0}}


class SummaryTests(SynchronousTestCase):
    def test_c2c_row(self) -> None:
        self.assertEqual(summary.row("one", "c2c", c2c()),
                         ("one", "c2c", "4,000 msgs/s", "1.0/8.2/12.0", "90", "225", "8", "12.3/20.0"))

    def test_versus_row(self) -> None:
        doc = {"scenario": "versus", "comparison": {
            "msgplatform": {"throughput_per_s": 4500.0, "completed": 45_000,
                            "delivery_p50_ms": 300.0, "delivery_p99_ms": 500.0,
                            "delivery_p999_ms": 520.0, "server_cpu_s": 9.0,
                            "server_cpu_pct": 95.0, "generator_cpu_pct": [10.0, None]},
            "ratios": {"throughput": 0.25, "p99": 2.0, "cpu_per_msg": 10.5}}}
        self.assertEqual(
            summary.row("one", "versus-closed", doc),
            ("one", "versus-closed",
             "4,500 msgs/s; x0.25 of Mosquitto's, p99 x2.0, cpu/msg x10.5",
             "300.0/500.0/520.0", "95", "200", "10", "-"))

    def test_without_node_figures(self) -> None:
        doc = {"scenario": "pull", "results": {"acked": 10_000, "drain_s": 0.234},
               "node": {"pid": None}, "generator": {"procs": []}}
        self.assertEqual(summary.row("two", "pull", doc),
                         ("two", "pull", "10,000 in 0.23 s", "-", "-", "-", "-", "-"))

    def test_directory(self) -> None:
        root = self.mktemp()
        os.makedirs(os.path.join(root, "one"))
        with open(os.path.join(root, "one", "c2c.json"), "w") as f:
            json.dump(c2c(), f)
        with open(os.path.join(root, "one", "broken.json"), "w") as f:
            f.write("{")
        rows = summary.collect(root)
        self.assertEqual([r[:2] for r in rows], [("one", "broken"), ("one", "c2c")])
        self.assertTrue(rows[0][2].startswith("unreadable"))
        text = summary.render(rows)
        self.assertEqual(text.splitlines()[0], "| " + " | ".join(summary.COLUMNS) + " |")
        self.assertIn("| one | c2c | 4,000 msgs/s |", text)
        self.assertTrue(text.splitlines()[-1].endswith("| 8 | 12.3/20.0 |"))

    def test_machine_readings(self) -> None:
        self.assertEqual(summary.machine_ms({"calibration_ms": 9.96}), "10.0")  # run 6
        self.assertEqual(summary.machine_ms({"calibration_ms": 9.0,
                                             "calibration_after_ms": 21.04}), "9.0/21.0")
        self.assertEqual(summary.machine_ms({"nproc": 2}), "-")

    def test_usage(self) -> None:
        self.assertEqual(summary.main([]), 2)
        self.assertEqual(summary.main([self.mktemp()]), 2)  # not a directory
