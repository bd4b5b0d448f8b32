"""Delivery statistics: the sliding window, and counts added up across nodes in Redis."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.cluster.stats import ClusterStats, StatsFlusher
from daojia_msg.config import RedisConfig
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind
from daojia_msg.metrics.delivery import Stats
from daojia_msg.redisconn import Redis, connect
from tests.servers import redis_prefix, require_redis

C2C = (1001, 7, Kind.C2C)
S2C = (1002, 5, Kind.S2C)
GPS = (1001, 1, Kind.C2S)


class WindowTests(SynchronousTestCase):
    def test_delivery_rate_over_the_window(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        stats = Stats(now=clock.seconds, window_s=300)
        stats.add(C2C, "accepted", 10)
        stats.add(C2C, "acked", 5)
        stats.add(GPS, "accepted", 100)  # C2S is not delivered: not in the rate
        self.assertEqual(stats.delivery_rate(), 0.5)
        clock.advance(360)
        self.assertIsNone(stats.delivery_rate())  # nothing accepted in the last 5 minutes
        stats.add(C2C, "accepted", 4)
        stats.add(C2C, "acked", 4)
        self.assertEqual(stats.delivery_rate(), 1.0)
        self.assertEqual(stats.delivery_rate_total(), 9 / 14)
        snapshot = stats.snapshot()
        self.assertEqual((snapshot["delivery_rate"], snapshot["window_s"]), (1.0, 300))
        clock.advance(3600)
        stats.add(C2C, "accepted")
        self.assertEqual(len(stats.minutes), 1)  # old buckets are dropped


    def test_the_window_is_its_full_length(self) -> None:
        """Counts from 250 s ago are inside a 300 s window (review finding)."""
        clock = Clock()
        clock.advance(1_800_000_000)
        stats = Stats(now=clock.seconds, window_s=300)
        stats.add(C2C, "accepted", 100)  # never ACKed
        clock.advance(250)
        stats.add(C2C, "accepted", 100)
        stats.add(C2C, "acked", 100)
        self.assertEqual(stats.delivery_rate(), 0.5)
        clock.advance(70)  # the window now starts 20 s into the first minute
        self.assertAlmostEqual(stats.delivery_rate() or 0, 100 / (100 + 100 * 40 / 60))

    def test_short_window(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000 + 59)
        stats = Stats(now=clock.seconds, window_s=60)
        stats.add(C2C, "accepted", 10)
        clock.advance(2)  # a new minute: the last one is still (mostly) in the window
        self.assertEqual(stats.delivery_rate(), 0.0)


class ClusterStatsTests(TestCase):
    async def connect(self) -> Redis:
        prefix = redis_prefix(self)
        redis = await connect(RedisConfig(url=require_redis(), key_prefix=prefix))
        self.addCleanup(redis.close)
        return redis

    async def test_counts_add_up_across_two_nodes(self) -> None:
        redis = await self.connect()
        now: Any = reactor
        node1 = Stats(now=now.seconds, track_deltas=True)
        node2 = Stats(now=now.seconds, track_deltas=True)
        flush1 = StatsFlusher(redis, node1, now, 1.0)
        flush2 = StatsFlusher(redis, node2, now, 1.0)
        node1.add(C2C, "accepted", 3)
        node2.add(C2C, "pushed", 2)  # node 2 holds the recipient's session
        node2.add(C2C, "acked", 2)
        node1.add(S2C, "accepted")
        node1.add(GPS, "accepted", 7)
        node2.observe_ack_latency(C2C, 0.02)
        node2.observe_ack_latency(C2C, 0.3)
        node1.add(S2C, "acked")
        node1.observe_ack_latency(S2C, 0.004)
        await flush1.flush()
        await flush2.flush()
        node1.add(C2C, "accepted")  # a later flush adds to the same counts
        await flush1.flush()
        view = ClusterStats(redis, now, 300)
        snapshot = await view.snapshot()
        totals = snapshot["totals"]
        self.assertEqual((totals["accepted"], totals["pushed"], totals["acked"]), (12, 2, 3))
        self.assertEqual(snapshot["delivery_rate"], 3 / 5)
        routes = {(r["appcode"], r["msgtype"], r["kind"]): r for r in snapshot["by_route"]}
        self.assertEqual(routes[(1001, 1, "C2S")]["accepted"], 7)
        # ACK latency per route, from both nodes: C2C's two, S2C's one.
        c2c = routes[(C2C[0], C2C[1], "C2C")]["ack_latency"]
        self.assertEqual((c2c["count"], c2c["mean_ms"], c2c["p50_ms"], c2c["p99_ms"]),
                         (2, 160.0, 25.0, 500.0))
        self.assertEqual(snapshot["ack_latency"]["count"], 3)
        scoped = await view.snapshot(frozenset({1002}))
        self.assertEqual((scoped["totals"]["accepted"], scoped["delivery_rate"]), (1, 1.0))
        self.assertEqual((scoped["ack_latency"]["count"], scoped["ack_latency"]["p50_ms"]),
                         (1, 5.0))

    async def test_failed_flush_is_carried(self) -> None:
        redis = await self.connect()
        now: Any = reactor
        stats = Stats(now=now.seconds, track_deltas=True)
        flusher = StatsFlusher(redis, stats, now, 1.0)
        stats.add(C2C, "accepted", 2)
        real = redis.call

        async def down(*args: Any) -> Any:
            raise StoreUnavailable("redis down")

        redis.call = down  # type: ignore[method-assign]
        await flusher.flush()
        redis.call = real  # type: ignore[method-assign]
        stats.add(C2C, "accepted", 1)
        await flusher.flush()  # the failed batch, as it was
        snapshot = await ClusterStats(redis, now, 300).snapshot()
        self.assertEqual(snapshot["totals"]["accepted"], 2)
        await flusher.flush()  # then what came meanwhile
        snapshot = await ClusterStats(redis, now, 300).snapshot()
        self.assertEqual(snapshot["totals"]["accepted"], 3)

    async def test_a_lost_reply_is_not_counted_twice(self) -> None:
        redis = await self.connect()
        now: Any = reactor
        stats = Stats(now=now.seconds, track_deltas=True)
        flusher = StatsFlusher(redis, stats, now, 1.0)
        stats.add(C2C, "accepted", 2)
        real = redis.call

        async def applied_but_reply_lost(*args: Any) -> Any:
            await real(*args)
            raise StoreUnavailable("reply timeout")

        redis.call = applied_but_reply_lost  # type: ignore[method-assign]
        await flusher.flush()
        redis.call = real  # type: ignore[method-assign]
        stats.add(C2C, "accepted", 1)
        await flusher.flush()  # the same batch again: skipped by its marker
        await flusher.flush()  # then the new count
        snapshot = await ClusterStats(redis, now, 300).snapshot()
        self.assertEqual(snapshot["totals"]["accepted"], 3)
