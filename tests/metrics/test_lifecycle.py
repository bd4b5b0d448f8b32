"""The data lifecycle's metrics, read at scrape time from the purge loop."""

from __future__ import annotations

from typing import Any

from prometheus_client.registry import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.model import StorageFigures
from daojia_msg.metrics.lifecycle import LifecycleCollector
from tests.metrics.test_registry import scrape, value


class FakeLifecycle:
    def __init__(self) -> None:
        self.figures: StorageFigures | None = None
        self.purged = {"expired": 0, "delivered": 0, "history": 0, "dedup": 0}
        self.last_at_ms: int | None = None
        self.age: float | None = None

    def oldest_pending_age_s(self) -> float | None:
        return self.age


def scraped(lifecycle: Any) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(LifecycleCollector(lifecycle))
    return scrape(registry)


class LifecycleMetricsTests(SynchronousTestCase):
    def test_every_family(self) -> None:
        lifecycle = FakeLifecycle()
        lifecycle.figures = StorageFigures({"pending": 5, "history": 9, "dedup": 2},
                                           {"pending": 4096, "history": 8192, "dedup": None},
                                           123, approximate=True)
        lifecycle.purged.update(expired=3, delivered=7)
        lifecycle.last_at_ms = 1_700_000_000_500
        lifecycle.age = 42.5
        samples = scraped(lifecycle)
        self.assertEqual(value(samples["msgplatform_store_rows"], "msgplatform_store_rows",
                               table="history"), 9)
        self.assertEqual(value(samples["msgplatform_store_bytes"], "msgplatform_store_bytes",
                               table="pending"), 4096)
        self.assertEqual(len(samples["msgplatform_store_bytes"]), 2)  # dedup: unknown
        self.assertEqual(value(samples["msgplatform_store_oldest_pending_age_seconds"],
                               "msgplatform_store_oldest_pending_age_seconds"), 42.5)
        self.assertEqual(value(samples["msgplatform_store_purged_rows"],
                               "msgplatform_store_purged_rows_total", reason="delivered"), 7)
        self.assertEqual(value(samples["msgplatform_store_last_purge_timestamp_seconds"],
                               "msgplatform_store_last_purge_timestamp_seconds"), 1_700_000_000.5)

    def test_before_anything_was_read(self) -> None:
        samples = scraped(FakeLifecycle())
        self.assertEqual(samples["msgplatform_store_rows"], [])
        self.assertEqual(samples["msgplatform_store_oldest_pending_age_seconds"], [])
        self.assertEqual(samples["msgplatform_store_last_purge_timestamp_seconds"], [])
        self.assertEqual(value(samples["msgplatform_store_purged_rows"],
                               "msgplatform_store_purged_rows_total", reason="expired"), 0)

    def test_no_pending_message_is_age_0(self) -> None:
        lifecycle = FakeLifecycle()
        lifecycle.figures = StorageFigures({"pending": 0, "history": 0, "dedup": 0},
                                           {"pending": 0, "history": 0, "dedup": 0}, 0, False)
        self.assertEqual(value(scraped(lifecycle)["msgplatform_store_oldest_pending_age_seconds"],
                               "msgplatform_store_oldest_pending_age_seconds"), 0)
