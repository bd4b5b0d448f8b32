# -*- test-case-name: tests.store.test_escalations -*-
"""Where offline escalations wait for their due time (logic's
:class:`~daojia_msg.logic.interfaces.IEscalations`; docs/operations.md §14).

- :class:`SQLiteEscalations`: one node, in ``escalations.db`` beside its
  message store (the embedded store's data dir): a restart keeps them.
- :class:`MemoryEscalations`: one node without a data dir of its own (its
  messages in MySQL, no Redis), in memory: a restart loses them.
- :class:`RedisEscalations`: the cluster's, shared by every node: a sorted
  set ``esc:due`` (msgid -> due Unix ms), a hash ``esc:e`` (msgid ->
  ``to_uid:to_appcode:first_due_ms:attempts``) and a hash ``esc:t`` (msgid ->
  the token of its claim). A claim is one script: it takes the due entries
  and moves each one's due time to the end of its lease, so no other node
  claims it meanwhile, and a node that dies holding it leaves it to be
  claimed again once the lease ran out. Finishing or retrying checks the
  token in the same script, so a claim whose lease ran out changes nothing.

Neither knows whether a message was ACKed: the escalator asks the message
store at due time (so an ACK on any node cancels without coordination).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from daojia_msg.core.escalation import Escalation, EscalationClaim
from daojia_msg.logic.interfaces import IEscalations
from daojia_msg.redisconn import Redis, Script
from daojia_msg.store.batching import GroupCommitter
from daojia_msg.store.dbpool import PoolRunner, close_pool
from daojia_msg.store.sqlite import sqlite_pool


@implementer(IEscalations)
class MemoryEscalations:
    """The schedule of one node: entries by msgid and a heap of due times
    (stale heap items, of entries finished or moved, are skipped, and dropped
    once they are most of the heap)."""

    def __init__(self) -> None:
        #: msgid -> [to_uid, to_appcode, first_due_ms, attempts, due_ms, token]
        self._entries: dict[int, list[Any]] = {}
        self._due: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def _at(self, msgid: int, due_ms: int) -> None:
        self._entries[msgid][4] = due_ms
        heapq.heappush(self._due, (due_ms, msgid))

    def schedule(self, entries: Sequence[Escalation]) -> Deferred[None]:
        for e in entries:
            if e.msgid not in self._entries:
                self._entries[e.msgid] = [e.to_uid, e.to_appcode, e.due_ms, 0, 0, ""]
                self._at(e.msgid, e.due_ms)
        return succeed(None)

    def claim(self, now_ms: int, lease_ms: int, limit: int,
              token: str) -> Deferred[list[EscalationClaim]]:
        claims: list[EscalationClaim] = []
        until = now_ms + lease_ms
        while self._due and self._due[0][0] <= now_ms and len(claims) < limit:
            due_ms, msgid = heapq.heappop(self._due)
            entry = self._entries.get(msgid)
            if entry is None or entry[4] != due_ms:
                continue  # finished, or moved since
            entry[5] = token
            self._at(msgid, until)
            claims.append(EscalationClaim(msgid, entry[0], entry[1], entry[2], entry[3], token,
                                          until))
        return succeed(claims)

    def _held(self, claim: EscalationClaim) -> list[Any] | None:
        entry = self._entries.get(claim.msgid)
        return entry if entry is not None and entry[5] == claim.token else None

    def finish(self, claim: EscalationClaim) -> Deferred[bool]:
        if self._held(claim) is None:
            return succeed(False)
        del self._entries[claim.msgid]
        self._compact()
        return succeed(True)

    def retry(self, claim: EscalationClaim, due_ms: int) -> Deferred[bool]:
        entry = self._held(claim)
        if entry is None:
            return succeed(False)
        entry[3] += 1
        entry[5] = ""
        self._at(claim.msgid, due_ms)
        return succeed(True)

    def cancel(self, msgids: Iterable[int]) -> Deferred[None]:
        for msgid in msgids:
            self._entries.pop(msgid, None)
        self._compact()
        return succeed(None)

    def _compact(self) -> None:
        """Drop the heap's stale slots (ACKed, finished or moved entries) once
        they are most of it, so memory follows the entries waiting, not every
        escalation of the last hour (a slot is ~130 bytes)."""
        if len(self._due) > 2 * len(self._entries) + 1024:
            self._due = [(e[4], msgid) for msgid, e in self._entries.items()]
            heapq.heapify(self._due)


# KEYS = due, entries, tokens. ARGV: (msgid, packed entry, due_ms)*.
SCHEDULE = Script("""
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i])
  end
