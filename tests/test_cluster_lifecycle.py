"""The data lifecycle on a two-node cluster on MySQL (real Redis, MariaDB,
sockets; retention of seconds): an expired message is neither pulled nor
counted at LOGIN and is counted ``expired`` once, cluster-wide; an ACKed
row leaves the pending table; old history is gone from HISTORY; both nodes
purge, never one shard table at once, each row once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from daojia_msg.auth import mint_token
from daojia_msg.client.protocol import MsgClientProtocol
from daojia_msg.config import MySQLConfig, StoreConfig
from daojia_msg.node import Node
from tests.store.mysql.fixtures import fresh_database, query
from tests.test_cluster import R, TwoNodes

TTL_S = 3.0
HISTORY_S = 8.0
SHARDS = 3
STORE = StoreConfig(pending_ttl_days=TTL_S / 86400, history_days=HISTORY_S / 86400,
                    purge_interval_s=0.25, purge_batch=4)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``check`` (may return a Deferred) every 0.1 s until it is true."""
    waited = 0.0
    while True:
        result = check()
        if hasattr(result, "addCallback"):
            result = await result
        if result:
            return
        if waited >= timeout:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await deferLater(R, 0.1, lambda: None)
        waited += 0.1


class ClusterLifecycleTests(TwoNodes):
    timeout = 60

    async def asyncSetUp(self) -> None:
        self.url = fresh_database(self)
        await self.start_pair(MySQLConfig(url=self.url, shards=SHARDS, pool_min=1, pool_max=4),
                              STORE)

    async def connection(self, node: Node, uid: int) -> tuple[MsgClientProtocol, Any]:
        """A logged-in connection of ``uid`` on ``node`` and its LoginResponse."""
        self.node = node
        proto = MsgClientProtocol(R, uid, 1001, heartbeat_s=0)
        await connectProtocol(TCP4ClientEndpoint(R, "127.0.0.1", self.port("gate")), proto)
        self.addCleanup(lambda: proto.transport.loseConnection())  # type: ignore[union-attr]
        token = mint_token("demo-secret-1001", 1001, uid, int(R.seconds()) + 600)
        return proto, await proto.login(token)

    def rows(self, where: str) -> int:
        return sum(int(query(self.url, f"SELECT COUNT(*) FROM messages_{n} WHERE {where}")[0][0])
                   for n in range(SHARDS))

    async def expired_in_stats(self) -> int:
        self.node = self.node1
        status, stats = await self.http("GET", "/v1/stats")
        assert status == 200, stats
        return int(stats["totals"]["expired"])

    async def test_expiry_delivery_history_and_one_purger_per_shard(self) -> None:
        alice, _ = await self.connection(self.node1, 1)
        bob, _ = await self.connection(self.node2, 2)
        offline = [(await alice.c2c(uid, 1001, 7, b"for later")).msgid for uid in range(3, 15)]
        acked = (await alice.c2c(2, 1001, 7, b"hi bob")).msgid
        await bob.ack([acked])
        await until(lambda: self.rows("state = 1") == 0)  # the ACKed row left
        # (a machine slower than TTL_S here has expired and purged them already)
        self.assertLessEqual(self.rows("state = 0"), len(offline))
        self.assertIn(acked, [m.msgid for m in (await alice.history()).messages])

        await deferLater(R, TTL_S + 0.1, lambda: None)
        carol, login = await self.connection(self.node2, 3)
        self.assertEqual(login.offline_count, 0)
        self.assertEqual(list((await carol.pull()).messages), [])
        await until(lambda: self.rows("1 = 1") == 0)
        # Counted once across the cluster, by whichever node purged each shard table.
        purged = [n.logic.lifecycle.purged["expired"] for n in (self.node1, self.node2)]
        self.assertEqual(sum(purged), len(offline))
        await until(lambda: Deferred.fromCoroutine(self.expired_in_stats()).addCallback(
            lambda expired: expired == len(offline)))
        await deferLater(R, 1.2, lambda: None)  # a few more rounds and a stats flush
        self.assertEqual(await self.expired_in_stats(), len(offline))
        for node in (self.node1, self.node2):
            self.assertIsNotNone(node.logic.lifecycle.last)

        await deferLater(R, HISTORY_S - TTL_S, lambda: None)
        alice2, _ = await self.connection(self.node2, 1)
        self.assertEqual(list((await alice2.history()).messages), [])
        await until(lambda: int(query(self.url, "SELECT COUNT(*) FROM history_0")[0][0]) == 0)
        self.node = self.node2
        status, stats = await self.http("GET", "/v1/stats")
        self.assertEqual((status, stats["store"]["approximate"]), (200, True))
        self.assertIsNone(stats["store"]["oldest_pending_age_s"])
