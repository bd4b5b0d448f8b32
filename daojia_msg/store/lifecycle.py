# -*- test-case-name: tests.store.test_lifecycle -*-
"""The data lifecycle of the SQL message stores (docs/operations.md §13):
what the reads no longer see, and the purge's transactions.

- :class:`Retention`: the oldest msgid a read may return (a msgid embeds its
  creation time, :meth:`IdGenerator.floor_for`): pending messages older than
  ``store.pending_ttl_days`` are expired (never pulled, counted or pushed
  again), history rows older than ``store.history_days`` are gone. The reads
  filter by msgid because the purge lags behind.
- :class:`PurgeTransactions`: one batch of one kind of purge on one set of
  tables, at most ``batch`` rows per DELETE statement, each batch its own
  transaction.
- :func:`purge_tables`: every kind of purge on one set of tables, batch after
  batch (each a separate interaction: the reactor and the other interactions
  run in between), through a ``run`` that may refuse (a MySQL named lock held
  by another node: the tables are skipped this round).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from daojia_msg.config import StoreConfig
from daojia_msg.core.model import Kind, PurgeCounts, PurgeCutoffs, StorageFigures
from daojia_msg.store.sql import DELIVERED, PENDING, Tables, chunks, convert_param_style, marks

__all__ = ["PurgeCounts", "PurgeCutoffs", "PurgeTransactions", "Retention", "StorageFigures",
           "purge_tables"]

#: ``run(interaction, *args)``: fires with the interaction's result, or None
#: when the tables may not be purged now (another node purges them).
Run = Callable[..., "Deferred[Any]"]
class Pace:
    """At most ``max_rows_per_s`` rows a second over one purge round (0: no
    bound): a batch after one that deleted rows first waits for those rows'
    share of a second (on ``clock``); the round's tables share one pace."""

    def __init__(self, clock: IReactorTime, max_rows_per_s: float) -> None:
        self.clock = clock
        self.rate = max_rows_per_s
        self.owed = 0.0

    async def before(self) -> None:
        if self.owed:
            owed, self.owed = self.owed, 0.0
            await deferLater(self.clock, owed, lambda: None)

    def after(self, rows: int) -> None:
        if self.rate and rows:
            self.owed += rows / self.rate


class Retention:
    """The oldest msgids the reads still return, from ``config``
    (``store.pending_ttl_days``, ``store.history_days``) and ``clock``; None
    keeps everything (a store built without a config: tests)."""

    def __init__(self, clock: IReactorTime, config: StoreConfig | None = None) -> None:
        self.clock = clock
        self.config = config

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def pending_floor(self) -> int:
        """The smallest msgid that is not expired (0: none is)."""
        return 0 if self.config is None else self.config.pending_floor(self._now_ms())

    def history_floor(self) -> int:
        """The smallest msgid whose history rows are kept (0: all are)."""
        return 0 if self.config is None else self.config.history_floor(self._now_ms())


