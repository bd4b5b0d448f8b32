# -*- test-case-name: tests.store.test_sqlite -*-
"""The message store's SQL, written once, and the transactions that run it.

Statements are written with ``?`` placeholders; :func:`convert_param_style` is
the one place they become what the driver wants (sqlite3 ``qmark``: as
written; pymysql ``format``/``pyformat``: ``%s``). The transaction functions
are plain synchronous ``def ..._txn(txn, ...)`` run by ``runInteraction``; the
SQLite store runs them on its file, a MySQL store can run them on each shard.

Tables (DDL is per backend, see ``sqlite.py``):

- ``messages``: one row per recipient; ``state`` 0 pending, 1 delivered.
- ``history``: one row per owner ``(owner_sys, owner_uid)`` of a message, with
  the other party's uid (``peer_uid``); content is read by joining ``messages``.
- ``dedup``: ``(uid, appcode, client_msg_id) -> (msgid, logid)``, with
  ``created_ms`` for :meth:`purge_dedup`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from daojia_msg.store.model import (
    AckedMessage,
    Kind,
    NewMessage,
    Page,
    StoredMessage,
    StoreOutcome,
)

PENDING = 0
DELIVERED = 1

# At most this many ``?`` in one ``IN (...)`` (old SQLite builds allow 999).
IN_CHUNK = 500

_COLUMNS = (
    "msgid",
    "from_uid",
    "from_appcode",
    "to_uid",
    "to_appcode",
    "msgtype",
    "kind",
    "msgcontent",
    "senddate",
    "logid",
)
"""``messages`` columns in :class:`StoredMessage` field order."""

MESSAGE_COLUMNS = ", ".join(_COLUMNS)
JOINED_MESSAGE_COLUMNS = ", ".join("m." + c for c in _COLUMNS)

INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}, state) VALUES ({', '.join('?' * len(_COLUMNS))}, 0)"
)
INSERT_HISTORY = "INSERT INTO history (owner_sys, owner_uid, msgid, peer_uid) VALUES (?, ?, ?, ?)"
INSERT_DEDUP = (
    "INSERT INTO dedup (uid, appcode, client_msg_id, msgid, logid, created_ms)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
SELECT_DEDUP = "SELECT msgid, logid FROM dedup WHERE uid = ? AND appcode = ? AND client_msg_id = ?"
DELETE_DEDUP = "DELETE FROM dedup WHERE created_ms < ?"
# "state = 0" is written out, not bound: SQLite only uses a partial index
# (WHERE state = 0) when the query says so literally.
SELECT_PENDING = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages"
    " WHERE to_uid = ? AND to_appcode = ? AND state = 0 AND msgid > ?"
    " ORDER BY msgid LIMIT ?"
)
COUNT_PENDING = "SELECT COUNT(*) FROM messages WHERE to_uid = ? AND to_appcode = ? AND state = 0"
SELECT_ACKABLE = (
    "SELECT msgid, msgtype, kind, senddate, logid FROM messages"
    " WHERE to_uid = ? AND to_appcode = ? AND state = 0 AND msgid IN ({ids})"
    " ORDER BY msgid"
)
MARK_DELIVERED = "UPDATE messages SET state = 1 WHERE state = 0 AND msgid IN ({ids})"
SELECT_MAX_MSGID = "SELECT MAX(msgid) FROM messages"
SELECT_HISTORY = (
    f"SELECT {JOINED_MESSAGE_COLUMNS} FROM history h JOIN messages m ON m.msgid = h.msgid"
    " WHERE h.owner_sys = ? AND h.owner_uid = ?{before}{peer}"
    " ORDER BY h.msgid DESC LIMIT ?"
)
HISTORY_BEFORE = " AND h.msgid < ?"
HISTORY_PEER = " AND h.peer_uid = ?"


@lru_cache(maxsize=256)
def convert_param_style(statement: str, paramstyle: str) -> str:
    """``statement`` (``?`` placeholders) in the driver's ``paramstyle``.

    The one conversion point: ``qmark`` as written; ``format``/``pyformat``
    (pymysql, MySQLdb) ``%s``, with literal ``%`` doubled.
    """
    if paramstyle == "qmark":
        return statement
    if paramstyle in ("format", "pyformat"):
        return statement.replace("%", "%%").replace("?", "%s")
    raise ValueError(f"unsupported DB-API paramstyle {paramstyle!r}")


def history_rows(new: NewMessage) -> list[tuple[str, int, int, int]]:
    """The ``history`` rows of a new message: ``(owner_sys, owner_uid, msgid, peer_uid)``.

    The sender owns one if it has a user system (not for S2C), the recipient
    always; one row when both are the same owner (a uid writing to its own
    other appcode).
    """
    m = new.message
    rows = [(new.to_system, m.to_uid, m.msgid, m.from_uid)]
    if new.from_system and (new.from_system, m.from_uid) != (new.to_system, m.to_uid):
        rows.insert(0, (new.from_system, m.from_uid, m.msgid, m.to_uid))
    return rows


def _message(row: Any) -> StoredMessage:
    msgid, from_uid, from_appcode, to_uid, to_appcode, msgtype, kind, content, sent, logid = row
    return StoredMessage(
        msgid=msgid,
        from_uid=from_uid,
        from_appcode=from_appcode,
        to_uid=to_uid,
        to_appcode=to_appcode,
        msgtype=msgtype,
        kind=Kind(kind),
        content=bytes(content),
        send_time_ms=sent,
        logid=logid,
    )


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]


class MessageTransactions:
    """The message store's transactions, for a driver of DB-API ``paramstyle``.

    Each ``*_txn`` method takes the adbapi transaction (a cursor) first and is
    run in the pool's thread; none of them touches the reactor.
    """

    def __init__(self, paramstyle: str) -> None:
        self.paramstyle = paramstyle

    def sql(self, statement: str) -> str:
        return convert_param_style(statement, self.paramstyle)

    def store_txn(self, txn: Any, messages: list[NewMessage], now_ms: int) -> list[StoreOutcome]:
        """Insert ``messages`` as pending, with their history rows and de-dup keys.

        A message whose de-dup key is already in ``dedup`` (written before,
        earlier in this flush, or earlier in this batch) is skipped and
        answered with the first send's ids.
        """
        outcomes: list[StoreOutcome] = []
        rows: list[tuple[Any, ...]] = []
        history: list[tuple[str, int, int, int]] = []
        keys: list[tuple[Any, ...]] = []
        firsts: dict[tuple[int, int, str], StoreOutcome] = {}
        for new in messages:
            m = new.message
            if new.client_msg_id:
                key = (m.from_uid, m.from_appcode, new.client_msg_id)
                first = firsts.get(key) or self._find_first(txn, key)
                if first is not None:
                    outcomes.append(StoreOutcome(first.msgid, first.logid, duplicate=True))
                    continue
                firsts[key] = StoreOutcome(m.msgid, m.logid)
                keys.append((*key, m.msgid, m.logid, now_ms))
            rows.append(
                (m.msgid, m.from_uid, m.from_appcode, m.to_uid, m.to_appcode, m.msgtype,
                 int(m.kind), m.content, m.send_time_ms, m.logid)
            )  # fmt: skip
            history.extend(history_rows(new))
            outcomes.append(StoreOutcome(m.msgid, m.logid))
        if rows:
            txn.executemany(self.sql(INSERT_MESSAGE), rows)
            txn.executemany(self.sql(INSERT_HISTORY), history)
        if keys:
            txn.executemany(self.sql(INSERT_DEDUP), keys)
        return outcomes

    def _find_first(self, txn: Any, key: tuple[int, int, str]) -> StoreOutcome | None:
        txn.execute(self.sql(SELECT_DEDUP), key)
        row = txn.fetchone()
        return None if row is None else StoreOutcome(row[0], row[1])

    def ack_txn(self, txn: Any, uid: int, appcode: int, msgids: list[int]) -> list[AckedMessage]:
        """Mark the pending ones of ``msgids`` addressed to ``(uid, appcode)``
        delivered; returns those, ascending by msgid."""
        acked: list[AckedMessage] = []
        for chunk in _chunks(sorted(set(msgids))):
            ids = ", ".join("?" * len(chunk))
            txn.execute(self.sql(SELECT_ACKABLE.format(ids=ids)), (uid, appcode, *chunk))
            found = [
                AckedMessage(
                    msgid=r[0], msgtype=r[1], kind=Kind(r[2]), send_time_ms=r[3], logid=r[4]
                )
                for r in txn.fetchall()
            ]
            if found:
                ids = ", ".join("?" * len(found))
                txn.execute(self.sql(MARK_DELIVERED.format(ids=ids)), [a.msgid for a in found])
                acked.extend(found)
        return acked

    def pull_txn(self, txn: Any, uid: int, appcode: int, after_msgid: int, limit: int) -> Page:
        """Pending messages of ``(uid, appcode)`` after ``after_msgid``, ascending."""
        limit = max(limit, 0)
        txn.execute(self.sql(SELECT_PENDING), (uid, appcode, after_msgid, limit + 1))
        rows = txn.fetchall()
        return Page([_message(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def count_pending_txn(self, txn: Any, uid: int, appcode: int) -> int:
        txn.execute(self.sql(COUNT_PENDING), (uid, appcode))
        return int(txn.fetchone()[0])

    def history_txn(
        self, txn: Any, usersystem: str, uid: int, before_msgid: int, limit: int, peer_uid: int
    ) -> Page:
        """Messages ``(usersystem, uid)`` sent or received, descending by msgid."""
        limit = max(limit, 0)
        params: list[Any] = [usersystem, uid]
        if before_msgid:
            params.append(before_msgid)
        if peer_uid:
            params.append(peer_uid)
        params.append(limit + 1)
        statement = SELECT_HISTORY.format(
            before=HISTORY_BEFORE if before_msgid else "", peer=HISTORY_PEER if peer_uid else ""
        )
        txn.execute(self.sql(statement), params)
        rows = txn.fetchall()
        return Page([_message(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def max_msgid_txn(self, txn: Any) -> int:
        txn.execute(self.sql(SELECT_MAX_MSGID))
        row = txn.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def purge_dedup_txn(self, txn: Any, before_ms: int) -> int:
        txn.execute(self.sql(DELETE_DEDUP), (before_ms,))
        return int(txn.rowcount)
