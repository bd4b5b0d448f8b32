# -*- test-case-name: tests.store.mysql.test_render -*-
"""The MySQL store's SQL text, and statements sent several to a query.

A flush writes each table with one multi-row ``INSERT`` (split only to stay
under the server's ``max_allowed_packet``), never a statement per message. Its
values are written as literals (:func:`sql_literal`: hex, nothing to escape),
and the statements of a step go to the server together (:func:`execute_batch`,
one query with ``CLIENT.MULTI_STATEMENTS``). The other statements, with ``?``
placeholders, go through :func:`sql`.

Every insert leaves a row that is there alone (:data:`KEEP_EXISTING`,
:data:`KEEP_SAME_MESSAGE`): a write that runs again after its commit's answer
was lost finds its own rows and answers as the first run did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pymysql

from daojia_msg.core.errors import StoreError
from daojia_msg.store.mysql.placement import Rows
from daojia_msg.store.mysqldriver import mark_committed
from daojia_msg.store.sql import MESSAGE_COLUMN_NAMES, convert_param_style, render_inserts

PARAMSTYLE = pymysql.paramstyle

HISTORY_COLUMNS = ("owner_sys", "owner_uid", "peer_uid", *MESSAGE_COLUMN_NAMES)
DEDUP_COLUMNS = ("uid", "appcode", "client_msg_sha256", "msgid", "logid", "created_ms")
# Insert, or leave the row that is there alone (it then counts 0 affected rows).
KEEP_EXISTING = " ON DUPLICATE KEY UPDATE msgid = msgid"
#: A message row whose msgid is there already is left alone if it is the same
#: message (the flush running again after its commit's answer was lost); if it
#: is another (two nodes with one node id), msgid is set to NULL, which strict
#: mode refuses (1048): the statement fails, the query stops before its COMMIT.
KEEP_SAME_MESSAGE = (
    " ON DUPLICATE KEY UPDATE msgid = IF(from_uid <=> VALUES(from_uid)"
    " AND to_uid <=> VALUES(to_uid) AND to_appcode <=> VALUES(to_appcode)"
    " AND senddate <=> VALUES(senddate) AND logid <=> VALUES(logid), msgid, NULL)"
)
SELECT_KEYS = "SELECT uid, appcode, client_msg_sha256, msgid, logid FROM {table} WHERE {where}"
ONE_KEY = "(uid = ? AND appcode = ? AND client_msg_sha256 = ?)"
SELECT_STORED = (
    "SELECT msgid, from_uid, to_uid, to_appcode, senddate, logid FROM {table}"
    " WHERE msgid IN ({ids})"
)
DELETE_MESSAGES = "DELETE FROM {table} WHERE msgid IN ({ids})"
DELETE_HISTORY = "DELETE FROM {table} WHERE {where}"
ONE_HISTORY_ROW = "(owner_sys = ? AND owner_uid = ? AND msgid = ?)"
KEYS_PER_SELECT = 200
"""Keys (``OR``-ed conditions) per statement of :func:`any_of`."""

STATEMENT_SEPARATOR = ";\n"

Result = tuple[int, list[tuple[Any, ...]]]
"""A statement's affected (or found) row count and its rows (none but for a SELECT)."""

Insert = tuple[int, str, Sequence[Any]]
"""An insert into shard table n: ``(n, statement, the rows it inserts)``."""


def sql(statement: str) -> str:
    """``statement`` (``?`` placeholders) in pymysql's parameter style."""
    return convert_param_style(statement, PARAMSTYLE)


def sql_literal(value: Any) -> str:
    """``value`` as a MySQL literal, with nothing to escape: an integer in
    decimal, bytes as a hex literal (a binary string), text as a ``utf8mb4``
    hex literal, ``None`` as NULL. Anything else is refused."""
    if type(value) is int:
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))  # an IntEnum: its number, not its name
    if isinstance(value, bytes | bytearray):
        return "X'" + value.hex() + "'"
    if isinstance(value, str):
        return "_utf8mb4 X'" + value.encode("utf-8").hex() + "'"
    if value is None:
        return "NULL"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def sql_row(row: Iterable[Any]) -> str:
    """``(v1, v2, ...)``: a row of :func:`sql_literal` (how multi-row inserts
    are written: cheaper than pymysql's escaping of each value)."""
    return "(" + ", ".join(map(sql_literal, row)) + ")"


def sql_list(values: Iterable[Any]) -> str:
    """``v1, v2, ...``: :func:`sql_literal` of each, for an ``IN ({ids})``."""
    return ", ".join(map(sql_literal, values))


