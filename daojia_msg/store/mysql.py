# -*- test-case-name: tests.store.test_mysql -*-
"""The cluster message store: MySQL or MariaDB, through pymysql on
``twisted.enterprise.adbapi``, one ``ConnectionPool`` per database.

Placement
    Each database (``mysql.url`` first, then ``mysql.databases``, in that
    order) holds ``shards`` tables of each kind. A uid's *slot* says where its
    rows go::

        slot = uid % (shards * number_of_databases)
        database = slot // shards            table n = slot % shards

    - a message row (``messages_<n>``, pending until ACKed) goes to its
      recipient's slot, so PULL and the pending count read one table;
    - a history row (``history_<n>``) goes to its owner's slot, so a user's
      list is read from one table. It is a full copy of the message, content
      included: the message row may live in another database;
    - a de-dup key (``dedup_<n>``) goes to its sender's slot: one sender key
      always maps to one table, so that table's primary key makes it unique
      cluster-wide. The key is ``(uid, appcode, SHA-256 of client_msg_id)``: a
      fixed 44 bytes whatever ``limits.max_id_len`` allows, compared as bytes.

    Each database's ``schema_version`` row records the schema version,
    ``shards`` and the database's place in the list. A start with another
    ``shards`` or another list of databases is refused (rows would then be
    looked for in the wrong tables; moving them is a data migration).

Writes
    ``store`` and ``ack`` go through a :class:`GroupCommitter` with several
    flushes in flight (``concurrency``, default :data:`FLUSHES_IN_FLIGHT`, at
    most ``pool_max``), so that one flush's round trips and commit (the
    InnoDB log fsync) overlap another's. Writes queued while a lane's flush is
    in flight go together in its next one. A write's lane is chosen by uid
    (the sender's for a store, the recipient's for an ACK: the uid whose
    de-dup keys or pending rows it locks), so one node's flushes never wait
    for each other's row locks on a key or a pending message, and a sender's
    messages commit in the order sent; other nodes' flushes may, which the
    keys and locking reads below handle.

    A flush merges all its stores and all its ACKs, whatever order they came
    in (an ACK names a message that was pushed, so stored by an earlier
    flush). Each table is written with one multi-row ``INSERT`` (split only
    to stay under the server's ``max_allowed_packet``), never a statement per
    message, and the ACKs of a flush are one locking read and one update per
    table, never statements per ACK. Values are written as literals
    (:func:`sql_literal`: hex, nothing to escape) and the statements of a
    step go to the server together (:func:`execute_batch`, one query with
    ``CLIENT.MULTI_STATEMENTS``). With one database a flush is one
    transaction of two queries (:meth:`MySQLMessageStore._write_txn`) and a
    commit, however many shard tables it touches. With several, see
    :meth:`MySQLMessageStore._store_across` for the write order and what a
    crash between databases can leave behind.

Dead connections and retries
    A connection the server closed (MySQL errors 2006, 2013, 1927 "killed",
    4031, pymysql's "(0, '')" for a closed one) makes an interaction run
    again, once, on a newly opened connection; a deadlock (1213) or a row-lock
    wait timeout (1205), which roll the transaction back, make it run again,
    once, on a pooled connection. Anything else, or a second failure, is
    :class:`StoreUnavailable`. Every interaction of this
    store may run twice: reads; ACK (an update of ``pending`` rows only; run
    again after a commit whose answer was lost it reports fewer rows changed,
    which only undercounts the ``acked`` statistic); de-dup purge; and the
    writes of new messages, because every insert is
    ``INSERT ... ON DUPLICATE KEY UPDATE msgid = msgid``: a second run finds its
    own rows (same msgid) and answers as the first run did. A msgid found on
    *another* message is refused (:class:`StoreError`), so a broken id
    generator is not silently hidden. Connect, read and write timeouts come
    from the config; a read timeout is reported by pymysql as error 2013, so a
    stuck server costs at most twice ``read_timeout_s`` (plus a connect).
    Row-lock waits are capped at half the read timeout (``innodb_lock_wait_timeout``):
    a long wait is a clean error 1205 (run again once), not a dropped connection.

Passwords are never logged: databases are named ``user@host:port/database``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import pymysql
from pymysql.constants import CLIENT
from pymysql.constants.ER import BAD_NULL_ERROR as ER_BAD_NULL
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.config import MySQLConfig, MySQLURL, parse_mysql_url
from daojia_msg.core.errors import StoreError, StoreUnavailable
from daojia_msg.core.model import AckedMessage, NewMessage, Page, StoredMessage, StoreOutcome
from daojia_msg.logic.interfaces import IMessageStore
from daojia_msg.store.batching import GroupCommitter
from daojia_msg.store.dbpool import PoolRunner
from daojia_msg.store.mysqldriver import mark_committed
from daojia_msg.store.reads import ReadBatcher
from daojia_msg.store.sql import (
    MESSAGE_COLUMN_NAMES,
    MessageTransactions,
    Statements,
    Tables,
    ackable,
    assign_acks,
    chunks,
    convert_param_style,
    history_rows,
    marks,
    message_row,
    render_inserts,
)

T = TypeVar("T")

_BIGINT = "BIGINT UNSIGNED NOT NULL"
_UINT = "INT UNSIGNED NOT NULL"
_MESSAGE_DDL = f"""
    from_uid {_BIGINT},
    from_appcode {_UINT},
    to_uid {_BIGINT},
    to_appcode {_UINT},
    msgtype {_UINT},
    kind TINYINT UNSIGNED NOT NULL,
    senddate {_BIGINT},
    logid VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    msgcontent MEDIUMBLOB NOT NULL"""
_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"

# Each entry migrates the schema from version i to i + 1; append, never edit.
# Statements with "{n}" run once per shard table. MySQL commits DDL at once,
# so every statement must be safe to run again (a start that died half-way
# through a migration runs all of it again).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        f"""CREATE TABLE IF NOT EXISTS messages_{{n}} (
            msgid {_BIGINT},{_MESSAGE_DDL},
            state TINYINT UNSIGNED NOT NULL DEFAULT 0,
            PRIMARY KEY (msgid),
            KEY pending (to_uid, to_appcode, state, msgid)
        ) {_TABLE_OPTIONS}""",
        f"""CREATE TABLE IF NOT EXISTS history_{{n}} (
            owner_sys VARBINARY(255) NOT NULL,
            owner_uid {_BIGINT},
            msgid {_BIGINT},
            peer_uid {_BIGINT},{_MESSAGE_DDL},
            PRIMARY KEY (owner_sys, owner_uid, msgid),
            KEY peer (owner_sys, owner_uid, peer_uid, msgid)
        ) {_TABLE_OPTIONS}""",
        f"""CREATE TABLE IF NOT EXISTS dedup_{{n}} (
            uid {_BIGINT},
            appcode {_UINT},
            client_msg_sha256 BINARY(32) NOT NULL,
            msgid {_BIGINT},
            logid VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            created_ms {_BIGINT},
            PRIMARY KEY (uid, appcode, client_msg_sha256),
            KEY created (created_ms)
        ) {_TABLE_OPTIONS}""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

