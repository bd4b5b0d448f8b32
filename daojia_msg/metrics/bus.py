# -*- test-case-name: tests.metrics.test_bus -*-
"""The C2S buses on ``/metrics``.

- ``msgplatform_bus_publish_seconds{bus}``: from a C2S frame handed to its bus
  to the bus's answer (accepted or not), a histogram per bus ("default" for
  the default one);
- ``msgplatform_bus_errors_total{bus}``: publishes the bus refused, failed or
  did not confirm in time;
- ``msgplatform_bus_reconnects_total{bus}``: connections to the bus's broker
  made again after a loss (RabbitMQ, Redis Streams; none for the others);
- ``msgplatform_bus_pending`` and ``msgplatform_bus_max_pending``: C2S frames
  waiting for their buses, against ``bus.max_pending`` (at it, the node stops
  reading its clients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from daojia_msg.metrics.histograms import HistogramCollector, LabeledHistogram, ScrapeCollector


class BusCollector(ScrapeCollector):
    def __init__(self, errors: Mapping[str, int], pending: Callable[[], int],
                 max_pending: int, reconnects: Callable[[], Mapping[str, int]]) -> None:
        self.errors = errors
        self.reconnects = reconnects
        self.pending = pending
        self.max_pending = max_pending

    def _families(self, with_values: bool) -> Iterator[Metric]:
        errors = CounterMetricFamily("msgplatform_bus_errors",
                                     "C2S publishes a bus refused, failed or did not confirm.",
                                     labels=("bus",))
        reconnects = CounterMetricFamily("msgplatform_bus_reconnects",
                                         "Connections to a bus's broker made again after a loss.",
                                         labels=("bus",))
        pending = GaugeMetricFamily("msgplatform_bus_pending",
                                    "C2S frames waiting for their buses.")
        cap = GaugeMetricFamily("msgplatform_bus_max_pending",
                                "bus.max_pending: at it, the node stops reading its clients.")
        if with_values:
            for bus, count in sorted(self.errors.items()):
                errors.add_metric([bus], count)
            for bus, count in sorted(self.reconnects().items()):
                reconnects.add_metric([bus], count)
            pending.add_metric([], self.pending())
            cap.add_metric([], self.max_pending)
        yield from (errors, reconnects, pending, cap)


def register_bus_metrics(registry: CollectorRegistry, published: LabeledHistogram,
                         errors: Mapping[str, int], pending: Callable[[], int],
                         max_pending: int, reconnects: Callable[[], Mapping[str, int]]) -> None:
    registry.register(HistogramCollector(
        "msgplatform_bus_publish_seconds",
        "C2S publishes: from the frame handed to its bus to the bus's answer.",
        "bus", published))
    registry.register(BusCollector(errors, pending, max_pending, reconnects))
