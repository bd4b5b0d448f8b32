"""The MySQL store's tables: created, recorded, migrated, and a start refused
where the shard count or the list of databases changed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from daojia_msg.core.errors import StoreError, StoreUnavailable
from daojia_msg.store.mysql import MySQLMessageStore, schema
from daojia_msg.store.mysql.schema import SCHEMA_VERSION
from daojia_msg.store.sql import Statements as SQLStatements
from daojia_msg.store.sql import Tables
from tests.store.mysql.fixtures import fresh_database, mysql_config, query, started
from tests.store.suites import USERS, c2c


class SchemaTests(TestCase):
    async def test_tables_and_version_recorded(self) -> None:
        url = fresh_database(self)
        await started(self, mysql_config(url, shards=3))
        tables = {r[0] for r in query(url, "SHOW TABLES")}
        expected = {f"{k}_{n}" for k in ("messages", "history", "dedup") for n in range(3)}
        self.assertEqual(tables, expected | {"schema_version"})
        self.assertEqual(
            query(url, "SELECT id, version, shards, db_index, db_count FROM schema_version"),
            [(1, SCHEMA_VERSION, 3, 0, 1)],
        )
        engines = {r[0] for r in query(
            url, "SELECT engine FROM information_schema.tables WHERE table_schema = DATABASE()"
        )}  # fmt: skip
        self.assertEqual(engines, {"InnoDB"})

    async def test_changing_shards_is_refused(self) -> None:
        url = fresh_database(self)
        first = await started(self, mysql_config(url, shards=3))
        await first.store([c2c(1)])
        await first.stop()
        store = MySQLMessageStore(mysql_config(url, shards=4), reactor)
        self.addCleanup(store.stop)
        error: Any = await self.assertFailure(store.start(), StoreError)
        self.assertNotIsInstance(error, StoreUnavailable)
        self.assertIn("created with 3 shard tables and mysql.shards is 4", str(error))
        self.assertNotIn("messages_3", {r[0] for r in query(url, "SHOW TABLES")})
        self.assertEqual(await (await started(self, mysql_config(url))).count_pending(2, 10), 1)

    async def test_changing_the_database_list_is_refused(self) -> None:
        first, second = fresh_database(self), fresh_database(self)
        await (await started(self, mysql_config(first))).stop()
        store = MySQLMessageStore(mysql_config(first, second), reactor)
        self.addCleanup(store.stop)
        error: Any = await self.assertFailure(store.start(), StoreError)
        self.assertIn("created as database 1 of 1", str(error))

    async def test_newer_schema_is_refused(self) -> None:
        url = fresh_database(self)
        await (await started(self, mysql_config(url))).stop()
        query(url, "UPDATE schema_version SET version = version + 1")
        store = MySQLMessageStore(mysql_config(url), reactor)
        self.addCleanup(store.stop)
        error: Any = await self.assertFailure(store.start(), StoreError)
        self.assertIn(f"this code knows up to {SCHEMA_VERSION}", str(error))

    async def test_an_older_schema_is_migrated_at_start(self) -> None:
        """A database at version N meets code with migration N+1: the new
        statements run on every shard table, the version is recorded, the data stays."""
        url = fresh_database(self)
        first = await started(self, mysql_config(url, shards=2))
        await first.store([c2c(1)])
        await first.stop()
        added = ("ALTER TABLE messages_{n} ADD COLUMN test_note VARCHAR(8) NULL",)
        self.patch(schema, "MIGRATIONS", [*schema.MIGRATIONS, added])
        self.patch(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        store = await started(self, mysql_config(url, shards=2))
        self.assertEqual(query(url, "SELECT version FROM schema_version"), [(SCHEMA_VERSION + 1,)])
        for n in range(2):
            columns = {r[0] for r in query(url, f"SHOW COLUMNS FROM messages_{n}")}
            self.assertIn("test_note", columns)
        self.assertEqual(await store.count_pending(2, 10), 1)
        await store.stop()
        # Started again at the new version: nothing to run.
        again = await started(self, mysql_config(url, shards=2))
        self.assertEqual(await again.count_pending(2, 10), 1)

    async def test_two_nodes_start_on_one_empty_database(self) -> None:
        url = fresh_database(self)
        config = mysql_config(url)
        a, b = MySQLMessageStore(config, reactor), MySQLMessageStore(config, reactor)
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        await gatherResults([a.start(), b.start()])
        self.assertEqual(query(url, "SELECT COUNT(*) FROM schema_version"), [(1,)])

    async def test_queries_use_their_indexes(self) -> None:
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=1))
        await store.store([c2c(i, 1, 10, 2 + i % 5, 10) for i in range(1, 500)])
        await store.store([c2c(500, 1, 10, 99, 10)])

        def plan(txn: Any, statement: str, params: tuple[Any, ...]) -> str:
            txn.execute("EXPLAIN " + statement.replace("?", "%s"), params)
            return str(txn.fetchall()[0][5])  # the key chosen

        pool = store.pools[0]
        shard = SQLStatements(Tables.shard(0), history_has_content=True)
        pending = shard.select_pending
        self.assertEqual(await pool.runInteraction(plan, pending, (2, 10, 0, 21)), "pending")
        history = shard.select_history.format(before="", peer="")
        self.assertEqual(await pool.runInteraction(plan, history, (USERS, 1, 0, 21)), "PRIMARY")
        by_peer = shard.select_history.format(before="", peer=" AND h.peer_uid = ?")
        self.assertEqual(await pool.runInteraction(plan, by_peer, (USERS, 1, 0, 99, 21)), "peer")

    async def test_history_age_key_added_by_migration_2(self) -> None:
        """A version-1 database gets ``KEY age (msgid)`` on every history
        table; run again (a start that died after the DDL) it adds nothing."""
        url = fresh_database(self)
        await (await started(self, mysql_config(url, shards=2))).stop()

        def age_keys() -> set[str]:
            return {r[0] for r in query(
                url, "SELECT TABLE_NAME FROM information_schema.STATISTICS"
                " WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME = 'age'")}

        self.assertEqual(age_keys(), {"history_0", "history_1"})
        query(url, "ALTER TABLE history_0 DROP KEY age")
        query(url, "UPDATE schema_version SET version = 1")
        await (await started(self, mysql_config(url, shards=2))).stop()
        self.assertEqual(age_keys(), {"history_0", "history_1"})
        query(url, "UPDATE schema_version SET version = 1")  # the key is there: nothing to add
        await started(self, mysql_config(url, shards=2))
        self.assertEqual(query(url, "SELECT version FROM schema_version"), [(SCHEMA_VERSION,)])
