"""Tests for daojia_msg.metrics.registry: Prometheus families read from Stats at scrape time."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.trial.unittest import TestCase

from daojia_msg.core.model import Kind
from daojia_msg.metrics.delivery import COUNTERS, LATENCY_BUCKETS, Stats
from daojia_msg.metrics.registry import StatsCollector, make_registry


class Gauges:
    def __init__(self) -> None:
        self.connections = 0
        self.sessions = 0
        self.calls = 0

    def count_connections(self) -> int:
        self.calls += 1
        return self.connections

    def count_sessions(self) -> int:
        self.calls += 1
        return self.sessions


def scrape(registry: object) -> dict[str, list[Sample]]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    [found] = [s.value for s in samples if s.name == name and s.labels == labels]
    return found


class MetricsTests(TestCase):
    def setUp(self) -> None:
        self.stats = Stats()
        self.gauges = Gauges()
        self.registry = make_registry(
            self.stats, self.gauges.count_connections, self.gauges.count_sessions
        )

    def test_counters(self) -> None:
        """One counter family per Stats counter, labelled by route, read at scrape time."""
        names = {f"msgplatform_messages_{c}" for c in COUNTERS}
        self.assertTrue(names <= set(scrape(self.registry)))
        self.stats.add((1001, 5, Kind.S2C), "accepted", 3)
        self.stats.add((1001, 5, Kind.S2C), "acked", 2)
        self.stats.add((1002, 1, Kind.C2S), "accepted")
        families = scrape(self.registry)
        accepted = families["msgplatform_messages_accepted"]
        self.assertEqual(value(accepted, "msgplatform_messages_accepted_total",
                               appcode="1001", msgtype="5", kind="S2C"), 3)
        self.assertEqual(value(accepted, "msgplatform_messages_accepted_total",
                               appcode="1002", msgtype="1", kind="C2S"), 1)
        self.assertEqual(value(families["msgplatform_messages_acked"],
                               "msgplatform_messages_acked_total",
                               appcode="1001", msgtype="5", kind="S2C"), 2)
        self.assertEqual(value(families["msgplatform_messages_pulled"],
                               "msgplatform_messages_pulled_total",
                               appcode="1001", msgtype="5", kind="S2C"), 0)
        self.stats.add((1001, 5, Kind.S2C), "accepted")
        self.assertEqual(value(scrape(self.registry)["msgplatform_messages_accepted"],
                               "msgplatform_messages_accepted_total",
                               appcode="1001", msgtype="5", kind="S2C"), 4)

    def test_latency_histogram(self) -> None:
        """Per route: cumulative buckets, +Inf is the count, and the sum."""
        route = (1001, 5, Kind.C2C)
        for seconds in (0.003, 0.005, 0.02, 0.7, 100.0):
            self.stats.add(route, "acked")
            self.stats.observe_ack_latency(route, seconds)
        self.stats.add((1002, 1, Kind.S2C), "acked")
        self.stats.observe_ack_latency((1002, 1, Kind.S2C), 0.2)
        samples = scrape(self.registry)["msgplatform_ack_latency_seconds"]
        name = "msgplatform_ack_latency_seconds_bucket"
        labels = {"appcode": "1001", "msgtype": "5", "kind": "C2C"}
        self.assertEqual(value(samples, name, le="0.005", **labels), 2)
        self.assertEqual(value(samples, name, le="0.01", **labels), 2)
        self.assertEqual(value(samples, name, le="0.025", **labels), 3)
        self.assertEqual(value(samples, name, le="1.0", **labels), 4)
        self.assertEqual(value(samples, name, le="60.0", **labels), 4)
        self.assertEqual(value(samples, name, le="+Inf", **labels), 5)
        self.assertEqual(len([s for s in samples if s.name == name]),
                         2 * (len(LATENCY_BUCKETS) + 1))
        self.assertEqual(value(samples, "msgplatform_ack_latency_seconds_count", **labels), 5)
        self.assertAlmostEqual(value(samples, "msgplatform_ack_latency_seconds_sum", **labels),
                               100.728)
        self.assertEqual(value(samples, name, le="0.25", appcode="1002", msgtype="1",
                               kind="S2C"), 1)

    def test_gauges(self) -> None:
        """The gauges call their callables at each scrape."""
        self.gauges.connections, self.gauges.sessions = 7, 3
        families = scrape(self.registry)
        self.assertEqual(value(families["msgplatform_connections"], "msgplatform_connections"), 7)
        self.assertEqual(value(families["msgplatform_sessions"], "msgplatform_sessions"), 3)
        self.gauges.connections = 8
        families = scrape(self.registry)
        self.assertEqual(value(families["msgplatform_connections"], "msgplatform_connections"), 8)

    def test_describe_calls_nothing(self) -> None:
        """Registering describes the families without calling the gauges."""
        gauges = Gauges()
        collector = StatsCollector(Stats(), gauges.count_connections, gauges.count_sessions)
        names = [m.name for m in collector.describe()]
        self.assertEqual(gauges.calls, 0)
        self.assertIn("msgplatform_connections", names)
        self.assertTrue(all(not m.samples for m in collector.describe()))

    def test_dedicated_registry(self) -> None:
        """Each registry is its own; the global one is untouched."""
        other = make_registry(Stats(), lambda: 1, lambda: 1)
        self.stats.add((1, 1, Kind.C2C), "accepted")
        self.assertNotIn(b"msgplatform_", generate_latest(REGISTRY))
        self.assertEqual(scrape(other)["msgplatform_messages_accepted"], [])

    def test_process_platform_and_gc(self) -> None:
        """prometheus_client's own collectors: this process's CPU, memory and
        file descriptors under the prefix, the interpreter and its GC."""
        import os
        import resource

        families = scrape(self.registry)
        fds = value(families["msgplatform_process_open_fds"], "msgplatform_process_open_fds")
        # The collector and listdir each hold a descriptor of their own for a moment.
        self.assertLessEqual(abs(fds - len(os.listdir("/proc/self/fd"))), 2)
        limit = value(families["msgplatform_process_max_fds"], "msgplatform_process_max_fds")
        self.assertEqual(limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.assertGreater(value(families["msgplatform_process_resident_memory_bytes"],
                                 "msgplatform_process_resident_memory_bytes"), 1e6)
        self.assertIn("python_info", families)
        self.assertIn("python_gc_collections", families)
