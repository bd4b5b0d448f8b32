"""The gate detector against a real Redis; see tests.cluster.test_registry."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from daojia_msg.cluster.detector import GateDetector
from daojia_msg.cluster.registry import NodeRegistry
from daojia_msg.core.errors import StoreUnavailable
from tests.cluster.fakes import CLUSTER, T0, FlakyRedis, RedisFixture


class DetectorTests(RedisFixture):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        #: Sessions each node holds in the (pretend) session store.
        self.sessions = {1: 4, 2: 6, 3: 5}
        self.purged: list[int] = []
        self.failing = False
        self.clocks: dict[int, Clock] = {}
        self.registries: dict[int, NodeRegistry] = {}
        for node_id in (1, 2, 3):
            self.clocks[node_id] = Clock()
            self.clocks[node_id].advance(T0)
            self.registries[node_id] = await self.started(node_id, clock=self.clocks[node_id])

    def purge_node(self, node_id: int) -> Deferred[int]:
        if self.failing:
            return fail(StoreUnavailable("session store down (test)"))
        self.purged.append(node_id)
        return succeed(self.sessions.pop(node_id, 0))

    def detector(self, node_id: int) -> GateDetector:
        detector = GateDetector(self.redis, self.registries[node_id], self.purge_node,
                                self.clocks[node_id], CLUSTER)
        self.addCleanup(detector.stop)
        return detector

    async def test_one_holder_at_a_time(self) -> None:
        first, second = self.detector(1), self.detector(2)
        await first.check_once()
        await second.check_once()
        await first.check_once()  # renews its own lock
        self.assertEqual((first.holding, second.holding), (True, False))
        lock = await self.redis.call("GET", self.redis.key("detector"))
        self.assertTrue(lock.startswith(b"1:"))
        self.assertGreater(await self.redis.call("PTTL", self.redis.key("detector")), 5000)
        await first.stop()  # gives the lock up
        await second.check_once()
        self.assertTrue(second.holding)

    async def test_dead_node_is_purged_and_leaves_the_nodes_set(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        detector = self.detector(1)
        self.assertEqual(await detector.check_once(), [])
        await self.kill(3)
        self.assertEqual(await detector.check_once(), [3])
        self.assertEqual(self.purged, [3])
        self.assertEqual(await self.members(), {1, 2})
        self.assertEqual(self.sessions, {1: 4, 2: 6})  # the live nodes are untouched
        [event] = [e for e in events if e.get("log_format", "").startswith("node {node_id} is dead")]
        self.assertEqual((event["node_id"], event["count"]), (3, 5))
        self.assertEqual(await detector.check_once(), [])
        self.assertEqual(self.purged, [3])

    async def test_non_holder_does_nothing(self) -> None:
        holder, other = self.detector(1), self.detector(2)
        await holder.check_once()
        await self.kill(3)
        self.assertEqual(await other.check_once(), [])
        self.assertEqual(self.purged, [])
        self.assertEqual(await holder.check_once(), [3])

    async def test_purge_failure_is_retried(self) -> None:
        detector = self.detector(1)
        await self.kill(3)
        self.failing = True
        self.assertEqual(await detector.check_once(), [])
        self.assertEqual(await self.members(), {1, 2, 3})
        self.failing = False
        self.assertEqual(await detector.check_once(), [3])
        self.assertEqual(await self.members(), {1, 2})

    async def test_node_that_comes_back_registers_again(self) -> None:
        detector = self.detector(1)
        await self.kill(3)
        await detector.check_once()
        self.assertEqual(await self.members(), {1, 2})
        await self.registries[3].heartbeat()  # it was only paused
        self.assertTrue(self.registries[3].available())
        self.assertEqual(await self.members(), {1, 2, 3})
        self.assertEqual(await detector.check_once(), [])
        self.assertEqual(self.purged, [3])

    async def test_unavailable_node_does_not_detect(self) -> None:
        detector = self.detector(1)
        await self.kill(3)
        self.clocks[1].advance(3.5)  # its heartbeat (at +2 s) has not come back yet
        self.assertFalse(self.registries[1].available())
        self.assertEqual(await detector.check_once(), [])
        self.assertFalse(detector.holding)
        self.assertIsNone(await self.redis.call("GET", self.redis.key("detector")))
        await self.registries[1].heartbeat()  # waits for the one in flight
        self.assertTrue(self.registries[1].available())
        self.assertEqual(await detector.check_once(), [3])

    async def test_loop_checks_every_heartbeat(self) -> None:
        detector = self.detector(2)
        calls: list[None] = []
        real = detector.check_once

        async def spy() -> list[int]:
            calls.append(None)
            return await real()

        self.patch(detector, "check_once", spy)
        detector.start()
        await self.kill(3)
        self.clocks[2].advance(1.9)
        self.assertEqual(calls, [])
        self.clocks[2].advance(0.1)  # the registry's heartbeat and the check
        self.assertEqual(len(calls), 1)
        await detector.stop()  # waits for the check in flight, then gives the lock up
        self.assertEqual(self.purged, [3])
        self.assertEqual(await self.members(), {1, 2})
        self.assertIsNone(await self.redis.call("GET", self.redis.key("detector")))
        self.clocks[2].advance(10)
        self.assertEqual(len(calls), 1)

    async def test_redis_failure_is_logged_once(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        redis = FlakyRedis(self.redis)
        detector = GateDetector(redis, self.registries[1], self.purge_node, self.clocks[1],
                                CLUSTER)
        self.addCleanup(detector.stop)
        redis.down = True
        for _ in range(3):
            await detector._tick()
        warnings = [e for e in events if "detector check failed" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        redis.down = False
        await detector._tick()
        self.assertTrue(detector.holding)
        self.assertTrue(any("work again" in e.get("log_format", "") for e in events))
