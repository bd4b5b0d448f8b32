# -*- test-case-name: tests.metrics.test_registry -*-
"""Plain counters a layer keeps and the Prometheus registry reads at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

#: The scopes of a login brute-force lockout: one identity from one address, or an address.
LOGIN_THROTTLE_SCOPES = ("identity", "ip")


class LabeledCounter:
    """A count per value of one label, the values known up front (so an
    outsider cannot grow the set)."""

    def __init__(self, values: Iterable[str]) -> None:
        self.counts = dict.fromkeys(values, 0)

    def inc(self, value: str) -> None:
        self.counts[value] += 1
