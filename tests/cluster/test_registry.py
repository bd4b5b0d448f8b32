"""The node registry against a real Redis (tests.servers.require_redis).

Redis TTLs run in real time, so a node's death is simulated by deleting its
lease and hash (what expiry does); the heartbeat loop and ``available()`` run
on a :class:`Clock`. Each test uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface.verify import verifyObject

from daojia_msg.cluster.interfaces import INodeRegistry
from daojia_msg.cluster.registry import NodeRegistry
from daojia_msg.config import ConfigError
from daojia_msg.ids import IdGenerator
from tests.cluster.fakes import T0, FlakyRedis, RedisFixture


class LeaseTests(RedisFixture):
    async def test_interface(self) -> None:
        registry = await self.started(3)
        self.assertTrue(verifyObject(INodeRegistry, registry))

    async def test_wanted_id_held_by_live_node(self) -> None:
        first = await self.started(7)
        self.assertEqual(first.node_id, 7)
        second = self.registry(7)
        with self.assertRaises(ConfigError) as caught:
            await second.start()
        self.assertEqual(caught.exception.path, ("node", "id"))
        self.assertEqual(str(caught.exception), "node.id: node id 7 is held by a live node")
        self.assertIsNone(second.node_id)
        self.assertTrue(first.available())

    async def test_wanted_id_out_of_range(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            await self.registry(1024).start()
        self.assertEqual(caught.exception.path, ("node", "id"))

    async def test_free_ids_differ(self) -> None:
        first = await self.started()
        second = await self.started()
        self.assertEqual((first.node_id, second.node_id), (0, 1))
        self.assertEqual(await self.members(), {0, 1})

    async def test_skips_dead_ids_not_yet_purged(self) -> None:
        # Id 0 is free but still listed: its sessions are not purged yet.
        await self.redis.call("SADD", self.redis.key("nodes"), 0)
        registry = await self.started()
        self.assertEqual(registry.node_id, 1)

    async def test_stop_frees_the_id(self) -> None:
        first = self.registry(7)
        await first.start()
        await first.stop()
        self.assertFalse(first.available())
        k = self.redis.key
        self.assertEqual(await self.redis.call("EXISTS", k("lease", 7), k("node", 7)), 0)
        self.assertEqual(await self.members(), set())
        self.assertIsNotNone(await self.redis.call("GET", k("hwm", 7)))  # kept
        second = await self.started(7)
        self.assertEqual(second.node_id, 7)

    async def test_stop_leaves_another_holders_lease(self) -> None:
        first = await self.started(7)
        await self.kill(7)
        second = await self.started(7)
        await first.stop()
        self.assertEqual(await self.members(), {7})
        self.assertIsNotNone(await second.node(7))


class HighWaterMarkTests(RedisFixture):
    """A generator whose clock is stepped back never repeats an id."""

    def issue(self, registry: NodeRegistry, count: int) -> list[int]:
        assert registry.ids is not None
        return [registry.ids.next_id() for _ in range(count)]

    def clock_at(self, when: float) -> Clock:
        clock = Clock()
        clock.advance(when)
        return clock

    async def test_crash_then_clock_stepped_back(self) -> None:
        clock = self.clock_at(T0)
        first = await self.started(5, clock=clock)
        before = self.issue(first, 5000)  # borrows into the next millisecond
        clock.advance(1.5)  # no heartbeat yet: the start's reservation covers it
        self.assertTrue(first.available())
        before += self.issue(first, 10)
        await self.kill(5)  # crashed: no stop(), the lease expired

        second = await self.started(5, clock=self.clock_at(T0 - 3600))
        after = self.issue(second, 10)
        self.assertGreater(min(after), max(before))
        self.assertEqual(after, sorted(after))

    async def test_reservation_follows_the_generator_not_the_clock(self) -> None:
        first = await self.started(5, clock=self.clock_at(T0))
        before = self.issue(first, 10)
        await self.kill(5)
        # Stepped back an hour: this generator runs ahead of its clock.
        clock = self.clock_at(T0 - 3600)
        second = await self.started(5, clock=clock)
        clock.advance(2)  # a heartbeat on the loop
        await second.heartbeat()
        middle = self.issue(second, 10)
        clock.advance(1)
        middle += self.issue(second, 10)
        await self.kill(5)
        third = await self.started(5, clock=self.clock_at(T0 - 7200))
        after = self.issue(third, 10)
        self.assertGreater(min(middle), max(before))
        self.assertGreater(min(after), max(middle))

    async def test_stop_then_clock_stepped_back(self) -> None:
        first = self.registry(5, clock=self.clock_at(T0))
        await first.start()
        before = self.issue(first, 100)
        await first.stop()
        second = await self.started(5, clock=self.clock_at(T0 - 60))
        self.assertGreater(min(self.issue(second, 100)), max(before))

    async def test_a_clean_stop_stores_the_exact_mark(self) -> None:
        """Nothing is issued under the id after a clean stop: the mark drops to
        the last id's millisecond, and a restart starts at the clock, not 42 s
        ahead of it."""
        first = self.registry(5, clock=self.clock_at(T0))
        await first.start()
        assert first.ids is not None
        first.ids.advance_past(0)
        last = self.issue(first, 3)[-1]
        await first.stop()
        mark = int(await self.redis.call("GET", self.redis.key("hwm", 5)))
        self.assertEqual(mark, IdGenerator.time_ms(last))
        self.assertLess(mark, int(T0 * 1000) + 2 * 6000 + 30000)
        second = await self.started(5, clock=self.clock_at(T0 + 1))
        [after] = self.issue(second, 1)
        self.assertGreater(after, last)
        self.assertEqual(IdGenerator.time_ms(after), int((T0 + 1) * 1000))

    async def test_ids_carry_the_leased_node_id(self) -> None:
        registry = await self.started(9)
        assert registry.ids is not None
        self.assertEqual(registry.ids.node_id, 9)
        self.assertEqual((registry.ids.next_id() >> 12) & 1023, 9)

    async def test_mark_is_reserved_ahead(self) -> None:
        clock = self.clock_at(T0)
        registry = await self.started(5, clock=clock)
        mark = int(await self.redis.call("GET", self.redis.key("hwm", 5)))
        # Two TTLs and the Redis outage grace: ids issued while cut off are below it.
        self.assertEqual(mark, int(T0 * 1000) + 2 * 6000 + 30000)
        clock.advance(2)
        await registry.heartbeat()
        mark = int(await self.redis.call("GET", self.redis.key("hwm", 5)))
        self.assertEqual(mark, int((T0 + 2) * 1000) + 2 * 6000 + 30000)
        assert registry.ids is not None
        self.assertLess(IdGenerator.time_ms(registry.ids.next_id()), mark)


class HeartbeatTests(RedisFixture):
    async def test_loop_renews(self) -> None:
        clock = Clock()
        clock.advance(T0)
        load = [3]
        registry = await self.started(4, clock=clock, connections=lambda: load[0])
        beats: list[Deferred[None]] = []
        real = registry.heartbeat

        def spy() -> Deferred[None]:
            beats.append(real())
            return beats[-1]

        self.patch(registry, "heartbeat", spy)
        k = self.redis.key
        await self.redis.call("PEXPIRE", k("lease", 4), 1000)
        await self.redis.call("PEXPIRE", k("node", 4), 1000)
        load[0] = 8
        clock.advance(1.9)
        self.assertEqual(beats, [])
        clock.advance(0.1)
        self.assertEqual(len(beats), 1)
        await beats[0]
        self.assertGreater(await self.redis.call("PTTL", k("lease", 4)), 5000)
        self.assertGreater(await self.redis.call("PTTL", k("node", 4)), 5000)
        info = await registry.node(4)
        assert info is not None
        self.assertEqual((info.connections, info.heartbeat_ms, info.started_ms),
                         (8, int((T0 + 2) * 1000), int(T0 * 1000)))
        clock.advance(2)
        self.assertEqual(len(beats), 2)
        await beats[1]

    async def test_available_only_within_half_the_ttl(self) -> None:
        """A node that cannot heartbeat (here: paused) stops taking logins half
        a TTL after its last renewal, before another node could lease its id."""
        clock = Clock()
        clock.advance(T0)
        registry = await self.started(4, clock=clock)
        self.patch(registry, "heartbeat", lambda: succeed(None))  # no heartbeat happens
        clock.advance(3)
        self.assertTrue(registry.available())
        clock.advance(0.01)
        self.assertFalse(registry.available())
        self.assertTrue(registry.serving())  # within the grace its sessions are served

    async def test_id_taken_while_cut_off(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        calls: list[None] = []
        registry = await self.started(4, on_purged=lambda: calls.append(None))
        lease = self.redis.key("lease", 4)
        await self.redis.call("SET", lease, "another-node", "PX", 60000)
        for _ in range(3):
            await registry.heartbeat()
            self.assertFalse(registry.available())
        self.assertEqual(len(calls), 1)
        critical = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertEqual(await self.redis.call("GET", lease), b"another-node")
        await self.redis.call("DEL", lease)  # the other node went away
        await registry.heartbeat()
        self.assertTrue(registry.available())
        self.assertEqual(len(calls), 1)

    async def test_on_purged_failure_does_not_stop_registering(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        def on_purged() -> None:
            raise RuntimeError("kick failed")

        clock = Clock()
        clock.advance(T0)
        redis = FlakyRedis(self.redis)
        registry = await self.started(4, clock=clock, redis=redis, on_purged=on_purged)
        redis.down = True
        clock.pump([0.5] * 62)  # past the 30 s grace: gives its connections up
        self.assertFalse(registry.serving())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e.get("log_failure") for e in events))
        redis.down = False
        await registry.heartbeat()
        self.assertTrue(registry.available())

    async def test_overlapping_heartbeats_run_once(self) -> None:
        calls: list[None] = []
        registry = await self.started(4, on_rejoin=lambda: calls.append(None))
        await self.kill(4)
        first, second = registry.heartbeat(), registry.heartbeat()
        await first
        await second
        self.assertEqual(len(calls), 1)


class LiveNodeTests(RedisFixture):
    async def test_live_nodes_and_least_loaded(self) -> None:
        load = {3: 5, 4: 2, 9: 2}
        clocks = {}
        registries = {}
        for node_id in load:
            clocks[node_id] = Clock()
            clocks[node_id].advance(T0)
            registries[node_id] = await self.started(
                node_id, clock=clocks[node_id],
                connections=lambda node_id=node_id: load[node_id])
        nodes = await registries[3].live_nodes()
        self.assertEqual([n.node_id for n in nodes], [3, 4, 9])
        self.assertEqual([n.connections for n in nodes], [5, 2, 2])
        self.assertEqual((nodes[0].gate_host, nodes[0].gate_port, nodes[0].rpc_host,
                          nodes[0].rpc_port), ("10.0.0.1", 7000, "127.0.0.1", 7100))
        best = await registries[3].least_loaded()
        assert best is not None
        self.assertEqual(best.node_id, 4)  # ties: the smallest id

        load[4] = 10
        await registries[4].heartbeat()
        best = await registries[3].least_loaded()
        assert best is not None
        self.assertEqual(best.node_id, 9)

        await self.kill(9)
        self.assertEqual([n.node_id for n in await registries[3].live_nodes()], [3, 4])
        self.assertIsNone(await registries[3].node(9))
        best = await registries[3].least_loaded()
        assert best is not None
        self.assertEqual(best.node_id, 3)

    async def test_a_withdrawn_gate_is_not_dispatched_to(self) -> None:
        """A draining node withdraws its gate at once (even with a heartbeat in
        flight): still live, not a dispatch answer."""
        load = {3: 0, 4: 5}
        registries = {}
        for node_id in load:
            clock = Clock()
            clock.advance(T0)
            registries[node_id] = await self.started(
                node_id, clock=clock, connections=lambda node_id=node_id: load[node_id])
        best = await registries[4].least_loaded()
        assert best is not None
        self.assertEqual(best.node_id, 3)
        in_flight = registries[3].heartbeat()  # built with the gate address
        await registries[3].withdraw_gate()
        await in_flight
        self.assertEqual([n.node_id for n in await registries[4].live_nodes()], [3, 4])
        best = await registries[4].least_loaded()
        assert best is not None
        self.assertEqual(best.node_id, 4)
        node3 = await registries[4].node(3)
        assert node3 is not None
        self.assertEqual((node3.gate_port, node3.rpc_port), (0, 7100))

    async def test_sessions_published(self) -> None:
        """Each heartbeat publishes the logged-in sessions too (GET /v1/nodes);
        a node of an older version, which does not, counts as 0."""
        clock = Clock()
        clock.advance(T0)
        sessions = [4]
        registry = self.registry(3, clock=clock)
        registry.sessions = lambda: sessions[0]
        await registry.start()
        self.addCleanup(registry.stop)
        node = await registry.node(3)
        assert node is not None
        self.assertEqual(node.sessions, 4)
        sessions[0] = 7
        await registry.heartbeat()
        self.assertEqual([n.sessions for n in await registry.live_nodes()], [7])
        await self.redis.call("HDEL", self.redis.key("node", 3), "sessions")
        node = await registry.node(3)
        assert node is not None
        self.assertEqual((node.node_id, node.sessions), (3, 0))

    async def test_none_live(self) -> None:
        registry = await self.started(3)
        await self.kill(3)
        self.assertEqual(await registry.live_nodes(), [])
        self.assertIsNone(await registry.least_loaded())
