"""Fixtures of the MySQL store's tests on a real MariaDB/MySQL
(``tests.servers.require_mysql``: skipped when none runs, a failure with
``CI=true``): databases of a test's own, created empty and dropped at cleanup;
started stores; pools that let a test see or break what happens; lanes of the
group committer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pymysql
from twisted.enterprise import adbapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import TestCase

from daojia_msg.config import MySQLConfig, parse_mysql_url
from daojia_msg.store import batching, mysqldriver
from daojia_msg.store.mysql import DRIVER, STATEMENT_SEPARATOR, MySQLMessageStore, pool_kwargs
from tests.servers import drop_mysql_database, require_mysql


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
    conn = mysqldriver.connect(
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


class RecordingTransaction(adbapi.Transaction):
    """A transaction that records each query (a round trip) and each statement
    in it (before its parameters)."""

    def execute(self, statement: str, args: Any = None) -> Any:
        self._pool.queries.append(statement)
        self._pool.statements.extend(statement.split(STATEMENT_SEPARATOR))
        cursor: Any = self._cursor
        return cursor.execute(statement, args)


class TestPool(adbapi.ConnectionPool):
    """The production pool settings, plus:

    - ``statements``: every statement run (through :class:`RecordingTransaction`),
      ``queries`` every query sent (several statements in one, some);
    - ``interactions``: the names of the interactions asked for;
    - ``hooks[name]``: called (once) in the reactor thread before the next
      interaction of that name; if it raises, the interaction fails with it;
    - ``lose_commit_answers``: that many interactions commit, then fail with
      MySQL error 2013, as if the connection died before the answer came.
    """

    transactionFactory = RecordingTransaction

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


# -- lanes of the group committer ---------------------------------------------


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
