# -*- test-case-name: tests.logic.test_escalation -*-
"""Offline escalation on ``/metrics`` (docs/operations.md §14):
``msgplatform_escalations_total{outcome}``, what this node's escalator did:

- ``posted``: POSTs the app's receiver answered 2xx (also counted
  ``escalated`` per route in the delivery statistics);
- ``failed``: attempts that failed (a status other than 2xx, no answer in
  time, no connection), each retried after a backoff;
- ``gave_up``: escalations dropped an hour after they fell due, never POSTed;
- ``cancelled``: escalations found ACKed at their due time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from daojia_msg.metrics.histograms import ScrapeCollector

OUTCOMES = ("posted", "failed", "gave_up", "cancelled")


class EscalationsCollector(ScrapeCollector):
    """``counts``: the escalator's counts by outcome (None: no escalator, as
    on a node whose apps have no ``escalation_url``: every outcome is 0, so
    the alert rules' series exist everywhere)."""

    def __init__(self, counts: Callable[[], dict[str, int] | None]) -> None:
        self.counts = counts

    def _families(self, with_values: bool) -> Iterator[Metric]:
        family = CounterMetricFamily("msgplatform_escalations",
                                     "Offline escalations by outcome (posted, failed, gave_up,"
                                     " cancelled).", labels=("outcome",))
        if with_values:
            counts = self.counts() or {}
            for outcome in OUTCOMES:
                family.add_metric([outcome], counts.get(outcome, 0))
        yield family