end
return 0
""")

# KEYS = due, entries, tokens. ARGV: now_ms, lease_until_ms, limit, token.
# Returns a flat list: msgid, packed entry per claimed entry.
CLAIM = Script("""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', KEYS[3], id, ARGV[4])
    out[#out + 1] = id
    out[#out + 1] = entry
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
""")

# KEYS = due, entries, tokens. ARGV: msgid, token. 1 if the claim held.
FINISH = Script("""
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
""")

# KEYS = due, entries, tokens. ARGV: msgid, token, due_ms, packed entry.
RETRY = Script("""
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
""")

# KEYS = due, entries, tokens. ARGV: msgids.
CANCEL = Script("""
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
redis.call('HDEL', KEYS[3], unpack(ARGV))
return 0
""")


def _pack(to_uid: int, to_appcode: int, first_due_ms: int, attempts: int) -> str:
    return f"{to_uid}:{to_appcode}:{first_due_ms}:{attempts}"


def _claims(reply: list[Any], token: str, until: int) -> list[EscalationClaim]:
    claims = []
    for i in range(0, len(reply), 2):
        to_uid, to_appcode, first, attempts = (int(v) for v in bytes(reply[i + 1]).split(b":"))
        claims.append(EscalationClaim(int(reply[i]), to_uid, to_appcode, first, attempts, token,
                                      until))
    return claims


@implementer(IEscalations)
class RedisEscalations:
    """The cluster's schedule in Redis; see the module docstring. Every call
    fails with :class:`~daojia_msg.core.errors.StoreUnavailable` rather than
    hang (:class:`Redis` guards it)."""

    #: Entries per SCHEDULE call (a batch push may ask for 1,000).
    BATCH = 500

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.keys = [redis.key("esc", "due"), redis.key("esc", "e"), redis.key("esc", "t")]

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)  # the node closes its Redis connection

    def schedule(self, entries: Sequence[Escalation]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._schedule(entries))

    async def _schedule(self, entries: Sequence[Escalation]) -> None:
        for i in range(0, len(entries), self.BATCH):
            args: list[Any] = []
            for e in entries[i:i + self.BATCH]:
                args += [e.msgid, _pack(e.to_uid, e.to_appcode, e.due_ms, 0), e.due_ms]
            await SCHEDULE(self.redis, self.keys, args)

    def claim(self, now_ms: int, lease_ms: int, limit: int,
              token: str) -> Deferred[list[EscalationClaim]]:
        until = now_ms + lease_ms
        d = CLAIM(self.redis, self.keys, [now_ms, until, limit, token])
        return d.addCallback(_claims, token, until)

    def finish(self, claim: EscalationClaim) -> Deferred[bool]:
        return FINISH(self.redis, self.keys, [claim.msgid, claim.token]).addCallback(bool)

    def retry(self, claim: EscalationClaim, due_ms: int) -> Deferred[bool]:
        packed = _pack(claim.to_uid, claim.to_appcode, claim.first_due_ms, claim.attempts + 1)
        return RETRY(self.redis, self.keys,
                     [claim.msgid, claim.token, due_ms, packed]).addCallback(bool)

    def cancel(self, msgids: Iterable[int]) -> Deferred[None]:
        ids = list(msgids)
        if not ids:
            return succeed(None)
        return CANCEL(self.redis, self.keys, ids).addCallback(lambda _: None)


_CREATE = ("CREATE TABLE IF NOT EXISTS escalations (msgid INTEGER PRIMARY KEY, "
           "to_uid INTEGER NOT NULL, to_appcode INTEGER NOT NULL, first_due_ms INTEGER NOT NULL, "
           "attempts INTEGER NOT NULL DEFAULT 0, due_ms INTEGER NOT NULL, "
           "token TEXT NOT NULL DEFAULT '')",
           "CREATE INDEX IF NOT EXISTS escalations_due ON escalations (due_ms)")


def _create_txn(txn: Any) -> None:
    for statement in _CREATE:
        txn.execute(statement)


def _schedule_txn(txn: Any, entries: Sequence[Escalation]) -> None:
    txn.executemany("INSERT OR IGNORE INTO escalations (msgid, to_uid, to_appcode, first_due_ms,"
                    " due_ms) VALUES (?, ?, ?, ?, ?)",
                    [(e.msgid, e.to_uid, e.to_appcode, e.due_ms, e.due_ms) for e in entries])


def _claim_txn(txn: Any, now_ms: int, until: int, limit: int,
               token: str) -> list[EscalationClaim]:
    txn.execute("SELECT msgid, to_uid, to_appcode, first_due_ms, attempts FROM escalations"
                " WHERE due_ms <= ? ORDER BY due_ms LIMIT ?", (now_ms, limit))
    rows = txn.fetchall()
    txn.executemany("UPDATE escalations SET due_ms = ?, token = ? WHERE msgid = ?",
                    [(until, token, row[0]) for row in rows])
    return [EscalationClaim(msgid, to_uid, to_appcode, first, attempts, token, until)
            for msgid, to_uid, to_appcode, first, attempts in rows]


def _finish_txn(txn: Any, msgid: int, token: str) -> bool:
    txn.execute("DELETE FROM escalations WHERE msgid = ? AND token = ?", (msgid, token))
    return bool(txn.rowcount)


def _retry_txn(txn: Any, msgid: int, token: str, due_ms: int) -> bool:
    txn.execute("UPDATE escalations SET due_ms = ?, attempts = attempts + 1, token = ''"
                " WHERE msgid = ? AND token = ?", (due_ms, msgid, token))
    return bool(txn.rowcount)


def _cancel_txn(txn: Any, msgids: list[int]) -> None:
    txn.executemany("DELETE FROM escalations WHERE msgid = ?", [(m,) for m in msgids])


@implementer(IEscalations)
class SQLiteEscalations:
    """The schedule of one node in an SQLite file of its own (one connection
    on a thread of its own, as the message store's), so escalations outlive a
    restart. Every call is a write, group-committed as the message store's
    (:class:`~daojia_msg.store.batching.GroupCommitter`: what comes while a
    transaction runs goes in the next one; a finish per POST would otherwise
    cost a transaction each). :meth:`start` before use, :meth:`stop` at the
    end; a call fails with :class:`~daojia_msg.core.errors.StoreUnavailable`
    when the file cannot be used."""

    def __init__(self, path: str, reactor: IReactorTime,
                 pool: adbapi.ConnectionPool | None = None) -> None:
        self.path = path
        self.pool = pool if pool is not None else sqlite_pool(path, reactor)
        self._runner = PoolRunner(self.pool, "escalation schedule")
        self.committer = GroupCommitter(self._runner.run)

    def start(self) -> Deferred[None]:
        self.pool.start()
        return self._runner.run(_create_txn)

    def stop(self) -> Deferred[None]:
        def close(_: object) -> None:
            close_pool(self.pool, f"escalation schedule {self.path}")

        d = self.committer.drain().addCallback(lambda _: self._runner.when_idle())
        return d.addCallback(close)

    def schedule(self, entries: Sequence[Escalation]) -> Deferred[None]:
        return self.committer.submit(partial(_schedule_txn, entries=list(entries)),
                                     weight=len(entries))

    def claim(self, now_ms: int, lease_ms: int, limit: int,
              token: str) -> Deferred[list[EscalationClaim]]:
        return self.committer.submit(partial(_claim_txn, now_ms=now_ms, until=now_ms + lease_ms,
                                             limit=limit, token=token))

    def finish(self, claim: EscalationClaim) -> Deferred[bool]:
        return self.committer.submit(partial(_finish_txn, msgid=claim.msgid, token=claim.token))

    def retry(self, claim: EscalationClaim, due_ms: int) -> Deferred[bool]:
        return self.committer.submit(partial(_retry_txn, msgid=claim.msgid, token=claim.token,
                                             due_ms=due_ms))

    def cancel(self, msgids: Iterable[int]) -> Deferred[None]:
        ids = list(msgids)
        if not ids:
            return succeed(None)
        return self.committer.submit(partial(_cancel_txn, msgids=ids), weight=len(ids))
