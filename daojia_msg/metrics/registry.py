# -*- test-case-name: tests.metrics.test_registry -*-
"""Prometheus metrics of this node, read from :class:`Stats` at scrape time.

One source of truth: the collector keeps no counters of its own; each scrape
turns :class:`~daojia_msg.metrics.delivery.Stats` (the object behind ``/v1/stats``)
into metric families, so ``/metrics`` and ``/v1/stats`` can never disagree.

- ``msgplatform_messages_<counter>_total{appcode,msgtype,kind}``, one counter
  family per name in :data:`~daojia_msg.metrics.delivery.COUNTERS` (``accepted``,
  ``pushed``, ``acked``, ``repushed``, ``stored``, ``pulled``, ``expired``,
  ``escalated``);
- ``msgplatform_ack_latency_seconds{appcode,msgtype,kind}``: durable -> ACKed,
  a histogram per route with the buckets of
  :data:`~daojia_msg.metrics.delivery.LATENCY_BUCKETS`;
- ``msgplatform_connections``: open client connections on this node's gate;
- ``msgplatform_sessions``: logged-in sessions on this node;
- ``msgplatform_login_throttled_total{scope}``: LOGINs refused by a brute-force
  lockout of an identity or of an IP;
- ``msgplatform_logins_total{result}`` (answered LOGINs by result code name),
  ``msgplatform_kickouts_total{reason}`` (KICKOUTs sent, by reason name),
  ``msgplatform_frames_refused_total{code}`` (answers with a non-OK code, by
  its name), ``msgplatform_requests_total{cmd}`` (client requests by command),
  ``msgplatform_gate_bytes_received_total`` / ``_sent_total`` and
  ``msgplatform_gate_connections{transport}`` (open connections
  over tcp, tls, websocket), from the gate's
  :class:`~daojia_msg.metrics.counters.GateCounters`;
- ``msgplatform_reactor_lag_seconds``: how late the reactor runs a due timer
  (:mod:`daojia_msg.metrics.reactorlag` observes it);
- prometheus_client's own collectors: the process (``msgplatform_process_*``:
  CPU seconds, resident memory, open and maximum file descriptors, start
  time), the platform (``python_info``) and the garbage collector
  (``python_gc_*``; these two take no prefix).

The registry is a dedicated :class:`CollectorRegistry`, never the global one,
so several nodes (or tests) in one process never share metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from daojia_msg.metrics.counters import LOGIN_THROTTLE_SCOPES, GateCounters, LabeledCounter
from daojia_msg.metrics.delivery import COUNTERS, LATENCY_BUCKETS, Stats
from daojia_msg.metrics.histograms import ScrapeCollector

PREFIX = "msgplatform"
ROUTE_LABELS = ("appcode", "msgtype", "kind")

_COUNTER_HELP = {
    "accepted": "Messages made durable (C2C, S2C) or accepted by the bus (C2S).",
    "pushed": "First pushes of a message to an online session.",
    "acked": "Messages ACKed by their recipient (pending -> delivered).",
    "repushed": "Pushes repeated after an ACK timeout.",
    "stored": "Messages accepted while the recipient had no session (left for PULL).",
    "pulled": "Messages returned by PULL.",
    "expired": "Pending messages removed after store.pending_ttl_days, never delivered.",
    "escalated": "Pushes not ACKed in time POSTed to their app's escalation_url.",
}


class StatsCollector(ScrapeCollector):
    """A prometheus_client custom collector over :class:`Stats` and two gauges.

    ``connections`` and ``sessions`` are called at each scrape.
    """

    def __init__(
        self, stats: Stats, connections: Callable[[], int], sessions: Callable[[], int],
        login_throttled: LabeledCounter | None = None,
        gate: GateCounters | None = None,
        transports: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.stats = stats
        self.connections = connections
        self.sessions = sessions
        self.login_throttled = login_throttled or LabeledCounter(LOGIN_THROTTLE_SCOPES)
        self.gate = gate
        self.transports = transports

    def _families(self, with_values: bool) -> Iterator[Metric]:
        routes = sorted(self.stats.by_route.items()) if with_values else []
        for i, name in enumerate(COUNTERS):
            family = CounterMetricFamily(
                f"{PREFIX}_messages_{name}", _COUNTER_HELP[name], labels=ROUTE_LABELS
            )
            for (appcode, msgtype, kind), counts in routes:
                family.add_metric([str(appcode), str(msgtype), kind.name], counts[i])
            yield family

        latency = HistogramMetricFamily(
            f"{PREFIX}_ack_latency_seconds",
            "Time from a message becoming durable to its ACK.",
            labels=ROUTE_LABELS,
        )
        for (appcode, msgtype, kind), counts in (
            sorted(self.stats.latency.items()) if with_values else []
        ):
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            buckets.append(("+Inf", sum(counts[:-1])))
            latency.add_metric([str(appcode), str(msgtype), kind.name], buckets, counts[-1] / 1e6)
        yield latency

        connections = GaugeMetricFamily(
            f"{PREFIX}_connections", "Open client connections on this node's gate."
        )
        sessions = GaugeMetricFamily(f"{PREFIX}_sessions", "Logged-in sessions on this node.")
        if with_values:
            connections.add_metric([], self.connections())
            sessions.add_metric([], self.sessions())
        yield connections
        yield sessions

        throttled = CounterMetricFamily(
            f"{PREFIX}_login_throttled",
            "LOGINs refused by a brute-force lockout, by its scope (identity or ip).",
            labels=("scope",),
        )
        for scope, count in (sorted(self.login_throttled.counts.items()) if with_values else []):
            throttled.add_metric([scope], count)
        yield throttled

        gate = self.gate if with_values else None
        for name, label, text, counter in (
            ("logins", "result", "LOGINs answered, by result code.", gate and gate.logins),
            ("kickouts", "reason", "KICKOUTs sent, by reason.", gate and gate.kickouts),
            ("frames_refused", "code", "Answers with a non-OK result code, by code.",
             gate and gate.refused),
            ("requests", "cmd", "Client requests by command.", gate and gate.requests),
        ):
            family = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=(label,))
            for value, count in (sorted(counter.counts.items()) if counter else []):
                family.add_metric([value.lower()], count)
            yield family
        for direction, text, attribute in (
                ("received", "Bytes read from the gate's connections.", "bytes_in"),
                ("sent", "Bytes written to the gate's connections.", "bytes_out")):
            family = CounterMetricFamily(f"{PREFIX}_gate_bytes_{direction}", text)
            if gate is not None:
                family.add_metric([], getattr(gate, attribute))
            yield family
        transports = GaugeMetricFamily(f"{PREFIX}_gate_connections",
                                       "Open gate connections by transport.",
                                       labels=("transport",))
        for transport, count in (sorted(self.transports().items()) if with_values else []):
            transports.add_metric([transport], count)
        yield transports


def make_registry(
    stats: Stats, connections: Callable[[], int], sessions: Callable[[], int],
    login_throttled: LabeledCounter | None = None, gate: GateCounters | None = None,
    transports: Callable[[], dict[str, int]] = dict,
) -> CollectorRegistry:
    """A dedicated registry holding one :class:`StatsCollector`.

    ``connections()`` counts the gate's open connections; ``sessions()`` this
    node's logged-in sessions (``len(logic.local)``).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, connections, sessions, login_throttled, gate,
                                     transports))
    ProcessCollector(namespace=PREFIX, registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class DeliveryGauges(ScrapeCollector):
    """``msgplatform_messages_unacked{kind}`` (pushes awaiting their ACK on this
    node's sessions), ``msgplatform_delivery_retries_waiting`` (deliveries
    to an unreachable peer waiting for their next try), and from ``routes()``
    (the routing's kept routes: pushes tried on them by result, and how many
    are kept) ``msgplatform_route_pushes_total{result}`` and
    ``msgplatform_routes_kept``, read at scrape time."""

    def __init__(self, unacked: Callable[[], dict[str, int]], retries: Callable[[], int],
                 routes: Callable[[], tuple[Mapping[str, int], int]] | None = None) -> None:
        self.unacked = unacked
        self.retries = retries
        self.routes = routes

    def _families(self, with_values: bool) -> Iterator[Metric]:
        unacked = GaugeMetricFamily(f"{PREFIX}_messages_unacked",
                                    "Pushes awaiting their ACK on this node's sessions, by kind.",
                                    labels=("kind",))
        retries = GaugeMetricFamily(f"{PREFIX}_delivery_retries_waiting",
                                    "Deliveries to an unreachable node waiting for their next try.")
        if with_values:
            for kind, count in sorted(self.unacked().items()):
                unacked.add_metric([kind], count)
            retries.add_metric([], self.retries())
        yield unacked
        yield retries
        pushes = CounterMetricFamily(
            f"{PREFIX}_route_pushes",
            "Pushes to another node tried on a kept route, by result (hit: taken there; "
            "stale: not held or unreachable, the session looked up again).",
            labels=("result",))
        kept = GaugeMetricFamily(f"{PREFIX}_routes_kept",
                                 "Recipients on other nodes whose route this node keeps.")
        if with_values and self.routes is not None:
            results, count = self.routes()
            for result, n in sorted(results.items()):
                pushes.add_metric([result], n)
            kept.add_metric([], count)
        yield pushes
        yield kept


class AdmissionGauges(ScrapeCollector):
    """``msgplatform_admission_limit`` (the C2C/C2S admission bound in force:
    ``limits.node_max_inflight``, or less while answers are slower than
    ``limits.admission_target_ms``; 0: no bound) and
    ``msgplatform_admission_inflight`` (C2C and C2S in work now), read from
    the gate's :class:`~daojia_msg.core.admission.Admission` at scrape time."""

    def __init__(self, admission: Callable[[], tuple[int, int]]) -> None:
        self.admission = admission

    def _families(self, with_values: bool) -> Iterator[Metric]:
        limit = GaugeMetricFamily(f"{PREFIX}_admission_limit",
                                  "The C2C/C2S admission bound in force (0: none).")
        inflight = GaugeMetricFamily(f"{PREFIX}_admission_inflight",
                                     "C2C and C2S requests in work on this node.")
        if with_values:
            bound, count = self.admission()
            limit.add_metric([], bound)
            inflight.add_metric([], count)
        yield limit
        yield inflight