def flush_renderers() -> tuple[Callable[[Sequence[Any]], str], Callable[[Sequence[Any]], str]]:
    """:func:`sql_row` for the message rows of one flush and for their history
    rows (``owner_sys, owner_uid, peer_uid`` then the message row), rendering
    each message's values once: a message has one pending row and up to two
    history rows that repeat it."""
    texts: dict[tuple[Any, ...], str] = {}  # a message row -> its text

    def message(row: Sequence[Any]) -> str:
        key = row if type(row) is tuple else tuple(row)
        text = texts.get(key)
        if text is None:
            text = texts[key] = sql_row(key)
        return text

    def history(row: Sequence[Any]) -> str:
        owner_sys, owner_uid, peer_uid = row[0], row[1], row[2]
        if type(owner_sys) is not bytes or type(owner_uid) is not int or type(peer_uid) is not int:
            return sql_row(row)
        return (f"(X'{owner_sys.hex()}', {owner_uid:d}, {peer_uid:d}, "
                + message(row[3:])[1:])

    return message, history


def row_inserts(rows: tuple[Rows, Rows], max_bytes: int) -> list[tuple[str, str, Sequence[Any]]]:
    """The inserts of message and history rows (by table), as ``(table,
    statement, rows)``; a msgid already there is left alone."""
    messages, history = rows
    render_message, render_history = flush_renderers()
    writes: list[tuple[str, str, Sequence[Any]]] = []
    for kind, columns, tables, render in (
        ("messages", MESSAGE_COLUMN_NAMES, messages, render_message),
        ("history", HISTORY_COLUMNS, history, render_history),
    ):
        for n, table_rows in sorted(tables.items()):
            table = f"{kind}_{n}"
            writes.extend(
                (table, text, chunk)
                for text, chunk in render_inserts(
                    table, columns, table_rows, render,
                    max_bytes=max_bytes,
                    suffix=KEEP_SAME_MESSAGE if kind == "messages" else KEEP_EXISTING,
                )
            )  # fmt: skip
    return writes


def key_inserts(keys: Rows, max_bytes: int) -> list[Insert]:
    """The inserts of de-dup rows (by table) that leave a recorded key alone.
    Sorted, so that concurrent transactions (of this node or others) lock keys
    in one order."""
    claims: list[Insert] = []
    for n, rows in sorted(keys.items()):
        claims.extend(
            (n, text, chunk)
            for text, chunk in render_inserts(
                f"dedup_{n}", DEDUP_COLUMNS, sorted(rows), sql_row,
                max_bytes=max_bytes, suffix=KEEP_EXISTING,
            )
        )  # fmt: skip
    return claims


def any_of(
    template: str, table: str, one: str, keys: Sequence[Sequence[Any]]
) -> Iterator[tuple[str, list[Any]]]:
    """``template`` on ``table`` with ``{where}`` the condition ``one`` for
    each of ``keys``, ``OR``-ed, :data:`KEYS_PER_SELECT` keys per statement:
    each statement and its parameters."""
    for start in range(0, len(keys), KEYS_PER_SELECT):
        chunk = keys[start : start + KEYS_PER_SELECT]
        where = " OR ".join([one] * len(chunk))
        yield sql(template.format(table=table, where=where)), [v for key in chunk for v in key]


def execute_batch(
    txn: Any, statements: Sequence[str], max_bytes: int, commit: bool = False
) -> list[Result]:
    """Run ``statements`` (complete text: literal values, no placeholders) in
    order, in as few round trips as packets of ``max_bytes`` allow (one
    multi-statement query each, ``CLIENT.MULTI_STATEMENTS``): a flush waits for
    the server twice, not once per table it writes, nor once more to commit.

    Returns each statement's :data:`Result`. The first statement that fails
    raises its error; the server runs none after it. With ``commit``, the
    transaction ends with them: a ``COMMIT`` goes in the last query (none is
    run if a statement fails), and the interaction must send nothing after
    (:mod:`daojia_msg.store.mysqldriver` then skips adbapi's commit)."""
    if commit:
        statements = [*statements, "COMMIT"]
    results: list[Result] = []
    start = 0
    while start < len(statements):
        end, size = start + 1, len(statements[start])
        while end < len(statements) and size + len(statements[end]) + 2 <= max_bytes:
            size += len(statements[end]) + 2
            end += 1
        txn.execute(STATEMENT_SEPARATOR.join(statements[start:end]))
        for k in range(start, end):
            if k > start and not txn.nextset():
                raise StoreError(f"{end - start} statements sent, {k - start} answered")
            rows = list(txn.fetchall()) if txn.description else []
            results.append((int(txn.rowcount), rows))
        start = end
    if commit:
        mark_committed(txn)
        results.pop()
    return results
