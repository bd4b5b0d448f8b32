# -*- test-case-name: tests.store.mysql.test_lifecycle -*-
"""The MySQL store's purge and storage figures (docs/operations.md §13).

One purger per shard table across the cluster: every batch of a purge runs
on one pooled connection under the named lock ``GET_LOCK(name, 0)`` of its
(database, shard table), released at the end of the batch, after its commit.
A node that cannot take it (another node is purging that shard) skips the
shard until its next round. Batches are short transactions on the pool's
threads, never in the group commit's lanes: a write waits at most for one
batch to hand back its connection.

The storage figures come from ``information_schema.TABLES`` (``TABLE_ROWS``,
``DATA_LENGTH + INDEX_LENGTH``, summed over the shard tables of every
database): InnoDB's estimates, refreshed by the server now and then, not
counts. The databases are shared by the cluster's nodes, so they are the
cluster's figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pymysql
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from daojia_msg.core.model import PurgeCounts, PurgeCutoffs, StorageFigures
from daojia_msg.store.lifecycle import Pace, PurgeTransactions, purge_tables
from daojia_msg.store.mysql.pools import Database
from daojia_msg.store.mysql.render import PARAMSTYLE, sql
from daojia_msg.store.mysqldriver import mark_committed
from daojia_msg.store.sql import Tables

#: The named lock of shard table ``?`` of the connection's database (server-wide
#: names, at most 64 characters: ``msgplatform-purge-`` + 32 + ``-`` + the shard).
PURGE_LOCK = "CONCAT('msgplatform-purge-', MD5(DATABASE()), '-', ?)"
KINDS = {"messages": "pending", "history": "history", "dedup": "dedup"}


def locked_txn(txn: Any, shard: int, step: Callable[..., Any], *args: Any) -> Any:
    """``step(txn, *args)`` under the purge lock of ``shard``, committed
    before the lock is released; None (nothing done) when another
    connection holds the lock."""
    txn.execute(sql(f"SELECT GET_LOCK({PURGE_LOCK}, 0)"), (shard,))
    if txn.fetchone()[0] != 1:
        return None
    try:
        result = step(txn, *args)
        txn.execute("COMMIT")
        mark_committed(txn)
        return result
    finally:
        try:
            txn.execute(sql(f"SELECT RELEASE_LOCK({PURGE_LOCK})"), (shard,))
            txn.fetchall()
        except pymysql.err.Error:
            pass  # a dead connection releases its locks; the first error matters


def storage_txn(txn: Any, shards: int) -> StorageFigures:
    """One database's figures: estimated rows and bytes per table kind, and
    its oldest pending msgid (the primary key, walked from its start)."""
    txn.execute("SELECT TABLE_NAME, TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH"
                " FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
    rows = dict.fromkeys(KINDS.values(), 0)
    sizes: dict[str, int | None] = dict.fromkeys(KINDS.values(), 0)
    for name, count, size in txn.fetchall():
        prefix, _, shard = str(name).rpartition("_")
        if prefix in KINDS and shard.isdigit():
            rows[KINDS[prefix]] += int(count or 0)
            sizes[KINDS[prefix]] = (sizes[KINDS[prefix]] or 0) + int(size or 0)
    oldest = 0
    for n in range(shards):
        txn.execute(f"SELECT msgid FROM messages_{n} WHERE state = 0 ORDER BY msgid LIMIT 1")
        row = txn.fetchone()
        if row is not None and (not oldest or int(row[0]) < oldest):
            oldest = int(row[0])
    return StorageFigures(rows, sizes, oldest, approximate=True)


def add_up(figures: Sequence[StorageFigures]) -> StorageFigures:
    """The figures of several databases as one."""
    rows = {k: sum(f.rows[k] for f in figures) for k in KINDS.values()}
    sizes: dict[str, int | None] = {k: sum(f.bytes[k] or 0 for f in figures)
                                    for k in KINDS.values()}
    oldest = min((f.oldest_pending_msgid for f in figures if f.oldest_pending_msgid), default=0)
    return StorageFigures(rows, sizes, oldest, approximate=True)


class MySQLLifecycle:
    """Purge and storage figures over the store's databases and shard tables."""

    def __init__(self, dbs: Sequence[Database], shards: int, clock: IReactorTime) -> None:
        self.dbs = dbs
        self.shards = shards
        self.clock = clock
        self.txns = [PurgeTransactions(PARAMSTYLE, Tables.shard(n), locking_reads=True,
                                       delete_limit=True) for n in range(shards)]

    async def purge(self, cutoffs: PurgeCutoffs,
                    counts: PurgeCounts | None = None) -> PurgeCounts:
        """Each shard table of each database in turn, batch after batch,
        adding to ``counts`` as batches commit."""
        counts = counts if counts is not None else PurgeCounts()
        pace = Pace(self.clock, cutoffs.max_rows_per_s)
        for db in self.dbs:
            for n, txns in enumerate(self.txns):
                def run(step: Callable[..., Any], *args: Any, db: Database = db,
                        n: int = n) -> Deferred[Any]:
                    return db.run(locked_txn, n, step, *args)

                await purge_tables(run, txns, cutoffs, counts, f"{db.name} {txns.tables.messages}",
                                   pace)
        return counts

    def storage(self) -> Deferred[StorageFigures]:
        d = gatherResults([db.run(storage_txn, self.shards) for db in self.dbs],
                          consumeErrors=True)
        return d.addCallback(add_up)
