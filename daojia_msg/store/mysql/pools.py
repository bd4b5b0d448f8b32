# -*- test-case-name: tests.store.mysql.test_pools -*-
"""The MySQL store's connections: one ``adbapi.ConnectionPool`` per database,
its settings, and the retry policy.

A connection the server closed (MySQL errors 2006, 2013, 1927 "killed", 4031,
pymysql's "(0, '')" for a closed one) makes an interaction run again, once, on
a newly opened connection; a deadlock (1213) or a row-lock wait timeout
(1205), which roll the transaction back, make it run again, once, on a pooled
connection. Anything else, or a second failure, is :class:`StoreUnavailable`;
:class:`StoreUncertain` when a run lost its connection while a query was
under way (2013, 1927), and the retry did not settle it: that query may have
been the flush's COMMIT, so its writes may or may not be done (answered
TIMEOUT, not UNAVAILABLE: docs/protocol.md §7.4).
Every interaction of the store may run twice: reads; ACK (an update of
``pending`` rows only; run again after a commit whose answer was lost it
reports fewer rows changed, which only undercounts the ``acked`` statistic);
de-dup purge; and the writes of new messages, whose inserts keep the rows
that are there (:mod:`.render`).

Connect, read and write timeouts come from the config; a read timeout is
reported by pymysql as error 2013, so a stuck server costs at most twice
``read_timeout_s`` (plus a connect). Row-lock waits are capped at half the
read timeout: a long wait is a clean error 1205 (run again once), not a
dropped connection.

Passwords are never logged: databases are named ``user@host:port/database``.

TLS follows the URL's ``ssl-mode`` (docs/operations.md §6): ``preferred`` by
default (encrypted when the server offers it, the certificate not checked),
``required``, ``verify_ca`` or ``verify_identity`` to insist, ``disabled``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

import pymysql
from pymysql.constants import CLIENT
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.config import ConfigError, MySQLConfig, MySQLURL, mysql_tls_required
from daojia_msg.core.errors import StoreUnavailable, StoreUncertain
from daojia_msg.store import mysqldriver
from daojia_msg.store.dbpool import PoolRunner
from daojia_msg.store.reads import ReadBatcher, ReadStats

T = TypeVar("T")

#: The DB-API module of the pools: pymysql, committing once per transaction.
DRIVER = "daojia_msg.store.mysqldriver"

RECONNECT_ERRORS = frozenset({2006, 2013, 1927, 4031})
"""MySQL errors after which an interaction runs again on a new connection:
server gone away, lost connection (also a read timeout), connection killed
(MariaDB), disconnected for inactivity (MySQL 8)."""
LOCK_ERRORS = frozenset({1213, 1205})
"""MySQL errors after which an interaction runs again (its transaction was
rolled back; the connection is fine): deadlock, row-lock wait timeout."""
RETRY_ERRORS = RECONNECT_ERRORS | LOCK_ERRORS
LOST_DURING_QUERY = frozenset({2013, 1927})
"""MySQL errors that leave a query's outcome unknown: the connection was lost
(or killed) while it ran, perhaps after the server committed."""


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


def lost_during_query(error: BaseException) -> bool:
    """Whether ``error`` leaves the outcome of the query that failed unknown."""
    return _code(error) in LOST_DURING_QUERY


def needs_new_connection(error: BaseException) -> bool:
    """Whether an interaction that failed with ``error`` must run again on a
    newly opened connection (not a lock error: the connection is fine)."""
    return _code(error) not in LOCK_ERRORS


def describe(url: MySQLURL) -> str:
    """How a database is named in logs and errors: no password."""
    return f"{url.user}@{url.host}:{url.port}/{url.database}"


def lock_wait_seconds(config: MySQLConfig) -> int:
    """Seconds a lock (a row's, the schema's) is waited for: half the read
    timeout, at least 1, so that the wait ends before the connection is given up."""
    return max(1, int(config.read_timeout_s / 2))


#: pymysql's (and the MySQL client's) code for a TLS connection that failed.
TLS_ERROR = 2026


def configure_connection(conn: Any, lock_wait_s: int, tls_mode: str = "preferred") -> None:
    """``cp_openfun``: READ COMMITTED (no gap locks: concurrent inserts from
    several nodes do not block each other; correctness rests on primary keys
    and locking reads), and row-lock waits shorter than the read timeout, so a
    long wait ends in a clean error (1205) rather than a dropped connection.
    With a ``tls_mode`` that requires TLS, a connection the server did not
    encrypt is refused (error 2026) before anything is sent on it."""
    with conn.cursor() as cursor:
        if mysql_tls_required(tls_mode):
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cursor.fetchone()
            if not row or not row[1]:
                raise pymysql.err.OperationalError(
                    TLS_ERROR, f"ssl-mode={tls_mode} but the server did not encrypt "
                               "the connection (is TLS on in MySQL?)")
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait_s)}")
    conn.commit()


def pool_kwargs(url: MySQLURL, config: MySQLConfig) -> dict[str, Any]:
    """The ``ConnectionPool(DRIVER, **kw)`` settings of one database:
    ``utf8mb4``, transactions (no autocommit), strict SQL mode,
    :func:`configure_connection`, the config's pool sizes and timeouts,
    ``cp_reconnect``."""
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
        "cp_openfun": partial(configure_connection, lock_wait_s=lock_wait_seconds(config),
                              tls_mode=url.ssl_mode),
        **mysqldriver.tls_options(url.ssl_mode, url.ssl_ca),
        # A flush sends its statements together (render.execute_batch).
        "client_flag": CLIENT.MULTI_STATEMENTS,
        "cp_min": config.pool_min,
        "cp_max": config.pool_max,
        "cp_reconnect": True,
    }


def mysql_pool(url: MySQLURL, config: MySQLConfig, reactor: IReactorTime) -> adbapi.ConnectionPool:
    """The production pool of one database (:func:`pool_kwargs`)."""
    return adbapi.ConnectionPool(DRIVER, cp_reactor=reactor, **pool_kwargs(url, config))


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
        lost = failure.value is not None and lost_during_query(failure.value)
        if failure.value is None or not retryable(failure.value) or not self.pool.running:
            return self._uncertain(failure, interaction) if lost else failure
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
            d = self.pool.runInteraction(_on_new_connection, interaction, *args)
        else:
            d = self.pool.runInteraction(interaction, *args)
        return d.addErrback(self._failed_again, interaction, lost)

    def _failed_again(self, failure: Failure, interaction: Callable[..., Any],
                      lost: bool) -> Failure:
        """The second run failed too: uncertain if either run lost its connection mid-query."""
        if lost or (failure.value is not None and lost_during_query(failure.value)):
            return self._uncertain(failure, interaction)
        return failure

    def _uncertain(self, failure: Failure, interaction: Callable[..., Any]) -> Failure:
        operation = getattr(interaction, "__name__", repr(interaction))
        self.log.error("{store} {operation}: {error}; it may or may not have been done",
                       store=self.name, operation=operation, error=repr(failure.value))
        error = StoreUncertain(f"{self.name} {operation}: the connection was lost during a query"
                               f" ({failure.value!r}): it may or may not have been done")
        error.__cause__ = failure.value
        return Failure(error)


class Database:
    """One database: its pool, its runner (retry, then errors mapped to
    :class:`StoreUnavailable`), and its read batchers.

    Reads (PULL, HISTORY...) go through a :class:`ReadBatcher` with
    ``reads_in_flight`` batches at most: reads that queue meanwhile share the
    next trip to a pool thread (a hand-off and a reactor wake-up each cost more
    than the query). Reads that merge into one query (an interaction with a
    ``many``: the ``count_pending`` of every LOGIN) have a batcher of their own
    with one batch in flight, so that the counts that wait meanwhile are one
    query and one hand-off rather than a pool thread each."""

    def __init__(self, index: int, name: str, pool: adbapi.ConnectionPool,
                 reads_in_flight: int = 1, stats: ReadStats | None = None) -> None:
        self.index = index
        self.name = name
        self.pool = pool
        self.retrier = RetryOnce(pool, f"mysql message store {name}")
        self.runner = PoolRunner(cast(adbapi.ConnectionPool, self.retrier), self.retrier.name)
        self.reads = ReadBatcher(self.runner.run, max_in_flight=reads_in_flight, stats=stats)
        self.merged = ReadBatcher(self.runner.run, max_in_flight=1, stats=self.reads.stats)

    def run(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.runner.run(interaction, *args)

    def read(self, interaction: Callable[..., T], *args: Any) -> Deferred[T]:
        """A batched read: through ``merged`` if it merges, else ``reads``."""
        batcher = self.merged if hasattr(interaction, "many") else self.reads
        return batcher.read(interaction, *args)


#: MySQL error codes a connection fails with when the URL is wrong: a config error.
_URL_ERRORS = {
    1044: "access to the database is denied for this user",
    1045: "access denied (wrong user or password)",
    1049: "the database does not exist (create it: CREATE DATABASE {database})",
    2005: "unknown host",
}
#: ... and when the server is not there: the store is unavailable.
_SERVER_ERRORS = {
    2003: "cannot connect (is MySQL running and listening there?)",
}


def _tls_reason(text: str) -> str:
    """What went wrong with TLS, from pymysql's message, and what to check."""
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        reason = text[text.find("[SSL"):].rstrip(")") if "[SSL" in text else text
        return (f"{reason} (is ssl-ca the CA that signed the server's certificate, and does "
                "it name the URL's host for verify_identity?)")
    if "doesn't support" in text or "did not encrypt" in text:
        return f"{text} (turn TLS on in MySQL, or choose another ssl-mode)"
    return text


def check_reachable(db: Database, key: tuple[str, ...], database: str) -> Deferred[None]:
    """Open one connection of ``db``'s pool before anything else runs on it, so
    that start-up stops with one line saying what is wrong: a
    :class:`ConfigError` naming ``key`` (the config key of that URL) when the
    URL is, :class:`StoreUnavailable` when the server cannot be reached."""

    def connected(_: object) -> None:
        return None

    def explain(failure: Failure) -> Failure:
        error = failure.value
        args: tuple[Any, ...] = error.args if isinstance(error, pymysql.MySQLError) else ()
        code = args[0] if args else None
        text = str(args[1]) if len(args) > 1 else ""
        if code == TLS_ERROR or "[SSL" in text:
            raise ConfigError(f"{db.name}: TLS: {_tls_reason(text)}", key) from None
        if code in _URL_ERRORS:
            raise ConfigError(f"{db.name}: {_URL_ERRORS[code].format(database=database)}",
                              key) from None
        if code in _SERVER_ERRORS:
            raise StoreUnavailable(f"{db.name}: {_SERVER_ERRORS[code]}") from None
        return failure

    return db.pool.runWithConnection(lambda conn: None).addCallbacks(connected, explain)
