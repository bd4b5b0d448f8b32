# -*- test-case-name: tests.metrics.test_lifecycle -*-
"""Metrics of the message store's data lifecycle (docs/operations.md §13),
read at scrape time from the node's purge loop
(:class:`~daojia_msg.logic.lifecycle.Lifecycle`):

- ``msgplatform_store_rows{table}`` and ``msgplatform_store_bytes{table}``
  (``table``: pending, history, dedup): the last storage figures read (after
  each purge round; on MySQL InnoDB's estimates, over every database, which
  the cluster shares);
- ``msgplatform_store_oldest_pending_age_seconds``: the age of the oldest
  pending message (past ``store.pending_ttl_days`` plus a purge interval: the
  purge is behind);
- ``msgplatform_store_purged_rows_total{reason}`` (``expired``,
  ``delivered``, ``history``, ``dedup``): rows this node purged;
- ``msgplatform_store_last_purge_timestamp_seconds``: when this node's last
  purge round ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from daojia_msg.metrics.histograms import ScrapeCollector

PREFIX = "msgplatform_store"


class LifecycleCollector(ScrapeCollector):
    """``lifecycle``: anything with ``figures`` (a ``StorageFigures`` or None),
    ``oldest_pending_age_s()``, ``purged`` (reason -> rows) and
    ``last_at_ms`` (None before a round)."""

    def __init__(self, lifecycle: Any) -> None:
        self.lifecycle = lifecycle

    def _families(self, with_values: bool) -> Iterator[Metric]:
        lifecycle = self.lifecycle if with_values else None
        figures = lifecycle.figures if lifecycle is not None else None
        rows = GaugeMetricFamily(f"{PREFIX}_rows", "Rows of the message store's tables by kind"
                                 " (estimates on MySQL).", labels=("table",))
        size = GaugeMetricFamily(f"{PREFIX}_bytes", "Bytes of the message store's tables by"
                                 " kind, indexes included (estimates on MySQL).",
                                 labels=("table",))
        if figures is not None:
            for table, count in sorted(figures.rows.items()):
                rows.add_metric([table], count)
            for table, value in sorted(figures.bytes.items()):
                if value is not None:
                    size.add_metric([table], value)
        yield rows
        yield size
        oldest = GaugeMetricFamily(f"{PREFIX}_oldest_pending_age_seconds",
                                   "Age of the oldest pending message (0: none).")
        purged = CounterMetricFamily(f"{PREFIX}_purged_rows", "Rows purged by this node, by"
                                     " reason (expired, delivered, history, dedup).",
                                     labels=("reason",))
        last = GaugeMetricFamily(f"{PREFIX}_last_purge_timestamp_seconds",
                                 "When this node's last purge round ended (Unix seconds).")
        if lifecycle is not None:
            if figures is not None:
                oldest.add_metric([], lifecycle.oldest_pending_age_s() or 0.0)
            for reason, count in lifecycle.purged.items():
                purged.add_metric([reason], count)
            if lifecycle.last_at_ms is not None:
                last.add_metric([], lifecycle.last_at_ms / 1000)
        yield oldest
        yield purged
        yield last
