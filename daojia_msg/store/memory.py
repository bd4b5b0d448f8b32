# -*- test-case-name: tests.store.test_memory -*-
"""The in-memory session store: the embedded default for one node."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from daojia_msg.core.model import SessionRecord
from daojia_msg.logic.interfaces import ISessionStore


@implementer(ISessionStore)
class MemorySessionStore:
    def __init__(self) -> None:
        # uid -> appcode -> record: a uid's sessions are one lookup away.
        self._by_uid: dict[int, dict[int, SessionRecord]] = {}

    def register(self, record: SessionRecord) -> Deferred[SessionRecord | None]:
        sessions = self._by_uid.setdefault(record.uid, {})
        old = sessions.get(record.appcode)
        sessions[record.appcode] = record
        return succeed(old if old is not None and old.session_id != record.session_id else None)

    def unregister(self, record: SessionRecord) -> Deferred[bool]:
        sessions = self._by_uid.get(record.uid, {})
        current = sessions.get(record.appcode)
        if current is None or current.session_id != record.session_id:
            return succeed(False)
        del sessions[record.appcode]
        if not sessions:
            del self._by_uid[record.uid]
        return succeed(True)

    def lookup(self, uid: int, appcode: int) -> Deferred[SessionRecord | None]:
        return succeed(self._by_uid.get(uid, {}).get(appcode))

    def lookup_many(self, keys: list[tuple[int, int]]) -> Deferred[list[SessionRecord | None]]:
        return succeed([self._by_uid.get(uid, {}).get(appcode) for uid, appcode in keys])

    def lookup_uid(self, uid: int) -> Deferred[list[SessionRecord]]:
        sessions = self._by_uid.get(uid, {})
        return succeed([sessions[a] for a in sorted(sessions)])

    def purge_node(self, node_id: int) -> Deferred[int]:
        gone = [r for s in self._by_uid.values() for r in s.values() if r.node_id == node_id]
        for record in gone:
            self.unregister(record)
        return succeed(len(gone))
