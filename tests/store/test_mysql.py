"""The MySQL message store on a real MariaDB/MySQL (``tests.servers.require_mysql``:
skipped when none runs, a failure with ``CI=true``).

Every test works in databases of its own, created empty and dropped at cleanup.
The shared suite runs on one database and on two (rows of one message then
span both); the rest is MySQL's own: where rows land, the schema record,
group commit in statements, dead connections, the write order across
databases, restarts.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pymysql
from twisted.enterprise import adbapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from daojia_msg.config import MySQLConfig, parse_mysql_url
from daojia_msg.core.errors import StoreError, StoreUnavailable
from daojia_msg.core.model import Kind, NewMessage, StoreOutcome
from daojia_msg.store import batching
from daojia_msg.store import mysql as mysql_module
from daojia_msg.store.mysql import (
    DRIVER,
    FLUSHES_IN_FLIGHT,
    SCHEMA_VERSION,
    STATEMENT_SEPARATOR,
    MySQLMessageStore,
    Placement,
    flush_renderers,
    needs_new_connection,
    pool_kwargs,
    retryable,
    sql_literal,
    sql_row,
)
from daojia_msg.store.sql import Statements as SQLStatements
from daojia_msg.store.sql import Tables
from tests.servers import drop_mysql_database, require_mysql
from tests.store.suites import (
    NOT_UTF8,
    USERS,
    MessageStoreFixture,
    c2c,
    ids,
    make_message_store_tests,
    message,
)


def fresh_database(test: TestCase) -> str:
    """A new empty database, dropped at cleanup (after the stores are stopped:
    cleanups run last-added first)."""
    url = require_mysql()
    test.addCleanup(drop_mysql_database, url)
    return url


def mysql_config(url: str, *databases: str, shards: int = 3, **kw: Any) -> MySQLConfig:
    return MySQLConfig(url=url, databases=tuple(databases), shards=shards, **kw)


async def started(
    test: TestCase,
    config: MySQLConfig,
    pools: list[adbapi.ConnectionPool] | None = None,
    concurrency: int | None = None,
) -> MySQLMessageStore:
    store = MySQLMessageStore(config, reactor, pools=pools, concurrency=concurrency)
    test.addCleanup(store.stop)
    await store.start()
    return store


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection (committed)."""
    u = parse_mysql_url(url)
    conn = pymysql.connect(
        host=u.host, port=u.port, user=u.user, password=u.password, database=u.database,
        autocommit=True,
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params or None)
            return list(cur.fetchall())
    finally:
        conn.close()


def msgids(url: str, table: str, column: str = "msgid") -> list[int]:
    return [r[0] for r in query(url, f"SELECT {column} FROM {table} ORDER BY 1")]


def connection_id(txn: Any) -> int:
    txn.execute("SELECT CONNECTION_ID()")
    return int(txn.fetchone()[0])


def kill(url: str, conn_id: int) -> None:
    query(url, f"KILL {conn_id}")


# -- pools that let a test see or break what happens -------------------------


class Statements(adbapi.Transaction):
    """A transaction that records each query (a round trip) and each statement
    in it (before its parameters)."""

    def execute(self, statement: str, args: Any = None) -> Any:
        self._pool.queries.append(statement)
        self._pool.statements.extend(statement.split(STATEMENT_SEPARATOR))
        cursor: Any = self._cursor
        return cursor.execute(statement, args)


class TestPool(adbapi.ConnectionPool):
    """The production pool settings, plus:

    - ``statements``: every statement run (through :class:`Statements`),
      ``queries`` every query sent (several statements in one, some);
    - ``interactions``: the names of the interactions asked for;
    - ``hooks[name]``: called (once) in the reactor thread before the next
      interaction of that name; if it raises, the interaction fails with it;
    - ``lose_commit_answers``: that many interactions commit, then fail with
      MySQL error 2013, as if the connection died before the answer came.
    """

    transactionFactory = Statements

    def __init__(self, url: str, config: MySQLConfig) -> None:
        super().__init__(DRIVER, cp_reactor=reactor, **pool_kwargs(parse_mysql_url(url), config))
        self.statements: list[str] = []
        self.queries: list[str] = []
        self.interactions: list[str] = []
        self.hooks: dict[str, Callable[[], None]] = {}
        self.lose_commit_answers = 0

    def runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Deferred[Any]:
        name = getattr(interaction, "__name__", repr(interaction))
        self.interactions.append(name)
        hook = self.hooks.pop(name, None)
        if hook is not None:
            try:
                hook()
            except Exception:
                return fail()
        return super().runInteraction(interaction, *args, **kw)

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        result = super()._runInteraction(interaction, *args, **kw)
        if self.lose_commit_answers:
            self.lose_commit_answers -= 1
            raise pymysql.err.OperationalError(2013, "Lost connection (test: after the commit)")
        return result

    def inserts(self, prefix: str) -> list[int]:
        """Rows per ``INSERT INTO <prefix>...`` statement, in order."""
        return [
            s.count("), (") + 1 for s in self.statements if s.startswith(f"INSERT INTO {prefix}")
        ]


def down() -> None:
    raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server (test: down)")


# -- the shared suite ----------------------------------------------------------


async def one_database(test: TestCase) -> MessageStoreFixture:
    store = await started(test, mysql_config(fresh_database(test)))
    return MessageStoreFixture(store, lambda: store.committer.flushes, ordered=False)


async def two_databases(test: TestCase) -> MessageStoreFixture:
    """2 databases x 2 tables: uid 1 and 5 in the first, 2 and 3 in the
    second, so the suite's messages from 1 to 2 span both."""
    config = mysql_config(fresh_database(test), fresh_database(test), shards=2)
    store = await started(test, config)
    return MessageStoreFixture(store, lambda: store.committer.flushes, ordered=False)


class MySQLMessageStoreTests(make_message_store_tests(one_database)):  # type: ignore[misc]
    """The suite on one database, three shard tables, real threaded pools."""


class TwoDatabaseMySQLMessageStoreTests(make_message_store_tests(two_databases)):  # type: ignore[misc]
    """The suite on two databases (the cross-database write path)."""


# -- MySQL's own ---------------------------------------------------------------


