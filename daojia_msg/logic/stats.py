# -*- test-case-name: tests.logic.test_stats -*-
"""Delivery statistics of this node, per route ``(appcode, msgtype, kind)``.

A route's ``appcode`` is the recipient's for C2C and S2C (how well pushes reach
that app) and the sender's for C2S. Counters:

- ``accepted``: messages made durable (C2C, S2C) or accepted by the bus (C2S);
- ``pushed``: first pushes to an online session, counted by the node that
  holds the session (a push handed over RPC counts there); ``repushed``:
  pushes again after an ACK timeout;
- ``stored``: accepted while the recipient had no session (left for PULL);
- ``pulled``: messages returned by PULL; ``acked``: pending -> delivered.

``delivery_rate`` is acked / accepted over C2C and S2C since the node started.
At most :data:`MAX_ROUTES` routes are counted apart; after that new ones are
counted under msgtype :data:`OTHER_MSGTYPE` (-1) of their appcode and kind.
The ACK latency (durable -> ACKed, from the msgid's send time) is a histogram.
One source of truth: ``/v1/stats`` and ``/metrics`` both read this object.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from typing import Any

from daojia_msg.store.model import Kind

COUNTERS = ("accepted", "pushed", "acked", "repushed", "stored", "pulled")
_INDEX = {name: i for i, name in enumerate(COUNTERS)}
#: ACK latency bucket upper bounds, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Route = tuple[int, int, Kind]
#: The msgtype of the route that collects every msgtype once the table is full.
OTHER_MSGTYPE = -1
#: Routes counted apart. msgtype is the client's choice: without a cap a client
#: could grow this table (and /metrics) by a route per frame.
MAX_ROUTES = 1000


class Stats:
    def __init__(self, max_routes: int = MAX_ROUTES) -> None:
        self.max_routes = max_routes
        self.by_route: dict[Route, list[int]] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def add(self, route: Route, counter: str, n: int = 1) -> None:
        counts = self.by_route.get(route)
        if counts is None:
            if len(self.by_route) >= self.max_routes:
                route = (route[0], OTHER_MSGTYPE, route[2])
                counts = self.by_route.get(route)
            if counts is None:
                counts = self.by_route[route] = [0] * len(COUNTERS)
        counts[_INDEX[counter]] += n

    def observe_ack_latency(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def _routes(self, appcodes: Collection[int] | None) -> list[tuple[Route, list[int]]]:
        return sorted(
            (route, counts)
            for route, counts in self.by_route.items()
            if appcodes is None or route[0] in appcodes
        )

    def totals(self, appcodes: Collection[int] | None = None) -> dict[str, int]:
        totals = dict.fromkeys(COUNTERS, 0)
        for _, counts in self._routes(appcodes):
            for name, value in zip(COUNTERS, counts, strict=True):
                totals[name] += value
        return totals

    def delivery_rate(self, appcodes: Collection[int] | None = None) -> float | None:
        """ACKed / accepted over C2C and S2C; None before anything was accepted."""
        accepted = acked = 0
        for (_, _, kind), counts in self._routes(appcodes):
            if kind != Kind.C2S:
                accepted += counts[_INDEX["accepted"]]
                acked += counts[_INDEX["acked"]]
        return acked / accepted if accepted else None

    def snapshot(self, appcodes: Collection[int] | None = None) -> dict[str, Any]:
        """The JSON body of ``GET /v1/stats``: every route, or those of ``appcodes``."""
        return {
            "totals": self.totals(appcodes),
            "by_route": [
                {
                    "appcode": appcode,
                    "msgtype": msgtype,
                    "kind": kind.name,
                    **dict(zip(COUNTERS, counts, strict=True)),
                }
                for (appcode, msgtype, kind), counts in self._routes(appcodes)
            ],
            "delivery_rate": self.delivery_rate(appcodes),
        }
