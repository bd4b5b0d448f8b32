# -*- test-case-name: tests.store.mysql -*-
"""The cluster message store: MySQL or MariaDB, through pymysql on
``twisted.enterprise.adbapi``, one ``ConnectionPool`` per database, rows
spread over shard tables and databases by uid.

- :mod:`.store`: :class:`MySQLMessageStore`, the :class:`IMessageStore`;
- :mod:`.placement`: the database and table of a uid's rows;
- :mod:`.flush`: a flush of group-committed writes, on one database;
- :mod:`.across`: a flush whose rows span several databases;
- :mod:`.counts`: the pending counts of many logins in one query;
- :mod:`.render`: SQL text, values as literals, statements sent together;
- :mod:`.schema`: the tables and their migrations;
- :mod:`.pools`: connection settings and the retry policy.
"""

from __future__ import annotations

from daojia_msg.store.mysql.placement import Placement
from daojia_msg.store.mysql.pools import DRIVER, needs_new_connection, pool_kwargs, retryable
from daojia_msg.store.mysql.render import (
    STATEMENT_SEPARATOR,
    execute_batch,
    flush_renderers,
    sql_literal,
    sql_row,
)
from daojia_msg.store.mysql.schema import SCHEMA_VERSION
from daojia_msg.store.mysql.store import FLUSHES_IN_FLIGHT, MySQLMessageStore

__all__ = [
    "DRIVER",
    "FLUSHES_IN_FLIGHT",
    "SCHEMA_VERSION",
    "STATEMENT_SEPARATOR",
    "MySQLMessageStore",
    "Placement",
    "execute_batch",
    "flush_renderers",
    "needs_new_connection",
    "pool_kwargs",
    "retryable",
    "sql_literal",
    "sql_row",
]
