"""The node registry through a Redis outage (docs/operations.md §3), on a
real Redis that fails on demand (:class:`FlakyRedis`) and a :class:`Clock`.

The rules: cut off for less than ``redis_outage_grace_s`` the node keeps its
connections (no ``on_purged``) and serves them (:meth:`serving`), but takes no
LOGIN (:meth:`available`); it tries Redis every :data:`OUTAGE_POLL_S`; once
Redis answers it renews or leases its id again and awaits ``on_rejoin``
before taking logins; past the grace, or when another node holds its id, it
calls ``on_purged`` (KICKOUT SHUTDOWN) once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from daojia_msg.cluster.registry import OUTAGE_POLL_S, NodeRegistry
from daojia_msg.config import parse_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.ids import IdGenerator
from tests.cluster.fakes import T0, FlakyRedis, RedisFixture
from tests.config.helpers import APP


class Hooks:
    """``on_purged`` and ``on_rejoin`` of a registry: when each was called,
    and whether the lease was ours at that moment (by its token)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.purged: list[float] = []
        self.rejoined: list[float] = []
        self.fail_rejoin = False

    def on_purged(self) -> None:
        self.purged.append(self.clock.seconds())

    def on_rejoin(self) -> None:
        if self.fail_rejoin:
            raise StoreUnavailable("redis EVALSHA: down (test)")
        self.rejoined.append(self.clock.seconds())


