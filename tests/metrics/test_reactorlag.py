"""The reactor lag probe, on a fake clock."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.metrics.reactorlag import ReactorLag, lag_histogram


def buckets(registry: CollectorRegistry) -> dict[str, float]:
    return {sample.labels["le"]: sample.value
            for metric in registry.collect() for sample in metric.samples
            if sample.name == "msgplatform_reactor_lag_seconds_bucket"}


class ReactorLagTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.probe = ReactorLag(self.clock, lag_histogram(self.registry), interval=0.5)
        self.probe.startService()
        self.addCleanup(self.probe.stopService)

    def test_on_time_timers_count_as_no_lag(self) -> None:
        for _ in range(4):
            self.clock.advance(0.5)
        counts = buckets(self.registry)
        self.assertEqual((counts["0.001"], counts["+Inf"]), (4.0, 4.0))

    def test_a_held_reactor_shows_as_lag(self) -> None:
        self.clock.advance(0.5)
        self.clock.advance(2.0)  # the reactor was busy 1.5 s past the next timer
        counts = buckets(self.registry)
        self.assertEqual((counts["1.0"], counts["2.5"], counts["+Inf"]), (1.0, 2.0, 2.0))
        self.assertEqual(self.registry.get_sample_value("msgplatform_reactor_lag_seconds_sum"), 1.5)

    def test_stopping_cancels_the_timer(self) -> None:
        self.probe.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.assertEqual(buckets(self.registry)["+Inf"], 0.0)
