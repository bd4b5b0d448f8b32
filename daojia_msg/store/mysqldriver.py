# -*- test-case-name: tests.store.mysql.test_render -*-
"""pymysql as the MySQL store's DB-API module (``ConnectionPool(__name__, ...)``),
with one change: a transaction that sent its own ``COMMIT`` is not committed again.

``adbapi`` commits every interaction when it returns: one more round trip to
the server (and, in the pool's thread, one more wait for the GIL on the way
back). A flush of the message store already knows its last statement, so it
sends ``COMMIT`` in the same multi-statement query
(:func:`daojia_msg.store.mysql.render.execute_batch` with ``commit=True``),
then marks the connection :attr:`Connection.committed`; adbapi's ``commit()``
that follows costs nothing. Every other interaction (the reads) is committed
by adbapi as before. A statement that fails stops the query before the
``COMMIT``, and adbapi rolls the transaction back, as before.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any, cast

import pymysql
from pymysql import (  # noqa: F401 -- the DB-API names adbapi and the store use
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
    apilevel,
    paramstyle,
    threadsafety,
)


@functools.cache
def _preferred_tls_context() -> ssl.SSLContext:
    """PyMySQL's context for TLS "preferred" (no TLS option given), built once."""
    return cast(ssl.SSLContext, pymysql.connections.Connection._create_ssl_ctx(None, {}))


class Connection(pymysql.connections.Connection):
    #: The transaction was committed by its own last statement: the next
    #: ``commit()`` has nothing to do.
    committed = False

    def _create_ssl_ctx(self, sslp: Any) -> Any:
        """PyMySQL 2 tries TLS on every connection that names no TLS option
        ("preferred": encrypted when the server offers it, the certificate
        not verified), and for that builds a new context each time, loading
        the system's CA bundle that an unverified context never reads: ~25 ms
        of a connection's ~27 ms to a local MariaDB (BENCHMARKS.md, "A MySQL
        connection without a new TLS context"), paid by every pool thread at
        every reconnect, e.g. after a MariaDB restart. That context is built
        once and shared (an ``SSLContext`` is safe to share between threads);
        any explicit TLS option builds its own, as before."""
        if isinstance(sslp, dict) and not sslp:
            return _preferred_tls_context()
        return super()._create_ssl_ctx(sslp)

    def commit(self) -> None:
        if self.committed:
            self.committed = False
            return
        super().commit()

    def rollback(self) -> None:
        self.committed = False
        super().rollback()


def tls_options(mode: str, ca: str = "") -> dict[str, Any]:
    """The pymysql options of a ``mysql://`` URL's ``ssl-mode`` and ``ssl-ca``
    (:data:`daojia_msg.config.MYSQL_SSL_MODES`): none for ``preferred``
    (pymysql's own default), ``ssl_disabled`` for ``disabled``, else a context:
    ``required`` encrypts without checking the certificate, ``verify_ca``
    checks it against ``ca`` (or the system's CAs), ``verify_identity`` also
    that it names the host. That a required connection did get TLS is checked
    once it is open (:func:`daojia_msg.store.mysql.pools.configure_connection`):
    pymysql before 2.2 goes on in plain text when the server has no TLS."""
    if mode == "preferred":
        return {}
    if mode == "disabled":
        return {"ssl_disabled": True}
    context = ssl.create_default_context(cafile=ca or None)
    if mode == "required":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = mode == "verify_identity"
    return {"ssl": context}


def connect(*args: Any, **kwargs: Any) -> Connection:
    return Connection(*args, **kwargs)


def mark_committed(txn: Any) -> None:
    """The transaction of ``txn`` (an adbapi transaction or a cursor) just
    committed with its own ``COMMIT``; a connection that is not this module's
    is committed again by adbapi, which is harmless."""
    connection = getattr(txn, "connection", None)
    if isinstance(connection, Connection):
        connection.committed = True
