# -*- test-case-name: tests.store.test_redis -*-
"""The cluster session store: ``(uid, appcode) -> SessionRecord`` in Redis.

Key layout (every key starts with the node's ``redis.key_prefix``, written
``P`` here):

``P sess:<uid>`` -- hash
    field ``<appcode>`` -> ``<node_id>|<session_id>|<since_ms>``. The session id
    is what lies between the first and the last ``|``, so it may itself hold
    ``|``. A uid's sessions on all appcodes are one ``HGETALL`` away; Redis
    drops the hash when its last field goes.
``P nodesess:<node_id>`` -- set
    of ``<uid>:<appcode>`` members, the sessions the node holds, so that
    :meth:`RedisSessionStore.purge_node` finds a dead node's sessions without
    scanning. The hash is the truth: a member whose field no longer names the
    node is skipped by the purge.

Every write is one Lua script, so it is atomic and one round trip:

- ``register`` reads the old field, writes the new one, moves the member from
  the old node's set to the new node's, and returns the old value;
- ``unregister`` deletes the field only if it still holds the session id (a
  late close on node A never erases a newer login on node B);
- ``purge_node`` pops up to :data:`PURGE_BATCH` members of the node's set per
  call and deletes the fields that still name the node.

After a Redis outage a node re-registers the sessions it kept
(:meth:`RedisSessionStore.reregister`, docs/operations.md §3): while its
lease still holds its token, each session is written again unless the field
names a session of another node that logged in no earlier (a newer login
elsewhere wins: the node kicks its own); the members of the node's set that
it did not re-register are then pruned (sessions closed during the outage,
whose unregister failed). ``P rejoin:<node_id>:<nonce>`` -- set, the members
re-registered, for that prune; it expires after a minute.

The scripts build the keys they touch from the prefix (the old node's set is
only known inside the script), so this needs one Redis server (or Sentinel),
not Redis Cluster -- which txredisapi does not speak anyway.

uids, appcodes and node ids go to Lua as decimal strings and are never turned
into Lua numbers (doubles), so a uid of ``2**64 - 1`` round-trips exactly.

Failures: every call fails with :class:`StoreUnavailable`, never hangs. On top
of :class:`~daojia_msg.redisconn.Redis` (reply timeout, error mapping)
this store fails at once when the pool has no live connection (txredisapi
would otherwise queue the command until it reconnects, txredisapi#112) and
puts a deadline of 1.5 reply timeouts on each call as a backstop.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import SessionRecord
from daojia_msg.logic.interfaces import ISessionStore
from daojia_msg.redisconn import Redis, Script, as_deferred

T = TypeVar("T")

#: Members of a node's set handled by one purge script call.
PURGE_BATCH = 500

# KEYS[1] = the uid's hash. ARGV: appcode, new value, member, node set key
# prefix, new node id. Returns the old value or nil.
REGISTER = Script("""
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then
  local old_node = string.match(old, '^([^|]*)|')
  if old_node and old_node ~= ARGV[5] then
    redis.call('SREM', ARGV[4] .. old_node, ARGV[3])
  end
end
redis.call('SADD', ARGV[4] .. ARGV[5], ARGV[3])
return old
""")

# KEYS[1] = the uid's hash. ARGV: appcode, session id, member, node set key
# prefix. Returns 1 if it removed the session, else 0.
UNREGISTER = Script("""
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local node, session_id = string.match(value, '^([^|]*)|(.*)|[^|]*$')
if session_id ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', ARGV[4] .. node, ARGV[3])
return 1
""")

# KEYS = the uids' hashes, ARGV = their appcodes (same order). Returns each
# field's value or nil.
LOOKUP_MANY = Script("""
local out = {}
for i = 1, #KEYS do
    out[i] = redis.call('HGET', KEYS[i], ARGV[i]) or false
end
return out
""")

# Lua: drop(hash key prefix, member, node id) deletes the session a node set's
# member ("<uid>:<appcode>") names if its field still names that node; 1 if so.
DROP = """
local function drop(prefix, member, node)
  local uid, appcode = string.match(member, '^(.*):([^:]*)$')
  if not uid then return 0 end
  local key = prefix .. uid
  local value = redis.call('HGET', key, appcode)
  if value and string.match(value, '^([^|]*)|') == node then
    redis.call('HDEL', key, appcode)
    return 1
  end
  return 0
end
"""

# KEYS[1] = the node's set, KEYS[2] (optional) = the node's registration.
# ARGV: hash key prefix, node id, batch size. Returns {sessions removed,
# members left in the set}.
PURGE = Script(DROP + """
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, 0}  -- the node is alive (again): nothing of it is purged
end
local members = redis.call('SPOP', KEYS[1], ARGV[3])
local removed = 0
for _, member in ipairs(members) do
  removed = removed + drop(ARGV[1], member, ARGV[2])
