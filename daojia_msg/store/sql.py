# -*- test-case-name: tests.store.test_sqlite -*-
"""The message stores' SQL, written once, and the transactions that run it.

Statements are written with ``?`` placeholders; :func:`convert_param_style` is
the one place they become what the driver wants (sqlite3 ``qmark``: as
written; pymysql ``format``/``pyformat``: ``%s``). The transaction functions
are plain synchronous ``def ..._txn(txn, ...)`` run by ``runInteraction``.

:class:`Statements` spells them for one set of tables: the SQLite file's
(``messages``, ``history``, ``dedup``) or one MySQL shard's (``messages_3``,
...). DDL is per backend (``sqlite.py``, ``mysql/schema.py``).

- ``messages``: one row per recipient; ``state`` 0 pending, 1 delivered.
- ``history``: one row per owner ``(owner_sys, owner_uid)`` of a message, with
  the other party's uid (``peer_uid``) and a full copy of the message
  (``history_has_content``: the message row may live in another database
  (MySQL), and leaves ``messages`` once delivered or expired). A SQLite file
  of schema 1 read content by joining ``messages`` (``history_has_content=False``).
- ``dedup``: ``(uid, appcode, client_msg_id) -> (msgid, logid)``, with
  ``created_ms`` for :meth:`purge_dedup`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from daojia_msg.core.model import (
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

MESSAGE_COLUMN_NAMES: tuple[str, ...] = _COLUMNS
MESSAGE_COLUMNS = ", ".join(_COLUMNS)
JOINED_MESSAGE_COLUMNS = ", ".join("m." + c for c in _COLUMNS)


def marks(n: int) -> str:
    """``?, ?, ...``: ``n`` placeholders."""
    return ", ".join("?" * n)


@dataclass(frozen=True, slots=True)
class Tables:
    """The names of one set of message tables."""

    messages: str = "messages"
    history: str = "history"
    dedup: str = "dedup"

    @classmethod
    def shard(cls, n: int) -> Tables:
        """Shard table ``n`` of a sharded store: ``messages_<n>``, ``history_<n>``, ``dedup_<n>``."""
        return cls(f"messages_{n}", f"history_{n}", f"dedup_{n}")


class Statements:
    """The statements on one set of :class:`Tables`, with ``?`` placeholders.

    ``{ids}`` (a list of ``?``), ``{before}`` and ``{peer}`` are filled in per
    call. :param history_has_content: history rows carry the message columns
    (no join). :param locking_reads: ACK reads the rows it changes with
    ``FOR UPDATE`` (MySQL: concurrent ACKs of one message from several nodes
    must not both report it changed; SQLite writes are serialised anyway).
    """

    def __init__(
        self,
        tables: Tables = Tables(),
        *,
        history_has_content: bool = False,
        locking_reads: bool = False,
    ) -> None:
        m, h, d = tables.messages, tables.history, tables.dedup
        self.tables = tables
        self.insert_message = (
            f"INSERT INTO {m} ({MESSAGE_COLUMNS}, state) VALUES ({marks(len(_COLUMNS))}, 0)"
        )
        self.history_has_content = history_has_content
        if history_has_content:  # (owner_sys, owner_uid, peer_uid) + the message row
            self.insert_history = (
                f"INSERT INTO {h} (owner_sys, owner_uid, peer_uid, {MESSAGE_COLUMNS})"
                f" VALUES ({marks(3 + len(_COLUMNS))})"
            )
        else:
            self.insert_history = (
                f"INSERT INTO {h} (owner_sys, owner_uid, msgid, peer_uid) VALUES (?, ?, ?, ?)"
            )
        self.insert_dedup = (
            f"INSERT INTO {d} (uid, appcode, client_msg_id, msgid, logid, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        self.select_dedup = (
            f"SELECT msgid, logid FROM {d} WHERE uid = ? AND appcode = ? AND client_msg_id = ?"
        )
        self.delete_dedup = f"DELETE FROM {d} WHERE created_ms < ?"
        # "state = 0" is written out, not bound: SQLite only uses a partial index
        # (WHERE state = 0) when the query says so literally.
        self.select_pending = (
            f"SELECT {MESSAGE_COLUMNS} FROM {m}"
            " WHERE to_uid = ? AND to_appcode = ? AND state = 0 AND msgid > ?"
            " ORDER BY msgid LIMIT ?"
        )
        # "msgid >= ?": the oldest msgid not expired (lifecycle.Retention).
        self.count_pending = (
            f"SELECT COUNT(*) FROM {m}"
            " WHERE to_uid = ? AND to_appcode = ? AND state = 0 AND msgid >= ?"
        )
        self.select_one_pending = (
            f"SELECT {MESSAGE_COLUMNS} FROM {m}"
            " WHERE msgid = ? AND to_uid = ? AND state = 0 AND msgid >= ?"
        )
        self.select_ackable = (
            f"SELECT msgid, msgtype, kind, senddate, logid FROM {m}"
            " WHERE to_uid = ? AND to_appcode = ? AND state = 0 AND msgid IN ({ids})"
            " ORDER BY msgid" + (" FOR UPDATE" if locking_reads else "")
        )
        self.select_ackable_by_ids = (
            f"SELECT msgid, to_uid, to_appcode, msgtype, kind, senddate, logid FROM {m}"
            " WHERE state = 0 AND msgid IN ({ids})"
            " ORDER BY msgid" + (" FOR UPDATE" if locking_reads else "")
        )
        self.mark_delivered = f"UPDATE {m} SET state = 1 WHERE state = 0 AND msgid IN ({{ids}})"
        self.select_max_msgid = f"SELECT MAX(msgid) FROM {m}"
        if history_has_content:
            columns = ", ".join("h." + c for c in _COLUMNS)
            source = f"{h} h"
        else:
            columns, source = JOINED_MESSAGE_COLUMNS, f"{h} h JOIN {m} m ON m.msgid = h.msgid"
        self.select_history = (
            f"SELECT {columns} FROM {source}"
            " WHERE h.owner_sys = ? AND h.owner_uid = ? AND h.msgid >= ?{before}{peer}"
            " ORDER BY h.msgid DESC LIMIT ?"
        )


HISTORY_BEFORE = " AND h.msgid < ?"
HISTORY_PEER = " AND h.peer_uid = ?"

_UNSHARDED = Statements(history_has_content=True)
INSERT_MESSAGE = _UNSHARDED.insert_message
INSERT_HISTORY = _UNSHARDED.insert_history
INSERT_DEDUP = _UNSHARDED.insert_dedup
SELECT_DEDUP = _UNSHARDED.select_dedup
DELETE_DEDUP = _UNSHARDED.delete_dedup
SELECT_PENDING = _UNSHARDED.select_pending
COUNT_PENDING = _UNSHARDED.count_pending
SELECT_ACKABLE = _UNSHARDED.select_ackable
MARK_DELIVERED = _UNSHARDED.mark_delivered
SELECT_MAX_MSGID = _UNSHARDED.select_max_msgid
SELECT_HISTORY = _UNSHARDED.select_history


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


def message_row(m: StoredMessage) -> tuple[Any, ...]:
    """The values of :data:`MESSAGE_COLUMN_NAMES` for ``m``."""
    return (m.msgid, m.from_uid, m.from_appcode, m.to_uid, m.to_appcode, m.msgtype,
            int(m.kind), m.content, m.send_time_ms, m.logid)  # fmt: skip


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


def chunks(ids: list[Any]) -> list[list[Any]]:
    """``ids`` in runs of at most :data:`IN_CHUNK` (one ``IN (...)`` each)."""
    return [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]


def estimated_size(row: Sequence[Any]) -> int:
    """A generous estimate of ``row``'s length in a statement's text (the
    driver may write bytes as hex and escape strings)."""
    size = 4
    for value in row:
        if isinstance(value, bytes | bytearray):
            size += 2 * len(value) + 12
        elif isinstance(value, str):
            size += 4 * len(value) + 4
        else:
            size += 24
    return size


def fit(rows: Sequence[Sequence[Any]], max_bytes: int) -> Iterator[Sequence[Sequence[Any]]]:
    """``rows`` in consecutive runs of at most ``max_bytes`` (estimated), each
    at least one row."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        n = estimated_size(row)
        if i > start and size + n > max_bytes:
            yield rows[start:i]
            start, size = i, 0
        size += n
    if start < len(rows):
        yield rows[start:]


