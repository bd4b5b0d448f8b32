"""The SQLite message store: the shared suite on the inline pool (deterministic,
``task.Clock``) and on the real threaded adbapi pool, plus what is SQLite's own:
the file, the schema, restarts, failures."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.core.errors import StoreError, StoreUnavailable
from daojia_msg.core.model import StoreOutcome
from daojia_msg.store.dbpool import InlineConnectionPool
from daojia_msg.store.sql import SELECT_PENDING, Statements, history_rows, message_row
from daojia_msg.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLiteMessageStore,
    inline_sqlite_pool,
)
from tests.store.suites import USERS, MessageStoreFixture, c2c, ids, make_message_store_tests


def inline_store(test: SynchronousTestCase, path: str | None = None) -> SQLiteMessageStore:
    """A started store on the inline pool and a ``Clock``; stopped at cleanup."""
    path = path or test.mktemp()
    store = SQLiteMessageStore(path, Clock(), pool=inline_sqlite_pool(path))
    test.successResultOf(store.start())
    test.addCleanup(store.stop)
    return store


def inline_pool(store: SQLiteMessageStore) -> InlineConnectionPool:
    assert isinstance(store.pool, InlineConnectionPool)
    return store.pool


def inline_fixture(test: TestCase) -> MessageStoreFixture:
    store = inline_store(test)
    pool = inline_pool(store)
    return MessageStoreFixture(store, lambda: pool.interactions, pool.hold)


async def threaded_fixture(test: TestCase) -> MessageStoreFixture:
    path = test.mktemp()
    store = SQLiteMessageStore(path, reactor)
    test.addCleanup(store.stop)
    await store.start()
    return MessageStoreFixture(store, lambda: store.committer.flushes)


class InlineSQLiteMessageStoreTests(make_message_store_tests(inline_fixture)):  # type: ignore[misc]
    """The suite, every transaction run inline."""


class ThreadedSQLiteMessageStoreTests(make_message_store_tests(threaded_fixture)):  # type: ignore[misc]
    """The suite on the production pool: its own thread, trial's reactor."""


