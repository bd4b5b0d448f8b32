"""The MySQL store's connections: their settings, the retry policy, dead
connections and a database that cannot be reached.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from daojia_msg.core.errors import StoreError, StoreUnavailable
from daojia_msg.core.model import StoreOutcome
from daojia_msg.store.mysql import MySQLMessageStore
from daojia_msg.store.mysql.pools import needs_new_connection, retryable
from tests.store.mysql.fixtures import (
    TestPool,
    connection_id,
    fresh_database,
    kill,
    msgids,
    mysql_config,
    query,
    started,
)
from tests.store.suites import c2c, ids


class RetryPolicyTests(TestCase):
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


class ConnectionSettingsTests(TestCase):
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