class PlacementTests(TestCase):
    def test_slots(self) -> None:
        p = Placement(shards=4, databases=3)
        self.assertEqual([p.place(uid) for uid in (0, 3, 4, 11, 12, 2**64 - 1)],
                         [(0, 0), (0, 3), (1, 0), (2, 3), (0, 0), (0, 3)])  # fmt: skip

    def test_no_url(self) -> None:
        self.assertRaises(ValueError, MySQLMessageStore, MySQLConfig(), reactor)


class LiteralTests(TestCase):
    """Multi-row inserts are written as literals, not bound parameters."""

    def test_literals(self) -> None:
        self.assertEqual(sql_literal(0), "0")
        self.assertEqual(sql_literal(2**64 - 1), "18446744073709551615")
        self.assertEqual(sql_literal(-5), "-5")
        self.assertEqual(sql_literal(Kind.S2C), str(int(Kind.S2C)))  # not "Kind.S2C"
        self.assertEqual(sql_literal(b"\x00'\\"), "X'00275c'")
        self.assertEqual(sql_literal(b""), "X''")
        self.assertEqual(sql_literal("it's"), "_utf8mb4 X'69742773'")
        self.assertEqual(sql_literal("\u4f60"), "_utf8mb4 X'e4bda0'")
        self.assertEqual(sql_literal(None), "NULL")
        self.assertEqual(sql_row((1, b"a", "b")), "(1, X'61', _utf8mb4 X'62')")
        for value in (True, 1.5, object()):
            self.assertRaises(TypeError, sql_literal, value)

    def test_flush_renderers_match_sql_row(self) -> None:
        """A flush renders each message's values once, for its pending row and
        its history rows; the text is what sql_row gives."""
        render_message, render_history = flush_renderers()
        row = (2**63 - 1, 1, 10, 2, 10, 7, int(Kind.C2C), b"\x00'x", 1764210000000, "a|b")
        other = (5, *row[1:])
        for text, expected in [
            (render_message(row), sql_row(row)),
            (render_history((b"default", 1, 2, *row)), sql_row((b"default", 1, 2, *row))),
            (render_history((b"shop", 2, 1, *row)), sql_row((b"shop", 2, 1, *row))),
            (render_history((b"x", 2, 1, *other)), sql_row((b"x", 2, 1, *other))),
            (render_history(("text", 2, 1, *row)), sql_row(("text", 2, 1, *row))),
        ]:
            self.assertEqual(text, expected)

    def test_retry_policy(self) -> None:
        lost = pymysql.err.OperationalError(2013, "Lost connection")
        deadlock = pymysql.err.OperationalError(1213, "Deadlock found")
        lock_wait = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
        closed = pymysql.err.InterfaceError(0, "")
        for error in (lost, deadlock, lock_wait, closed):
            self.assertTrue(retryable(error), error)
        self.assertFalse(retryable(pymysql.err.IntegrityError(1062, "Duplicate entry")))
        self.assertFalse(retryable(pymysql.err.OperationalError(1045, "Access denied")))
        self.assertEqual([needs_new_connection(e) for e in (lost, deadlock, lock_wait, closed)],
                         [True, False, False, True])  # fmt: skip


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
        self.patch(mysql_module, "MIGRATIONS", [*mysql_module.MIGRATIONS, added])
        self.patch(mysql_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
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

    async def test_connection_settings(self) -> None:
        store = await started(self, mysql_config(fresh_database(self), read_timeout_s=8.0))

        def settings(txn: Any) -> tuple[Any, ...]:
            txn.execute(
                "SELECT @@tx_isolation, @@innodb_lock_wait_timeout, @@sql_mode, @@autocommit,"
                " @@character_set_client"
            )
            return tuple(txn.fetchone())

        isolation, lock_wait, mode, autocommit, charset = await store.pools[0].runInteraction(
            settings
        )
        self.assertEqual((isolation, lock_wait, autocommit, charset),
                         ("READ-COMMITTED", 4, 0, "utf8mb4"))  # fmt: skip
        self.assertIn("STRICT_ALL_TABLES", mode)

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
        self.assertEqual(await pool.runInteraction(plan, history, (USERS, 1, 21)), "PRIMARY")
        by_peer = shard.select_history.format(before="", peer=" AND h.peer_uid = ?")
        self.assertEqual(await pool.runInteraction(plan, by_peer, (USERS, 1, 99, 21)), "peer")


class PlacementOnDiskTests(TestCase):
    async def test_rows_land_in_their_slot_tables(self) -> None:
        """shards=4, one database: message to uid 6 in messages_2, history of
        5 in history_1 and of 6 in history_2, the key of sender 5 in dedup_1."""
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=4))
        await store.store([c2c(77, 5, 10, 6, 11, client_msg_id="k")])
        for n in range(4):
            self.assertEqual(msgids(url, f"messages_{n}"), [77] if n == 2 else [])
            self.assertEqual(msgids(url, f"history_{n}"), [77] if n in (1, 2) else [])
            self.assertEqual(msgids(url, f"dedup_{n}"), [77] if n == 1 else [])
        self.assertEqual(msgids(url, "history_1", "owner_uid"), [5])
        self.assertEqual(
            query(url, "SELECT owner_sys, peer_uid, msgcontent, to_appcode FROM history_1"),
            [(USERS.encode(), 6, b"hi", 11)],
        )

    async def test_two_databases_place_rows_by_slot(self) -> None:
        """2 databases x 2 tables = 4 slots: uid 4 -> (0, 0), uid 3 -> (1, 1)."""
        a, b = fresh_database(self), fresh_database(self)
        store = await started(self, mysql_config(a, b, shards=2))
        new = c2c(9, 3, 10, 4, 10, client_msg_id="k")
        self.assertEqual(await store.store([new]), [StoreOutcome(9, "log-9")])
        self.assertEqual(msgids(a, "messages_0"), [9])
        self.assertEqual(msgids(a, "history_0", "owner_uid"), [4])
        self.assertEqual(msgids(b, "history_1", "owner_uid"), [3])
        self.assertEqual(msgids(b, "dedup_1", "uid"), [3])
        for url, tables in ((a, ("messages_1", "history_1", "dedup_0", "dedup_1")),
                            (b, ("messages_0", "messages_1", "history_0", "dedup_0"))):  # fmt: skip
            for table in tables:
                self.assertEqual(msgids(url, table), [], f"{table} of {url}")
        # Everything round-trips, whichever database it reads.
        self.assertEqual((await store.pull(4, 10, 0, 10)).messages, [new.message])
        self.assertEqual(ids(await store.history(USERS, 3, 0, 10, 4)), [9])
        self.assertEqual(ids(await store.history(USERS, 4, 0, 10, 3)), [9])
        again = await store.store([c2c(10, 3, 10, 4, 10, client_msg_id="k")])
        self.assertEqual(again, [StoreOutcome(9, "log-9", duplicate=True)])
        await store.store([c2c(2**63 + 1, 4, 10, 3, 10)])  # stored in b
        self.assertEqual(await store.max_msgid(), 2**63 + 1)
        self.assertEqual([a.msgid for a in await store.ack(4, 10, [9])], [9])
        self.assertEqual(await store.count_pending(4, 10), 0)
        self.assertEqual(await store.purge_dedup(2**62), 1)