def sqlite_query(path: str, statement: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


class SQLiteFileTests(SynchronousTestCase):
    """The file, its settings and its schema (inline pool)."""

    def test_wal_and_synchronous_normal(self) -> None:
        store = inline_store(self)

        def settings(txn: Any) -> tuple[str, int]:
            txn.execute("PRAGMA journal_mode")
            mode = txn.fetchone()[0]
            txn.execute("PRAGMA synchronous")
            return mode, txn.fetchone()[0]

        self.assertEqual(self.successResultOf(store.pool.runInteraction(settings)), ("wal", 1))

    def test_schema_version_recorded(self) -> None:
        store = inline_store(self)
        self.successResultOf(store.stop())
        rows = sqlite_query(store.path, "SELECT version FROM schema_version")
        self.assertEqual(rows, [(SCHEMA_VERSION,)])

    def test_reopen_keeps_schema_and_data(self) -> None:
        path = self.mktemp()
        first = inline_store(self, path)
        self.successResultOf(first.store([c2c(1, client_msg_id="k")]))
        self.successResultOf(first.stop())
        second = inline_store(self, path)
        page = self.successResultOf(second.pull(2, 10, 0, 10))
        self.assertEqual(ids(page), [1])
        again = self.successResultOf(second.store([c2c(2, client_msg_id="k")]))
        self.assertEqual(again, [StoreOutcome(1, "log-1", duplicate=True)])
        self.assertEqual(sqlite_query(path, "SELECT COUNT(*) FROM schema_version"), [(1,)])

    def test_newer_schema_refused(self) -> None:
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
        conn.commit()
        conn.close()
        store = SQLiteMessageStore(path, Clock(), pool=inline_sqlite_pool(path))
        self.addCleanup(store.stop)
        failure = self.failureResultOf(store.start(), StoreError)
        self.assertNotIsInstance(failure.value, StoreUnavailable)
        self.assertIn("version", str(failure.value))

    def test_a_version_1_file_is_migrated(self) -> None:
        """Schema 2: history rows get a copy of their message (from
        ``messages``) and the ``history_age`` index; the rows stay readable."""
        path = self.mktemp()
        conn = sqlite3.connect(path)
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        new = c2c(5, content=b"\xff old")
        conn.execute(Statements(history_has_content=False).insert_message,
                     message_row(new.message))
        for row in history_rows(new):
            conn.execute(Statements(history_has_content=False).insert_history, row)
        conn.commit()
        conn.close()
        store = inline_store(self, path)
        self.assertEqual(sqlite_query(path, "SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])
        self.assertEqual(sqlite_query(
            path, "SELECT name FROM sqlite_master WHERE name = 'history_age'"), [("history_age",)])
        page = self.successResultOf(store.history(USERS, 2, 0, 10, 0))
        self.assertEqual(page.messages, [new.message])

    def test_pull_uses_the_pending_index(self) -> None:
        store = inline_store(self)

        def plan(txn: Any) -> str:
            txn.execute("EXPLAIN QUERY PLAN " + SELECT_PENDING, (2, 10, 0, 21))
            return " ".join(str(row[-1]) for row in txn.fetchall())

        self.assertIn("messages_pending", self.successResultOf(store.pool.runInteraction(plan)))

    def test_dedup_keys_dated_by_the_clock(self) -> None:
        path = self.mktemp()
        clock = Clock()
        store = SQLiteMessageStore(path, clock, pool=inline_sqlite_pool(path))
        self.successResultOf(store.start())
        self.addCleanup(store.stop)
        self.successResultOf(store.store([c2c(1, client_msg_id="old")]))
        clock.advance(100)
        self.successResultOf(store.store([c2c(2, client_msg_id="new")]))
        self.assertEqual(self.successResultOf(store.purge_dedup(50_000)), 1)
        outcomes = self.successResultOf(
            store.store([c2c(3, client_msg_id="old"), c2c(4, client_msg_id="new")])
        )
        self.assertEqual(outcomes, [StoreOutcome(3, "log-3"), StoreOutcome(2, "log-2", True)])


class SQLiteLifeTests(SynchronousTestCase):
    """Start, stop and failures (inline pool)."""

    def test_stop_waits_for_writes_in_flight(self) -> None:
        store = inline_store(self)
        release = inline_pool(store).hold()
        stored = store.store([c2c(1)])
        queued = store.store([c2c(2)])
        stopped = store.stop()
        self.assertNoResult(stopped)
        self.failureResultOf(store.store([c2c(3)]), StoreUnavailable)
        self.failureResultOf(store.pull(2, 10, 0, 10), StoreUnavailable)
        release()
        self.assertEqual(self.successResultOf(stored), [StoreOutcome(1, "log-1")])
        self.assertEqual(self.successResultOf(queued), [StoreOutcome(2, "log-2")])
        self.assertIsNone(self.successResultOf(stopped))
        self.assertFalse(store.pool.running)
        self.assertEqual(sqlite_query(store.path, "SELECT msgid FROM messages"), [(1,), (2,)])

    def test_not_started(self) -> None:
        path = self.mktemp()
        store = SQLiteMessageStore(path, Clock(), pool=inline_sqlite_pool(path))
        self.addCleanup(store.stop)
        self.failureResultOf(store.pull(2, 10, 0, 10), StoreUnavailable)
        self.failureResultOf(store.store([c2c(1)]), StoreUnavailable)

    def test_stop_while_starting(self) -> None:
        path = self.mktemp()
        pool = inline_sqlite_pool(path)
        store = SQLiteMessageStore(path, Clock(), pool=pool)
        release = pool.hold()
        started = store.start()
        stopped = store.stop()
        release()
        self.successResultOf(started)
        self.successResultOf(stopped)
        self.failureResultOf(store.pull(2, 10, 0, 10), StoreUnavailable)

    def test_missing_directory(self) -> None:
        path = os.path.join(self.mktemp(), "no", "such", "dir", "messages.db")
        store = SQLiteMessageStore(path, Clock(), pool=inline_sqlite_pool(path))
        self.addCleanup(store.stop)
        failure = self.failureResultOf(store.start(), StoreUnavailable)
        self.assertIsInstance(failure.value.__cause__, sqlite3.OperationalError)
        self.failureResultOf(store.count_pending(2, 10), StoreUnavailable)

    def test_closed_pool(self) -> None:
        store = inline_store(self)
        store.pool.close()
        self.failureResultOf(store.pull(2, 10, 0, 10), StoreUnavailable)
        self.failureResultOf(store.store([c2c(1)]), StoreUnavailable)
        self.failureResultOf(store.ack(2, 10, [1]), StoreUnavailable)

    def test_database_error_fails_every_write_of_the_flush(self) -> None:
        """A write the database refuses (here a msgid stored before) fails its
        whole transaction: every caller gets StoreUnavailable, nothing is
        written, and later writes work."""
        store = inline_store(self)
        self.successResultOf(store.store([c2c(1)]))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        release = inline_pool(store).hold()
        first = store.store([c2c(2)])
        bad, good = store.store([c2c(1)]), store.store([c2c(3)])
        release()
        self.successResultOf(first)
        for d in (bad, good):
            failure = self.failureResultOf(d, StoreUnavailable)
            self.assertIsInstance(failure.value.__cause__, sqlite3.IntegrityError)
        self.assertEqual(self.successResultOf(store.store([c2c(3)])), [StoreOutcome(3, "log-3")])
        self.assertEqual(ids(self.successResultOf(store.pull(2, 10, 0, 10))), [1, 2, 3])
        logged = [e for e in events if e.get("operation") == "write_batch_txn"]
        self.assertEqual(len(logged), 1)
        self.assertIn("IntegrityError", logged[0]["error"])


class ThreadedSQLiteTests(TestCase):
    """The production pool on a file, on trial's reactor."""

    async def test_pending_messages_survive_a_restart(self) -> None:
        path = self.mktemp()
        first = SQLiteMessageStore(path, reactor)
        self.addCleanup(first.stop)
        await first.start()
        await first.store([c2c(i, client_msg_id=f"c{i}") for i in (1, 2, 3)])
        await first.ack(2, 10, [2])
        await first.stop()
        self.assertFalse(first.pool.running)

        second = SQLiteMessageStore(path, reactor)
        self.addCleanup(second.stop)
        await second.start()
        page = await second.pull(2, 10, 0, 10)
        self.assertEqual(page.messages, [c2c(1).message, c2c(3).message])
        self.assertEqual(await second.max_msgid(), 3)
        again = await second.store([c2c(9, client_msg_id="c3")])
        self.assertEqual(again, [StoreOutcome(3, "log-3", duplicate=True)])

    async def test_missing_directory(self) -> None:
        path = os.path.join(self.mktemp(), "no", "such", "dir", "messages.db")
        store = SQLiteMessageStore(path, reactor)
        self.addCleanup(store.stop)
        start: Deferred[None] = store.start()
        await self.assertFailure(start, StoreUnavailable)

    async def test_closed_pool(self) -> None:
        store = SQLiteMessageStore(self.mktemp(), reactor)
        self.addCleanup(store.stop)
        await store.start()
        store.pool.close()
        await self.assertFailure(store.pull(2, 10, 0, 10), StoreUnavailable)
        await self.assertFailure(store.store([c2c(1)]), StoreUnavailable)