end
return {removed, redis.call('SCARD', KEYS[1])}
""")


# KEYS[1] = the node's lease, KEYS[2] = the re-registration set. ARGV: lease
# token, hash key prefix, node set key prefix, node id, then per session: uid,
# appcode, value, since_ms. Returns -1 when the lease is not the token's, else
# per session 0 (registered), 1 (a session of another node logged in no
# earlier: kept, ours must go) or the value of the older session of another
# node it replaced (that node must kick it).
REREGISTER = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local mine = ARGV[3] .. ARGV[4]
local out = {}
for i = 5, #ARGV, 4 do
  local key = ARGV[2] .. ARGV[i]
  local member = ARGV[i] .. ':' .. ARGV[i + 1]
  local cur = redis.call('HGET', key, ARGV[i + 1])
  local verdict = 0
  if cur and cur ~= ARGV[i + 2] then
    local node, since = string.match(cur, '^([^|]*)|.*|([^|]*)$')
    if node and node ~= ARGV[4] then
      if tonumber(since) and tonumber(since) >= tonumber(ARGV[i + 3]) then
        verdict = 1
      else
        verdict = cur
        redis.call('SREM', ARGV[3] .. node, member)
      end
    end
  end
  if verdict ~= 1 then
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
    redis.call('SADD', mine, member)
    redis.call('SADD', KEYS[2], member)
  end
  out[#out + 1] = verdict
end
redis.call('PEXPIRE', KEYS[2], 60000)
return out
""")

