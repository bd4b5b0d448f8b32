# -*- test-case-name: tests.cluster.test_stats -*-
"""Delivery statistics counted cluster-wide in Redis.

Every ``stats.flush_s`` each node adds what it counted since its last flush
(:meth:`Stats.take_deltas`) to the cluster's counts, in one script call:

- ``stats:c``          hash ``appcode:msgtype:kind:counter`` -> count (since ever)
- ``stats:m:<minute>`` hash ``appcode:msgtype:kind:accepted|acked`` -> count
                       (the delivery-rate window; expires after the window)
- ``stats:lat``        hash ``appcode:msgtype:kind:b<i>`` -> ACK latencies in
                       bucket i, ``appcode:msgtype:kind:sum_us`` -> their sum
                       (fields without a route, ``b<i>`` and ``sum_us``, are
                       from nodes before the per-route histogram: ignored)

:class:`ClusterStats` reads them back into a :class:`Stats` and answers
``GET /v1/stats`` with the same JSON as one node, for the whole cluster. A
flush that fails (Redis down) is kept and added to the next one, so counts are
late, never lost, while the node lives; a node that dies loses at most its
last ``flush_s`` of counts. Each batch carries a marker key (flusher id +
sequence number) set in the same script: a batch whose reply was lost is sent
again as it was and is not added twice; new counts wait in the node's
:class:`Stats` until it went through.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from daojia_msg.core.errors import StoreError
from daojia_msg.core.model import Kind
from daojia_msg.metrics.delivery import COUNTERS, LATENCY_WIDTH, Route, Stats, _bump
from daojia_msg.redisconn import Redis, Script

# KEYS: this batch's marker, counts hash, latency hash, then one key per window
# minute. ARGV: ttl_ms, n_counts, (field, delta)*, n_lat, (field, delta)*,
# then per minute: n_fields, (field, delta)*. A batch whose marker exists was
# applied already (its reply was lost): it is not added twice.
FLUSH = Script("""
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', 3600000) then return 0 end
local ttl = ARGV[1]
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
for k = 4, #KEYS do
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]); i = i + 2 end
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return 1
""")

WINDOW_FIELDS = ("accepted", "acked")
#: The fields of a route's ACK latency (:data:`LATENCY_WIDTH` values).
LATENCY_FIELDS = (*(f"b{i}" for i in range(LATENCY_WIDTH - 1)), "sum_us")


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
        self._id = secrets.token_hex(8)
        self._seq = 0
        #: The batch (keys, args) not yet known to be applied: sent again as is.
        self._unsent: tuple[list[str], list[Any]] | None = None
        self._failing = False
        self._flushing: Deferred[None] | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self.flush_s, now=False)

    async def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._flushing is not None:
            await self._flushing
        await self.flush()

    def _tick(self) -> Deferred[None] | None:
        if self._flushing is not None:
            return None  # the previous flush is still under way
        d = self._flushing = Deferred.fromCoroutine(self.flush())

        def done(result: None) -> None:
            self._flushing = None
            return result

        return d.addBoth(done)

    async def flush(self) -> None:
        if self._unsent is None:
            self._unsent = self._batch()
            if self._unsent is None:
                return
        keys, args = self._unsent
        try:
            await FLUSH(self.redis, keys, args)
        except StoreError as e:
            if not self._failing:
                self.log.warn("cluster stats not flushed (sent again next time): {error}",
                              error=str(e))
            self._failing = True
            return
        self._unsent = None
        if self._failing:
            self.log.info("cluster stats flushed again")
        self._failing = False

    def _batch(self) -> tuple[list[str], list[Any]] | None:
        counts, minutes, latency = self.stats.take_deltas()
        if not counts and not minutes and not latency:
            return None
        self._seq += 1
        keys = [self.redis.key("stats", "f", self._id, self._seq),
                self.redis.key("stats", "c"), self.redis.key("stats", "lat")]
        args: list[Any] = [int((self.stats.window_s + 180) * 1000)]
        pairs = [(_field(r, name), v) for r, values in counts.items()
                 for name, v in zip(COUNTERS, values, strict=True) if v]
        args += [len(pairs), *[x for p in pairs for x in p]]
        lat = [(_field(r, name), v) for r, values in latency.items()
               for name, v in zip(LATENCY_FIELDS, values, strict=True) if v]
        args += [len(lat), *[x for p in lat for x in p]]
        for minute, routes in minutes.items():
            keys.append(self.redis.key("stats", "m", minute))
            fields = [(_field(r, name), v) for r, values in routes.items()
                      for name, v in zip(WINDOW_FIELDS, values, strict=True) if v]
            args += [len(fields), *[x for p in fields for x in p]]
        return keys, args


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
        now = self.clock.seconds()
        for minute in range(stats.first_minute(now), int(now // 60) + 1):
            entries = await self.redis.call("HGETALL", self.redis.key("stats", "m", minute))
            for field, value in zip(entries[::2], entries[1::2], strict=True):
                route, name = _parse(field)
                _bump(stats.minutes.setdefault(minute, {}), route, WINDOW_FIELDS.index(name),
                      int(value), 2)
        latency = await self.redis.call("HGETALL", self.redis.key("stats", "lat"))
        for field, value in zip(latency[::2], latency[1::2], strict=True):
            try:
                route, name = _parse(field)
                i = LATENCY_FIELDS.index(name)
            except ValueError:  # not a route's field (an older node's, or a bucket we lack)
                continue
            _bump(stats.latency, route, i, int(value), LATENCY_WIDTH)
        return stats

    async def snapshot(self, appcodes: Collection[int] | None = None) -> dict[str, Any]:
        return (await self.read()).snapshot(appcodes)