CREATE_SCHEMA_VERSION = f"""CREATE TABLE IF NOT EXISTS schema_version (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    version {_UINT},
    shards {_UINT},
    db_index {_UINT},
    db_count {_UINT}
) {_TABLE_OPTIONS}"""
SELECT_SCHEMA = "SELECT version, shards, db_index, db_count FROM schema_version WHERE id = 1"
INSERT_SCHEMA = (
    "INSERT INTO schema_version (id, version, shards, db_index, db_count) VALUES (1, 0, ?, ?, ?)"
)
UPDATE_SCHEMA = "UPDATE schema_version SET version = ? WHERE id = 1"
# Named locks are server-wide: one per database, under 64 characters.
SCHEMA_LOCK = "CONCAT('msgplatform-schema-', MD5(DATABASE()))"
SCHEMA_LOCK_WAIT_S = 60.0

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
#: The DB-API module of the pools: pymysql, committing once per transaction.
DRIVER = "daojia_msg.store.mysqldriver"
SELECT_KEYS = "SELECT uid, appcode, client_msg_sha256, msgid, logid FROM {table} WHERE {where}"
ONE_KEY = "(uid = ? AND appcode = ? AND client_msg_sha256 = ?)"
SELECT_STORED = (
    "SELECT msgid, from_uid, to_uid, to_appcode, senddate, logid FROM {table}"
    " WHERE msgid IN ({ids})"
)
DELETE_MESSAGES = "DELETE FROM {table} WHERE msgid IN ({ids})"
DELETE_HISTORY = "DELETE FROM {table} WHERE {where}"
ONE_HISTORY_ROW = "(owner_sys = ? AND owner_uid = ? AND msgid = ?)"

PARAMSTYLE = pymysql.paramstyle
KEYS_PER_SELECT = 200
PURGE_CHUNK = 5000
"""``purge_dedup`` deletes at most this many keys per statement (and transaction)."""

FLUSHES_IN_FLIGHT = MySQLConfig().flushes_in_flight
"""Flushes (transactions) in flight at once by default (``[mysql]
flushes_in_flight``), at most ``pool_max``.

Measured on one node (2 cores, MariaDB on loopback, 200 C2C pairs closed
loop): 1 -> ~4,550 msgs/s, 2 and 4 -> ~4,800; at 1,000 msgs/s offered, node
CPU 64 % (1), 76 % (2), 82 % (4), latency alike: each lane flushes its own
writes, so more lanes mean smaller transactions when the load is light. A
database further away (longer round trips, slower commits) gains more from
more lanes."""

RECONNECT_ERRORS = frozenset({2006, 2013, 1927, 4031})
"""MySQL errors after which an interaction runs again on a new connection:
server gone away, lost connection (also a read timeout), connection killed
(MariaDB), disconnected for inactivity (MySQL 8)."""
LOCK_ERRORS = frozenset({1213, 1205})
"""MySQL errors after which an interaction runs again (its transaction was
rolled back; the connection is fine): deadlock, row-lock wait timeout."""
RETRY_ERRORS = RECONNECT_ERRORS | LOCK_ERRORS


def _code(error: BaseException) -> int | None:
    if isinstance(error, pymysql.err.InterfaceError):
        return 0 if not error.args or error.args[0] == 0 else None  # pymysql: closed
    if isinstance(error, pymysql.err.OperationalError) and error.args:
        return int(error.args[0])
    return None


def retryable(error: BaseException) -> bool:
    """Whether ``error`` means "run it again" (:func:`needs_new_connection` says where)."""
    code = _code(error)
    return code == 0 or code in RETRY_ERRORS


def needs_new_connection(error: BaseException) -> bool:
    """Whether an interaction that failed with ``error`` must run again on a
    newly opened connection (not a lock error: the connection is fine)."""
    return _code(error) not in LOCK_ERRORS


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
    """``(v1, v2, ...)``: a row of :func:`sql_literal` (multi-row inserts are
    written this way: pymysql's per-value escaping costs more CPU than the
    rest of a flush's Python work together)."""
    return "(" + ", ".join(map(sql_literal, row)) + ")"


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


STATEMENT_SEPARATOR = ";\n"

Result = tuple[int, list[tuple[Any, ...]]]
"""A statement's affected (or found) row count and its rows (none but for a SELECT)."""


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


def describe(url: MySQLURL) -> str:
    """How a database is named in logs and errors: no password."""
    return f"{url.user}@{url.host}:{url.port}/{url.database}"


def configure_connection(conn: Any, lock_wait_s: int) -> None:
    """``cp_openfun``: READ COMMITTED (no gap locks: concurrent inserts from
    several nodes do not block each other; correctness rests on primary keys
    and locking reads), and row-lock waits shorter than the read timeout, so a
    long wait ends in a clean error (1205) rather than a dropped connection."""
    with conn.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait_s)}")
    conn.commit()