# KEYS[1] = the node's lease, KEYS[2] = the node's set, KEYS[3] = the
# re-registration set. ARGV: lease token, hash key prefix, node id. Deletes the
# sessions of the node's set that were not re-registered and still name the
# node; -1 when the lease is not the token's, else how many.
PRUNE = Script(DROP + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local removed = 0
for _, member in ipairs(redis.call('SDIFF', KEYS[2], KEYS[3])) do
  removed = removed + drop(ARGV[2], member, ARGV[3])
  redis.call('SREM', KEYS[2], member)
end
redis.call('DEL', KEYS[3])
return removed
""")

#: Sessions re-registered per script call (one call holds Redis for about a
#: millisecond per hundred).
REREGISTER_BATCH = 500


@dataclass(frozen=True, slots=True)
class Reregistered:
    """What :meth:`RedisSessionStore.reregister` did."""

    #: The sessions registered again: they stay.
    kept: list[SessionRecord]
    #: This node's sessions that a newer login elsewhere replaced: kick them.
    newer_elsewhere: list[SessionRecord]
    #: Older sessions of other nodes that ours replaced: those nodes must kick them.
    replaced: list[SessionRecord]
    #: Sessions of this node's set that were not live any more, removed.
    pruned: int


def encode(record: SessionRecord) -> bytes:
    return f"{record.node_id}|{record.session_id}|{record.since_ms}".encode()


def _decode_many(values: list[Any], keys: list[tuple[int, int]]) -> list[SessionRecord | None]:
    return [None if v is None else decode(uid, appcode, v)
            for (uid, appcode), v in zip(keys, values, strict=True)]


def _decode_one(value: Any, uid: int, appcode: int) -> SessionRecord | None:
    return None if value is None else decode(uid, appcode, value)


def _replaced(old: Any, record: SessionRecord) -> SessionRecord | None:
    """``register``'s answer: the session ``record`` replaced, if another."""
    if old is None:
        return None
    previous = decode(record.uid, record.appcode, old)
    return previous if previous.session_id != record.session_id else None


def decode(uid: int, appcode: int, value: Any) -> SessionRecord:
    """The record of a hash field's value (``bytes``; txredisapi may hand
    back other types for values that look like numbers, which ours never do)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    node, rest = text.split("|", 1)
    session_id, since = rest.rsplit("|", 1)
    return SessionRecord(uid, appcode, int(node), session_id, int(since))


@implementer(ISessionStore)
class RedisSessionStore:
    """Sessions of the whole cluster in Redis; see the module docstring.

    ``node_id`` is the node this store runs on (for logs and callers); every
    method takes the node from the record or argument. Every call fails with
    :class:`StoreUnavailable` rather than hang (:class:`Redis` guards it).
    """

    def __init__(self, redis: Redis, node_id: int) -> None:
        self.redis = redis
        self.node_id = node_id

    # -- the interface ---------------------------------------------------

    # register and lookup run on every LOGIN (lookup on every push in a
    # cluster too): Deferred callbacks, no coroutine per call.

    def register(self, record: SessionRecord) -> Deferred[SessionRecord | None]:
        d = REGISTER(
            self.redis,
            [self.redis.key("sess", record.uid)],
            [
                record.appcode,
                encode(record),
                f"{record.uid}:{record.appcode}",
                self.redis.key("nodesess", ""),
                record.node_id,
            ],
        )
        return d.addCallback(_replaced, record)

    def unregister(self, record: SessionRecord) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._unregister(record))

    def lookup(self, uid: int, appcode: int) -> Deferred[SessionRecord | None]:
        d = as_deferred(self.redis.call("HGET", self.redis.key("sess", uid), appcode))
        return d.addCallback(_decode_one, uid, appcode)

    def lookup_uid(self, uid: int) -> Deferred[list[SessionRecord]]:
        return Deferred.fromCoroutine(self._lookup_uid(uid))

    def lookup_many(self, keys: list[tuple[int, int]]) -> Deferred[list[SessionRecord | None]]:
        """One script call for every key (a push batch's recipients)."""
        if not keys:
            return succeed([])
        d = LOOKUP_MANY(self.redis, [self.redis.key("sess", uid) for uid, _ in keys],
                        [appcode for _, appcode in keys])
        return d.addCallback(_decode_many, keys)

    def purge_node(self, node_id: int) -> Deferred[int]:
        return Deferred.fromCoroutine(self._purge_node(node_id))

    def purge_dead_node(self, node_id: int, alive_key: str) -> Deferred[int]:
        """:meth:`purge_node`, but each batch only while ``alive_key`` (the
        node's registration) does not exist, checked in the same script: a node
        that re-registers between the detector's check and the purge keeps
        its sessions."""
        return Deferred.fromCoroutine(self._purge_node(node_id, alive_key))

    def reregister(self, node_id: int, records: list[SessionRecord], lease: tuple[str, str]
                   ) -> Deferred[Reregistered]:
        """Register this node's live ``records`` again after an outage, only
        while ``lease`` (its key and token) is this node's, and prune the other
        members of the node's set (module docstring). Fails with
        :class:`StoreUnavailable` when Redis fails or the lease is not ours."""
        return Deferred.fromCoroutine(self._reregister(node_id, records, lease))

    # -- the flows -------------------------------------------------------

    async def _reregister(self, node_id: int, records: list[SessionRecord],
                          lease: tuple[str, str]) -> Reregistered:
        lease_key, token = lease
        scratch = self.redis.key("rejoin", node_id, secrets.token_hex(8))
        done = Reregistered([], [], [], 0)
        for i in range(0, len(records), REREGISTER_BATCH):
            batch = records[i:i + REREGISTER_BATCH]
            args: list[Any] = [token, self.redis.key("sess", ""), self.redis.key("nodesess", ""),
                               node_id]
            for r in batch:
                args += [r.uid, r.appcode, encode(r), r.since_ms]
            verdicts = await REREGISTER(self.redis, [lease_key, scratch], args)
            if verdicts == -1:
                raise StoreUnavailable(f"the lease of node {node_id} is not ours any more")
            for record, verdict in zip(batch, verdicts, strict=True):
                if verdict == 0:
                    done.kept.append(record)
                elif verdict == 1:
                    done.newer_elsewhere.append(record)
                else:
                    done.kept.append(record)
                    done.replaced.append(decode(record.uid, record.appcode, verdict))
        pruned = await PRUNE(self.redis, [lease_key, self.redis.key("nodesess", node_id), scratch],
                             [token, self.redis.key("sess", ""), node_id])
        if pruned == -1:
            raise StoreUnavailable(f"the lease of node {node_id} is not ours any more")
        return dataclasses.replace(done, pruned=int(pruned))


    async def _unregister(self, record: SessionRecord) -> bool:
        removed = await UNREGISTER(
            self.redis,
            [self.redis.key("sess", record.uid)],
            [
                record.appcode,
                record.session_id.encode(),
                f"{record.uid}:{record.appcode}",
                self.redis.key("nodesess", ""),
            ],
        )
        return bool(removed)

    async def _lookup_uid(self, uid: int) -> list[SessionRecord]:
        reply = await self.redis.call("HGETALL", self.redis.key("sess", uid))
        # A flat [field, value, ...] list; fields come back as int (txredisapi
        # converts what looks like a number) or bytes: int() takes both.
        records = [decode(uid, int(f), v) for f, v in zip(reply[::2], reply[1::2], strict=True)]
        return sorted(records, key=lambda r: r.appcode)

    async def _purge_node(self, node_id: int, alive_key: str | None = None) -> int:
        """Batches of :data:`PURGE_BATCH` members until the set is empty (Redis
        then drops it). Sessions the node registers meanwhile cannot keep this
        going: it stops after the batches the first reply called for."""
        total, left = await self._purge_batch(node_id, alive_key)
        for _ in range(-(-left // PURGE_BATCH)):
            if not left:
                break
            removed, left = await self._purge_batch(node_id, alive_key)
            total += removed
        return total

    async def _purge_batch(self, node_id: int, alive_key: str | None) -> tuple[int, int]:
        removed, left = await PURGE(
            self.redis,
            [self.redis.key("nodesess", node_id), *([alive_key] if alive_key else [])],
            [self.redis.key("sess", ""), node_id, PURGE_BATCH],
        )
        return int(removed), int(left)