def insert_many(
    txn: Any,
    paramstyle: str,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    max_bytes: int,
    suffix: str = "",
) -> int:
    """Insert ``rows`` with multi-row ``INSERT ... VALUES (...), (...)``: one
    statement, or as few as keep each under ``max_bytes``. ``suffix`` follows
    the values (e.g. MySQL's ``ON DUPLICATE KEY UPDATE ...``). Returns the
    affected row count the driver reports."""
    head = convert_param_style(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ", paramstyle)
    one = convert_param_style(f"({marks(len(columns))})", paramstyle)
    tail = convert_param_style(suffix, paramstyle)
    affected = 0
    for chunk in fit(rows, max_bytes):
        txn.execute(head + ", ".join([one] * len(chunk)) + tail, [v for r in chunk for v in r])
        affected += int(txn.rowcount)
    return affected


def render_inserts(
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    render: Callable[[Sequence[Any]], str],
    *,
    max_bytes: int,
    suffix: str = "",
) -> list[tuple[str, Sequence[Sequence[Any]]]]:
    """:func:`insert_many`'s statements as text, each with the rows it
    inserts: ``render`` writes a row's ``(...)`` with every value a literal
    (no placeholders, nothing for the driver to escape), so each statement is
    sized exactly, at most ``max_bytes`` unless one row alone is larger."""
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    texts = [render(row) for row in rows]
    statements: list[tuple[str, Sequence[Sequence[Any]]]] = []
    start, size = 0, len(head) + len(suffix)
    for i, text in enumerate(texts):
        if i > start and size + len(text) + 2 > max_bytes:
            statements.append((head + ", ".join(texts[start:i]) + suffix, rows[start:i]))
            start, size = i, len(head) + len(suffix)
        size += len(text) + 2
    if start < len(texts):
        statements.append((head + ", ".join(texts[start:]) + suffix, rows[start:]))
    return statements


def assign_acks(
    requests: Sequence[tuple[int, int, Sequence[int]]],
    found: dict[int, tuple[int, int, AckedMessage]],
) -> list[list[AckedMessage]]:
    """Several ACKs at once: for each request ``(uid, appcode, msgids)``, the
    messages of ``found`` (pending rows read for them: ``msgid -> (to_uid,
    to_appcode, message)``) among its ``msgids`` that are addressed to
    ``(uid, appcode)``, ascending by msgid. A msgid that several requests name
    goes to the first of them (and is taken out of ``found``)."""
    results: list[list[AckedMessage]] = []
    for uid, appcode, msgids in requests:
        acked = []
        for msgid in sorted(set(msgids)):
            row = found.get(msgid)
            if row is not None and row[0] == uid and row[1] == appcode:
                acked.append(row[2])
                del found[msgid]
        results.append(acked)
    return results


def ackable(row: Sequence[Any]) -> tuple[int, tuple[int, int, AckedMessage]]:
    """A row of :attr:`Statements.select_ackable_by_ids` as ``found`` of
    :func:`assign_acks` wants it."""
    msgid, to_uid, to_appcode, msgtype, kind, sent, logid = row
    return msgid, (to_uid, to_appcode, AckedMessage(msgid, msgtype, Kind(kind), sent, logid))


class MessageTransactions:
    """The message store's transactions on one set of tables (``statements``),
    for a driver of DB-API ``paramstyle``.

    Each ``*_txn`` method takes the adbapi transaction (a cursor) first and is
    run in the pool's thread; none of them touches the reactor.
    """

    def __init__(self, paramstyle: str, statements: Statements = _UNSHARDED) -> None:
        self.paramstyle = paramstyle
        self.statements = statements

    def sql(self, statement: str) -> str:
        return convert_param_style(statement, self.paramstyle)

    def store_txn(self, txn: Any, messages: list[NewMessage], now_ms: int) -> list[StoreOutcome]:
        """Insert ``messages`` as pending, with their history rows and de-dup keys
        (one row per statement: the embedded store's way).

        A message whose de-dup key is already in ``dedup`` (written before,
        earlier in this flush, or earlier in this batch) is skipped and
        answered with the first send's ids.
        """
        s = self.statements
        outcomes: list[StoreOutcome] = []
        rows: list[tuple[Any, ...]] = []
        history: list[tuple[Any, ...]] = []
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
            row = message_row(m)
            rows.append(row)
            if s.history_has_content:
                history.extend((o_sys, o_uid, peer, *row)
                               for o_sys, o_uid, _, peer in history_rows(new))
            else:
                history.extend(history_rows(new))
            outcomes.append(StoreOutcome(m.msgid, m.logid))
        if rows:
            txn.executemany(self.sql(s.insert_message), rows)
            txn.executemany(self.sql(s.insert_history), history)
        if keys:
            txn.executemany(self.sql(s.insert_dedup), keys)
        return outcomes

    def _find_first(self, txn: Any, key: tuple[int, int, str]) -> StoreOutcome | None:
        txn.execute(self.sql(self.statements.select_dedup), key)
        row = txn.fetchone()
        return None if row is None else StoreOutcome(row[0], row[1])

    def ack_txn(self, txn: Any, uid: int, appcode: int, msgids: list[int]) -> list[AckedMessage]:
        """Mark the pending ones of ``msgids`` addressed to ``(uid, appcode)``
        delivered; returns those, ascending by msgid."""
        s = self.statements
        acked: list[AckedMessage] = []
        for chunk in chunks(sorted(set(msgids))):
            ids = marks(len(chunk))
            txn.execute(self.sql(s.select_ackable.format(ids=ids)), (uid, appcode, *chunk))
            found = [
                AckedMessage(
                    msgid=r[0], msgtype=r[1], kind=Kind(r[2]), send_time_ms=r[3], logid=r[4]
                )
                for r in txn.fetchall()
            ]
            if found:
                ids = marks(len(found))
                txn.execute(self.sql(s.mark_delivered.format(ids=ids)), [a.msgid for a in found])
                acked.extend(found)
        return acked

    def pull_txn(self, txn: Any, uid: int, appcode: int, after_msgid: int, limit: int) -> Page:
        """Pending messages of ``(uid, appcode)`` after ``after_msgid``, ascending."""
        limit = max(limit, 0)
        txn.execute(
            self.sql(self.statements.select_pending), (uid, appcode, after_msgid, limit + 1)
        )
        rows = txn.fetchall()
        return Page([_message(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def pending_message_txn(self, txn: Any, to_uid: int, msgid: int,
                            floor: int = 0) -> StoredMessage | None:
        """Message ``msgid`` to ``to_uid`` if it is still pending (and not
        older than ``floor``: expired)."""
        txn.execute(self.sql(self.statements.select_one_pending), (msgid, to_uid, floor))
        row = txn.fetchone()
        return None if row is None else _message(row)

    def count_pending_txn(self, txn: Any, uid: int, appcode: int, floor: int = 0) -> int:
        txn.execute(self.sql(self.statements.count_pending), (uid, appcode, floor))
        return int(txn.fetchone()[0])

    def history_txn(
        self, txn: Any, usersystem: str, uid: int, before_msgid: int, limit: int, peer_uid: int,
        floor: int = 0,
    ) -> Page:
        """Messages ``(usersystem, uid)`` sent or received, descending by msgid,
        none older than ``floor`` (past the retention)."""
        limit = max(limit, 0)
        params: list[Any] = [usersystem, uid, floor]
        if before_msgid:
            params.append(before_msgid)
        if peer_uid:
            params.append(peer_uid)
        params.append(limit + 1)
        statement = self.statements.select_history.format(
            before=HISTORY_BEFORE if before_msgid else "", peer=HISTORY_PEER if peer_uid else ""
        )
        txn.execute(self.sql(statement), params)
        rows = txn.fetchall()
        return Page([_message(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def max_msgid_txn(self, txn: Any) -> int:
        txn.execute(self.sql(self.statements.select_max_msgid))
        row = txn.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def purge_dedup_txn(self, txn: Any, before_ms: int, limit: int = 0) -> int:
        """Drop the de-dup keys created before ``before_ms``; at most ``limit``
        of them (0: all; MySQL's ``DELETE ... LIMIT``, not SQLite's)."""
        statement, params = self.statements.delete_dedup, [before_ms]
        if limit:
            statement, params = statement + " LIMIT ?", [before_ms, limit]
        txn.execute(self.sql(statement), params)
        return int(txn.rowcount)