def pool_kwargs(url: MySQLURL, config: MySQLConfig) -> dict[str, Any]:
    """The ``ConnectionPool(DRIVER, **kw)`` settings of one database:
    ``utf8mb4``, transactions (no autocommit), strict SQL mode,
    :func:`configure_connection`, the config's pool sizes and timeouts,
    ``cp_reconnect``."""
    lock_wait_s = max(1, int(config.read_timeout_s / 2))
    return {
        "host": url.host,
        "port": url.port,
        "user": url.user,
        "password": url.password,
        "database": url.database,
        "charset": "utf8mb4",
        "autocommit": False,
        "connect_timeout": config.connect_timeout_s,
        "read_timeout": config.read_timeout_s,
        "write_timeout": config.write_timeout_s,
        # Strict: a value that does not fit is an error, never truncated.
        "sql_mode": "TRADITIONAL",
        "cp_openfun": partial(configure_connection, lock_wait_s=lock_wait_s),
        # A flush sends its statements together (execute_batch).
        "client_flag": CLIENT.MULTI_STATEMENTS,
        "cp_min": config.pool_min,
        "cp_max": config.pool_max,
        "cp_reconnect": True,
    }


def mysql_pool(url: MySQLURL, config: MySQLConfig, reactor: IReactorTime) -> adbapi.ConnectionPool:
    """The production pool of one database (:func:`pool_kwargs`)."""
    return adbapi.ConnectionPool(DRIVER, cp_reactor=reactor, **pool_kwargs(url, config))


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a uid's rows live (see the module docstring)."""

    shards: int
    databases: int

    def place(self, uid: int) -> tuple[int, int]:
        """``(database index, table n)`` of ``uid``."""
        return divmod(uid % (self.shards * self.databases), self.shards)


def _on_new_connection(txn: Any, interaction: Callable[..., T], *args: Any) -> T:
    """Run ``interaction`` on a connection opened for it (never a pooled one
    that may be dead too)."""
    txn.reconnect()
    txn.reopen()
    return interaction(txn, *args)


