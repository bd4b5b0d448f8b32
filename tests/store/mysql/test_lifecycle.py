"""The data lifecycle on MySQL/MariaDB: the shared suite on one database and
on two, and the purge's named locks: one purger per shard table across the
nodes (two stores on the same databases stand for two nodes)."""

from __future__ import annotations

from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.config import MySQLConfig, parse_mysql_url
from daojia_msg.core.model import Kind
from daojia_msg.store.lifecycle import PurgeTransactions
from daojia_msg.store.mysql import MySQLMessageStore
from daojia_msg.store.mysql.pools import describe, mysql_pool
from daojia_msg.store.mysql.render import PARAMSTYLE
from daojia_msg.store.sql import Tables
from tests.store.lifecycle_suite import (
    NOW,
    RETENTION,
    LifecycleFixture,
    cutoffs,
    make_lifecycle_tests,
    msgid,
)
from tests.store.mysql.fixtures import TestPool, fresh_database, mysql_config, query
from tests.store.suites import c2c

TABLES = {"pending": "messages", "history": "history", "dedup": "dedup"}


async def node(test: TestCase, config: MySQLConfig, clock: Clock,
               pools: list[Any] | None = None) -> MySQLMessageStore:
    """A started store on ``config``'s databases (real pools on trial's
    reactor), its time from ``clock``, with the suite's retention."""
    urls = [config.url, *config.databases]
    store = MySQLMessageStore(
        config, clock, retention=RETENTION,
        pools=pools or [mysql_pool(parse_mysql_url(u), config, reactor) for u in urls])
    test.addCleanup(store.stop)
    await store.start()
    return store


def counter(config: MySQLConfig) -> Any:
    def rows(kind: str) -> int:
        return sum(int(query(url, f"SELECT COUNT(*) FROM {TABLES[kind]}_{n}")[0][0])
                   for url in (config.url, *config.databases) for n in range(config.shards))
    return rows


async def lifecycle_fixture(test: TestCase, *databases: str, shards: int = 3) -> LifecycleFixture:
    config = mysql_config(*databases, shards=shards)
    clock = Clock()
    clock.advance(NOW)
    return LifecycleFixture(await node(test, config, clock), clock, counter(config))


async def one_database(test: TestCase) -> LifecycleFixture:
    return await lifecycle_fixture(test, fresh_database(test))


async def two_databases(test: TestCase) -> LifecycleFixture:
    return await lifecycle_fixture(test, fresh_database(test), fresh_database(test), shards=2)


class MySQLLifecycleTests(make_lifecycle_tests(one_database)):  # type: ignore[misc]
    """The suite on one database, three shard tables."""


class TwoDatabaseMySQLLifecycleTests(make_lifecycle_tests(two_databases)):  # type: ignore[misc]
    """The suite on two databases of two shard tables each."""


def lock_connection(url: str) -> Any:
    u = parse_mysql_url(url)
    return pymysql.connect(host=u.host, port=u.port, user=u.user, password=u.password,
                           database=u.database, autocommit=True)


LOCK = "CONCAT('msgplatform-purge-', MD5(DATABASE()), '-', %s)"


def expired_everywhere(per_uid: int) -> list[Any]:
    """``per_uid`` expired messages to each of uids 2..13 (every shard table)."""
    return [c2c(msgid(1.5, 100 * uid + i), to_uid=uid) for uid in range(2, 14)
            for i in range(per_uid)]


