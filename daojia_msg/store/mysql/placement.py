# -*- test-case-name: tests.store.mysql.test_placement -*-
"""Where the MySQL store's rows live: a uid's *slot* names a database and a
shard table.

Each database (``mysql.url`` first, then ``mysql.databases``, in that order)
holds ``shards`` tables of each kind::

    slot = uid % (shards * number_of_databases)
    database = slot // shards            table n = slot % shards

- a message row (``messages_<n>``, pending until ACKed) goes to its
  recipient's slot, so PULL and the pending count read one table;
- a history row (``history_<n>``) goes to its owner's slot, so a user's list
  is read from one table. It is a full copy of the message, content included:
  the message row may live in another database;
- a de-dup key (``dedup_<n>``) goes to its sender's slot: one sender key
  always maps to one table, so that table's primary key makes it unique
  cluster-wide. The key is ``(uid, appcode, SHA-256 of client_msg_id)``: a
  fixed 44 bytes whatever ``limits.max_id_len`` allows, compared as bytes.

Another ``shards`` or list of databases would put rows in other tables, so
:mod:`.schema` refuses to start with one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from daojia_msg.core.model import NewMessage
from daojia_msg.store.sql import history_rows, message_row

Key = tuple[int, int, bytes]
"""A de-dup key: ``(from_uid, from_appcode, sha256(client_msg_id))``."""

Rows = dict[int, list[tuple[Any, ...]]]
"""Rows by shard table n."""

Owners = dict[Key, tuple[int, str]]
"""The ``(msgid, logid)`` a de-dup key is recorded with."""


def dedup_key(new: NewMessage) -> Key | None:
    """The de-dup key of ``new``; None if it has no ``client_msg_id``."""
    if not new.client_msg_id:
        return None
    m = new.message
    return (m.from_uid, m.from_appcode, hashlib.sha256(new.client_msg_id.encode()).digest())


@dataclass(slots=True)
class Item:
    """One message of a flush, from the store op ``op`` (its index in the
    flush). ``first`` is False for a resend of a message earlier in the same
    flush (it is answered from that one, never written)."""

    op: int
    new: NewMessage
    key: Key | None
    created_ms: int
    first: bool

    @property
    def msgid(self) -> int:
        return self.new.message.msgid


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a uid's rows live (see the module docstring)."""

    shards: int
    databases: int

    def place(self, uid: int) -> tuple[int, int]:
        """``(database index, table n)`` of ``uid``."""
        return divmod(uid % (self.shards * self.databases), self.shards)

    def key_database(self, item: Item) -> int:
        """The database of ``item``'s de-dup key (its sender's)."""
        return self.place(item.new.message.from_uid)[0]

    def row_databases(self, item: Item) -> set[int]:
        """The databases ``item``'s message and history rows live in."""
        dbs = {self.place(row[1])[0] for row in history_rows(item.new)}
        dbs.add(self.place(item.new.message.to_uid)[0])
        return dbs

    def databases_of(self, item: Item) -> set[int]:
        """The databases ``item``'s rows and key live in."""
        dbs = self.row_databases(item)
        if item.key is not None:
            dbs.add(self.key_database(item))
        return dbs

    def message_rows(self, items: Iterable[Item]) -> dict[int, tuple[Rows, Rows]]:
        """Message and history rows of ``items``, by database, then by table."""
        out: dict[int, tuple[Rows, Rows]] = {}
        for i in items:
            m = i.new.message
            row = message_row(m)
            db, n = self.place(m.to_uid)
            out.setdefault(db, ({}, {}))[0].setdefault(n, []).append(row)
            for owner_sys, owner_uid, _, peer_uid in history_rows(i.new):
                db, n = self.place(owner_uid)
                history = out.setdefault(db, ({}, {}))[1].setdefault(n, [])
                history.append((owner_sys.encode(), owner_uid, peer_uid, *row))
        return out

    def key_rows(self, items: Iterable[Item]) -> dict[int, Rows]:
        """De-dup rows of the keyed ``items``, by database, then by table."""
        out: dict[int, Rows] = {}
        for i in items:
            if i.key is not None:
                db, n = self.place(i.key[0])
                m = i.new.message
                row = (*i.key, m.msgid, m.logid, i.created_ms)
                out.setdefault(db, {}).setdefault(n, []).append(row)
        return out
