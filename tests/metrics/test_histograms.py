"""The cheap labelled histogram and its collector."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.metrics.histograms import HistogramCollector, LabeledHistogram


class HistogramTests(SynchronousTestCase):
    def test_buckets_sum_and_count_per_label(self) -> None:
        histogram = LabeledHistogram((0.01, 0.1, 1.0))
        registry = CollectorRegistry()
        registry.register(HistogramCollector("x_seconds", "X.", "bus", histogram))
        for value in (0.005, 0.01, 0.05, 2.0):
            histogram.observe("a", value)
        histogram.observe("b", 0.5)

        def sample(suffix: str, **labels: str) -> float | None:
            return registry.get_sample_value(f"x_seconds{suffix}", labels)

        self.assertEqual([sample("_bucket", bus="a", le=le) for le in ("0.01", "0.1", "1.0", "+Inf")],
                         [2, 3, 3, 4])  # an observation equal to a bound is in that bucket
        self.assertEqual(sample("_count", bus="a"), 4)
        self.assertAlmostEqual(sample("_sum", bus="a") or 0, 2.065)
        self.assertEqual(sample("_bucket", bus="b", le="1.0"), 1)
        self.assertIsNone(sample("_count", bus="c"))

    def test_described_without_values(self) -> None:
        registry = CollectorRegistry()
        registry.register(HistogramCollector("y_seconds", "Y.", "peer", LabeledHistogram((1,))))
        self.assertIn("y_seconds", [m.name for m in registry.collect()])
