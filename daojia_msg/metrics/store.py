# -*- test-case-name: tests.metrics.test_store -*-
"""The message store's write path on ``/metrics``.

- ``msgplatform_store_flush_seconds``: how long each flush (one transaction
  carrying the writes that queued meanwhile) took, a histogram;
- ``msgplatform_store_flush_writes``: how many writes each flush carried;
- ``msgplatform_store_flush_errors_total``: flushes that failed as a whole;
- ``msgplatform_store_writes_waiting``: writes queued, not yet in a flush;
- ``msgplatform_store_reads_in_flight``: reads queued or out (LOGIN's
  offline count, PULL, HISTORY, ACK lookups);
- ``msgplatform_store_read_errors_total{kind}``: reads that failed,
  ``unavailable`` (the database was) or ``error`` (anything else);
- ``msgplatform_answer_timeouts_total``: requests answered TIMEOUT or
  UNAVAILABLE because the store (or a delivery) did not answer within
  ``store.answer_timeout_s``.

The families exist on every node; one on the in-memory store (no write queue,
no read batching) shows no flushes and no reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from daojia_msg.metrics.histograms import ScrapeCollector

#: Upper bounds of the flush-duration buckets, seconds.
FLUSH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Upper bounds of the writes-per-flush buckets.
FLUSH_WRITES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class StoreMetrics:
    """The families above, registered in ``registry``; :meth:`flushed` is a
    write queue's ``on_flushed`` hook."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram("msgplatform_store_flush_seconds",
                                 "Duration of a flush of the message store's write queue.",
                                 buckets=FLUSH_SECONDS, registry=registry)
        self.writes = Histogram("msgplatform_store_flush_writes",
                                "Writes carried by one flush of the message store.",
                                buckets=FLUSH_WRITES, registry=registry)
        self.errors = Counter("msgplatform_store_flush_errors",
                              "Flushes of the message store that failed as a whole.",
                              registry=registry)
        self.waiting = Gauge("msgplatform_store_writes_waiting",
                             "Writes queued for the message store, not yet in a flush.",
                             registry=registry)

    def flushed(self, seconds: float, writes: int, failed: bool) -> None:
        self.seconds.observe(seconds)
        self.writes.observe(writes)
        if failed:
            self.errors.inc()

    def watch_waiting(self, waiting: Callable[[], int]) -> None:
        """Read the queue's length at each scrape."""
        self.waiting.set_function(waiting)


class ReadCounts(Protocol):
    """A store's reads (:class:`daojia_msg.store.reads.ReadStats`)."""

    in_flight: int
    errors: dict[str, int]


class ReadsCollector(ScrapeCollector):
    """``reads``: the store's :class:`ReadCounts`, or None (no read batching);
    ``timeouts()``: answers given up on so far."""

    def __init__(self, reads: ReadCounts | None, timeouts: Callable[[], int]) -> None:
        self.reads = reads
        self.timeouts = timeouts

    def _families(self, with_values: bool) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily("msgplatform_store_reads_in_flight",
                                      "Reads of the message store queued or out.")
        errors = CounterMetricFamily("msgplatform_store_read_errors",
                                     "Reads of the message store that failed, by kind "
                                     "(unavailable, error).", labels=("kind",))
        timeouts = CounterMetricFamily("msgplatform_answer_timeouts",
                                       "Requests answered TIMEOUT or UNAVAILABLE: the store or a "
                                       "delivery did not answer within store.answer_timeout_s.")
        if with_values:
            reads = self.reads
            in_flight.add_metric([], reads.in_flight if reads is not None else 0)
            for kind, count in sorted(reads.errors.items()) if reads is not None else ():
                errors.add_metric([kind], count)
            timeouts.add_metric([], self.timeouts())
        yield from (in_flight, errors, timeouts)
