# -*- test-case-name: tests.store.mysql.test_across -*-
"""A flush of the MySQL store whose rows span several databases.

No transaction spans two databases: the flush runs one transaction per
database and step, in an order (:meth:`AcrossDatabases.store`) that can never
answer OK for a message that is not stored. A flush whose rows are all in one
database is one transaction, as with a single database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.core.errors import StoreUncertain
from daojia_msg.store.mysql.flush import AckOp, FlushTransactions, Op, answer, flush_items, split
from daojia_msg.store.mysql.placement import Item, Owners, Placement
from daojia_msg.store.mysql.pools import Database

T = TypeVar("T")


class AcrossDatabases:
    """Flushes over the databases ``dbs`` (in config order)."""

    log = Logger()

    def __init__(
        self, dbs: list[Database], placement: Placement, transactions: FlushTransactions
    ) -> None:
        self.dbs = dbs
        self.placement = placement
        self.transactions = transactions

    async def flush(self, ops: list[Op]) -> list[Any]:
        """A flush over several databases: its stores, then its ACKs. One
        result per op: a :class:`Failure` for an op that failed alone."""
        results: list[Any] = [None] * len(ops)
        stores, acks = split(ops)
        if stores:
            items = flush_items(ops, stores)
            failed: dict[int, Failure] = {}
            owners = await self.store(items, failed)
            answer(items, owners, failed, results)
        if acks:
            by_db: dict[int, list[int]] = {}
            for i in acks:
                by_db.setdefault(self.placement.place(cast(AckOp, ops[i]).uid)[0], []).append(i)
            done = await self._on_each(
                {db: [ops[i] for i in indexes] for db, indexes in by_db.items()},
                self.transactions.acks_txn,
            )
            for db, indexes in by_db.items():
                acked = done[db]
                for k, i in enumerate(indexes):
                    results[i] = acked if isinstance(acked, Failure) else acked[k]
        return results

    async def store(self, items: list[Item], failed: dict[int, Failure]) -> Owners:
        """Store ``items`` whose rows are in several databases; record in
        ``failed`` the ops (by index) that failed.

        Write order, and the invariant that makes it safe: *a de-dup key is
        recorded only once its message is durable in every database, and a
        message whose key is recorded is never deleted.* An OK (new or resend)
        therefore always names a stored message.

        1. Look the keys up in the senders' databases: a key found is a resend,
           answered with the first send's ids and not written. (Unreadable:
           the op fails, nothing written.)
        2. Write the message and history rows, one transaction per database.
           An op any of whose rows failed fails as a whole (UNAVAILABLE), and
           its rows that did get written are deleted again.
        3. Record the keys, one transaction per database (insert, or keep the
           row there). A key now owned by another msgid is a resend another
           node stored at the same moment: our copy is deleted and the answer
           is the other one's ids. If recording fails the messages are durable
           and answered OK; their keys may be missing (a resend would then be
           stored again, not lost).

        A crash (of this node or between databases) can leave: a message
        stored in some databases but not all, with no key (no OK was sent; it
        may be delivered, and a resend is stored again: the recipient may see
        it twice), or a resend's copy not deleted (seen twice). A failed
        compensating delete leaves the same. It cannot leave an OK whose
        message is missing. One database per flush (the usual case with one
        database) is one transaction instead and cannot leave anything.
        """
        place, txns = self.placement, self.transactions
        touched = {db for i in items if i.first for db in place.databases_of(i)}
        if len(touched) == 1:
            (db,) = touched
            try:
                return await self.dbs[db].run(txns.store_txn, items)
            except Exception:
                for i in items:
                    failed.setdefault(i.op, Failure())
                return {}
        writers = [i for i in items if i.first]

        # 1. Keys recorded before.
        owners: Owners = {}
        lookups = {
            db: {n: [(r[0], r[1], r[2]) for r in rows] for n, rows in tables.items()}
            for db, tables in place.key_rows(writers).items()
        }
        for db, found in (await self._on_each(lookups, txns.find_keys_txn)).items():
            if isinstance(found, Failure):
                hit = [i for i in items if i.key is not None and place.key_database(i) == db]
                _fail(items, failed, found, hit)
            else:
                owners.update(found)

        # 2. Messages and history.
        to_write = [
            i for i in writers if i.op not in failed and (i.key is None or i.key not in owners)
        ]
        written = await self._on_each(place.message_rows(to_write), txns.write_rows_txn)
        for db, done in written.items():
            if isinstance(done, Failure):
                hit = [i for i in to_write if db in place.row_databases(i)]
                _fail(items, failed, done, hit)
        # A database whose write may have committed (StoreUncertain) gets the delete too.
        committed = {db for db, done in written.items()
                     if not isinstance(done, Failure) or done.check(StoreUncertain)}
        undo = [i for i in to_write if i.op in failed]
        await self._delete_copies(undo, "its op failed", committed)

        # 3. Keys, now that their messages are durable.
        claiming = [i for i in to_write if i.op not in failed and i.key is not None]
        claims = place.key_rows(claiming)
        for db, result in (await self._on_each(claims, txns.claim_keys_txn)).items():
            if isinstance(result, Failure):
                self.log.error(
                    "de-dup keys of {count} stored messages not recorded in {database}:"
                    " {error}; a resend of them would be stored again",
                    count=sum(len(rows) for rows in claims[db].values()),
                    database=self.dbs[db].name,
                    error=repr(result.value),
                )
                owners.update(
                    {i.key: (i.msgid, i.new.message.logid) for i in claiming
                     if i.key is not None and place.key_database(i) == db}
                )  # fmt: skip
            else:
                owners.update(result)
        losers = [i for i in claiming if i.key is not None and owners[i.key][0] != i.msgid]
        await self._delete_copies(losers, "another node stored the same resend first")
        return owners

    async def _delete_copies(
        self, items: list[Item], why: str, only: set[int] | None = None
    ) -> None:
        """Delete the message and history rows of ``items`` (in the databases
        ``only``, if given), best effort. They never have a de-dup key."""
        rows = {
            db: tables
            for db, tables in self.placement.message_rows(items).items()
            if only is None or db in only
        }
        if not rows:
            return
        msgids = sorted(i.msgid for i in items)
        self.log.warn("deleting stored copies of {msgids}: {why}", msgids=msgids, why=why)
        done = await self._on_each(rows, self.transactions.delete_rows_txn)
        for db, result in done.items():
            if isinstance(result, Failure):
                self.log.error(
                    "could not delete {msgids} from {database} ({error}): they stay pending,"
                    " and may be delivered twice",
                    msgids=msgids,
                    database=self.dbs[db].name,
                    error=repr(result.value),
                )

    async def _on_each(
        self, work: dict[int, Any], interaction: Callable[[Any, Any], T]
    ) -> dict[int, T | Failure]:
        """Run ``interaction(txn, work[db])`` on each database of ``work``, at
        the same time; each one's result or Failure."""
        dbs = sorted(work)
        done = await DeferredList(
            [self.dbs[db].run(interaction, work[db]) for db in dbs], consumeErrors=True
        )
        return {db: value for db, (_, value) in zip(dbs, done, strict=True)}


def _fail(items: list[Item], failed: dict[int, Failure], failure: Failure, hit: list[Item]) -> None:
    """Fail the ops of the items ``hit``, and (until nothing changes) those
    of resends whose first send is in a failed op: they were to be answered
    with a message that is not stored."""
    for i in hit:
        failed.setdefault(i.op, failure)
    changed = True
    while changed:
        lost = {i.key for i in items if i.first and i.key is not None and i.op in failed}
        changed = False
        for i in items:
            if not i.first and i.key in lost and i.op not in failed:
                failed[i.op] = failure
                changed = True