class ExecuteBatchTests(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.url = url = fresh_database(self)
        config = mysql_config(url)
        self.pool = TestPool(url, config)
        self.store = await started(self, config, [self.pool])
        self.pool.queries.clear()

    async def test_results_in_order_and_packets_bounded(self) -> None:
        statements = [
            "INSERT INTO dedup_0 (uid, appcode, client_msg_sha256, msgid, logid, created_ms)"
            f" VALUES (1, 1, X'{i:064x}', {i}, 'l', 0)"
            for i in range(1, 4)
        ] + ["SELECT msgid FROM dedup_0 ORDER BY msgid", "UPDATE dedup_0 SET logid = 'm'"]
        results = await self.pool.runInteraction(mysql_module.execute_batch, statements, 1 << 20)
        self.assertEqual(results, [(1, []), (1, []), (1, []), (3, [(1,), (2,), (3,)]), (3, [])])
        self.assertEqual(len(self.pool.queries), 1)
        self.pool.queries.clear()
        small = len(statements[0]) * 2 + 2  # two inserts per query, at most
        done = await self.pool.runInteraction(
            mysql_module.execute_batch, ["DELETE FROM dedup_0"] + statements, small
        )
        self.assertEqual([n for n, _ in done], [3, 1, 1, 1, 3, 3])
        self.assertEqual(len(self.pool.queries), 3)  # DELETE + 1, 2 + 3, SELECT + UPDATE
        self.assertLessEqual(max(len(q) for q in self.pool.queries), small)

    async def test_a_failing_statement_stops_the_batch_and_fails_it(self) -> None:
        statements = ["SELECT 1", "SELECT no_such_column FROM dedup_0", "SELECT 3"]
        await self.assertFailure(
            self.pool.runInteraction(mysql_module.execute_batch, statements, 1 << 20),
            pymysql.err.OperationalError,
        )
        again = await self.pool.runInteraction(mysql_module.execute_batch, ["SELECT 4"], 1 << 20)
        self.assertEqual(again, [(1, [(4,)])])

    async def test_a_batch_that_commits_is_not_committed_again(self) -> None:
        """``commit=True``: COMMIT rides in the last query and adbapi's commit
        then sends nothing (the server counts one COMMIT for the transaction)."""
        pool = TestPool(self.url, mysql_config(self.url, pool_min=1, pool_max=1))
        self.addCleanup(pool.close)
        insert = ("INSERT INTO dedup_0 (uid, appcode, client_msg_sha256, msgid, logid,"
                  " created_ms) VALUES (1, 1, X'00', 7, 'l', 0)")

        def commits(txn: Any) -> int:
            txn.execute("SHOW SESSION STATUS LIKE 'Com_commit'")
            return int(txn.fetchone()[1])

        def run(txn: Any) -> tuple[list[Any], int, int]:
            before = commits(txn)
            done = mysql_module.execute_batch(txn, [insert, "SELECT 2"], 1 << 20, commit=True)
            return done, before, commits(txn)

        done, before, after = await pool.runInteraction(run)
        self.assertEqual(done, [(1, []), (1, [(2,)])])  # COMMIT's own result is not returned
        self.assertEqual(after, before + 1)
        self.assertIn(f"{insert};\nSELECT 2;\nCOMMIT", pool.queries)
        self.assertEqual(msgids(self.url, "dedup_0"), [7])
        # The one connection again: adbapi's commit after run() sent nothing.
        self.assertEqual(await pool.runInteraction(commits), after)
        # A plain interaction's commit is sent.
        self.assertEqual(await pool.runInteraction(commits), after + 1)

    async def test_a_failing_batch_commits_nothing(self) -> None:
        insert = ("INSERT INTO dedup_0 (uid, appcode, client_msg_sha256, msgid, logid,"
                  " created_ms) VALUES (1, 1, X'00', 8, 'l', 0)")
        await self.assertFailure(
            self.pool.runInteraction(
                mysql_module.execute_batch, [insert, "SELECT nothing FROM dedup_0"], 1 << 20,
                True),
            pymysql.err.OperationalError,
        )
        self.assertEqual(msgids(self.url, "dedup_0"), [])


class LiteralRoundTripTests(TestCase):
    async def test_values_written_as_literals_read_back_the_same(self) -> None:
        """Content with quotes, backslashes, NUL and invalid UTF-8; a logid
        with quotes, a backslash and non-ASCII text; the largest ids."""
        store = await started(self, mysql_config(fresh_database(self)))
        content = b"'\\\x00\"; DROP TABLE x; --" + NOT_UTF8
        sent = replace(
            message(2**63 + 7, 2**64 - 1, 2**32 - 1, 2**64 - 2, 10, content=content),
            logid="it's \\ \u4f60\u597d",
        )
        key = "k'\\"
        self.assertEqual(await store.store([NewMessage(sent, USERS, USERS, key)]),
                         [StoreOutcome(sent.msgid, sent.logid)])  # fmt: skip
        self.assertEqual((await store.pull(sent.to_uid, 10, 0, 10)).messages, [sent])
        self.assertEqual((await store.history(USERS, sent.from_uid, 0, 10, 0)).messages, [sent])
        resend = replace(sent, msgid=6, content=b"", logid="x")
        self.assertEqual(await store.store([NewMessage(resend, USERS, USERS, key)]),
                         [StoreOutcome(sent.msgid, sent.logid, duplicate=True)])  # fmt: skip
        other = await store.store([NewMessage(message(5), USERS, USERS, key)])
        self.assertEqual(other, [StoreOutcome(5, "log-5")])  # another sender: another key


class GroupCommitTests(TestCase):
    async def test_concurrent_stores_share_transactions_and_statements(self) -> None:
        """40 concurrent store() calls: the first flushes at once, the 39 that
        queue behind it go in one more transaction, with one multi-row INSERT
        per table touched."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        pool.statements.clear()
        pool.queries.clear()
        pool.interactions.clear()
        calls = [store.store([c2c(100 + i, 1, 10, 2, 10, client_msg_id=f"c{i}")])
                 for i in range(40)]  # fmt: skip
        outcomes = await gatherResults(calls)
        self.assertEqual(outcomes, [[StoreOutcome(100 + i, f"log-{100 + i}")] for i in range(40)])
        self.assertEqual(store.committer.flushes, 2)
        self.assertEqual(pool.interactions, ["_flush_txn", "_flush_txn"])
        self.assertEqual(pool.inserts("messages_"), [1, 39])
        self.assertEqual(pool.inserts("history_"), [1, 1, 39, 39])  # sender's, recipient's
        self.assertEqual(pool.inserts("dedup_"), [1, 39])
        self.assertEqual(len(msgids(url, "messages_2")), 40)
        # Keys, then messages and history: two round trips per flush.
        self.assertEqual(len(pool.queries), 4)

    async def test_concurrent_counts_share_interactions(self) -> None:
        """40 logins' count_pending at once: two interactions (the first count
        alone, then the 39 that waited for it, in one query), each caller its own count."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        await store.store([c2c(1 + i, 5, 10, 100 + i % 3, 10) for i in range(6)])
        pool.interactions.clear()
        pool.queries.clear()
        counts = await gatherResults([store.count_pending(100 + i % 4, 10) for i in range(40)])
        self.assertEqual(counts, [[2, 2, 2, 0][i % 4] for i in range(40)])
        self.assertEqual(len(pool.interactions), 2)  # one batch of counts in flight
        # A batch's counts, over all four tables, are one query.
        self.assertEqual(len(pool.queries), 2)

    async def test_other_reads_go_several_at_once(self) -> None:
        """PULLs are not held behind one another: reads_in_flight batches."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        self.assertEqual(store.reads_in_flight, 4)  # (pool_max 10 - 2 flushes) // 2
        pool.interactions.clear()
        pages = await gatherResults([store.pull(100 + i, 10, 0, 20) for i in range(6)])
        self.assertEqual([p.messages for p in pages], [[]] * 6)
        # 4 alone at once, then the 2 that waited in one batch.
        self.assertEqual(len(pool.interactions), 5)

    async def test_merged_counts_keep_appcodes_and_states_apart(self) -> None:
        """One query counts many (uid, appcode): another appcode's messages
        and ACKed messages are not counted; a uid with nothing pending is 0."""
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=2))
        # msgid 1 + i -> (uid 100 + i % 3, appcode 10 + i % 2); msgid 1 ACKed.
        await store.store([c2c(1 + i, 5, 10, 100 + i % 3, 10 + i % 2) for i in range(9)])
        await store.ack(100, 10, [1])
        keys = [(100, 10), (100, 11), (101, 10), (101, 11), (102, 10), (102, 11), (103, 10)]
        counts = await store._dbs[0].run(store._count_pending.many, keys)
        self.assertEqual(counts, [1, 1, 1, 2, 2, 1, 0])

    async def test_a_flush_is_two_round_trips_whatever_tables_it_touches(self) -> None:
        """Stores from 4 senders to 4 recipients (every table) and ACKs of 2
        recipients, in one flush: keys and ACK reads in one query, messages,
        history and ACK updates in another."""
        url = fresh_database(self)
        config = mysql_config(url, shards=4)
        pool = TestPool(url, config)
        store = await started(self, config, [pool], concurrency=1)
        await store.store([c2c(1, 5, 10, 2, 10), c2c(2, 5, 10, 3, 10)])
        await deferLater(reactor, 0, lambda: None)
        pool.queries.clear()
        pool.statements.clear()
        busy = store.store([c2c(3, 5, 10, 6, 10)])  # no key, no ACK: one query
        calls = [store.store([c2c(10 + u, u, 10, 4 + u, 10, client_msg_id="k")]) for u in range(4)]
        acks = [store.ack(2, 10, [1]), store.ack(3, 10, [2])]
        await busy
        outcomes = await gatherResults(calls)
        self.assertEqual(outcomes, [[StoreOutcome(10 + u, f"log-{10 + u}")] for u in range(4)])
        self.assertEqual([[a.msgid for a in acked] for acked in await gatherResults(acks)],
                         [[1], [2]])  # fmt: skip
        self.assertEqual(store.committer.flushes, 3)
        self.assertEqual(len(pool.queries), 1 + 2)
        self.assertEqual(pool.inserts("dedup_"), [1, 1, 1, 1])
        self.assertEqual(pool.inserts("messages_"), [1, 1, 1, 1, 1])
        self.assertEqual(len([t for t in pool.statements if t.startswith("UPDATE")]), 2)

    async def test_big_flushes_are_split_to_fit_the_packet_size(self) -> None:
        url = fresh_database(self)
        config = mysql_config(url, shards=1)
        pool = TestPool(url, config)
        store = await started(self, config, [pool])
        self.assertGreaterEqual(store.max_statement_bytes, 1 << 16)
        store.max_statement_bytes = 100_000
        big = [c2c(i, content=bytes([i]) * 20_000) for i in range(1, 11)]
        await store.store(big)
        self.assertEqual(pool.inserts("messages_0"), [2, 2, 2, 2, 2])
        page = await store.pull(2, 10, 0, 20)
        self.assertEqual(page.messages, [n.message for n in big])


class PurgeTests(TestCase):
    async def test_purge_in_chunks_over_every_table(self) -> None:
        self.patch(mysql_module, "PURGE_CHUNK", 2)
        url = fresh_database(self)
        store = await started(self, mysql_config(url, shards=2))
        await store.store([c2c(i, 1 + i % 2, 10, client_msg_id=f"k{i}") for i in range(1, 8)])
        self.assertEqual(await store.purge_dedup(0), 0)
        self.assertEqual(await store.purge_dedup(2**62), 7)
        self.assertEqual(msgids(url, "dedup_0") + msgids(url, "dedup_1"), [])


class TooBigTests(TestCase):
    async def test_a_row_over_the_packet_size_fails_alone(self) -> None:
        store = await started(self, mysql_config(fresh_database(self)))
        self.assertGreaterEqual(store.max_packet_bytes, 1 << 20)  # read from the server
        store.max_packet_bytes = 100_000
        too_big = store.store([c2c(1, content=b"x" * 60_000)])
        fine = store.store([c2c(2, content=b"x" * 40_000)])
        error: Any = await self.assertFailure(too_big, StoreError)
        self.assertIn("max_allowed_packet", str(error))
        self.assertEqual(await fine, [StoreOutcome(2, "log-2")])


class DeadConnectionTests(TestCase):
    """One connection per pool (pool_min = pool_max = 1), so the test knows
    which one it kills."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = fresh_database(self)
        self.pool = TestPool(self.url, mysql_config(self.url, pool_min=1, pool_max=1))
        self.store = await started(self, mysql_config(self.url), [self.pool])

    async def kill_the_connection(self) -> int:
        conn_id = await self.pool.runInteraction(connection_id)
        kill(self.url, conn_id)
        return conn_id

    async def test_read_after_kill(self) -> None:
        await self.store.store([c2c(1)])
        killed = await self.kill_the_connection()
        page = await self.store.pull(2, 10, 0, 10)
        self.assertEqual(ids(page), [1])
        self.assertEqual(self.store.retries, 1)
        self.assertNotEqual(await self.pool.runInteraction(connection_id), killed)
        self.flushLoggedErrors()  # adbapi logs the failed rollback on the dead one

    async def test_writes_after_kill(self) -> None:
        await self.store.store([c2c(1, client_msg_id="k")])
        await self.kill_the_connection()
        outcomes = await self.store.store([c2c(2, client_msg_id="k"), c2c(3)])
        self.assertEqual(outcomes, [StoreOutcome(1, "log-1", True), StoreOutcome(3, "log-3")])
        await self.kill_the_connection()
        self.assertEqual([a.msgid for a in await self.store.ack(2, 10, [1])], [1])
        await self.kill_the_connection()
        self.assertEqual(await self.store.purge_dedup(2**62), 1)
        self.assertEqual(self.store.retries, 3)
        self.assertEqual(msgids(self.url, "messages_2"), [1, 3])
        self.flushLoggedErrors()

    async def test_store_whose_commit_answer_was_lost_runs_again_harmlessly(self) -> None:
        """The commit happened, the answer did not come: the retry finds its
        own rows and answers as the first run would have (idempotence)."""
        self.pool.lose_commit_answers = 1
        outcomes = await self.store.store(
            [c2c(1, client_msg_id="a"), c2c(2, client_msg_id="a"), c2c(3)]
        )
        self.assertEqual(
            outcomes,
            [StoreOutcome(1, "log-1"), StoreOutcome(1, "log-1", True), StoreOutcome(3, "log-3")],
        )
        self.assertEqual(self.store.retries, 1)
        self.assertEqual(msgids(self.url, "messages_2"), [1, 3])
        self.assertEqual(len(query(self.url, "SELECT * FROM history_1")), 2)
        self.assertEqual(msgids(self.url, "dedup_1"), [1])

    async def test_a_msgid_of_another_message_is_refused(self) -> None:
        await self.store.store([c2c(1)])
        other = c2c(1, 5, 10, 2, 10)
        failure = await self.assertFailure(self.store.store([other]), StoreError)
        self.assertIn("msgid 1 is already stored for another message", str(failure))
        self.assertEqual(len(query(self.url, "SELECT * FROM history_2")), 1)

    async def test_no_second_retry(self) -> None:
        """Both runs lose their connection: StoreUnavailable."""
        self.pool.lose_commit_answers = 2
        await self.assertFailure(self.store.count_pending(2, 10), StoreUnavailable)
        self.assertEqual(self.store.retries, 1)


