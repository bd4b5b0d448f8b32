# -*- test-case-name: tests.logic.test_positions -*-
"""Live positions of geo routes on ``/metrics`` (docs/operations.md, geo routes).

- ``msgplatform_positions_reported_total``: positions reported on geo routes
  (C2S frames that carried a valid position);
- ``msgplatform_position_failures_total``: reports and drops the positions'
  backend (Redis in a cluster) refused: the next report makes a lost one good.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from daojia_msg.metrics.histograms import ScrapeCollector


class PositionCounts(Protocol):
    """What :class:`PositionsCollector` reads (logic's ``Positions``)."""

    @property
    def reports(self) -> int: ...

    @property
    def failures(self) -> int: ...


class PositionsCollector(ScrapeCollector):
    def __init__(self, positions: PositionCounts) -> None:
        self.positions = positions

    def _families(self, with_values: bool) -> Iterator[Metric]:
        reported = CounterMetricFamily("msgplatform_positions_reported",
                                       "Positions reported on geo routes.")
        failures = CounterMetricFamily("msgplatform_position_failures",
                                       "Position reports and drops the backend refused.")
        if with_values:
            reported.add_metric([], self.positions.reports)
            failures.add_metric([], self.positions.failures)
        yield from (reported, failures)
