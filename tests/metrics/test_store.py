"""The store's write path on /metrics: a real write queue on a fake runner."""

from __future__ import annotations

import treq
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from daojia_msg.metrics.store import ReadsCollector, StoreMetrics
from daojia_msg.store.batching import GroupCommitter
from daojia_msg.store.reads import ReadStats
from tests.nodes import NodeTestCase, R


class StoreMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 100.0
        self.runs: list[Deferred[list[object]]] = []

        def run(txn_function: object, ops: list[object]) -> Deferred[list[object]]:
            d: Deferred[list[object]] = Deferred()
            self.runs.append(d)
            return d

        self.committer = GroupCommitter(run, timer=lambda: self.now)
        self.registry = CollectorRegistry()
        self.metrics = StoreMetrics(self.registry)
        self.committer.on_flushed = self.metrics.flushed
        self.metrics.watch_waiting(lambda: self.committer.waiting)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_flushes_are_timed_and_counted(self) -> None:
        self.committer.submit(lambda txn: 1)         # flushed at once, alone
        for _ in range(3):                           # wait behind it
            self.committer.submit(lambda txn: 2)
        self.assertEqual(self.value("msgplatform_store_writes_waiting"), 3)
        self.now += 0.02
        self.runs[0].callback([1])                   # 20 ms; the next flush takes the 3
        self.now += 0.3
        self.runs[1].callback([2, 2, 2])             # 300 ms
        self.assertEqual(self.value("msgplatform_store_flush_seconds_count"), 2)
        self.assertAlmostEqual(self.value("msgplatform_store_flush_seconds_sum") or 0, 0.32)
        self.assertEqual(self.value("msgplatform_store_flush_seconds_bucket", le="0.025"), 1)
        self.assertEqual(self.value("msgplatform_store_flush_writes_sum"), 4)
        self.assertEqual(self.value("msgplatform_store_flush_writes_bucket", le="1.0"), 1)
        self.assertEqual(self.value("msgplatform_store_writes_waiting"), 0)
        self.assertEqual(self.value("msgplatform_store_flush_errors_total"), 0)

    def test_a_failed_flush_is_an_error(self) -> None:
        d = self.committer.submit(lambda txn: 1)
        d.addErrback(lambda _: None)
        self.runs[0].errback(Failure(RuntimeError("database gone")))
        self.assertEqual(self.value("msgplatform_store_flush_errors_total"), 1)
        self.assertEqual(self.value("msgplatform_store_flush_seconds_count"), 1)


class ReadsCollectorTests(SynchronousTestCase):
    def test_reads_and_timeouts(self) -> None:
        registry = CollectorRegistry()
        reads = ReadStats()
        timeouts = [0]
        registry.register(ReadsCollector(reads, lambda: timeouts[0]))
        reads.in_flight = 4
        reads.errors["unavailable"] = 2
        timeouts[0] = 3
        value = registry.get_sample_value
        self.assertEqual(value("msgplatform_store_reads_in_flight"), 4)
        self.assertEqual(value("msgplatform_store_read_errors_total", {"kind": "unavailable"}), 2)
        self.assertEqual(value("msgplatform_store_read_errors_total", {"kind": "error"}), 0)
        self.assertEqual(value("msgplatform_answer_timeouts_total"), 3)

    def test_a_store_without_read_batching(self) -> None:
        """The in-memory store: the families are there, with nothing in them."""
        registry = CollectorRegistry()
        registry.register(ReadsCollector(None, lambda: 0))
        self.assertEqual(registry.get_sample_value("msgplatform_store_reads_in_flight"), 0)
        self.assertIsNone(registry.get_sample_value("msgplatform_store_read_errors_total",
                                                    {"kind": "error"}))


class NodeStoreMetricsTests(NodeTestCase):
    async def test_a_node_shows_its_flushes(self) -> None:
        """A real node on SQLite: each C2C is written by a flush, on /metrics."""
        await self.start_node()
        sender, _ = await self.client(1)
        _, inbox = await self.client(2)
        for i in range(3):
            await sender.c2c(2, 1001, 5, b"m%d" % i)
        await inbox.wait(3)
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        samples = {s.name: s.value for family in text_string_to_metric_families(
            await response.text()) for s in family.samples if not s.labels}
        self.assertGreaterEqual(samples["msgplatform_store_flush_seconds_count"], 1)
        self.assertGreaterEqual(samples["msgplatform_store_flush_writes_sum"], 3)
        self.assertEqual(samples["msgplatform_store_flush_errors_total"], 0)
        self.assertIn("msgplatform_store_writes_waiting", samples)
        self.assertEqual(samples["msgplatform_store_reads_in_flight"], 0)  # LOGIN's reads done
        self.assertEqual(samples["msgplatform_answer_timeouts_total"], 0)