class PurgeLockTests(TestCase):
    """One purger per shard table across the cluster."""

    async def two_nodes(self, shards: int = 3) -> tuple[str, MySQLConfig, MySQLMessageStore,
                                                       MySQLMessageStore]:
        url = fresh_database(self)
        config = mysql_config(url, shards=shards)
        clock = Clock()
        clock.advance(NOW)
        return url, config, await node(self, config, clock), await node(self, config, clock)

    async def test_a_shard_locked_by_another_node_is_skipped_then_purged_once(self) -> None:
        url, config, a, b = await self.two_nodes()
        messages = expired_everywhere(4)
        await a.store(messages)
        held = a.placement.place(2)[1]  # the shard table of uid 2
        in_held = sum(1 for m in messages if a.placement.place(m.message.to_uid)[1] == held)
        other = lock_connection(url)  # node B's purge connection, mid-batch on that shard
        self.addCleanup(other.close)
        with other.cursor() as cursor:
            cursor.execute(f"SELECT GET_LOCK({LOCK}, 0)", (held,))
            self.assertEqual(cursor.fetchone()[0], 1)
        first = await a.purge(cutoffs(batch=3))
        self.assertEqual(first.skipped, [f"{describe(parse_mysql_url(url))} messages_{held}"])
        self.assertEqual(first.expired_total, len(messages) - in_held)
        self.assertEqual(counter(config)("pending"), in_held)
        with other.cursor() as cursor:
            cursor.execute(f"SELECT RELEASE_LOCK({LOCK})", (held,))
        second = await b.purge(cutoffs(batch=3))
        self.assertEqual((second.skipped, second.expired_total), ([], in_held))
        self.assertEqual(first.expired_total + second.expired_total, len(messages))
        self.assertEqual(counter(config)("pending"), 0)

    async def test_two_nodes_purging_at_once_purge_each_row_once(self) -> None:
        url, config, a, b = await self.two_nodes()
        messages = expired_everywhere(25)  # 300 rows, 100 a shard, 5 rows a batch
        await a.store(messages)
        acked = [c2c(msgid(0.5, i), to_uid=2 + i % 12) for i in range(60)]
        await a.store(acked)
        for m in acked:
            await a.ack(m.message.to_uid, 10, [m.message.msgid])
        pool = TestPool(url, config)
        clock = Clock()
        clock.advance(NOW)
        c = await node(self, config, clock, pools=[pool])  # a third node, its queries seen
        rounds = await gatherResults([a.purge(cutoffs(batch=5)), b.purge(cutoffs(batch=5)),
                                      c.purge(cutoffs(batch=5))])
        self.assertEqual(sum(r.expired_total for r in rounds), len(messages))
        self.assertEqual(sum(r.delivered for r in rounds), len(acked))
        routes: dict[Any, int] = {}
        for r in rounds:
            for route, n in r.expired.items():
                routes[route] = routes.get(route, 0) + n
        self.assertEqual(routes, {(10, 7, Kind.C2C): len(messages)})
        self.assertEqual(counter(config)("pending"), 0)
        self.assertLessEqual(max(r.largest_batch for r in rounds), 5)
        # Every batch ran under its shard's lock, released after.
        self.assertTrue(any("GET_LOCK" in s for s in pool.statements))
        for n in range(3):
            self.assertEqual(query(url, f"SELECT IS_FREE_LOCK({LOCK})", n), [(1,)])
        # No DELETE of one batch touches more than purge_batch rows.
        for s in pool.statements:
            if s.startswith("DELETE") and " IN (" in s:
                self.assertLessEqual(s.count("%s"), 5)


class PurgePlanTests(TestCase):
    async def test_purge_statements_use_keys(self) -> None:
        """The purge's reads and deletes go by the primary key, ``KEY age``
        and ``KEY created``, never a scan of a whole table of another kind."""
        url = fresh_database(self)
        config = mysql_config(url, shards=1)
        clock = Clock()
        clock.advance(NOW)
        store = await node(self, config, clock)
        await store.store([c2c(msgid(3 - i / 100, i), to_uid=2 + i % 7, client_msg_id=f"k{i}")
                           for i in range(300)])
        txns = PurgeTransactions(PARAMSTYLE, Tables.shard(0), locking_reads=True,
                                 delete_limit=True)

        def plan(txn: Any, statement: str, params: tuple[Any, ...]) -> str:
            txn.execute("EXPLAIN " + statement.replace("?", "%s"), params)
            return str(txn.fetchall()[0][5])  # the key chosen

        run = store.pools[0].runInteraction
        floor = msgid(1)
        self.assertEqual(await run(plan, txns.select_expired, (floor, 5)), "PRIMARY")
        self.assertEqual(await run(plan, txns.select_delivered, (0, 5)), "PRIMARY")
        self.assertEqual(await run(plan, txns.delete_history, (floor, 5)), "age")
        self.assertEqual(await run(plan, txns.delete_dedup, (0, 5)), "created")
