# -*- test-case-name: tests.cluster.test_stats -*-
"""Delivery statistics counted cluster-wide in Redis.

Every ``stats.flush_s`` each node adds what it counted since its last flush
(:meth:`Stats.take_deltas`) to the cluster's counts, in one script call:

- ``stats:c``          hash ``appcode:msgtype:kind:counter`` -> count (since ever)
- ``stats:m:<minute>`` hash ``appcode:msgtype:kind:accepted|acked`` -> count
                       (the delivery-rate window; expires after the window)
- ``stats:lat``        hash ``b<i>`` -> ACK latencies in bucket i, ``sum_us``

:class:`ClusterStats` reads them back into a :class:`Stats` and answers
``GET /v1/stats`` with the same JSON as one node, for the whole cluster. A
flush that fails (Redis down) is kept and added to the next one, so counts are
late, never lost, while the node lives; a node that dies loses at most its
last ``flush_s`` of counts.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from daojia_msg.cluster.redisconn import Redis, Script
from daojia_msg.logic.stats import COUNTERS, LATENCY_BUCKETS, Route, Stats, Window, _bump
from daojia_msg.store.errors import StoreError
from daojia_msg.store.model import Kind

# KEYS: counts hash, latency hash, then one key per window minute.
# ARGV: ttl_ms, n_counts, (field, delta)*, n_lat, (field, delta)*,
#       then per minute: n_fields, (field, delta)*.
FLUSH = Script("""
local ttl = ARGV[1]
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
for k = 3, #KEYS do
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]); i = i + 2 end
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return 1
""")

WINDOW_FIELDS = ("accepted", "acked")


def _field(route: Route, name: str) -> str:
    appcode, msgtype, kind = route
    return f"{appcode}:{msgtype}:{int(kind)}:{name}"


def _parse(field: Any) -> tuple[Route, str]:
    text = field.decode() if isinstance(field, bytes) else str(field)
    appcode, msgtype, kind, name = text.split(":")
    return (int(appcode), int(msgtype), Kind(int(kind))), name


class StatsFlusher:
    """Adds a node's counts to the cluster's, every ``flush_s``."""

    log = Logger()

    def __init__(self, redis: Redis, stats: Stats, clock: IReactorTime, flush_s: float) -> None:
        self.redis = redis
        self.stats = stats
        self.flush_s = flush_s
        self._carry: tuple[dict[Route, list[int]], Window, list[int], float] | None = None
        self._failing = False
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.flush()))
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self.flush_s, now=False)

    async def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        await self.flush()

    async def flush(self) -> None:
        counts, minutes, latency, latency_sum = self.stats.take_deltas()
        if self._carry is not None:  # what a failed flush could not add
            old_counts, old_minutes, old_latency, old_sum = self._carry
            for route, values in old_counts.items():
                for i, v in enumerate(values):
                    _bump(counts, route, i, v, len(COUNTERS))
            for minute, routes in old_minutes.items():
                for route, values in routes.items():
                    for i, v in enumerate(values):
                        _bump(minutes.setdefault(minute, {}), route, i, v, 2)
            latency = [a + b for a, b in zip(latency, old_latency, strict=True)]
            latency_sum += old_sum
            self._carry = None
        if not counts and not minutes and not any(latency):
            return
        keys = [self.redis.key("stats", "c"), self.redis.key("stats", "lat")]
        args: list[Any] = [int((self.stats.window_s + 120) * 1000)]
        pairs = [(_field(r, name), v) for r, values in counts.items()
                 for name, v in zip(COUNTERS, values, strict=True) if v]
        args += [len(pairs), *[x for p in pairs for x in p]]
        lat = [(f"b{i}", v) for i, v in enumerate(latency) if v]
        if latency_sum:
            lat.append(("sum_us", int(latency_sum * 1e6)))
        args += [len(lat), *[x for p in lat for x in p]]
        for minute, routes in minutes.items():
            keys.append(self.redis.key("stats", "m", minute))
            fields = [(_field(r, name), v) for r, values in routes.items()
                      for name, v in zip(WINDOW_FIELDS, values, strict=True) if v]
            args += [len(fields), *[x for p in fields for x in p]]
        try:
            await FLUSH(self.redis, keys, args)
        except StoreError as e:
            self._carry = (counts, minutes, latency, latency_sum)
            if not self._failing:
                self.log.warn("cluster stats not flushed (kept for the next flush): {error}",
                              error=str(e))
            self._failing = True
            return
        if self._failing:
            self.log.info("cluster stats flushed again")
        self._failing = False


class ClusterStats:
    """The cluster-wide counts, read back from Redis."""

    def __init__(self, redis: Redis, clock: IReactorTime, window_s: float) -> None:
        self.redis = redis
        self.clock = clock
        self.window_s = window_s

    async def read(self) -> Stats:
        stats = Stats(max_routes=10**9, now=self.clock.seconds, window_s=self.window_s)
        counts = await self.redis.call("HGETALL", self.redis.key("stats", "c"))
        for field, value in zip(counts[::2], counts[1::2], strict=True):
            route, name = _parse(field)
            _bump(stats.by_route, route, COUNTERS.index(name), int(value), len(COUNTERS))
        now_minute = int(self.clock.seconds() // 60)
        for minute in range(stats.first_minute(now_minute), now_minute + 1):
            entries = await self.redis.call("HGETALL", self.redis.key("stats", "m", minute))
            for field, value in zip(entries[::2], entries[1::2], strict=True):
                route, name = _parse(field)
                _bump(stats.minutes.setdefault(minute, {}), route, WINDOW_FIELDS.index(name),
                      int(value), 2)
        latency = await self.redis.call("HGETALL", self.redis.key("stats", "lat"))
        for field, value in zip(latency[::2], latency[1::2], strict=True):
            name = field.decode() if isinstance(field, bytes) else str(field)
            if name == "sum_us":
                stats.latency_sum = int(value) / 1e6
            elif name.startswith("b") and int(name[1:]) <= len(LATENCY_BUCKETS):
                stats.latency_counts[int(name[1:])] = int(value)
        return stats

    async def snapshot(self, appcodes: Collection[int] | None = None) -> dict[str, Any]:
        return (await self.read()).snapshot(appcodes)
