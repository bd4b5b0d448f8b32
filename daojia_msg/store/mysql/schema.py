# -*- test-case-name: tests.store.mysql.test_schema -*-
"""The MySQL store's tables, and their creation and migration at start.

Each database's ``schema_version`` row records the schema version,
``shards`` and the database's place in the list. A start with another
``shards`` or another list of databases is refused: rows would then be looked
for in the wrong tables (moving them is a data migration). Nodes that start at
the same time migrate a database one after the other (a named lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pymysql

from daojia_msg.core.errors import StoreError
from daojia_msg.store.mysql.render import sql

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


@dataclass(frozen=True, slots=True)
class AddKey:
    """``ALTER TABLE table ADD KEY name (columns)`` unless the table has that
    key already (``information_schema``): an index added in a migration that
    may run again (MySQL has no ``ADD KEY IF NOT EXISTS``; MariaDB has).
    Built online (``ALGORITHM=INPLACE, LOCK=NONE``): writes go on meanwhile."""

    table: str
    name: str
    columns: str

    def __contains__(self, text: str) -> bool:  # "{n}" in statement: per shard table
        return text in self.table

    def format(self, n: int) -> AddKey:
        return AddKey(self.table.format(n=n), self.name, self.columns)


# Each entry migrates the schema from version i to i + 1; append, never edit.
# Statements with "{n}" run once per shard table. MySQL commits DDL at once,
# so every statement must be safe to run again (a start that died half-way
# through a migration runs all of it again).
MIGRATIONS: list[tuple[str | AddKey, ...]] = [
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
    # 2: history rows by age, for the retention's deletes (store.history_days).
    (AddKey("history_{n}", "age", "msgid"),),
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


def migrate_txn(
    txn: Any, name: str, index: int, count: int, shards: int, wait_s: int
) -> tuple[int, int]:
    """Create or migrate the schema of database ``index`` of ``count`` (named
    ``name`` in errors), under the schema lock (asked for ``wait_s`` at a
    time, :data:`SCHEMA_LOCK_WAIT_S` in all); refuse another shard count or
    list of databases. Returns the version found and the server's
    ``max_allowed_packet``."""
    for _ in range(max(1, int(SCHEMA_LOCK_WAIT_S / wait_s))):
        txn.execute(sql(f"SELECT GET_LOCK({SCHEMA_LOCK}, ?)"), (wait_s,))
        if txn.fetchone()[0] == 1:
            break
    else:
        raise StoreError(f"{name}: another node holds the schema lock (still migrating?)")
    try:
        found = _migrate_locked_txn(txn, name, index, count, shards)
    finally:
        try:
            txn.execute(f"SELECT RELEASE_LOCK({SCHEMA_LOCK})")
        except pymysql.err.Error:
            pass  # a dead connection releases its locks; the first error matters
    txn.execute("SELECT @@max_allowed_packet")
    return found, int(txn.fetchone()[0])


def _migrate_locked_txn(txn: Any, name: str, index: int, count: int, shards: int) -> int:
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
                _execute(txn, statement if n is None else statement.format(n=n))
    if found < SCHEMA_VERSION:
        txn.execute(sql(UPDATE_SCHEMA), (SCHEMA_VERSION,))
    return found


def _execute(txn: Any, statement: str | AddKey) -> None:
    if isinstance(statement, str):
        txn.execute(statement)
        return
    txn.execute(sql("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA ="
                    " DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ?"),
                (statement.table, statement.name))
    if not txn.fetchone()[0]:
        txn.execute(f"ALTER TABLE {statement.table} ADD KEY {statement.name}"
                    f" ({statement.columns}), ALGORITHM=INPLACE, LOCK=NONE")