class PurgeTransactions:
    """One batch of each kind of purge on ``tables``.

    :param locking_reads: read the expired rows ``FOR UPDATE`` (MySQL: an ACK
        on another node must not turn one delivered between the count and the
        delete). :param delete_limit: the backend has ``DELETE ... LIMIT``
        (MySQL); else a row-value ``IN (SELECT ... LIMIT ?)`` (SQLite).
    """

    def __init__(self, paramstyle: str, tables: Tables, *, locking_reads: bool = False,
                 delete_limit: bool = False) -> None:
        m, h, d = tables.messages, tables.history, tables.dedup
        self.tables = tables
        self.paramstyle = paramstyle
        lock = " FOR UPDATE" if locking_reads else ""
        self.select_expired = (f"SELECT msgid, to_appcode, msgtype, kind FROM {m}"
                               f" WHERE msgid < ? AND state = {PENDING} ORDER BY msgid LIMIT ?{lock}")
        self.delete_expired = f"DELETE FROM {m} WHERE state = {PENDING} AND msgid IN ({{ids}})"
        self.select_delivered = (f"SELECT msgid FROM {m} WHERE msgid > ? AND state = {DELIVERED}"
                                 " ORDER BY msgid LIMIT ?")
        self.delete_delivered = f"DELETE FROM {m} WHERE state = {DELIVERED} AND msgid IN ({{ids}})"
        if delete_limit:
            self.delete_history = f"DELETE FROM {h} WHERE msgid < ? ORDER BY msgid LIMIT ?"
            self.delete_dedup = f"DELETE FROM {d} WHERE created_ms < ? LIMIT ?"
        else:
            key = "owner_sys, owner_uid, msgid"
            self.delete_history = (f"DELETE FROM {h} WHERE ({key}) IN (SELECT {key} FROM {h}"
                                   " WHERE msgid < ? ORDER BY msgid LIMIT ?)")
            key = "uid, appcode, client_msg_id"
            self.delete_dedup = (f"DELETE FROM {d} WHERE ({key}) IN (SELECT {key} FROM {d}"
                                 " WHERE created_ms < ? LIMIT ?)")

    def sql(self, statement: str) -> str:
        return convert_param_style(statement, self.paramstyle)

    def expired_txn(self, txn: Any, before: int, limit: int) -> tuple[int, dict[Any, int]]:
        """Delete the oldest ``limit`` pending rows with ``msgid < before``;
        returns how many, and how many of each route ``(to_appcode, msgtype,
        kind)`` (read before the delete, in its transaction)."""
        txn.execute(self.sql(self.select_expired), (before, limit))
        rows = txn.fetchall()
        routes: dict[Any, int] = {}
        for _, appcode, msgtype, kind in rows:
            route = (int(appcode), int(msgtype), Kind(kind))
            routes[route] = routes.get(route, 0) + 1
        return self._delete(txn, self.delete_expired, [r[0] for r in rows]), routes

    def delivered_txn(self, txn: Any, after: int, limit: int) -> tuple[int, int, int]:
        """Delete the first ``limit`` delivered rows with ``msgid > after``
        (the primary key, walked from where the last batch stopped); returns
        how many, the last msgid found (``after`` when none) and how many were found."""
        txn.execute(self.sql(self.select_delivered), (after, limit))
        found = [int(r[0]) for r in txn.fetchall()]
        deleted = self._delete(txn, self.delete_delivered, found)
        return deleted, (found[-1] if found else after), len(found)

    def history_txn(self, txn: Any, before: int, limit: int) -> int:
        """Delete the oldest ``limit`` history rows with ``msgid < before``."""
        txn.execute(self.sql(self.delete_history), (before, limit))
        return int(txn.rowcount)

    def dedup_txn(self, txn: Any, before_ms: int, limit: int) -> int:
        """Delete ``limit`` de-dup keys created before ``before_ms``."""
        txn.execute(self.sql(self.delete_dedup), (before_ms, limit))
        return int(txn.rowcount)

    def _delete(self, txn: Any, statement: str, msgids: list[int]) -> int:
        deleted = 0
        for chunk in chunks(msgids):
            txn.execute(self.sql(statement.format(ids=marks(len(chunk)))), chunk)
            deleted += int(txn.rowcount)
        return deleted


async def purge_tables(run: Run, txns: PurgeTransactions, cutoffs: PurgeCutoffs,
                       counts: PurgeCounts, name: str = "", pace: Pace | None = None) -> bool:
    """Every kind of purge on ``txns``' tables, in batches of ``cutoffs.batch``
    rows until one comes back short; adds to ``counts`` as each batch commits.
    False (and ``name`` in ``counts.skipped``) when ``run`` refused a batch:
    another node purges these tables now; the rest waits for the next round.
    ``pace`` spaces the batches (:class:`Pace`)."""
    limit = cutoffs.batch

    async def paced(batch: Any, *args: Any) -> Any:
        if pace is not None:
            await pace.before()
        result = await run(batch, *args)
        if pace is not None:
            pace.after(result if isinstance(result, int) else (result[0] if result else 0))
        return result

    def refused() -> bool:
        counts.skipped.append(name or txns.tables.messages)
        return False

    while True:
        expired = await paced(txns.expired_txn, cutoffs.pending_before, limit)
        if expired is None:
            return refused()
        rows, routes = expired
        for route, n in routes.items():
            counts.expired[route] = counts.expired.get(route, 0) + n
        counts.batch(rows)
        if sum(routes.values()) < limit:
            break
    after = 0
    while True:  # along the primary key: each batch starts where the last one stopped
        delivered = await paced(txns.delivered_txn, after, limit)
        if delivered is None:
            return refused()
        rows, after, found = delivered
        counts.delivered += rows
        counts.batch(rows)
        if found < limit:
            break
    for step, before, kind in ((txns.history_txn, cutoffs.history_before, "history"),
                               (txns.dedup_txn, cutoffs.dedup_before_ms, "dedup")):
        while True:
            rows = await paced(step, before, limit)
            if rows is None:
                return refused()
            setattr(counts, kind, getattr(counts, kind) + rows)
            counts.batch(rows)
            if rows < limit:
                break
    return True
