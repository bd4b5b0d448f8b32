"""The data lifecycle on the SQLite store (inline pool, ``task.Clock``):
the shared suite, and what is SQLite's own."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.store.sqlite import KINDS, SQLiteMessageStore, inline_sqlite_pool
from tests.store.lifecycle_suite import NOW, RETENTION, LifecycleFixture, make_lifecycle_tests
from tests.store.test_sqlite import sqlite_query


def sqlite_fixture(test: TestCase) -> LifecycleFixture:
    path = test.mktemp()
    clock = Clock()
    clock.advance(NOW)
    store = SQLiteMessageStore(path, clock, pool=inline_sqlite_pool(path), retention=RETENTION)
    test.successResultOf(store.start())
    test.addCleanup(store.stop)
    tables = dict(KINDS)

    def rows(kind: str) -> int:
        count: Any = sqlite_query(path, f"SELECT COUNT(*) FROM {tables[kind]}")[0][0]
        return int(count)

    return LifecycleFixture(store, clock, rows)


class SQLiteLifecycleTests(make_lifecycle_tests(sqlite_fixture)):  # type: ignore[misc]
    """The suite on SQLite."""