class OutageTests(RedisFixture):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.clock = Clock()
        self.clock.advance(T0)
        self.flaky = FlakyRedis(self.redis)
        self.hooks = Hooks(self.clock)
        self.node: NodeRegistry = await self.started(
            4, clock=self.clock, redis=self.flaky, on_purged=self.hooks.on_purged,
            on_rejoin=self.hooks.on_rejoin)

    def cut_off_for(self, seconds: float) -> None:
        """Redis does not answer for ``seconds`` (heartbeats, retries run)."""
        self.flaky.down = True
        self.clock.pump([0.25] * round(seconds * 4))  # exact steps at T0

    async def back(self) -> None:
        """Redis answers again; the next try (within OUTAGE_POLL_S) finds it."""
        self.flaky.down = False
        self.clock.advance(OUTAGE_POLL_S)
        await self.node.heartbeat()  # the one the retry started (it runs on real Redis)

    async def test_shorter_than_the_grace_keeps_the_connections(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.cut_off_for(2.0)  # the first heartbeat (at +2 s) fails
        self.assertFalse(self.node.available())  # at once: no LOGIN
        self.assertTrue(self.node.serving())
        self.cut_off_for(27.5)  # 29.5 s after the last renewal
        self.assertTrue(self.node.serving())
        self.assertEqual(self.hooks.purged, [])
        renewed = self.node.renewals["ok"]
        await self.back()
        self.assertEqual(self.node.renewals["ok"], renewed + 1)
        self.assertEqual(self.hooks.purged, [])
        self.assertEqual(self.hooks.rejoined, [self.clock.seconds()])
        self.assertTrue(self.node.available())
        warnings = [e for e in events if e["log_level"] >= LogLevel.warn
                    and e.get("node_id") == 4]
        self.assertEqual(len(warnings), 1, warnings)  # once per outage, not every try

    async def test_tries_redis_every_poll_while_cut_off(self) -> None:
        tries: list[float] = []
        real = self.flaky.call

        async def counted(*args: Any) -> Any:
            tries.append(self.clock.seconds())
            return await real(*args)

        self.patch(self.flaky, "call", counted)
        self.cut_off_for(5.0)
        self.assertEqual(len(tries), 7)  # at +2 s, then every 0.5 s
        self.assertEqual(self.node.renewals["failed"], 7)  # msgplatform_lease_renewals_total
        gaps = {round(b - a, 6) for a, b in zip(tries, tries[1:], strict=False)}
        self.assertEqual(gaps, {OUTAGE_POLL_S})

    async def test_past_the_grace_kicks_once_then_registers_again(self) -> None:
        self.cut_off_for(30.0)
        self.assertEqual(self.hooks.purged, [])
        self.cut_off_for(0.5)  # 30.5 s after the last renewal
        self.assertEqual(len(self.hooks.purged), 1)
        self.assertGreater(self.hooks.purged[0] - T0, 30)
        self.assertFalse(self.node.serving())  # no msgid past the reservation's cover
        self.cut_off_for(20.0)
        self.assertEqual(len(self.hooks.purged), 1)
        await self.back()
        self.assertEqual(len(self.hooks.purged), 1)
        self.assertTrue(self.node.available())
        self.assertEqual(len(self.hooks.rejoined), 1)  # prunes what the kicked sessions left

    async def test_lease_lost_within_the_grace_is_taken_again(self) -> None:
        """A Redis restart (without persistence) lost every key: the node
        leases its id again under the same token, without a kick."""
        self.cut_off_for(5.0)
        await self.redis.call("DEL", *[self.redis.key(*k) for k in (
            ("lease", 4), ("node", 4), ("nodes",), ("hwm", 4))])
        await self.back()
        self.assertEqual(self.hooks.purged, [])
        self.assertEqual(len(self.hooks.rejoined), 1)
        self.assertTrue(self.node.available())
        key, token = self.node.lease_guard()
        self.assertEqual(await self.redis.call("GET", key), token.encode())
        self.assertEqual(await self.members(), {4})
        self.assertIsNotNone(await self.node.node(4))

    async def test_a_pause_that_lost_the_lease_is_taken_again(self) -> None:
        """No failed heartbeat (the process was paused past the TTL): the
        lease and the registration expired; within the grace, the same."""
        await self.kill(4)
        await self.node.heartbeat()
        self.assertEqual(self.hooks.purged, [])
        self.assertEqual(len(self.hooks.rejoined), 1)
        self.assertTrue(self.node.available())
        await self.redis.call("DEL", self.redis.key("node", 4))  # the hash alone
        await self.node.heartbeat()
        self.assertEqual((len(self.hooks.purged), len(self.hooks.rejoined)), (0, 2))

    async def test_id_taken_meanwhile_kicks(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.cut_off_for(8.0)
        await self.kill(4)
        lease = self.redis.key("lease", 4)
        await self.redis.call("SET", lease, "another-node", "PX", 60000)
        await self.back()
        self.assertEqual(len(self.hooks.purged), 1)
        self.assertEqual(self.hooks.rejoined, [])
        self.assertFalse(self.node.serving())
        self.assertFalse(self.node.available())
        critical = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertEqual(await self.redis.call("GET", lease), b"another-node")
        await self.node.heartbeat()  # still taken: nothing more
        self.assertEqual(len(self.hooks.purged), 1)
        await self.redis.call("DEL", lease)  # the other node went away
        await self.node.heartbeat()
        self.assertTrue(self.node.available())
        self.assertEqual(len(self.hooks.purged), 1)

    async def test_no_login_until_the_sessions_are_registered_again(self) -> None:
        self.cut_off_for(3.0)
        self.hooks.fail_rejoin = True  # Redis fails again right after the lease
        await self.back()
        self.assertFalse(self.node.available())
        self.assertTrue(self.node.serving())
        self.hooks.fail_rejoin = False
        self.clock.advance(OUTAGE_POLL_S)  # tried again soon
        await self.node.heartbeat()
        self.assertEqual(len(self.hooks.rejoined), 1)
        self.assertTrue(self.node.available())

    async def test_a_short_blip_registers_the_sessions_again_too(self) -> None:
        """Sessions closed while Redis was away could not unregister: any
        failed heartbeat is followed by a rejoin, even with the lease kept."""
        self.cut_off_for(2.0)
        await self.back()
        self.assertEqual(len(self.hooks.rejoined), 1)
        self.clock.advance(2)
        await self.node.heartbeat()
        self.assertEqual(len(self.hooks.rejoined), 1)

    async def test_ids_issued_while_cut_off_stay_below_the_mark(self) -> None:
        """Another node that leases the id once ours expired starts past every
        msgid issued during the grace."""
        assert self.node.ids is not None
        mine = []
        self.flaky.down = True
        for _ in range(120):  # 30 s in steps of 0.25 s, an id at each
            self.clock.advance(0.25)
            if self.node.serving():
                mine.append(self.node.ids.next_id())
        self.assertEqual(len(mine), 120)
        await self.kill(4)  # expired; the detector purged it
        clock = Clock()
        clock.advance(T0 + 1)  # its clock is behind ours
        other = await self.started(4, clock=clock)
        assert other.ids is not None
        self.assertGreater(other.ids.next_id(), max(mine))
        self.assertEqual(IdGenerator.time_ms(max(mine)) // 1000, int(T0 + 30))


class ConfigTests(RedisFixture):
    def test_grace_parsed(self) -> None:
        self.assertEqual(parse_config(APP).cluster.redis_outage_grace_s, 30.0)
        config = parse_config("[cluster]\nredis_outage_grace_s = 0\n" + APP)
        self.assertEqual(config.cluster.redis_outage_grace_s, 0.0)

    async def test_no_grace_kicks_at_the_first_failed_heartbeat(self) -> None:
        clock = Clock()
        clock.advance(T0)
        flaky = FlakyRedis(self.redis)
        kicked: list[float] = []
        cluster = parse_config("[cluster]\nredis_outage_grace_s = 0\n" + APP).cluster
        registry = NodeRegistry(flaky, cluster, clock, wanted_id=6, gate=("", 0), rpc=("", 0),
                                connections=lambda: 0,
                                on_purged=lambda: kicked.append(clock.seconds()))
        await registry.start()
        self.addCleanup(registry.stop)
        flaky.down = True
        clock.advance(2)
        self.assertEqual(kicked, [T0 + 2])
        self.assertFalse(registry.serving())
        flaky.down = False
        done: Deferred[None] = registry.heartbeat()
        await done
        self.assertTrue(registry.available())
