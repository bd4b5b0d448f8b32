# -*- test-case-name: tests.test_cluster,tests.cluster.test_rpc -*-
"""The internal RPC on ``/metrics`` (cluster nodes; empty on one node).

- ``msgplatform_rpc_calls_total{peer,result}``: calls to each peer node by
  result (``ok``, ``timeout``, ``refused``, ``unavailable``: not sent, the
  peer is gone or being backed off from, ``error``);
- ``msgplatform_rpc_call_seconds{peer}``: answered calls' time, a histogram;
- ``msgplatform_redis_command_seconds{command}``: Redis replies' time by
  command (the node's pool: sessions, routing, statistics), and
  ``msgplatform_redis_errors_total{kind}`` (``timeout``, ``error``,
  ``connection``); empty without Redis;
- ``msgplatform_lease_age_seconds`` against ``msgplatform_lease_ttl_seconds``:
  how long ago this node last renewed its node-id lease in Redis (past the
  TTL, other nodes take it for dead); no sample on one node;
- ``msgplatform_lease_renewals_total{result}``: heartbeats by result (``ok``,
  ``failed``: Redis did not answer);
- ``msgplatform_cluster_nodes_live``: the live nodes as this node saw them at
  its last heartbeat (itself included); no sample on one node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from daojia_msg.metrics.histograms import HistogramCollector, LabeledHistogram, ScrapeCollector

CALLS_HELP = "Internal RPC calls to each peer node, by result."
SECONDS_HELP = "Internal RPC calls answered: their time, per peer node."


class RpcCollector:
    """Reads ``source()``: the peers' ``(calls, latency)``, or None on one node."""

    def __init__(self, source: Callable[[], tuple[Mapping[tuple[str, str], int],
                                                   LabeledHistogram] | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily("msgplatform_rpc_calls", CALLS_HELP, labels=("peer", "result"))
        found = self.source()
        if found is None:
            yield calls
            yield HistogramMetricFamily("msgplatform_rpc_call_seconds", SECONDS_HELP,
                                        labels=("peer",))
            return
        counts, latency = found
        for (peer, result), count in sorted(counts.items()):
            calls.add_metric([peer, result], count)
        yield calls
        yield from HistogramCollector("msgplatform_rpc_call_seconds", SECONDS_HELP, "peer",
                                      latency).collect()

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("msgplatform_rpc_calls", CALLS_HELP, labels=("peer", "result"))
        yield HistogramMetricFamily("msgplatform_rpc_call_seconds", SECONDS_HELP, labels=("peer",))


def register_rpc_metrics(registry: CollectorRegistry, source: Callable[[], tuple[
        Mapping[tuple[str, str], int], LabeledHistogram] | None]) -> None:
    registry.register(RpcCollector(source))


class LeaseView(Protocol):
    """What :class:`LeaseCollector` reads of a node's registry."""

    @property
    def renewals(self) -> Mapping[str, int]: ...

    @property
    def live_seen(self) -> int | None: ...

    def lease_age(self) -> float | None: ...


class LeaseCollector(ScrapeCollector):
    """``registry()``: the node's registry (a :class:`LeaseView`), or None on one node."""

    def __init__(self, registry: Callable[[], LeaseView | None], ttl_s: float) -> None:
        self.registry = registry
        self.ttl_s = ttl_s

    def _families(self, with_values: bool) -> Iterator[Metric]:
        age = GaugeMetricFamily("msgplatform_lease_age_seconds",
                                "Seconds since this node last renewed its node-id lease.")
        ttl = GaugeMetricFamily("msgplatform_lease_ttl_seconds",
                                "The lease's TTL (cluster.ttl_s): past it, peers take the node "
                                "for dead.")
        renewals = CounterMetricFamily("msgplatform_lease_renewals",
                                       "Heartbeats renewing this node's lease, by result "
                                       "(ok, failed).", labels=("result",))
        nodes = GaugeMetricFamily("msgplatform_cluster_nodes_live",
                                  "Live nodes of the cluster as this node saw them at its last "
                                  "heartbeat (itself included).")
        registry = self.registry() if with_values else None
        if registry is not None:
            value = registry.lease_age()
            if value is not None:
                age.add_metric([], value)
                ttl.add_metric([], self.ttl_s)
            for result, count in sorted(registry.renewals.items()):
                renewals.add_metric([result], count)
            if registry.live_seen is not None:
                nodes.add_metric([], registry.live_seen)
        yield from (age, ttl, renewals, nodes)


REDIS_HELP = "Redis replies' time, by command (the node's pool)."
REDIS_ERRORS_HELP = "Redis commands that failed, by kind (timeout, error, connection)."


class RedisCollector:
    """Reads ``source()``: the pool's ``(latency, errors)``, or None without Redis."""

    def __init__(self, source: Callable[[], tuple[LabeledHistogram, Mapping[str, int]] | None]
                 ) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        found = self.source()
        errors = CounterMetricFamily("msgplatform_redis_errors", REDIS_ERRORS_HELP,
                                     labels=("kind",))
        if found is None:
            yield HistogramMetricFamily("msgplatform_redis_command_seconds", REDIS_HELP,
                                        labels=("command",))
            yield errors
            return
        latency, counts = found
        yield from HistogramCollector("msgplatform_redis_command_seconds", REDIS_HELP, "command",
                                      latency).collect()
        for kind, count in sorted(counts.items()):
            errors.add_metric([kind], count)
        yield errors

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily("msgplatform_redis_command_seconds", REDIS_HELP,
                                    labels=("command",))
        yield CounterMetricFamily("msgplatform_redis_errors", REDIS_ERRORS_HELP, labels=("kind",))
