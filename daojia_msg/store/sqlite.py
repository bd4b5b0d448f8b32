# -*- test-case-name: tests.store.test_sqlite -*-
"""The embedded message store: one SQLite file (the default, one node).

It runs on ``twisted.enterprise.adbapi`` with one connection (``cp_min`` =
``cp_max`` = 1, so writes are serialised), in WAL mode with
``synchronous=NORMAL``. Writes (store, ACK, de-dup purge) go through a
:class:`GroupCommitter`: those that arrive while a transaction is in flight are
committed together by the next one. The SQL itself is in :mod:`.sql`.

For unit tests, one line on a ``task.Clock``::

    store = SQLiteMessageStore(path, clock, pool=inline_sqlite_pool(path))
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from daojia_msg.config import StoreConfig
from daojia_msg.core.errors import StoreError
from daojia_msg.core.model import AckedMessage, NewMessage, Page, StoredMessage, StoreOutcome
from daojia_msg.logic.interfaces import IMessageStore
from daojia_msg.store.batching import GroupCommitter
from daojia_msg.store.dbpool import InlineConnectionPool, PoolRunner, StoreLife, close_pool
from daojia_msg.store.lifecycle import (
    Pace,
    PurgeCounts,
    PurgeCutoffs,
    PurgeTransactions,
    Retention,
    StorageFigures,
    purge_tables,
)
from daojia_msg.store.reads import ReadBatcher, ReadStats
from daojia_msg.store.sql import MESSAGE_COLUMNS, MessageTransactions, Tables

T = TypeVar("T")

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE messages (
            msgid INTEGER PRIMARY KEY,
            to_uid INTEGER NOT NULL,
            to_appcode INTEGER NOT NULL,
            from_uid INTEGER NOT NULL,
            from_appcode INTEGER NOT NULL,
            msgtype INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            senddate INTEGER NOT NULL,
            state INTEGER NOT NULL DEFAULT 0,
            logid TEXT NOT NULL,
            msgcontent BLOB NOT NULL
        )""",
        # PULL and count_pending; a partial index only holds pending rows.
        "CREATE INDEX messages_pending ON messages (to_uid, to_appcode, msgid) WHERE state = 0",
        """CREATE TABLE history (
            owner_sys TEXT NOT NULL,
            owner_uid INTEGER NOT NULL,
            msgid INTEGER NOT NULL,
            peer_uid INTEGER NOT NULL,
            PRIMARY KEY (owner_sys, owner_uid, msgid)
        ) WITHOUT ROWID""",
        "CREATE INDEX history_peer ON history (owner_sys, owner_uid, peer_uid, msgid)",
        """CREATE TABLE dedup (
            uid INTEGER NOT NULL,
            appcode INTEGER NOT NULL,
            client_msg_id TEXT NOT NULL,
            msgid INTEGER NOT NULL,
            logid TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            PRIMARY KEY (uid, appcode, client_msg_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX dedup_created ON dedup (created_ms)",
    ),
    # 2: history rows carry a copy of their message (delivered and expired
    # messages leave "messages"), and are found by age (store.history_days).
    (
        *(f"ALTER TABLE history ADD COLUMN {column} NOT NULL DEFAULT {default}" for column, default in (
            ("to_uid INTEGER", 0), ("to_appcode INTEGER", 0), ("from_uid INTEGER", 0),
            ("from_appcode INTEGER", 0), ("msgtype INTEGER", 0), ("kind INTEGER", 0),
            ("senddate INTEGER", 0), ("logid TEXT", "''"), ("msgcontent BLOB", "x''"))),
        f"UPDATE history SET ({MESSAGE_COLUMNS}) = (SELECT {MESSAGE_COLUMNS} FROM messages m"
        " WHERE m.msgid = history.msgid)"
        " WHERE EXISTS (SELECT 1 FROM messages m WHERE m.msgid = history.msgid)",
        "CREATE INDEX history_age ON history (msgid)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def configure_connection(conn: sqlite3.Connection) -> None:
    """``cp_openfun``: WAL journal, ``synchronous=NORMAL`` (one writer, readers never block)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def _pool_args(path: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (path,), {
        "check_same_thread": False,
        "cp_min": 1,
        "cp_max": 1,
        "cp_openfun": configure_connection,
    }


def sqlite_pool(path: str, reactor: IReactorTime) -> adbapi.ConnectionPool:
    """The production pool: one connection on one thread of its own."""
    args, kw = _pool_args(path)
    return adbapi.ConnectionPool("sqlite3", *args, cp_reactor=reactor, **kw)


def inline_sqlite_pool(path: str) -> InlineConnectionPool:
    """The same connection settings on an :class:`InlineConnectionPool` (tests)."""
    args, kw = _pool_args(path)
    return InlineConnectionPool("sqlite3", *args, **kw)


def migrate_txn(txn: Any) -> int:
    """Create or migrate the schema to :data:`SCHEMA_VERSION`, in one transaction;
    returns the version found."""
    txn.execute("BEGIN IMMEDIATE")
    txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    txn.execute("SELECT version FROM schema_version")
    row = txn.fetchone()
    found = 0 if row is None else int(row[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the database schema is version {found}; this code knows up to {SCHEMA_VERSION}"
        )
    for statements in MIGRATIONS[found:]:
        for statement in statements:
            txn.execute(statement)
    if row is None:
        txn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif found < SCHEMA_VERSION:
        txn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    return found


@implementer(IMessageStore)
class SQLiteMessageStore:
    """:class:`IMessageStore` on one SQLite file.

    :param path: the database file (created if missing; its directory must exist).
    :param reactor: time for de-dup keys (``seconds()``) and, unless ``pool``
        is given, the pool's ``cp_reactor``.
    :param pool: a ready-made pool, e.g. :func:`inline_sqlite_pool` in tests.
    :param max_batch: at most this many writes per group commit.
    :param retention: ``[store]``: what expires (:class:`Retention`); None keeps all.
    :ivar committer: the :class:`GroupCommitter` of the writes.
    :ivar reads: the :class:`ReadBatcher` of the reads (one batch at a time: one
        connection).
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: IReactorTime,
        pool: adbapi.ConnectionPool | None = None,
        max_batch: int = 1000,
        retention: StoreConfig | None = None,
    ) -> None:
        self.path = path
        self.retention = Retention(reactor, retention)
        self._clock = reactor
        self.pool = pool if pool is not None else sqlite_pool(path, reactor)
        self._runner = PoolRunner(self.pool, "sqlite message store")
        self._txns = MessageTransactions(self.pool.dbapi.paramstyle)
        self._purges = PurgeTransactions(self.pool.dbapi.paramstyle, Tables())
        self.committer = GroupCommitter(self._runner.run, max_ops=max_batch)
        #: Reads in flight and failed (``/metrics``).
        self.read_stats = ReadStats()
        self.reads = ReadBatcher(self._runner.run, stats=self.read_stats)
        self._life = StoreLife()

    # Life

    def start(self) -> Deferred[None]:
        def opened(found: int) -> None:
            self.log.info(
                "message store {path} open, schema version {version} (was {found})",
                path=self.path,
                version=SCHEMA_VERSION,
                found=found,
            )

        return self._life.start(self._open, opened)

    def _open(self) -> Deferred[int]:
        self.pool.start()
        return self._runner.run(migrate_txn)

    def stop(self) -> Deferred[None]:
        return self._life.stop(
            lambda: self.committer.drain().addCallback(lambda _: self._runner.when_idle()),
            self._close,
        )

    def _close(self) -> None:
        close_pool(self.pool, f"message store {self.path}")
        self.log.info("message store {path} closed", path=self.path)

    # Writes: group-committed

    def store(self, messages: list[NewMessage]) -> Deferred[list[StoreOutcome]]:
        batch = list(messages)
        now_ms = int(self._clock.seconds() * 1000)
        return self._write(lambda txn: self._txns.store_txn(txn, batch, now_ms), bool(batch), [])

    def ack(self, uid: int, appcode: int, msgids: list[int]) -> Deferred[list[AckedMessage]]:
        ids = list(msgids)
        return self._write(lambda txn: self._txns.ack_txn(txn, uid, appcode, ids), bool(ids), [])

    def purge_dedup(self, before_ms: int) -> Deferred[int]:
        return self._write(lambda txn: self._txns.purge_dedup_txn(txn, before_ms), True, 0)

    def purge(self, cutoffs: PurgeCutoffs,
              counts: PurgeCounts | None = None) -> Deferred[PurgeCounts]:
        """One purge round, batch after batch, each its own transaction on the
        pool (not group-committed; writes queued meanwhile run between batches)."""
        if not self._life.started:
            return self._life.not_running()
        counts = counts if counts is not None else PurgeCounts()
        d = Deferred.fromCoroutine(purge_tables(self._runner.run, self._purges, cutoffs, counts,
                                                pace=Pace(self._clock, cutoffs.max_rows_per_s)))
        return d.addCallback(lambda _: counts)

    def storage(self) -> Deferred[StorageFigures]:
        """Rows (counted) and bytes (``dbstat``) of each table kind."""
        return self._read(storage_txn)

    def _write(self, op: Callable[[Any], T], needed: bool, nothing: T) -> Deferred[T]:
        if not self._life.started:
            return self._life.not_running()
        if not needed:
            return succeed(nothing)
        return self.committer.submit(op)

    # Reads

    def pull(self, uid: int, appcode: int, after_msgid: int, limit: int) -> Deferred[Page]:
        after = max(after_msgid, self.retention.pending_floor() - 1)
        return self._read(self._txns.pull_txn, uid, appcode, after, limit)

    def count_pending(self, uid: int, appcode: int) -> Deferred[int]:
        floor = self.retention.pending_floor()
        return self._read(self._txns.count_pending_txn, uid, appcode, floor)

    def pending_message(self, to_uid: int, msgid: int) -> Deferred[StoredMessage | None]:
        floor = self.retention.pending_floor()
        return self._read(self._txns.pending_message_txn, to_uid, msgid, floor)

    def history(
        self, usersystem: str, uid: int, before_msgid: int, limit: int, peer_uid: int
    ) -> Deferred[Page]:
        return self._read(self._txns.history_txn, usersystem, uid, before_msgid, limit, peer_uid,
                          self.retention.history_floor())

    def max_msgid(self) -> Deferred[int]:
        return self._read(self._txns.max_msgid_txn)

    def _read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        if not self._life.started:
            return self._life.not_running()
        return self.reads.read(interaction, *args)


#: The table kinds of :class:`StorageFigures` and their SQLite tables.
KINDS = (("pending", "messages"), ("history", "history"), ("dedup", "dedup"))


def storage_txn(txn: Any) -> StorageFigures:
    """Rows of each table kind (counted), its bytes with its indexes
    (``dbstat``; None where SQLite was built without it), the oldest pending msgid."""
    rows: dict[str, int] = {}
    for kind, table in KINDS:
        txn.execute(f"SELECT COUNT(*) FROM {table}")
        rows[kind] = int(txn.fetchone()[0])
    txn.execute("SELECT msgid FROM messages WHERE state = 0 ORDER BY msgid LIMIT 1")
    oldest = txn.fetchone()
    sizes: dict[str, int | None] = dict.fromkeys(rows)
    try:
        txn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
    except sqlite3.OperationalError:
        pass
    else:
        found = txn.fetchall()
        for kind, table in KINDS:
            sizes[kind] = sum(int(size) for name, size in found
                              if name == table or name.startswith(table + "_"))
    return StorageFigures(rows, sizes, int(oldest[0]) if oldest else 0, approximate=False)
