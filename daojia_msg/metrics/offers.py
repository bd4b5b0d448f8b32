# -*- test-case-name: tests.logic.test_offers -*-
"""Nearby order offers on ``/metrics`` (docs/operations.md, offers).

- ``msgplatform_offers_total{event}``: offers ``created`` on this node, and
  ``accepted`` and ``expired`` by it (each outcome is counted by the one node
  that recorded it);
- ``msgplatform_offer_pushes_total``: offer pushes (durable S2C) its waves made;
- ``msgplatform_offer_failures_total``: offer work a backend (Redis, the
  message store, the bus) failed; it is done again by the next claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from daojia_msg.metrics.histograms import ScrapeCollector


class OfferCounts(Protocol):
    """What :class:`OffersCollector` reads (logic's ``Offers``)."""

    @property
    def created(self) -> int: ...

    @property
    def accepted(self) -> int: ...

    @property
    def expired(self) -> int: ...

    @property
    def pushes(self) -> int: ...

    @property
    def failures(self) -> int: ...


class OffersCollector(ScrapeCollector):
    def __init__(self, offers: OfferCounts) -> None:
        self.offers = offers

    def _families(self, with_values: bool) -> Iterator[Metric]:
        offers = CounterMetricFamily("msgplatform_offers", "Offers created, accepted, expired.",
                                     labels=["event"])
        pushes = CounterMetricFamily("msgplatform_offer_pushes",
                                     "Offer pushes made by the waves.")
        failures = CounterMetricFamily("msgplatform_offer_failures",
                                       "Offer work a backend failed (done again later).")
        if with_values:
            o = self.offers
            for event, value in (("created", o.created), ("accepted", o.accepted),
                                 ("expired", o.expired)):
                offers.add_metric([event], value)
            pushes.add_metric([], o.pushes)
            failures.add_metric([], o.failures)
        yield from (offers, pushes, failures)
