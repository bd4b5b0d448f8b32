# -*- test-case-name: tests.metrics.test_histograms -*-
"""Histograms cheap enough for a per-message path, read at scrape time.

prometheus_client's ``Histogram.observe`` takes a lock and walks its buckets
(a few microseconds, most of a C2S frame's budget on a busy node); a
:class:`LabeledHistogram` is a list of counts per label value and one
``bisect``, and :class:`HistogramCollector` turns it into a Prometheus
histogram family at each scrape, as the delivery statistics are.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class ScrapeCollector:
    """A prometheus_client collector whose families come from
    ``_families(with_values)``: with their values at each scrape
    (:meth:`collect`), without them when the registry describes it (so that
    registering calls none of the callables it reads)."""

    def _families(self, with_values: bool) -> Iterator[Metric]:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        return self._families(with_values=True)

    def describe(self) -> Iterator[Metric]:
        return self._families(with_values=False)


class LabeledHistogram:
    """Counts per bucket (upper bounds ``bounds``, then +Inf) and a sum, per
    value of one label; values are added as they are first seen, so give it
    only bounded sets (bus names, peers)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: label value -> [count per bucket..., count past the last bound]
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, label: str, value: float) -> None:
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0] * (len(self.bounds) + 1)
            self.sums[label] = 0.0
        counts[bisect_left(self.bounds, value)] += 1
        self.sums[label] += value


class HistogramCollector:
    """A prometheus_client collector of one :class:`LabeledHistogram`."""

    def __init__(self, name: str, documentation: str, label: str,
                 histogram: LabeledHistogram) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.histogram = histogram

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=(self.label,))
        histogram = self.histogram
        for value, counts in sorted(histogram.counts.items()):
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip(histogram.bounds, counts, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            buckets.append(("+Inf", cumulative + counts[-1]))
            family.add_metric([value], buckets, histogram.sums[value])
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=(self.label,))