class RetryOnce:
    """A pool's ``runInteraction`` with this store's retry policy: an
    interaction that failed with a :func:`retryable` error runs again, once,
    on a new connection (:func:`needs_new_connection`) or a pooled one.
    Offers what :class:`PoolRunner` uses of a pool.

    :ivar retries: how many interactions ran a second time.
    """

    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, name: str) -> None:
        self.pool = pool
        self.name = name
        self.retries = 0

    @property
    def dbapi(self) -> Any:
        return self.pool.dbapi

    @property
    def running(self) -> bool:
        return bool(self.pool.running)

    def runInteraction(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = self.pool.runInteraction(interaction, *args)
        d.addErrback(self._again, interaction, args)
        return d

    def _again(
        self, failure: Failure, interaction: Callable[..., Any], args: tuple[Any, ...]
    ) -> Any:
        if failure.value is None or not retryable(failure.value) or not self.pool.running:
            return failure
        self.retries += 1
        fresh = needs_new_connection(failure.value)
        self.log.warn(
            "{store} {operation}: {error}; running it again on {connection} connection",
            store=self.name,
            operation=getattr(interaction, "__name__", repr(interaction)),
            error=repr(failure.value),
            connection="a new" if fresh else "a pooled",
        )
        if fresh:
            return self.pool.runInteraction(_on_new_connection, interaction, *args)
        return self.pool.runInteraction(interaction, *args)


class _Database:
    """One database: its pool, its runner (retry, then errors mapped to
    :class:`StoreUnavailable`), and the statement size it allows.

    Its reads (PULL, HISTORY...) go through a :class:`ReadBatcher` with
    ``reads_in_flight`` batches at most: reads that queue meanwhile share the
    next trip to a pool thread (a hand-off and a reactor wake-up each cost more
    than the query). Reads that merge into one query (an interaction with a
    ``many``: the ``count_pending`` of every LOGIN, :class:`PendingCounter`)
    have a batcher of their own with one batch in flight: the counts that wait
    meanwhile are one ``GROUP BY`` query and one hand-off. With four in flight
    nearly every count went alone, and the hand-offs, thread switches and GIL
    waits of a thread per login cost more than a wait for the batch before
    (logins with Redis sessions: 3,802-4,043/s at 217-239 µs of node CPU each,
    against 4,958-4,981/s at 161-166 µs with one in flight)."""

    def __init__(self, index: int, name: str, pool: adbapi.ConnectionPool,
                 reads_in_flight: int = 1) -> None:
        self.index = index
        self.name = name
        self.pool = pool
        self.retrier = RetryOnce(pool, f"mysql message store {name}")
        self.runner = PoolRunner(cast(adbapi.ConnectionPool, self.retrier), self.retrier.name)
        self.reads = ReadBatcher(self.runner.run, max_in_flight=reads_in_flight)
        self.merged = ReadBatcher(self.runner.run, max_in_flight=1)

    def run(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.runner.run(interaction, *args)

    def read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """A batched read: through ``merged`` if it merges, else ``reads``."""
        batcher = self.merged if hasattr(interaction, "many") else self.reads
        return batcher.read(interaction, *args)


class PendingCounter:
    """``count_pending``'s read (every LOGIN asks it). Called alone it counts
    one ``(uid, appcode)``; in a read batch (:mod:`daojia_msg.store.reads`)
    :meth:`many` answers all of the batch's counts in one query, a ``GROUP
    BY`` per shard table joined by ``UNION ALL``, rather than a query each."""

    __name__ = "count_pending"  # as logs name an interaction

    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    def __call__(self, txn: Any, uid: int, appcode: int) -> int:
        return self.many(txn, [(uid, appcode)])[0]

    def many(self, txn: Any, keys: list[tuple[int, int]]) -> list[int]:
        """The pending count of each ``(uid, appcode)`` of ``keys`` (all of one database)."""
        by_table: dict[int, set[tuple[int, int]]] = {}
        for uid, appcode in keys:
            by_table.setdefault(self.placement.place(uid)[1], set()).add((uid, appcode))
        # A range of the pending index per key (the row constructor is
        # optimised as such); uids and appcodes are ints, written as decimal
        # literals: nothing else reaches the text.
        txn.execute(" UNION ALL ".join(
            f"(SELECT to_uid, to_appcode, COUNT(*) FROM messages_{n}"
            " WHERE (to_uid, to_appcode, state) IN ("
            + ", ".join(f"({int(uid)}, {int(appcode)}, 0)" for uid, appcode in sorted(table))
            + ") GROUP BY to_uid, to_appcode)"
            for n, table in sorted(by_table.items())
        ))  # fmt: skip
        counts = {(int(uid), int(appcode)): int(count) for uid, appcode, count in txn.fetchall()}
        return [counts.get(key, 0) for key in keys]


# -- the writes a flush is made of -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Store:
    messages: list[NewMessage]
    now_ms: int


@dataclass(frozen=True, slots=True)
class _Ack:
    uid: int
    appcode: int
    msgids: list[int]


Key = tuple[int, int, bytes]
"""A de-dup key: ``(from_uid, from_appcode, sha256(client_msg_id))``."""


def dedup_key(new: NewMessage) -> Key | None:
    if not new.client_msg_id:
        return None
    m = new.message
    return (m.from_uid, m.from_appcode, hashlib.sha256(new.client_msg_id.encode()).digest())


@dataclass(slots=True)
class _Item:
    """One message of a flush. ``first`` is False for a resend of a message
    earlier in the same flush (it is answered from that one, never written)."""

    op: int
    new: NewMessage
    key: Key | None
    created_ms: int
    first: bool

    @property
    def msgid(self) -> int:
        return self.new.message.msgid


Rows = dict[int, list[tuple[Any, ...]]]
"""Rows by shard table n."""
Owners = dict[Key, tuple[int, str]]
"""The ``(msgid, logid)`` a de-dup key is recorded with."""


@implementer(IMessageStore)
class MySQLMessageStore:
    """:class:`IMessageStore` on MySQL/MariaDB databases.

    :param config: ``[mysql]``: ``url`` (required), ``databases``, ``shards``,
        pool sizes and timeouts.
    :param reactor: time for de-dup keys (``seconds()``) and the pools'
        ``cp_reactor``.
    :param pools: ready-made pools, one per database in config order (tests);
        the store closes them at :meth:`stop`.
    :param max_batch: at most this many writes per group commit.
    :param concurrency: at most this many flushes in flight (default
        ``config.flushes_in_flight``, and never more than ``pool_max``).
    :ivar committer: the :class:`GroupCommitter` of the writes.
    :ivar placement: the :class:`Placement` of rows.
    """

    log = Logger()

    def __init__(
        self,
        config: MySQLConfig,
        reactor: IReactorTime,
        pools: list[adbapi.ConnectionPool] | None = None,
        max_batch: int = 1000,
        concurrency: int | None = None,
    ) -> None:
        if not config.url:
            raise ValueError("MySQLMessageStore needs mysql.url")
        urls = [parse_mysql_url(config.url)] + [
            parse_mysql_url(u, ("mysql", "databases", str(i)))
            for i, u in enumerate(config.databases)
        ]
        if pools is not None and len(pools) != len(urls):
            raise ValueError(f"{len(urls)} databases configured, {len(pools)} pools given")
        if pools is None:
            pools = [mysql_pool(url, config, reactor) for url in urls]
        self.config = config
        self._clock = reactor
        if concurrency is None:
            concurrency = config.flushes_in_flight
        concurrency = max(1, min(concurrency, config.pool_max))
        #: Read batches in flight per database: half the connections flushes leave.
        self.reads_in_flight = max(1, (config.pool_max - concurrency) // 2)
        self._dbs = [
            _Database(i, describe(u), p, self.reads_in_flight)
            for i, (u, p) in enumerate(zip(urls, pools, strict=True))
        ]
        self.placement = Placement(config.shards, len(self._dbs))
        self._txns = [
            MessageTransactions(
                PARAMSTYLE,
                Statements(Tables.shard(n), history_has_content=True, locking_reads=True),
            )
            for n in range(config.shards)
        ]
        self._count_pending = PendingCounter(self.placement)
        self.committer = GroupCommitter(self._run_flush, max_ops=max_batch, concurrency=concurrency)
        #: The smallest ``max_allowed_packet`` of the databases (read at start).
        self.max_packet_bytes = 16 << 20
        #: Bytes per multi-row statement (estimated): half of that, at least 64 KiB.
        self.max_statement_bytes = 1 << 20
        self._state = "new"  # -> starting -> started -> stopping -> stopped
        self._stop_waiters: list[Deferred[None]] = []

    @property
    def pools(self) -> list[adbapi.ConnectionPool]:
        return [db.pool for db in self._dbs]

    @property
    def retries(self) -> int:
        """How many interactions ran a second time after a lost connection."""
        return sum(db.retrier.retries for db in self._dbs)

    def _names(self) -> str:
        return ", ".join(db.name for db in self._dbs)

    # Life

    def start(self) -> Deferred[None]:
        if self._state != "new":
            return succeed(None)
        self._state = "starting"
        for db in self._dbs:
            db.pool.start()

        def started(found: list[tuple[int, int]]) -> None:
            self.max_packet_bytes = min(p for _, p in found)
            self.max_statement_bytes = max(self.max_packet_bytes // 2, 1 << 16)
            if self._state != "starting":  # stop() was called meanwhile
                return
            self._state = "started"
            self.log.info(
                "message store on {databases} open: schema version {version} (was {found}),"
                " {shards} shard tables per database",
                databases=self._names(),
                version=SCHEMA_VERSION,
                found=[f for f, _ in found],
                shards=self.config.shards,
            )

        def failed(failure: Failure) -> Failure:
            if self._state == "starting":
                self._state = "new"
            return failure

        d = self._on_all(lambda db: db.run(self._migrate_txn, db.index, db.name))
        return d.addCallbacks(started, failed)

    def stop(self) -> Deferred[None]:
        if self._state == "stopped":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self._state != "stopping":
            self._state = "stopping"
            drained = self.committer.drain()
            drained.addCallback(lambda _: self._on_all(lambda db: db.runner.when_idle()))
            drained.addCallback(self._close)
        return d

    def _close(self, _: object) -> None:
        for db in self._dbs:
            # A closed adbapi pool cannot be closed again; one never started
            # may still wait for the reactor (startID).
            if db.pool.running or getattr(db.pool, "startID", None) is not None:
                try:
                    db.pool.close()
                except Exception:
                    self.log.failure("closing the pool of {database} failed", database=db.name)
        self._state = "stopped"
        self.log.info("message store on {databases} closed", databases=self._names())
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _migrate_txn(self, txn: Any, index: int, name: str) -> tuple[int, int]:
        """Create or migrate one database's schema; refuse another shard count
        or list of databases. Returns the version found and the server's
        ``max_allowed_packet``."""
        sql = self._sql
        wait = max(1, int(self.config.read_timeout_s / 2))
        for _ in range(max(1, int(SCHEMA_LOCK_WAIT_S / wait))):
            txn.execute(sql(f"SELECT GET_LOCK({SCHEMA_LOCK}, ?)"), (wait,))
            if txn.fetchone()[0] == 1:
                break
        else:
            raise StoreError(f"{name}: another node holds the schema lock (still migrating?)")
        try:
            found = self._migrate_locked_txn(txn, index, name)
        finally:
            try:
                txn.execute(f"SELECT RELEASE_LOCK({SCHEMA_LOCK})")
            except pymysql.err.Error:
                pass  # a dead connection releases its locks; the first error matters
        txn.execute("SELECT @@max_allowed_packet")
        return found, int(txn.fetchone()[0])

    def _migrate_locked_txn(self, txn: Any, index: int, name: str) -> int:
        sql, shards, count = self._sql, self.config.shards, len(self._dbs)
        txn.execute(CREATE_SCHEMA_VERSION)
        txn.execute(SELECT_SCHEMA)
        row = txn.fetchone()
        if row is None:
            found = 0
            txn.execute(sql(INSERT_SCHEMA), (shards, index, count))
        else:
            found, had_shards, had_index, had_count = (int(v) for v in row)
            if had_shards != shards:
                raise StoreError(
                    f"{name} was created with {had_shards} shard tables and mysql.shards is"
                    f" {shards}: changing the shard count moves rows to other tables, which"
                    " needs a data migration; refusing to start"
                )
            if (had_index, had_count) != (index, count):
                raise StoreError(
                    f"{name} was created as database {had_index + 1} of {had_count} and is now"
                    f" configured as database {index + 1} of {count} (mysql.url, then"
                    " mysql.databases, in order): rows would be looked for in the wrong"
                    " database; refusing to start"
                )
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"{name}: the database schema is version {found}; this code knows up to"
                    f" {SCHEMA_VERSION}"
                )
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                for n in range(shards) if "{n}" in statement else [None]:
                    txn.execute(statement if n is None else statement.format(n=n))
        if found < SCHEMA_VERSION:
            txn.execute(sql(UPDATE_SCHEMA), (SCHEMA_VERSION,))
        return found

    # Writes: group-committed

    def store(self, messages: list[NewMessage]) -> Deferred[list[StoreOutcome]]:
        batch = list(messages)
        for new in batch:
            # A row the server would refuse must not fail the flush it joins.
            if 2 * len(new.message.content) + 4096 > self.max_packet_bytes:
                return fail(
                    StoreError(
                        f"message {new.message.msgid}: {len(new.message.content)} bytes of"
                        f" content do not fit the MySQL max_allowed_packet"
                        f" ({self.max_packet_bytes})"
                    )
                )
        now_ms = int(self._clock.seconds() * 1000)
        # One sender's messages (a C2C): its lane; an app server's (uid 0): any.
        if len(batch) == 1:
            senders = {batch[0].message.from_uid}
        else:
            senders = {new.message.from_uid for new in batch}
        affinity = senders.pop() if len(senders) == 1 and 0 not in senders else None
        return self._write(_Store(batch, now_ms), len(batch), [], affinity)

    def ack(self, uid: int, appcode: int, msgids: list[int]) -> Deferred[list[AckedMessage]]:
        ids = list(msgids)
        return self._write(_Ack(uid, appcode, ids), len(ids), [], uid)

    def _write(
        self, op: _Store | _Ack, rows: int, nothing: T, affinity: int | None
    ) -> Deferred[T]:
        if self._state != "started":
            return fail(StoreUnavailable(f"the message store is not running ({self._state})"))
        if not rows:
            return succeed(nothing)
        # The committer hands the queued ops to _run_flush, which merges them.
        return self.committer.submit(cast("Callable[[Any], Any]", op), affinity, rows)

    def _run_flush(self, _write_batch_txn: object, ops: list[_Store | _Ack]) -> Deferred[Any]:
        """The committer's ``run_interaction``: one flush of ``ops``, its
        stores, then its ACKs. Fires with one result per op (a
        :class:`Failure` for an op that failed alone: the committer fails that
        caller alone), or fails as a whole."""
        if len(self._dbs) == 1:
            return self._dbs[0].run(self._flush_txn, ops)
        return Deferred.fromCoroutine(self._flush_across(ops))

    def _flush_txn(self, txn: Any, ops: list[_Store | _Ack]) -> list[Any]:
        """A flush on one database: one transaction (:meth:`_write_txn`)."""
        results: list[Any] = [None] * len(ops)
        stores, acks = _split(ops)
        items = _items(ops, stores)
        owners, acked = self._write_txn(txn, 0, items, [cast(_Ack, ops[i]) for i in acks])
        self._answer(items, owners, {}, results)
        for i, done in zip(acks, acked, strict=True):
            results[i] = done
        return results

    def _store_txn(self, txn: Any, items: list[_Item]) -> Owners:
        """Store ``items``, all of whose rows and keys are in one database, in
        one transaction (:meth:`_write_txn`)."""
        writers = [i for i in items if i.first]
        db = self.placement.place(writers[0].new.message.to_uid)[0]
        return self._write_txn(txn, db, items, [])[0]

    def _write_txn(
        self, txn: Any, db: int, items: list[_Item], acks: list[_Ack]
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
        claims = self._claim_statements(self._key_rows(writers).get(db, {}))
        reads = self._ack_reads(acks)
        done = execute_batch(txn, [c[1] for c in claims] + [r[1] for r in reads],
                             self.max_statement_bytes)  # fmt: skip
        owners = self._owners_txn(txn, claims, done[: len(claims)])
        acked, updates = self._acked(acks, reads, done[len(claims) :])
        fresh = [i for i in writers if i.key is None or owners[i.key][0] == i.msgid]
        writes = self._row_statements(self._message_rows(fresh).get(db, ({}, {})))
        self._write_and_commit_txn(txn, [w[1] for w in writes] + updates, writes)
        return owners, acked

    def _acks_txn(self, txn: Any, ops: list[_Ack]) -> list[list[AckedMessage]]:
        """The ACKs ``ops`` (of one database) in one transaction: a batch of
        locking reads (one per table), then one of updates."""
        reads = self._ack_reads(ops)
        acked, updates = self._acked(ops, reads, execute_batch(
            txn, [r[1] for r in reads], self.max_statement_bytes))  # fmt: skip
        execute_batch(txn, updates, self.max_statement_bytes, commit=True)
        return acked

    async def _flush_across(self, ops: list[_Store | _Ack]) -> list[Any]:
        """A flush over several databases: its stores, then its ACKs."""
        results: list[Any] = [None] * len(ops)
        stores, acks = _split(ops)
        if stores:
            items = _items(ops, stores)
            failed: dict[int, Failure] = {}
            owners = await self._store_across(items, failed)
            self._answer(items, owners, failed, results)
        if acks:
            by_db: dict[int, list[int]] = {}
            for i in acks:
                by_db.setdefault(self.placement.place(cast(_Ack, ops[i]).uid)[0], []).append(i)
            done = await self._on_each(
                {db: [ops[i] for i in indexes] for db, indexes in by_db.items()},
                self._acks_txn,
            )
            for db, indexes in by_db.items():
                acked = done[db]
                for k, i in enumerate(indexes):
                    results[i] = acked if isinstance(acked, Failure) else acked[k]
        return results

    async def _store_across(self, items: list[_Item], failed: dict[int, Failure]) -> Owners:
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
        touched = {db for i in items if i.first for db in self._databases_of(i)}
        if len(touched) == 1:
            (db,) = touched
            try:
                return await self._dbs[db].run(self._store_txn, items)
            except Exception:
                for i in items:
                    failed.setdefault(i.op, Failure())
                return {}
        writers = [i for i in items if i.first]

        # 1. Keys recorded before.
        owners: Owners = {}
        lookups = {
            db: {n: [(r[0], r[1], r[2]) for r in rows] for n, rows in tables.items()}
            for db, tables in self._key_rows(writers).items()
        }
        for db, found in (await self._on_each(lookups, self._find_keys_txn)).items():
            if isinstance(found, Failure):
                hit = [i for i in items if i.key is not None and self._key_db(i) == db]
                self._fail(items, failed, found, hit)
            else:
                owners.update(found)

        # 2. Messages and history.
        to_write = [
            i for i in writers if i.op not in failed and (i.key is None or i.key not in owners)
        ]
        written = await self._on_each(self._message_rows(to_write), self._write_rows_txn)
        for db, done in written.items():
            if isinstance(done, Failure):
                hit = [i for i in to_write if db in self._row_databases(i)]
                self._fail(items, failed, done, hit)
        committed = {db for db, done in written.items() if not isinstance(done, Failure)}
        undo = [i for i in to_write if i.op in failed]
        await self._delete_copies(undo, "its op failed", committed)

        # 3. Keys, now that their messages are durable.
        claiming = [i for i in to_write if i.op not in failed and i.key is not None]
        claims = self._key_rows(claiming)
        for db, result in (await self._on_each(claims, self._claim_keys_txn)).items():
            if isinstance(result, Failure):
                self.log.error(
                    "de-dup keys of {count} stored messages not recorded in {database}:"
                    " {error}; a resend of them would be stored again",
                    count=sum(len(rows) for rows in claims[db].values()),
                    database=self._dbs[db].name,
                    error=repr(result.value),
                )
                owners.update(
                    {i.key: (i.msgid, i.new.message.logid) for i in claiming
                     if i.key is not None and self._key_db(i) == db}
                )  # fmt: skip
            else:
                owners.update(result)
        losers = [i for i in claiming if i.key is not None and owners[i.key][0] != i.msgid]
        await self._delete_copies(losers, "another node stored the same resend first")
        return owners

    def _fail(
        self, items: list[_Item], failed: dict[int, Failure], failure: Failure, hit: list[_Item]
    ) -> None:
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

    def _answer(
        self, items: list[_Item], owners: Owners, failed: dict[int, Failure], results: list[Any]
    ) -> None:
        """Fill ``results`` (by op) with the outcomes of ``items``."""
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

    # Rows and where they go

    def _key_db(self, item: _Item) -> int:
        return self.placement.place(item.new.message.from_uid)[0]

    def _row_databases(self, item: _Item) -> set[int]:
        """The databases ``item``'s message and history rows live in."""
        dbs = {self.placement.place(row[1])[0] for row in history_rows(item.new)}
        dbs.add(self.placement.place(item.new.message.to_uid)[0])
        return dbs

    def _databases_of(self, item: _Item) -> set[int]:
        """The databases ``item``'s rows and key live in."""
        dbs = self._row_databases(item)
        if item.key is not None:
            dbs.add(self._key_db(item))
        return dbs

    def _message_rows(self, items: Iterable[_Item]) -> dict[int, tuple[Rows, Rows]]:
        """Message and history rows of ``items``, by database, then by table."""
        out: dict[int, tuple[Rows, Rows]] = {}
        for i in items:
            m = i.new.message
            row = message_row(m)
            db, n = self.placement.place(m.to_uid)
            out.setdefault(db, ({}, {}))[0].setdefault(n, []).append(row)
            for owner_sys, owner_uid, _, peer_uid in history_rows(i.new):
                db, n = self.placement.place(owner_uid)
                history = out.setdefault(db, ({}, {}))[1].setdefault(n, [])
                history.append((owner_sys.encode(), owner_uid, peer_uid, *row))
        return out

    def _key_rows(self, items: Iterable[_Item]) -> dict[int, Rows]:
        """De-dup rows of the keyed ``items``, by database, then by table."""
        out: dict[int, Rows] = {}
        for i in items:
            if i.key is not None:
                db, n = self.placement.place(i.key[0])
                m = i.new.message
                row = (*i.key, m.msgid, m.logid, i.created_ms)
                out.setdefault(db, {}).setdefault(n, []).append(row)
        return out

    # Transactions on one database (run in the pool's threads)

    def _sql(self, statement: str) -> str:
        return convert_param_style(statement, PARAMSTYLE)

    def _write_rows_txn(self, txn: Any, rows: tuple[Rows, Rows]) -> None:
        """Insert message and history rows (by table): one statement per table,
        sent together. A msgid already there must be the same message (this
        write running again after its commit's answer was lost)."""
        writes = self._row_statements(rows)
        self._write_and_commit_txn(txn, [w[1] for w in writes], writes)

    def _row_statements(self, rows: tuple[Rows, Rows]) -> list[tuple[str, str, Sequence[Any]]]:
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
                        max_bytes=self.max_statement_bytes,
                        suffix=KEEP_SAME_MESSAGE if kind == "messages" else KEEP_EXISTING,
                    )
                )  # fmt: skip
        return writes

    def _write_and_commit_txn(
        self, txn: Any, statements: list[str], writes: list[tuple[str, str, Sequence[Any]]]
    ) -> None:
        """The last query of a flush: ``statements`` (``writes``' inserts
        first), then COMMIT. A msgid found stored for another message
        (:data:`KEEP_SAME_MESSAGE`) fails the flush with a :class:`StoreError`
        that names it (looked up in the transaction, before adbapi rolls it back)."""
        try:
            execute_batch(txn, statements, self.max_statement_bytes, commit=True)
        except pymysql.IntegrityError as e:
            if e.args[0] != ER_BAD_NULL:
                raise
            for table, _, rows in writes:
                if table.startswith("messages_"):
                    self._check_same_txn(txn, table, list(rows))
            raise

    def _check_same_txn(self, txn: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        ours = {r[0]: (r[0], r[1], r[3], r[4], r[8], r[9]) for r in rows}
        for chunk in chunks(list(ours)):
            txn.execute(self._sql(SELECT_STORED.format(table=table, ids=marks(len(chunk)))), chunk)
            for found in txn.fetchall():
                if tuple(found) != ours[found[0]]:
                    raise StoreError(
                        f"msgid {found[0]} is already stored for another message"
                        " (are two nodes using one node id?)"
                    )

    def _claim_keys_txn(self, txn: Any, keys: Rows) -> Owners:
        """Record de-dup rows (``keys``: by table) unless their key is there;
        returns every key's owner."""
        claims = self._claim_statements(keys)
        done = execute_batch(txn, [c[1] for c in claims], self.max_statement_bytes)
        return self._owners_txn(txn, claims, done)

    def _claim_statements(self, keys: Rows) -> list[tuple[int, str, Sequence[Any]]]:
        """The inserts of de-dup rows (by table) that leave a recorded key
        alone, as ``(table n, statement, rows)``. Sorted, so that concurrent
        transactions (of this node or others) lock keys in one order."""
        claims: list[tuple[int, str, Sequence[Any]]] = []
        for n, rows in sorted(keys.items()):
            claims.extend(
                (n, text, chunk)
                for text, chunk in render_inserts(
                    f"dedup_{n}", DEDUP_COLUMNS, sorted(rows), sql_row,
                    max_bytes=self.max_statement_bytes, suffix=KEEP_EXISTING,
                )
            )  # fmt: skip
        return claims

    def _owners_txn(
        self, txn: Any, claims: list[tuple[int, str, Sequence[Any]]], done: list[Result]
    ) -> Owners:
        """After :meth:`_claim_statements`: every key's owner. Where an insert
        added every row, ours; elsewhere some key was recorded before: read."""
        owners: Owners = {}
        recorded: dict[int, list[Key]] = {}
        for (n, _, rows), (added, _) in zip(claims, done, strict=True):
            if added == len(rows):
                owners.update({(r[0], r[1], r[2]): (r[3], r[4]) for r in rows})
            else:
                recorded.setdefault(n, []).extend((r[0], r[1], r[2]) for r in rows)
        if recorded:
            owners.update(self._find_keys_txn(txn, recorded))
        return owners

    def _ack_reads(self, ops: list[_Ack]) -> list[tuple[int, str]]:
        """The locking reads of the pending rows ``ops`` name, as ``(table n,
        statement)``: each ACK reads its recipient's table; one read per table
        (per :data:`IN_CHUNK` msgids), tables and msgids ascending, so that
        concurrent transactions lock rows in one order."""
        by_table: dict[int, set[int]] = {}
        for op in ops:
            by_table.setdefault(self.placement.place(op.uid)[1], set()).update(op.msgids)
        reads: list[tuple[int, str]] = []
        for n in sorted(by_table):
            statement = self._txns[n].statements.select_ackable_by_ids
            for chunk in chunks(sorted(by_table[n])):
                reads.append((n, statement.format(ids=", ".join(map(sql_literal, chunk)))))
        return reads

    def _acked(
        self, ops: list[_Ack], reads: list[tuple[int, str]], done: list[Result]
    ) -> tuple[list[list[AckedMessage]], list[str]]:
        """After :meth:`_ack_reads`: each op's messages (:func:`assign_acks`),
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
            mark_delivered = self._txns[n].statements.mark_delivered
            for chunk in chunks(sorted(ids)):
                updates.append(mark_delivered.format(ids=", ".join(map(sql_literal, chunk))))
        return acked, updates

    def _find_keys_txn(self, txn: Any, keys: dict[int, list[Key]]) -> Owners:
        """The owners of those of ``keys`` (by table) that are recorded."""
        owners: Owners = {}
        for n, table_keys in sorted(keys.items()):
            for start in range(0, len(table_keys), KEYS_PER_SELECT):
                chunk = table_keys[start : start + KEYS_PER_SELECT]
                where = " OR ".join([ONE_KEY] * len(chunk))
                statement = SELECT_KEYS.format(table=f"dedup_{n}", where=where)
                txn.execute(self._sql(statement), [v for key in chunk for v in key])
                for uid, appcode, digest, msgid, logid in txn.fetchall():
                    owners[(uid, appcode, bytes(digest))] = (msgid, logid)
        return owners

    def _delete_rows_txn(self, txn: Any, rows: tuple[Rows, Rows]) -> None:
        messages, history = rows
        for n, table_rows in sorted(messages.items()):
            for chunk in chunks([r[0] for r in table_rows]):
                table = f"messages_{n}"
                txn.execute(self._sql(DELETE_MESSAGES.format(table=table, ids=marks(len(chunk)))),
                            chunk)  # fmt: skip
        for n, table_rows in sorted(history.items()):
            keys = [(r[0], r[1], r[3]) for r in table_rows]
            for start in range(0, len(keys), KEYS_PER_SELECT):
                chunk = keys[start : start + KEYS_PER_SELECT]
                where = " OR ".join([ONE_HISTORY_ROW] * len(chunk))
                statement = DELETE_HISTORY.format(table=f"history_{n}", where=where)
                txn.execute(self._sql(statement), [v for key in chunk for v in key])

    async def _delete_copies(
        self, items: list[_Item], why: str, only: set[int] | None = None
    ) -> None:
        """Delete the message and history rows of ``items`` (in the databases
        ``only``, if given), best effort. They never have a de-dup key."""
        rows = {
            db: tables
            for db, tables in self._message_rows(items).items()
            if only is None or db in only
        }
        if not rows:
            return
        msgids = sorted(i.msgid for i in items)
        self.log.warn("deleting stored copies of {msgids}: {why}", msgids=msgids, why=why)
        done = await self._on_each(rows, self._delete_rows_txn)
        for db, result in done.items():
            if isinstance(result, Failure):
                self.log.error(
                    "could not delete {msgids} from {database} ({error}): they stay pending,"
                    " and may be delivered twice",
                    msgids=msgids,
                    database=self._dbs[db].name,
                    error=repr(result.value),
                )

    async def _on_each(
        self, work: dict[int, Any], interaction: Callable[[Any, Any], T]
    ) -> dict[int, T | Failure]:
        """Run ``interaction(txn, work[db])`` on each database of ``work``, at
        the same time; each one's result or Failure."""
        dbs = sorted(work)
        done = await DeferredList(
            [self._dbs[db].run(interaction, work[db]) for db in dbs], consumeErrors=True
        )
        return {db: value for db, (_, value) in zip(dbs, done, strict=True)}

    def _on_all(self, f: Callable[[_Database], Deferred[T]]) -> Deferred[list[T]]:
        """``f(db)`` on every database; fails with the first failure."""
        d = DeferredList([f(db) for db in self._dbs], fireOnOneErrback=True, consumeErrors=True)

        def values(done: list[tuple[bool, T]]) -> list[T]:
            return [value for _, value in done]

        def first_error(failure: Failure) -> Failure:
            return (
                cast(FirstError, failure.value).subFailure if failure.check(FirstError) else failure
            )

        return d.addCallbacks(values, first_error)

    # Reads (and the purge): straight to the pools

    def pull(self, uid: int, appcode: int, after_msgid: int, limit: int) -> Deferred[Page]:
        db, n = self.placement.place(uid)
        return self._read(db, self._txns[n].pull_txn, uid, appcode, after_msgid, limit)

    def pending_message(self, to_uid: int, msgid: int) -> Deferred[StoredMessage | None]:
        db, n = self.placement.place(to_uid)
        return self._read(db, self._txns[n].pending_message_txn, to_uid, msgid)

    def count_pending(self, uid: int, appcode: int) -> Deferred[int]:
        return self._read(self.placement.place(uid)[0], self._count_pending, uid, appcode)

    def history(
        self, usersystem: str, uid: int, before_msgid: int, limit: int, peer_uid: int
    ) -> Deferred[Page]:
        db, n = self.placement.place(uid)
        return self._read(
            db, self._txns[n].history_txn, usersystem, uid, before_msgid, limit, peer_uid
        )

    def max_msgid(self) -> Deferred[int]:
        """The largest msgid of every ``messages_<n>`` of every database."""
        if self._state != "started":
            return fail(StoreUnavailable(f"the message store is not running ({self._state})"))
        return self._on_all(lambda db: db.run(self._max_msgid_txn)).addCallback(max)

    def _max_msgid_txn(self, txn: Any) -> int:
        return max(t.max_msgid_txn(txn) for t in self._txns)

    def purge_dedup(self, before_ms: int) -> Deferred[int]:
        """Delete old keys in every ``dedup_<n>``, at most :data:`PURGE_CHUNK`
        per transaction (short locks); not group-committed: it does not hold
        up message writes. Fires with how many were dropped."""
        if self._state != "started":
            return fail(StoreUnavailable(f"the message store is not running ({self._state})"))
        d = self._on_all(lambda db: Deferred.fromCoroutine(self._purge_db(db, before_ms)))
        return d.addCallback(sum)

    async def _purge_db(self, db: _Database, before_ms: int) -> int:
        total = 0
        for t in self._txns:
            while True:
                dropped = await db.run(t.purge_dedup_txn, before_ms, PURGE_CHUNK)
                total += dropped
                if dropped < PURGE_CHUNK:
                    break
        return total

    def _read(self, db: int, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._state != "started":
            return fail(StoreUnavailable(f"the message store is not running ({self._state})"))
        return self._dbs[db].read(interaction, *args)


def _split(ops: list[_Store | _Ack]) -> tuple[list[int], list[int]]:
    """Indexes of the stores and of the ACKs of ``ops``, each in order. A
    flush writes all its stores together and all its ACKs together: an ACK
    can only name a message that was pushed, so stored by an earlier flush
    (one that names a message of its own flush, a guess, finds it not stored
    yet, as if it had come first)."""
    stores: list[int] = []
    acks: list[int] = []
    for i, op in enumerate(ops):
        (acks if isinstance(op, _Ack) else stores).append(i)
    return stores, acks


def _items(ops: list[_Store | _Ack], run: list[int]) -> list[_Item]:
    """The messages of the store ops ``run``, in order, resends within it marked."""
    items: list[_Item] = []
    seen: set[Key] = set()
    for i in run:
        op = cast(_Store, ops[i])
        for new in op.messages:
            key = dedup_key(new)
            items.append(_Item(i, new, key, op.now_ms, first=key is None or key not in seen))
            if key is not None:
                seen.add(key)
    return items
