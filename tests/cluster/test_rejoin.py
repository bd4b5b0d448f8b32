"""A node rejoins after a Redis outage: its sessions re-registered (a newer
login elsewhere wins), the detector's purge never undoing that, and what
became pending pushed. On a real Redis (each test its own key prefix); logic
is the deterministic :class:`~tests.helpers.Stack`."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from daojia_msg.cluster.detector import GateDetector
from daojia_msg.cluster.rejoin import Rejoin
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind, NewMessage, SessionRecord, StoredMessage
from daojia_msg.logic.interfaces import IPeers
from daojia_msg.protocol.codes import Cmd, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.store.redis import REREGISTER_BATCH, RedisSessionStore
from tests.cluster.fakes import CLUSTER, RedisFixture
from tests.helpers import T0, Stack

NOW_MS = int(T0 * 1000)


def record(uid: int, node: int, session: str, since_ms: int = NOW_MS) -> SessionRecord:
    return SessionRecord(uid, 1001, node, session, since_ms)


@implementer(IPeers)
class Peers:
    def __init__(self) -> None:
        self.kicked: list[tuple[SessionRecord, int]] = []

    def deliver(self, record: SessionRecord, message: StoredMessage) -> Deferred[bool]:
        return succeed(False)

    def kick(self, record: SessionRecord, reason_code: int, reason: str) -> Deferred[bool]:
        self.kicked.append((record, reason_code))
        return succeed(True)


class ReregisterTests(RedisFixture):
    """:meth:`RedisSessionStore.reregister`, the script under the lease."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.store = RedisSessionStore(self.redis, 1)
        self.lease = (self.redis.key("lease", 1), "token-of-node-1")
        await self.redis.call("SET", self.lease[0], self.lease[1])

    async def node_set(self, node: int) -> set[bytes]:
        return set(await self.redis.call("SMEMBERS", self.redis.key("nodesess", node)))

    async def test_sessions_redis_lost_are_registered_again(self) -> None:
        mine = [record(1, 1, "a"), record(2, 1, "b")]
        done = await self.store.reregister(1, mine, self.lease)
        self.assertEqual((done.kept, done.newer_elsewhere, done.replaced, done.pruned),
                         (mine, [], [], 0))
        self.assertEqual(await self.store.lookup(1, 1001), mine[0])
        self.assertEqual(await self.node_set(1), {b"1:1001", b"2:1001"})
        self.assertEqual(await self.redis.call("KEYS", self.redis.key("rejoin", "*")), [])

    async def test_a_newer_login_elsewhere_wins(self) -> None:
        newer = record(1, 2, "on-node-2", NOW_MS + 5000)
        await self.store.register(newer)
        mine = record(1, 1, "a")
        done = await self.store.reregister(1, [mine], self.lease)
        self.assertEqual((done.kept, done.newer_elsewhere), ([], [mine]))
        self.assertEqual(await self.store.lookup(1, 1001), newer)
        self.assertEqual(await self.node_set(1), set())
        self.assertEqual(await self.node_set(2), {b"1:1001"})

    async def test_an_older_session_elsewhere_loses(self) -> None:
        """A session node 2 never managed to kick (it re-registered first)."""
        older = record(1, 2, "zombie", NOW_MS - 5000)
        await self.store.register(older)
        mine = record(1, 1, "a")
        done = await self.store.reregister(1, [mine], self.lease)
        self.assertEqual((done.kept, done.replaced), ([mine], [older]))
        self.assertEqual(await self.store.lookup(1, 1001), mine)
        self.assertEqual(await self.node_set(2), set())

    async def test_sessions_closed_meanwhile_are_pruned(self) -> None:
        """Their unregister failed while Redis was away."""
        for r in (record(1, 1, "a"), record(2, 1, "closed"), record(3, 2, "elsewhere")):
            await self.store.register(r)
        await self.redis.call("HSET", self.redis.key("sess", 4), 1001, b"2|moved|1")
        await self.redis.call("SADD", self.redis.key("nodesess", 1), "4:1001")  # stale member
        done = await self.store.reregister(1, [record(1, 1, "a")], self.lease)
        self.assertEqual(done.pruned, 1)
        self.assertIsNone(await self.store.lookup(2, 1001))
        self.assertIsNotNone(await self.store.lookup(3, 1001))
        self.assertEqual((await self.store.lookup(4, 1001)).session_id, "moved")  # type: ignore[union-attr]
        self.assertEqual(await self.node_set(1), {b"1:1001"})

    async def test_nothing_written_without_the_lease(self) -> None:
        await self.redis.call("SET", self.lease[0], "another-node")
        with self.assertRaises(StoreUnavailable):
            await self.store.reregister(1, [record(1, 1, "a")], self.lease)
        self.assertIsNone(await self.store.lookup(1, 1001))

    async def test_many_sessions_in_batches(self) -> None:
        mine = [record(uid, 1, f"s{uid}") for uid in range(1, REREGISTER_BATCH * 2 + 3)]
        await self.store.register(record(7, 1, "stale"))
        await self.store.register(record(10**6, 1, "closed"))
        done = await self.store.reregister(1, mine, self.lease)
        self.assertEqual((len(done.kept), done.pruned), (len(mine), 1))
        self.assertEqual(len(await self.node_set(1)), len(mine))
        self.assertEqual((await self.store.lookup(7, 1001)).session_id, "s7")  # type: ignore[union-attr]


