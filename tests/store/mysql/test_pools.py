"""The MySQL store's connections: their settings, the retry policy, dead
connections and a database that cannot be reached.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.core.errors import StoreError, StoreUnavailable, StoreUncertain
from daojia_msg.core.model import StoreOutcome
from daojia_msg.store.mysql import MySQLMessageStore
from daojia_msg.store.mysql.pools import RetryOnce, needs_new_connection, retryable
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


class _ScriptedPool:
    """What RetryOnce uses of a pool: each run fails with the next error of
    ``errors`` (None: succeeds)."""

    dbapi = pymysql
    running = True

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.runs = 0

    def runInteraction(self, interaction: Any, *args: Any) -> Deferred[Any]:
        self.runs += 1
        error = self.errors.pop(0)
        return fail(error) if error is not None else succeed("done")


def write_txn(txn: Any) -> None:
    """Stands for a flush."""


class UncertainTests(SynchronousTestCase):
    """A run that lost its connection mid-query (2013) may have committed: if
    the retry does not settle it, the failure is StoreUncertain (TIMEOUT for
    the client), not a plain StoreUnavailable (UNAVAILABLE: nothing done)."""

    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    refused = pymysql.err.OperationalError(2003, "Can't connect to MySQL server")
    gone = pymysql.err.OperationalError(2006, "MySQL server has gone away")

    def attempt(self, pool: _ScriptedPool) -> Any:
        return RetryOnce(pool, "test").runInteraction(write_txn)  # type: ignore[arg-type]

    def test_the_retry_settles_it(self) -> None:
        self.assertEqual(self.successResultOf(self.attempt(_ScriptedPool(self.lost, None))), "done")

    def test_lost_then_unreachable(self) -> None:
        error = self.failureResultOf(self.attempt(_ScriptedPool(self.lost, self.refused)),
                                     StoreUncertain).value
        self.assertIn("may or may not", str(error))
        self.assertIs(error.__cause__, self.refused)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_lost_on_the_retry(self) -> None:
        self.failureResultOf(self.attempt(_ScriptedPool(self.gone, self.lost)), StoreUncertain)

    def test_lost_and_the_pool_stopped(self) -> None:
        pool = _ScriptedPool(self.lost)
        pool.running = False
        self.failureResultOf(self.attempt(pool), StoreUncertain)
        self.assertEqual(pool.runs, 1)

    def test_never_sent_is_not_uncertain(self) -> None:
        """Gone away (at the send) twice, or a lock error then refused: nothing done."""
        for first, second in [(self.gone, self.gone), (self.gone, self.refused)]:
            failure = self.failureResultOf(self.attempt(_ScriptedPool(first, second)))
            self.assertFalse(failure.check(StoreUncertain))
            self.assertIs(failure.value, second)


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
        """Both runs lose their connection: StoreUncertain (a StoreUnavailable:
        a read is just unavailable; a write may or may not be done)."""
        self.pool.lose_commit_answers = 2
        await self.assertFailure(self.store.count_pending(2, 10), StoreUncertain)
        self.assertEqual(self.store.retries, 1)
        self.pool.lose_commit_answers = 2
        await self.assertFailure(self.store.store([c2c(1, client_msg_id="u")]), StoreUncertain)
        # It was committed (the answers were lost): the resend finds it.
        [again] = await self.store.store([c2c(2, client_msg_id="u")])
        self.assertEqual(again, StoreOutcome(1, "log-1", True))
        self.flushLoggedErrors()


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