class UnreachableTests(TestCase):
    async def test_closed_port_is_unavailable_not_a_hang(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"mysql://root:secret-pw@127.0.0.1:{port}/nowhere"
        store = MySQLMessageStore(mysql_config(url, connect_timeout_s=2.0), reactor)
        self.addCleanup(store.stop)
        began = time.monotonic()
        error: Any = await self.assertFailure(store.start(), StoreUnavailable)
        self.assertLess(time.monotonic() - began, 5)
        self.assertIn(f"root@127.0.0.1:{port}/nowhere", str(error))
        self.assertNotIn("secret-pw", str(error))
        await self.assertFailure(store.pull(2, 10, 0, 10), StoreUnavailable)

    async def test_closed_pool(self) -> None:
        store = await started(self, mysql_config(fresh_database(self)))
        store.pools[0].close()
        await self.assertFailure(store.pull(2, 10, 0, 10), StoreUnavailable)
        await self.assertFailure(store.store([c2c(1)]), StoreUnavailable)


class TwoNodesTests(TestCase):
    """Two stores on the same databases (two nodes) racing on the same keys
    and the same ACKs."""

    async def nodes(self, databases: int) -> tuple[MySQLMessageStore, MySQLMessageStore]:
        urls = [fresh_database(self) for _ in range(databases)]
        config = mysql_config(*urls, shards=2)
        return await started(self, config), await started(self, config)

    async def race_on_keys(self, databases: int) -> None:
        a, b = await self.nodes(databases)
        # Senders 3 and 4 (with 2 databases: one in each), recipients in both.
        pairs = [(3 + i % 2, 4 - i % 2) for i in range(60)]
        calls = [node.store([c2c(base + i, s, 10, r, 10, client_msg_id=f"k{i}")])
                 for i, (s, r) in enumerate(pairs) for node, base in ((a, 1000), (b, 2000))]  # fmt: skip
        results = await gatherResults(calls)
        stored = []
        for i in range(60):
            (first,), (second,) = results[2 * i], results[2 * i + 1]
            self.assertEqual(
                [first.duplicate, second.duplicate].count(False), 1, (i, first, second)
            )
            self.assertEqual(first.msgid, second.msgid)
            stored.append(first.msgid)
        pending = [ids(await a.pull(r, 10, 0, 100)) for r in (3, 4)]
        self.assertEqual(sorted(pending[0] + pending[1]), sorted(stored))
        history = ids(await b.history(USERS, 3, 0, 100, 0))
        self.assertEqual(sorted(history), sorted(stored))

    async def race_on_acks(self, databases: int) -> None:
        a, b = await self.nodes(databases)
        await a.store([c2c(i, 1, 10, 2, 10) for i in range(1, 101)])
        mine, theirs = await gatherResults(
            [a.ack(2, 10, list(range(1, 101))), b.ack(2, 10, list(range(100, 0, -1)))]
        )
        reported = [m.msgid for m in mine] + [m.msgid for m in theirs]
        self.assertEqual(sorted(reported), list(range(1, 101)))
        self.assertEqual(await b.count_pending(2, 10), 0)

    async def test_race_on_keys_one_database(self) -> None:
        await self.race_on_keys(1)

    async def test_race_on_keys_two_databases(self) -> None:
        await self.race_on_keys(2)

    async def test_race_on_acks_one_database(self) -> None:
        await self.race_on_acks(1)

    async def test_race_on_acks_two_databases(self) -> None:
        await self.race_on_acks(2)


class RestartTests(TestCase):
    async def test_pending_messages_survive_a_restart(self) -> None:
        url = fresh_database(self)
        first = await started(self, mysql_config(url))
        await first.store([c2c(i, client_msg_id=f"c{i}") for i in (1, 2, 3)])
        await first.ack(2, 10, [2])
        await first.stop()
        self.assertFalse(first.pools[0].running)

        second = await started(self, mysql_config(url))
        page = await second.pull(2, 10, 0, 10)
        self.assertEqual(page.messages, [message(1), message(3)])
        self.assertEqual(await second.max_msgid(), 3)
        again = await second.store([c2c(9, client_msg_id="c3")])
        self.assertEqual(again, [StoreOutcome(3, "log-3", duplicate=True)])
        self.assertEqual(ids(await second.history(USERS, 1, 0, 10, 0)), [3, 2, 1])


class AcrossDatabasesTests(TestCase):
    """The write order over two databases (2 x 2 tables: uids 4 and 8 in the
    first, 3 in the second), with one of them failing at chosen moments.

    One flush in flight at a time, so that a test knows which writes share one."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.a, self.b = fresh_database(self), fresh_database(self)
        config = mysql_config(self.a, self.b, shards=2)
        self.pa, self.pb = TestPool(self.a, config), TestPool(self.b, config)
        self.store = await started(self, config, [self.pa, self.pb], concurrency=1)

    def rows(self) -> dict[str, list[int]]:
        found = {}
        for name, url in (("a", self.a), ("b", self.b)):
            for table in ("messages", "history", "dedup"):
                found[f"{name}.{table}"] = sorted(
                    m for n in (0, 1) for m in msgids(url, f"{table}_{n}")
                )
        return {k: v for k, v in found.items() if v}

    async def test_an_op_fails_whole_and_its_written_rows_are_deleted(self) -> None:
        """3 -> 4: message in a, sender's history in b. b fails the write: the
        op is UNAVAILABLE and a's rows are deleted again. 4 -> 8 (all in a)
        is not held up."""
        self.pb.hooks["_write_rows_txn"] = down
        await self.assertFailure(self.store.store([c2c(1, 3, 10, 4, 10)]), StoreUnavailable)
        self.assertEqual(self.rows(), {})
        self.assertEqual(await self.store.store([c2c(2, 4, 10, 8, 10)]), [StoreOutcome(2, "log-2")])
        self.assertEqual(self.rows(), {"a.messages": [2], "a.history": [2, 2]})
        self.flushLoggedErrors()

    async def test_a_resend_of_a_failed_op_in_the_same_flush_fails_too(self) -> None:
        """Two ops in one flush, the second a resend of the first: the first
        fails, so the second cannot be answered with its msgid."""
        busy = self.store.store([c2c(1, 4, 10, 8, 10)])  # flush 1, in flight
        self.pb.hooks["_write_rows_txn"] = down
        first = self.store.store([c2c(2, 3, 10, 4, 10, client_msg_id="k")])
        resend = self.store.store([c2c(3, 3, 10, 4, 10, client_msg_id="k"), c2c(4, 4, 10, 8, 10)])
        await busy
        await self.assertFailure(first, StoreUnavailable)
        await self.assertFailure(resend, StoreUnavailable)
        self.assertEqual(self.store.committer.flushes, 2)
        self.assertEqual(self.rows(), {"a.messages": [1], "a.history": [1, 1]})
        self.flushLoggedErrors()

    async def test_key_lookup_failure_writes_nothing(self) -> None:
        self.pb.hooks["_find_keys_txn"] = down
        await self.assertFailure(
            self.store.store([c2c(1, 3, 10, 4, 10, client_msg_id="k")]), StoreUnavailable
        )
        self.assertEqual(self.rows(), {})
        self.flushLoggedErrors()

    async def test_key_recording_failure_still_answers_ok(self) -> None:
        """The messages are durable when the keys are written: the answer is
        OK (a resend would be stored again, never an OK for a lost message)."""
        self.pb.hooks["_claim_keys_txn"] = down
        outcomes = await self.store.store([c2c(1, 3, 10, 4, 10, client_msg_id="k")])
        self.assertEqual(outcomes, [StoreOutcome(1, "log-1")])
        self.assertEqual(self.rows(), {"a.messages": [1], "a.history": [1], "b.history": [1]})
        self.flushLoggedErrors()

    async def test_a_resend_stored_by_another_node_meanwhile_wins(self) -> None:
        """Between our lookup and our key, another node records the same key
        for its copy (msgid 7): we answer with its ids and delete our copy."""

        def other_node_first() -> None:
            digest = hashlib.sha256(b"k").digest()
            query(self.b, "INSERT INTO dedup_1 (uid, appcode, client_msg_sha256, msgid, logid,"
                  " created_ms) VALUES (3, 10, %s, 7, 'log-7', 1)", digest)  # fmt: skip

        self.pb.hooks["_claim_keys_txn"] = other_node_first
        outcomes = await self.store.store([c2c(1, 3, 10, 4, 10, client_msg_id="k")])
        self.assertEqual(outcomes, [StoreOutcome(7, "log-7", duplicate=True)])
        self.assertEqual(self.rows(), {"b.dedup": [7]})

    async def test_acks_of_several_databases_in_one_flush(self) -> None:
        await self.store.store([c2c(1, 3, 10, 4, 10), c2c(2, 4, 10, 3, 10)])
        busy = self.store.store([c2c(5, 4, 10, 8, 10)])
        acks = [self.store.ack(4, 10, [1]), self.store.ack(3, 10, [2, 1])]
        await busy
        self.assertEqual([[a.msgid for a in acked] for acked in await gatherResults(acks)],
                         [[1], [2]])  # fmt: skip
        self.assertEqual(await self.store.count_pending(3, 10), 0)
        self.assertEqual(await self.store.count_pending(4, 10), 0)

    async def test_one_database_down_fails_only_its_acks(self) -> None:
        await self.store.store([c2c(1, 3, 10, 4, 10), c2c(2, 4, 10, 3, 10)])
        busy = self.store.store([c2c(5, 4, 10, 8, 10)])
        self.pb.hooks["_acks_txn"] = down
        ok, broken = self.store.ack(4, 10, [1]), self.store.ack(3, 10, [2])
        await busy
        self.assertEqual([a.msgid for a in await ok], [1])
        await self.assertFailure(broken, StoreUnavailable)
        self.flushLoggedErrors()


# -- several flushes in flight ---------------------------------------------------


def senders(lanes: int) -> list[int]:
    """One sender uid (>= 1) per lane of a committer with ``lanes`` lanes, in lane order."""
    found: dict[int, int] = {}
    for uid in itertools.count(1):
        found.setdefault(batching.lane_of(uid, lanes), uid)
        if len(found) == lanes:
            return [found[k] for k in range(lanes)]
    raise AssertionError("unreachable")


def spread_every_write(test: TestCase) -> None:
    """Send each write to the next lane, whatever its uid: writes of one
    sender then run in concurrent flushes, as two nodes' writes would."""
    counter = itertools.count()
    test.patch(batching, "lane_of", lambda affinity, lanes: next(counter) % lanes)


LANES = 4


class ConcurrentFlushTests(TestCase):
    """The production pool settings, 4 shard tables, 4 flushes in flight."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = fresh_database(self)
        self.config = mysql_config(self.url, shards=4)
        self.pool = TestPool(self.url, self.config)
        self.store = await started(self, self.config, [self.pool], concurrency=LANES)
        self.store.committer.spread_at = 1  # every lane flushes when idle, as under load

    def test_concurrency(self) -> None:
        default = MySQLMessageStore(self.config, reactor)
        self.addCleanup(default.stop)
        self.assertEqual(default.committer.concurrency, FLUSHES_IN_FLIGHT)
        few = MySQLMessageStore(mysql_config(self.url, pool_min=1, pool_max=3), reactor,
                                concurrency=8)  # fmt: skip
        self.addCleanup(few.stop)
        self.assertEqual(few.committer.concurrency, 3)  # never more than pool_max
        one = MySQLMessageStore(mysql_config(self.url, flushes_in_flight=1), reactor)
        self.addCleanup(one.stop)
        self.assertEqual(one.committer.concurrency, 1)  # [mysql] flushes_in_flight

    async def test_flushes_overlap(self) -> None:
        """One store per lane: every flush is handed to the pool before any
        has committed."""
        uids = senders(LANES)
        calls = [self.store.store([c2c(100 + k, uid, 10, 2, 10)]) for k, uid in enumerate(uids)]
        self.assertEqual(self.store.committer.in_flight, LANES)
        self.assertEqual(await gatherResults(calls),
                         [[StoreOutcome(100 + k, f"log-{100 + k}")] for k in range(len(uids))])  # fmt: skip
        self.assertEqual(await self.store.count_pending(2, 10), len(uids))

    async def test_one_senders_writes_keep_their_order(self) -> None:
        """A sender's stores share a lane: a resend never races its first send."""
        calls = [self.store.store([c2c(10 + i, client_msg_id=f"k{i % 2}")]) for i in range(6)]
        outcomes = [o for (o,) in await gatherResults(calls)]
        self.assertEqual([(o.msgid, o.duplicate) for o in outcomes],
                         [(10, False), (11, False), (10, True), (11, True), (10, True),
                          (11, True)])  # fmt: skip
        self.assertEqual(self.store.committer.flushes, 2)

    async def test_concurrent_resends_of_one_key_give_one_message(self) -> None:
        """Each key sent 4 times at once, in 4 concurrent flushes (and keys in
        opposite orders in one op): every answer names the same msgid,
        exactly one is not a duplicate, one message row per key."""
        spread_every_write(self)
        calls, keys = [], []
        for i in range(25):
            key = f"k{i}"
            keys.append(key)
            calls.extend(
                self.store.store([c2c(1000 * (j + 1) + i, 3 + i % 3, 10, 2, 10, client_msg_id=key)])
                for j in range(4)
            )
        x, y = (
            c2c(9001, 5, 10, 6, 10, client_msg_id="x"),
            c2c(9002, 5, 10, 6, 10, client_msg_id="y"),
        )
        x2, y2 = (
            c2c(9003, 5, 10, 6, 10, client_msg_id="x"),
            c2c(9004, 5, 10, 6, 10, client_msg_id="y"),
        )
        pair = [self.store.store([x, y]), self.store.store([y2, x2])]
        results = await gatherResults(calls)
        for i, key in enumerate(keys):
            answers = [o for (o,) in results[4 * i : 4 * i + 4]]
            self.assertEqual(len({(o.msgid, o.logid) for o in answers}), 1, (key, answers))
            self.assertEqual([o.duplicate for o in answers].count(False), 1, (key, answers))
        winners = sorted(o.msgid for (o,) in results if not o.duplicate)
        first, second = await gatherResults(pair)
        self.assertEqual({first[0].msgid, second[1].msgid}, {first[0].msgid})
        self.assertEqual({first[1].msgid, second[0].msgid}, {first[1].msgid})
        self.assertEqual(ids(await self.store.pull(2, 10, 0, 100)), winners)
        self.assertEqual(len(ids(await self.store.pull(6, 10, 0, 100))), 2)
        self.assertEqual(sum(len(msgids(self.url, f"dedup_{n}")) for n in range(4)), 27)
        self.assertEqual(sum(len(msgids(self.url, f"history_{n}")) for n in range(4)), 2 * 27)

    async def test_concurrent_stores_and_acks_lose_nothing(self) -> None:
        """30 senders each send 8 messages to their own recipient, one round
        at a time; each round's ACKs (with repeats of older ones) go while the
        next round is stored, over every lane. Every message is ACKed exactly
        once, none is left pending, every history row is there."""
        spread_every_write(self)
        pairs = [(100 + 2 * k, 101 + 2 * k) for k in range(30)]
        reported: list[int] = []
        stored: list[int] = []
        previous: dict[int, list[int]] = {}
        msgid = itertools.count(1)
        for _ in range(9):
            round_ids = {r: [next(msgid)] for _, r in pairs}
            stores = [self.store.store([c2c(round_ids[r][0], s, 10, r, 10,
                                            client_msg_id=f"c{round_ids[r][0]}")])
                      for s, r in pairs]  # fmt: skip
            acks = [self.store.ack(r, 10, previous.get(r, []) + stored[-90:-60]) for _, r in pairs]
            for outcome in await gatherResults(stores):
                self.assertFalse(outcome[0].duplicate)
                stored.append(outcome[0].msgid)
            for acked in await gatherResults(acks):
                reported.extend(a.msgid for a in acked)
            previous = round_ids
        for acked in await gatherResults([self.store.ack(r, 10, previous[r]) for _, r in pairs]):
            reported.extend(a.msgid for a in acked)
        self.assertEqual(sorted(reported), sorted(stored))
        for _, r in pairs:
            self.assertEqual(await self.store.count_pending(r, 10), 0)
        for s, r in pairs:
            self.assertEqual(len(ids(await self.store.history(USERS, s, 0, 100, r))), 9)

    async def test_acks_of_a_flush_are_one_read_and_one_update_per_table(self) -> None:
        """Recipients 2 and 6 (table 2), 3 (table 3); ACKs queued behind one
        flush go in the next: one locking read and one update per table. A
        msgid named twice is reported once; one of another recipient is left
        alone."""
        store = await started(self, self.config, [TestPool(self.url, self.config)], concurrency=1)
        pool = store.pools[0]
        await store.store([c2c(1, 1, 10, 2, 10), c2c(2, 1, 10, 2, 10), c2c(3, 1, 10, 6, 10),
                           c2c(4, 1, 10, 3, 10)])  # fmt: skip
        await deferLater(reactor, 0, lambda: None)  # the first flush is over
        pool.statements.clear()
        busy = store.store([c2c(5, 1, 10, 2, 11)])
        acks = [store.ack(2, 10, [2, 1]), store.ack(6, 10, [3, 4]), store.ack(3, 10, [4]),
                store.ack(2, 10, [1, 99])]  # fmt: skip
        await busy
        results = [[a.msgid for a in acked] for acked in await gatherResults(acks)]
        self.assertEqual(results, [[1, 2], [3], [4], []])
        self.assertEqual(store.committer.flushes, 3)
        reads = [t for t in pool.statements if t.startswith("SELECT msgid, to_uid")]
        updates = [t for t in pool.statements if t.startswith("UPDATE messages_")]
        self.assertEqual(
            [t.split("FROM ")[1].split()[0] for t in reads], ["messages_2", "messages_3"]
        )
        self.assertEqual([t.split()[1] for t in updates], ["messages_2", "messages_3"])
        self.assertTrue(all(t.endswith("FOR UPDATE") for t in reads))
        self.assertEqual(await store.count_pending(6, 10), 0)

    async def test_a_deadlock_runs_the_flush_again_on_a_pooled_connection(self) -> None:
        def deadlock() -> None:
            raise pymysql.err.OperationalError(1213, "Deadlock found (test)")

        self.pool.interactions.clear()
        self.pool.hooks["_flush_txn"] = deadlock
        outcomes = await self.store.store([c2c(1, client_msg_id="k")])
        self.assertEqual(outcomes, [StoreOutcome(1, "log-1")])
        self.assertEqual(self.pool.interactions, ["_flush_txn", "_flush_txn"])
        self.assertEqual(self.store.retries, 1)

    async def test_a_lock_wait_timeout_runs_the_flush_again(self) -> None:
        """Another transaction holds the de-dup key (uncommitted) longer than
        the row-lock wait (2 s): the flush times out (1205), runs again, and
        answers with the other's msgid once it commits."""
        store = await started(self, mysql_config(self.url, shards=4, read_timeout_s=4.0))
        u = parse_mysql_url(self.url)
        raw = pymysql.connect(host=u.host, port=u.port, user=u.user, database=u.database)
        self.addCleanup(raw.close)
        with raw.cursor() as cur:
            cur.execute(
                "INSERT INTO dedup_1 (uid, appcode, client_msg_sha256, msgid, logid, created_ms)"
                " VALUES (1, 10, %s, 7, 'log-7', 1)", hashlib.sha256(b"k").digest(),
            )  # fmt: skip
        stored = store.store([c2c(1, client_msg_id="k")])
        await deferLater(reactor, 3.0, lambda: None)  # the first run gave up after 2 s
        self.assertNoResult(stored)
        raw.commit()
        self.assertEqual(await stored, [StoreOutcome(7, "log-7", duplicate=True)])
        self.assertEqual(store.retries, 1)
        self.assertEqual(msgids(self.url, "messages_2"), [])

    async def test_stop_waits_for_every_flush_in_flight(self) -> None:
        done: list[str] = []
        calls = [
            self.store.store([c2c(10 + k, uid, 10, 2, 10)]).addCallback(lambda _: done.append("w"))
            for k, uid in enumerate(senders(LANES))
        ]
        stopped = self.store.stop().addCallback(lambda _: done.append("stopped"))
        await gatherResults([*calls, stopped])
        self.assertEqual(done, ["w"] * LANES + ["stopped"])
        self.assertFalse(self.pool.running)
        self.assertEqual(len(msgids(self.url, "messages_2")), LANES)