class DetectorRaceTests(RedisFixture):
    """The detector on node 1 sees node 2 dead (cut off past its TTL) just as
    node 2 comes back: whatever the order, node 2's re-registered sessions stay."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.store = RedisSessionStore(self.redis, 1)
        self.one = await self.started(1)
        self.two = await self.started(2)
        self.sessions = [record(uid, 2, f"s{uid}") for uid in (1, 2, 3)]
        for r in self.sessions:
            await self.store.register(r)

        def purge_dead(node_id: int) -> Deferred[int]:
            return self.store.purge_dead_node(node_id, self.redis.key("node", node_id))

        self.purge = purge_dead
        await self.kill(2)  # its lease and registration expired

    async def rejoin_two(self) -> None:
        await self.two.heartbeat()  # leases its id again, registers
        self.assertTrue(self.two.serving())
        await self.store.reregister(2, self.sessions, self.two.lease_guard())

    async def surviving(self) -> list[SessionRecord | None]:
        return await self.store.lookup_many([(r.uid, r.appcode) for r in self.sessions])

    async def test_node_rejoins_between_the_check_and_the_purge(self) -> None:
        async def purge_after_rejoin(node_id: int) -> int:
            await self.rejoin_two()  # node 2 is back before the purge runs
            return await self.purge(node_id)

        detector = GateDetector(self.redis, self.one,
                                lambda n: Deferred.fromCoroutine(purge_after_rejoin(n)),
                                self.one.clock, CLUSTER)
        self.addCleanup(detector.stop)
        self.assertEqual(await detector.check_once(), [2])  # it saw node 2 dead...
        self.assertEqual(await self.surviving(), self.sessions)  # ...and purged nothing
        self.assertEqual(await self.members(), {1, 2})
        self.assertEqual(await detector.check_once(), [])

    async def test_purged_then_rejoined(self) -> None:
        detector = GateDetector(self.redis, self.one, self.purge, self.one.clock, CLUSTER)
        self.addCleanup(detector.stop)
        self.assertEqual(await detector.check_once(), [2])
        self.assertEqual(await self.surviving(), [None] * 3)
        await self.rejoin_two()
        self.assertEqual(await self.surviving(), self.sessions)
        self.assertEqual(await detector.check_once(), [])
        self.assertEqual(await self.surviving(), self.sessions)


class RejoinTests(RedisFixture):
    """:class:`Rejoin` with logic on node 1: kicks, pushes, through the ports."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.stack = Stack(node_id=1)
        self.alice = self.stack.login(1)
        self.bob = self.stack.login(2)
        self.store = RedisSessionStore(self.redis, 1)
        self.lease = (self.redis.key("lease", 1), "token-of-node-1")
        await self.redis.call("SET", *self.lease)
        self.peers = Peers()
        logic = self.stack.logic
        self.rejoin = Rejoin(lambda: 1, self.store, self.stack.store, logic,
                             live=lambda: [s.record for s in logic.local.values()],
                             lease=lambda: self.lease, peers=lambda: self.peers)

    def pending_for_bob(self, count: int) -> list[int]:
        """Messages another node stored for bob while it found no session."""
        ids = [self.stack.ids.next_id() for _ in range(count)]
        batch = [NewMessage(StoredMessage(msgid, 0, 0, 2, 1001, 5, Kind.S2C, b"meanwhile",
                                          NOW_MS, f"l{msgid}"), "demo") for msgid in ids]
        self.successResultOf(self.stack.store.store(batch))
        return ids

    async def test_kept_sessions_get_what_became_pending(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        ids = self.pending_for_bob(3)
        await self.rejoin()
        await self.rejoin.pushing
        self.assertEqual([m.msgid for m in self.bob.pushed_messages()], ids)
        [pushed] = [e for e in events if "pending messages" in e.get("log_format", "")]
        self.assertEqual(pushed["count"], 3)
        self.assertEqual(self.alice.pushed_messages(), [])
        self.assertEqual(self.stack.logic.stats.totals()["pushed"], 3)
        self.assertEqual([r.uid for r in await self.store.lookup_many([(1, 1001), (2, 1001)])
                          if r], [1, 2])

    async def test_pending_pushed_up_to_the_window(self) -> None:
        ids = self.pending_for_bob(250)  # three pages
        await self.rejoin()
        await self.rejoin.pushing
        self.assertEqual([m.msgid for m in self.bob.pushed_messages()], ids)

    async def test_newer_login_elsewhere_kicks_the_session_here(self) -> None:
        await self.store.register(record(1, 2, "on-node-2", NOW_MS + 60000))
        self.pending_for_bob(1)
        await self.rejoin()
        await self.rejoin.pushing
        [frame] = self.alice.received()
        self.assertEqual(frame.cmd, Cmd.KICKOUT)
        self.assertEqual(pb.Kickout.FromString(frame.body).reason_code,
                         KickReason.LOGIN_ELSEWHERE)
        self.assertTrue(self.alice.closing)
        self.assertNotIn((1, 1001), self.stack.logic.local)
        self.assertEqual((await self.store.lookup(1, 1001)).node_id, 2)  # type: ignore[union-attr]
        self.assertEqual(len(self.bob.pushed_messages()), 1)  # the kept one still gets its own

    async def test_older_session_elsewhere_is_kicked_there(self) -> None:
        older = record(2, 3, "zombie", NOW_MS - 60000)
        await self.store.register(older)
        await self.rejoin()
        self.assertEqual(self.peers.kicked, [(older, KickReason.LOGIN_ELSEWHERE)])
        self.assertEqual((await self.store.lookup(2, 1001)).node_id, 1)  # type: ignore[union-attr]

    async def test_lease_lost_meanwhile_fails_and_kicks_nothing(self) -> None:
        await self.redis.call("SET", self.lease[0], "another-node")
        with self.assertRaises(StoreUnavailable):
            await self.rejoin()
        self.assertEqual(self.alice.received(), [])
        self.assertIn((1, 1001), self.stack.logic.local)

    async def test_stop_ends_the_pushes(self) -> None:
        self.pending_for_bob(2)
        await self.rejoin.stop()
        await self.rejoin()
        await self.rejoin.pushing
        self.assertEqual(self.bob.pushed_messages(), [])
