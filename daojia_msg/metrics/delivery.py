# -*- test-case-name: tests.logic.test_service,tests.metrics.test_registry,tests.cluster.test_stats -*-
"""Delivery statistics of this node, per route ``(appcode, msgtype, kind)``.

A route's ``appcode`` is the recipient's for C2C and S2C (how well pushes reach
that app) and the sender's for C2S. Counters:

- ``accepted``: messages made durable (C2C, S2C) or accepted by the bus (C2S);
- ``pushed``: first pushes to an online session, counted by the node that
  holds the session (a push handed over RPC counts there); ``repushed``:
  pushes again after an ACK timeout;
- ``stored``: accepted while the recipient had no session (left for PULL);
- ``pulled``: messages returned by PULL; ``acked``: pending -> delivered;
- ``expired``: pending messages older than ``store.pending_ttl_days``,
  removed by the purge (counted by the node that purged them);
- ``escalated``: pushes not ACKed within their ``escalate_after_s`` that were
  POSTed to their app's ``escalation_url`` (a 2xx; once per message).

``delivery_rate`` is acked / accepted over C2C and S2C within the sliding
window (``stats.window_s``, kept as per-minute buckets);
``delivery_rate_total`` is the same since the counts began. In a cluster the
node also keeps the deltas since its last flush (:meth:`Stats.take_deltas`),
which :mod:`daojia_msg.cluster.stats` adds to the cluster-wide counts in Redis.
At most :data:`MAX_ROUTES` routes are counted apart; after that new ones are
counted under msgtype :data:`OTHER_MSGTYPE` (-1) of their appcode and kind.
The ACK latency (durable -> ACKed, from the message's send time) is a
histogram per route (buckets :data:`LATENCY_BUCKETS`, and the sum); the
snapshot gives each route's count, mean and p50/p90/p99 (each the upper bound
of the bucket the quantile falls in: an estimate that errs high; None past the
last bound), and the same over the routes shown.
One source of truth: ``/v1/stats`` and ``/metrics`` both read this object.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection
from typing import Any

from daojia_msg.core.model import Kind

COUNTERS = ("accepted", "pushed", "acked", "repushed", "stored", "pulled", "expired",
            "escalated")
_INDEX = {name: i for i, name in enumerate(COUNTERS)}
#: ACK latency bucket upper bounds, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Route = tuple[int, int, Kind]
#: Per route: the count in each latency bucket (the last one: past the last
#: bound), then the sum of the latencies in microseconds.
LATENCY_WIDTH = len(LATENCY_BUCKETS) + 2
#: Per-minute bucket of the delivery-rate window: (accepted, acked) per route.
Window = dict[int, dict[Route, list[int]]]
#: The msgtype of the route that collects every msgtype once the table is full.
OTHER_MSGTYPE = -1
#: Routes counted apart. msgtype is the client's choice: without a cap a client
#: could grow this table (and /metrics) by a route per frame.
MAX_ROUTES = 1000


class Stats:
    """Counts per route, a per-minute window, the ACK latency histogram.

    ``now`` gives Unix seconds (the reactor's); ``track_deltas`` keeps what was
    added since the last :meth:`take_deltas` (a cluster node flushes them).
    """

    def __init__(self, max_routes: int = MAX_ROUTES, now: Callable[[], float] | None = None,
                 window_s: float = 300.0, track_deltas: bool = False) -> None:
        self.max_routes = max_routes
        self.now = now or (lambda: 0.0)
        self.window_s = window_s
        self.by_route: dict[Route, list[int]] = {}
        self.minutes: Window = {}
        #: ACK latency per route (:data:`LATENCY_WIDTH` values each).
        self.latency: dict[Route, list[int]] = {}
        self.track_deltas = track_deltas
        self._deltas: dict[Route, list[int]] = {}
        self._minute_deltas: Window = {}
        self._latency_deltas: dict[Route, list[int]] = {}
        self._pruned_at: int | None = None  # the window's first minute at the last prune

    def _route(self, route: Route) -> Route:
        if route not in self.by_route and len(self.by_route) >= self.max_routes:
            return (route[0], OTHER_MSGTYPE, route[2])
        return route

    def add(self, route: Route, counter: str, n: int = 1) -> None:
        i = _INDEX[counter]
        counts = self.by_route.get(route)  # the common case inline: this runs ~3x per message
        if counts is None:
            route = self._route(route)
            counts = self.by_route.get(route)
            if counts is None:
                counts = self.by_route[route] = [0] * len(COUNTERS)
        counts[i] += n
        if self.track_deltas:
            _bump(self._deltas, route, i, n, len(COUNTERS))
        if counter in ("accepted", "acked") and route[2] != Kind.C2S:
            now = self.now()
            minute = int(now // 60)
            j = 0 if counter == "accepted" else 1
            _bump(self.minutes.setdefault(minute, {}), route, j, n, 2)
            if self.track_deltas:
                _bump(self._minute_deltas.setdefault(minute, {}), route, j, n, 2)
            oldest = self.first_minute(now)
            if oldest != self._pruned_at:  # a bucket leaves the window at most once a minute
                self._pruned_at = oldest
                self._prune(oldest)

    def first_minute(self, now: float) -> int:
        """The minute bucket the window ``[now - window_s, now]`` starts in."""
        return int((now - self.window_s) // 60)

    def _weight(self, minute: int, now: float) -> float:
        """How much of bucket ``minute`` lies inside the window (its events are
        assumed spread evenly over the minute): 1 but for the oldest bucket."""
        start = now - self.window_s
        return min(1.0, max(0.0, ((minute + 1) * 60 - start) / 60))

    def _prune(self, oldest: int) -> None:
        for m in [m for m in self.minutes if m < oldest]:
            del self.minutes[m]

    def observe_ack_latency(self, route: Route, seconds: float) -> None:
        """One message of ``route`` ACKed ``seconds`` after it became durable
        (after :meth:`add` counted it ``acked``, so the route is known)."""
        route = self._route(route)
        seconds = max(0.0, seconds)
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        micros = int(seconds * 1e6)
        for table in (self.latency, self._latency_deltas) if self.track_deltas else (self.latency,):
            _bump(table, route, bucket, 1, LATENCY_WIDTH)
            _bump(table, route, LATENCY_WIDTH - 1, micros, LATENCY_WIDTH)

    def take_deltas(self) -> tuple[dict[Route, list[int]], Window, dict[Route, list[int]]]:
        """What was added since the last call: counts, window buckets, latency."""
        deltas = (self._deltas, self._minute_deltas, self._latency_deltas)
        self._deltas, self._minute_deltas, self._latency_deltas = {}, {}, {}
        return deltas

    def ack_latency(self, appcodes: Collection[int] | None = None) -> list[int]:
        """The latency histogram over every route (of ``appcodes``):
        :data:`LATENCY_WIDTH` values, as one route's."""
        total = [0] * LATENCY_WIDTH
        for route, counts in self.latency.items():
            if appcodes is None or route[0] in appcodes:
                for i, value in enumerate(counts):
                    total[i] += value
        return total

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

    def delivery_rate_total(self, appcodes: Collection[int] | None = None) -> float | None:
        """ACKed / accepted over C2C and S2C since the counts began; None before
        anything was accepted."""
        accepted = acked = 0
        for (_, _, kind), counts in self._routes(appcodes):
            if kind != Kind.C2S:
                accepted += counts[_INDEX["accepted"]]
                acked += counts[_INDEX["acked"]]
        return acked / accepted if accepted else None

    def delivery_rate(self, appcodes: Collection[int] | None = None) -> float | None:
        """ACKed / accepted over C2C and S2C within the window; None when nothing
        was accepted in it. (An ACK in the window may be of a message accepted
        before it, so the rate can exceed 1 for a moment; it is capped at 1.)"""
        now = self.now()
        oldest = self.first_minute(now)
        accepted = acked = 0.0
        for minute, routes in self.minutes.items():
            if minute < oldest:
                continue
            weight = self._weight(minute, now)
            for route, (acc, ack) in routes.items():
                if appcodes is None or route[0] in appcodes:
                    accepted += acc * weight
                    acked += ack * weight
        return min(1.0, acked / accepted) if accepted else None

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
                    "ack_latency": latency_summary(self.latency.get((appcode, msgtype, kind))),
                }
                for (appcode, msgtype, kind), counts in self._routes(appcodes)
            ],
            "ack_latency": latency_summary(self.ack_latency(appcodes)),
            "delivery_rate": self.delivery_rate(appcodes),
            "delivery_rate_total": self.delivery_rate_total(appcodes),
            "window_s": self.window_s,
        }


def latency_summary(counts: list[int] | None) -> dict[str, Any]:
    """``count``, ``mean_ms`` and ``p50_ms``/``p90_ms``/``p99_ms`` of a latency
    histogram (:data:`LATENCY_WIDTH` values); a quantile is its bucket's upper
    bound, None past the last bound or with nothing counted."""
    n = sum(counts[:-1]) if counts else 0
    summary: dict[str, Any] = {"count": n, "mean_ms": None}
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        summary[name] = None
        if n:
            assert counts is not None
            rank, seen = q * n, 0
            for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
                seen += count
                if seen >= rank:
                    summary[name] = bound * 1000
                    break
    if n:
        assert counts is not None
        summary["mean_ms"] = round(counts[-1] / n / 1000, 3)
    return summary


def _bump(table: dict[Route, list[int]], route: Route, i: int, n: int, width: int) -> None:
    counts = table.get(route)
    if counts is None:
        counts = table[route] = [0] * width
    counts[i] += n
