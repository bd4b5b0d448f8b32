# -*- test-case-name: tests.store.mysql.test_flush -*-
"""A flush of the MySQL store's group-committed writes, and its transactions
on one database.

A flush merges all its stores and all its ACKs, whatever order they came in
(an ACK names a message that was pushed, so stored by an earlier flush). Each
table is written with one multi-row ``INSERT``, and the ACKs of a flush are
one locking read and one update per table, never statements per message or
per ACK. On one database a flush is one transaction of two queries
(:meth:`FlushTransactions.write_txn`) and a commit, however many shard tables
it touches; over several, :mod:`.across` orders its transactions.

A msgid found stored for *another* message is refused (:class:`StoreError`),
so a broken id generator is not silently hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pymysql
from pymysql.constants.ER import BAD_NULL_ERROR as ER_BAD_NULL

from daojia_msg.core.errors import StoreError
from daojia_msg.core.model import AckedMessage, NewMessage, StoreOutcome
from daojia_msg.store.mysql.placement import Item, Key, Owners, Placement, Rows, dedup_key
from daojia_msg.store.mysql.render import (
    DELETE_HISTORY,
    DELETE_MESSAGES,
    ONE_HISTORY_ROW,
    ONE_KEY,
    SELECT_KEYS,
    SELECT_STORED,
    Insert,
    Result,
    any_of,
    execute_batch,
    key_inserts,
    row_inserts,
    sql,
    sql_list,
)
from daojia_msg.store.sql import MessageTransactions, ackable, assign_acks, chunks, marks


@dataclass(frozen=True, slots=True)
class StoreOp:
    """A ``store()`` call waiting for its flush."""

    messages: list[NewMessage]
    now_ms: int


@dataclass(frozen=True, slots=True)
class AckOp:
    """An ``ack()`` call waiting for its flush."""

    uid: int
    appcode: int
    msgids: list[int]


Op = StoreOp | AckOp


def split(ops: list[Op]) -> tuple[list[int], list[int]]:
    """Indexes of the stores and of the ACKs of ``ops``, each in order. A
    flush writes all its stores together and all its ACKs together: an ACK
    can only name a message that was pushed, so stored by an earlier flush
    (one that names a message of its own flush, a guess, finds it not stored
    yet, as if it had come first)."""
    stores: list[int] = []
    acks: list[int] = []
    for i, op in enumerate(ops):
        (acks if isinstance(op, AckOp) else stores).append(i)
    return stores, acks


def flush_items(ops: list[Op], run: list[int]) -> list[Item]:
    """The messages of the store ops ``run``, in order, resends within it marked."""
    found: list[Item] = []
    seen: set[Key] = set()
    for i in run:
        op = cast(StoreOp, ops[i])
        for new in op.messages:
            key = dedup_key(new)
            found.append(Item(i, new, key, op.now_ms, first=key is None or key not in seen))
            if key is not None:
                seen.add(key)
    return found


def answer(items: list[Item], owners: Owners, failed: dict[int, Any], results: list[Any]) -> None:
    """Fill ``results`` (by op) with the outcomes of ``items``; an op of
    ``failed`` gets its Failure."""
    for i in items:
        if i.op in failed:
            results[i.op] = failed[i.op]
            continue
        if results[i.op] is None:
            results[i.op] = []
        m = i.new.message
        if i.key is None:
            results[i.op].append(StoreOutcome(m.msgid, m.logid))
        else:
            msgid, logid = owners[i.key]
            results[i.op].append(
                StoreOutcome(msgid, logid, duplicate=not i.first or msgid != m.msgid)
            )


class FlushTransactions:
    """The write transactions of the store on one database (each ``*_txn``
    runs in a pool thread, its adbapi transaction first).

    :param placement: where rows go.
    :param shards: the transactions of each shard table, by n.
    :ivar max_statement_bytes: bytes per multi-row statement (the store sets
        it from the server's ``max_allowed_packet`` at start).
    """

    def __init__(self, placement: Placement, shards: list[MessageTransactions]) -> None:
        self.placement = placement
        self.shards = shards
        self.max_statement_bytes = 1 << 20

    def flush_txn(self, txn: Any, ops: list[Op]) -> list[Any]:
        """A flush on the only database: one transaction (:meth:`write_txn`);
        one result per op."""
        results: list[Any] = [None] * len(ops)
        stores, acks = split(ops)
        found = flush_items(ops, stores)
        owners, acked = self.write_txn(txn, 0, found, [cast(AckOp, ops[i]) for i in acks])
        answer(found, owners, {}, results)
        for i, done in zip(acks, acked, strict=True):
            results[i] = done
        return results

    def store_txn(self, txn: Any, items: list[Item]) -> Owners:
        """Store ``items``, all of whose rows and keys are in one database, in
        one transaction (:meth:`write_txn`)."""
        writers = [i for i in items if i.first]
        db = self.placement.place(writers[0].new.message.to_uid)[0]
        return self.write_txn(txn, db, items, [])[0]

    def write_txn(
        self, txn: Any, db: int, items: list[Item], acks: list[AckOp]
    ) -> tuple[Owners, list[list[AckedMessage]]]:
        """Stores and ACKs on database ``db``, in one transaction and two
        batches of statements (:func:`execute_batch`):

        1. record the keys of ``items`` (a key recorded before, here or by
           another node at the same time, makes its message a resend: the
           key's owner is looked up, one more round trip), and read the
           pending rows the ACKs name (locking them);
        2. write the messages that are not resends and their history rows,
           and mark the ACKed rows delivered.

        Returns the keys' owners and each ACK's messages."""
        writers = [i for i in items if i.first]
        claims = key_inserts(self.placement.key_rows(writers).get(db, {}),
                             self.max_statement_bytes)  # fmt: skip
        reads = self.ack_reads(acks)
        done = execute_batch(txn, [c[1] for c in claims] + [r[1] for r in reads],
                             self.max_statement_bytes)  # fmt: skip
        owners = self.owners_txn(txn, claims, done[: len(claims)])
        acked, updates = self.acked(acks, reads, done[len(claims) :])
        fresh = [i for i in writers if i.key is None or owners[i.key][0] == i.msgid]
        writes = row_inserts(self.placement.message_rows(fresh).get(db, ({}, {})),
                             self.max_statement_bytes)  # fmt: skip
        self.write_and_commit_txn(txn, [w[1] for w in writes] + updates, writes)
        return owners, acked

    def acks_txn(self, txn: Any, ops: list[AckOp]) -> list[list[AckedMessage]]:
        """The ACKs ``ops`` (of one database) in one transaction: a batch of
        locking reads (one per table), then one of updates."""
        reads = self.ack_reads(ops)
        acked, updates = self.acked(ops, reads, execute_batch(
            txn, [r[1] for r in reads], self.max_statement_bytes))  # fmt: skip
        execute_batch(txn, updates, self.max_statement_bytes, commit=True)
        return acked

    def write_rows_txn(self, txn: Any, rows: tuple[Rows, Rows]) -> None:
        """Insert message and history rows (by table): one statement per table,
        sent together. A msgid already there must be the same message (this
        write running again after its commit's answer was lost)."""
        writes = row_inserts(rows, self.max_statement_bytes)
        self.write_and_commit_txn(txn, [w[1] for w in writes], writes)

    def write_and_commit_txn(
        self, txn: Any, statements: list[str], writes: list[tuple[str, str, Sequence[Any]]]
    ) -> None:
        """The last query of a flush: ``statements`` (``writes``' inserts
        first), then COMMIT. A msgid found stored for another message
        (``KEEP_SAME_MESSAGE``) fails the flush with a :class:`StoreError`
        that names it (looked up in the transaction, before adbapi rolls it back)."""
        try:
            execute_batch(txn, statements, self.max_statement_bytes, commit=True)
        except pymysql.IntegrityError as e:
            if e.args[0] != ER_BAD_NULL:
                raise
            for table, _, rows in writes:
                if table.startswith("messages_"):
                    _check_same_txn(txn, table, list(rows))
            raise

    def claim_keys_txn(self, txn: Any, keys: Rows) -> Owners:
        """Record de-dup rows (``keys``: by table) unless their key is there;
        returns every key's owner."""
        claims = key_inserts(keys, self.max_statement_bytes)
        done = execute_batch(txn, [c[1] for c in claims], self.max_statement_bytes)
        return self.owners_txn(txn, claims, done)

    def owners_txn(self, txn: Any, claims: list[Insert], done: list[Result]) -> Owners:
        """After the key inserts ``claims``: every key's owner. Where an insert
        added every row, ours; elsewhere some key was recorded before: read."""
        owners: Owners = {}
        recorded: dict[int, list[Key]] = {}
        for (n, _, rows), (added, _) in zip(claims, done, strict=True):
            if added == len(rows):
                owners.update({(r[0], r[1], r[2]): (r[3], r[4]) for r in rows})
            else:
                recorded.setdefault(n, []).extend((r[0], r[1], r[2]) for r in rows)
        if recorded:
            owners.update(self.find_keys_txn(txn, recorded))
        return owners

    def find_keys_txn(self, txn: Any, keys: dict[int, list[Key]]) -> Owners:
        """The owners of those of ``keys`` (by table) that are recorded."""
        owners: Owners = {}
        for n, table_keys in sorted(keys.items()):
            for statement, params in any_of(SELECT_KEYS, f"dedup_{n}", ONE_KEY, table_keys):
                txn.execute(statement, params)
                for uid, appcode, digest, msgid, logid in txn.fetchall():
                    owners[(uid, appcode, bytes(digest))] = (msgid, logid)
        return owners

    def delete_rows_txn(self, txn: Any, rows: tuple[Rows, Rows]) -> None:
        """Delete message and history rows (by table)."""
        messages, history = rows
        for n, table_rows in sorted(messages.items()):
            for chunk in chunks([r[0] for r in table_rows]):
                table = f"messages_{n}"
                txn.execute(sql(DELETE_MESSAGES.format(table=table, ids=marks(len(chunk)))),
                            chunk)  # fmt: skip
        for n, table_rows in sorted(history.items()):
            keys = [(r[0], r[1], r[3]) for r in table_rows]
            for statement, params in any_of(DELETE_HISTORY, f"history_{n}", ONE_HISTORY_ROW, keys):
                txn.execute(statement, params)

    def ack_reads(self, ops: list[AckOp]) -> list[tuple[int, str]]:
        """The locking reads of the pending rows ``ops`` name, as ``(table n,
        statement)``: each ACK reads its recipient's table; one read per table
        (per ``IN_CHUNK`` msgids), tables and msgids ascending, so that
        concurrent transactions lock rows in one order."""
        by_table: dict[int, set[int]] = {}
        for op in ops:
            by_table.setdefault(self.placement.place(op.uid)[1], set()).update(op.msgids)
        reads: list[tuple[int, str]] = []
        for n in sorted(by_table):
            statement = self.shards[n].statements.select_ackable_by_ids
            for chunk in chunks(sorted(by_table[n])):
                reads.append((n, statement.format(ids=sql_list(chunk))))
        return reads

    def acked(
        self, ops: list[AckOp], reads: list[tuple[int, str]], done: list[Result]
    ) -> tuple[list[list[AckedMessage]], list[str]]:
        """After :meth:`ack_reads`: each op's messages (:func:`assign_acks`),
        and the updates that mark them delivered (one per table)."""
        found: dict[int, tuple[int, int, AckedMessage]] = {}
        table_of: dict[int, int] = {}
        for (n, _), (_, rows) in zip(reads, done, strict=True):
            for row in rows:
                msgid, value = ackable(row)
                found[msgid] = value
                table_of[msgid] = n
        acked = assign_acks([(op.uid, op.appcode, op.msgids) for op in ops], found)
        delivered: dict[int, list[int]] = {}
        for messages in acked:
            for a in messages:
                delivered.setdefault(table_of[a.msgid], []).append(a.msgid)
        updates = []
        for n, ids in sorted(delivered.items()):
            mark_delivered = self.shards[n].statements.mark_delivered
            for chunk in chunks(sorted(ids)):
                updates.append(mark_delivered.format(ids=sql_list(chunk)))
        return acked, updates


def _check_same_txn(txn: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Raise :class:`StoreError` if a msgid of ``rows`` is stored in ``table``
    for another message."""
    ours = {r[0]: (r[0], r[1], r[3], r[4], r[8], r[9]) for r in rows}
    for chunk in chunks(list(ours)):
        txn.execute(sql(SELECT_STORED.format(table=table, ids=marks(len(chunk)))), chunk)
        for found in txn.fetchall():
            if tuple(found) != ours[found[0]]:
                raise StoreError(
                    f"msgid {found[0]} is already stored for another message"
                    " (are two nodes using one node id?)"
                )
