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

from typing import Any

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


class Connection(pymysql.connections.Connection):
    #: The transaction was committed by its own last statement: the next
    #: ``commit()`` has nothing to do.
    committed = False

    def commit(self) -> None:
        if self.committed:
            self.committed = False
            return
        super().commit()

    def rollback(self) -> None:
        self.committed = False
        super().rollback()


def connect(*args: Any, **kwargs: Any) -> Connection:
    return Connection(*args, **kwargs)


def mark_committed(txn: Any) -> None:
    """The transaction of ``txn`` (an adbapi transaction or a cursor) just
    committed with its own ``COMMIT``; a connection that is not this module's
    is committed again by adbapi, which is harmless."""
    connection = getattr(txn, "connection", None)
    if isinstance(connection, Connection):
        connection.committed = True
