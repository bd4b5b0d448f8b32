# -*- test-case-name: tests.store.test_offers -*-
"""Nearby order offers (:class:`IOfferStore`): in memory on one node, in
Redis in a cluster, where every node's ticker takes due work from one sorted
set, so an offer's waves and expiry go on when the node that created it dies.

Redis key layout (``P``: the node's ``redis.key_prefix``):

``P offer:<id>`` -- hash
    the offer as created (``a`` appcode, ``la``/``lo`` position, ``mt``
    msgtype, ``c`` content, ``l`` logid, ``w`` waves as JSON, ``cr`` created
    and ``dl`` deadline ms), and what changes: ``s`` state, ``win`` winner
    uid, ``n`` next wave, ``p`` wave being pushed (-1: none) with ``wu`` its
    uids (comma-separated), ``nt`` 1 once the outcome was told.
``P offer:<id>:to`` -- list
    every uid pushed to, in push order (``pushed_to``).
``P offer:<id>:offered`` -- set
    the same uids: who may accept.
``P offers:due`` -- sorted set
    member the offer id, score the Unix ms its next work (a wave, the expiry,
    telling the outcome) is due. A claim moves the score to the end of a
    lease, so work a node took and did not finish is due again then.

The three keys of an offer expire :data:`~daojia_msg.core.offers.KEEP_S`
after its deadline. Every change of state is one script: an accept checks
and takes the offer in one step, so of concurrent accepts exactly one wins
across the cluster, and only one call ever expires an offer.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.offers import (
    ACCEPTED,
    EXPIRED,
    KEEP_S,
    OPEN,
    AcceptResult,
    NewOffer,
    Offer,
    waves_from_json,
)
from daojia_msg.logic.interfaces import IOfferStore
from daojia_msg.redisconn import Redis, Script

KEEP_MS = KEEP_S * 1000


@dataclass(eq=False)
class _Entry:
    spec: NewOffer
    state: str = OPEN
    winner: int | None = None
    pushed: list[int] = field(default_factory=list)
    offered: set[int] = field(default_factory=set)
    next_wave: int = 0
    pushing: int = -1
    wave_uids: tuple[int, ...] = ()
    notified: bool = False

    def offer(self) -> Offer:
        return Offer(self.spec, self.state, self.winner, tuple(self.pushed), self.next_wave,
                     self.pushing, self.wave_uids, self.notified)


#: Offers one node keeps in memory at most (content included: up to
#: ``limits.max_content`` each until told).
MAX_MEMORY_OFFERS = 100_000


@implementer(IOfferStore)
class MemoryOffers:
    """The offers of one node in dicts; due work in a heap (entries whose
    time changed are skipped when popped). An offer is forgotten
    :data:`~daojia_msg.core.offers.KEEP_S` after its deadline, by the next
    :meth:`claim`."""

    def __init__(self, max_offers: int = MAX_MEMORY_OFFERS) -> None:
        #: Offers kept at most (open, or decided and kept for GET); beyond,
        #: a new one is refused (POST /v1/offers: 503).
        self.max_offers = max_offers
        self._offers: dict[int, _Entry] = {}
        #: offer id -> when its work is due; and the heap of (due, id).
        self._due: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []
        #: (forget at, id), earliest first.
        self._kept: list[tuple[int, int]] = []

    def _schedule(self, offer_id: int, due_ms: int) -> None:
        self._due[offer_id] = due_ms
        heapq.heappush(self._heap, (due_ms, offer_id))

    def create(self, offer: NewOffer, due_ms: int) -> Deferred[None]:
        if len(self._offers) >= self.max_offers:
            return fail(StoreUnavailable(
                f"{self.max_offers} offers are kept on this node (until a day past their "
                "deadlines): no room for another"))
        self._offers[offer.offer_id] = _Entry(offer)
        self._schedule(offer.offer_id, due_ms)
        heapq.heappush(self._kept, (offer.deadline_ms + KEEP_MS, offer.offer_id))
        return succeed(None)

    def claim(self, now_ms: int, lease_until_ms: int, limit: int) -> Deferred[list[int]]:
        while self._kept and self._kept[0][0] <= now_ms:
            _, gone = heapq.heappop(self._kept)
            self._offers.pop(gone, None)
            self._due.pop(gone, None)
        taken: list[int] = []
        while self._heap and self._heap[0][0] <= now_ms and len(taken) < limit:
            due, offer_id = heapq.heappop(self._heap)
            if self._due.get(offer_id) == due:
                taken.append(offer_id)
        for offer_id in taken:
            self._schedule(offer_id, lease_until_ms)
        return succeed(taken)

    def load(self, offer_id: int) -> Deferred[Offer | None]:
        entry = self._offers.get(offer_id)
        return succeed(entry.offer() if entry is not None else None)

    def begin_wave(self, offer_id: int, wave: int, uids: list[int],
                   now_ms: int) -> Deferred[bool]:
        e = self._offers.get(offer_id)
        if (e is None or e.state != OPEN or e.next_wave != wave or e.pushing != -1
                or now_ms >= e.spec.deadline_ms):
            return succeed(False)
        e.pushed.extend(uids)
        e.offered.update(uids)
        e.pushing, e.wave_uids = wave, tuple(uids)
        return succeed(True)

    def end_wave(self, offer_id: int, wave: int, due_ms: int) -> Deferred[bool]:
        e = self._offers.get(offer_id)
        if e is None or e.state != OPEN or e.next_wave != wave:
            return succeed(False)
        e.next_wave, e.pushing, e.wave_uids = wave + 1, -1, ()
        self._schedule(offer_id, due_ms)
        return succeed(True)

    def reschedule(self, offer_id: int, due_ms: int) -> Deferred[None]:
        e = self._offers.get(offer_id)
        if e is not None and e.state == OPEN:
            self._schedule(offer_id, due_ms)
        return succeed(None)

    def accept(self, offer_id: int, appcode: int, uid: int, now_ms: int,
               lease_until_ms: int) -> Deferred[AcceptResult]:
        e = self._offers.get(offer_id)
        if e is None or e.spec.appcode != appcode or uid not in e.offered:
            return succeed(AcceptResult.NOT_OFFERED)
        if e.state == ACCEPTED:
            return succeed(AcceptResult.AGAIN if e.winner == uid else AcceptResult.TAKEN)
        if e.state == EXPIRED or now_ms >= e.spec.deadline_ms:
            return succeed(AcceptResult.EXPIRED)
        e.state, e.winner = ACCEPTED, uid
        self._schedule(offer_id, lease_until_ms)
        return succeed(AcceptResult.WON)

    def expire(self, offer_id: int, now_ms: int, lease_until_ms: int) -> Deferred[bool]:
        e = self._offers.get(offer_id)
        if e is None or e.state != OPEN or now_ms < e.spec.deadline_ms:
            return succeed(False)
        e.state = EXPIRED
        self._schedule(offer_id, lease_until_ms)
        return succeed(True)

    def hold(self, offer_id: int, until_ms: int) -> Deferred[None]:
        e = self._offers.get(offer_id)
        if e is not None and e.state != OPEN and not e.notified:
            self._schedule(offer_id, until_ms)
        return succeed(None)

    def notified(self, offer_id: int) -> Deferred[None]:
        e = self._offers.get(offer_id)
        if e is not None:
            e.notified = True
            e.spec = replace(e.spec, content=b"")  # told: only GET reads it now
        self._due.pop(offer_id, None)
        return succeed(None)

    def forget(self, offer_id: int) -> Deferred[None]:
        self._due.pop(offer_id, None)
        return succeed(None)

    def __len__(self) -> int:
        return len(self._offers)


# KEYS = hash, due. ARGV: id, expires at, due, then field/value pairs.
CREATE = Script("""
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
""")

# KEYS = due. ARGV: now, lease until, limit.
CLAIM = Script("""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
""")

# KEYS = hash, list. Returns {flat hash, list}.
LOAD = Script("""
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
""")

# KEYS = hash, list, set. ARGV: wave, now, uids joined by commas, uids...
BEGIN_WAVE = Script("""
local s = redis.call('HMGET', KEYS[1], 's', 'n', 'p', 'dl')
if s[1] ~= 'open' or s[2] ~= ARGV[1] or s[3] ~= '-1' or tonumber(ARGV[2]) >= tonumber(s[4]) then
  return 0
end
if #ARGV > 3 then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
  redis.call('SADD', KEYS[3], unpack(ARGV, 4))
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'wu', ARGV[3])
return 1
""")

# KEYS = hash, due. ARGV: wave, due, id.
END_WAVE = Script("""
local s = redis.call('HMGET', KEYS[1], 's', 'n')
if s[1] ~= 'open' or s[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'n', tonumber(ARGV[1]) + 1, 'p', -1, 'wu', '')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
""")

# KEYS = hash, due. ARGV: due, id.
RESCHEDULE = Script("""
if redis.call('HGET', KEYS[1], 's') == 'open' then redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]) end
return 1
""")

# KEYS = hash, set, due. ARGV: appcode, uid, now, lease until, id.
ACCEPT = Script("""
local s = redis.call('HMGET', KEYS[1], 's', 'a', 'dl', 'win')
if not s[1] or s[2] ~= ARGV[1] or redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then
  return 'not offered'
end
if s[1] == 'accepted' then
  if s[4] == ARGV[2] then return 'again' end
  return 'offer taken'
end
if s[1] == 'expired' or tonumber(ARGV[3]) >= tonumber(s[3]) then return 'offer expired' end
redis.call('HSET', KEYS[1], 's', 'accepted', 'win', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 'won'
""")

# KEYS = hash, due. ARGV: now, lease until, id.
EXPIRE = Script("""
local s = redis.call('HMGET', KEYS[1], 's', 'dl')
if s[1] ~= 'open' or tonumber(ARGV[1]) < tonumber(s[2]) then return 0 end
redis.call('HSET', KEYS[1], 's', 'expired')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
""")

# KEYS = hash, due. ARGV: id.
# KEYS = hash, due. ARGV: until, id.
HOLD = Script("""
local s = redis.call('HMGET', KEYS[1], 's', 'nt')
if s[1] and s[1] ~= 'open' and s[2] ~= '1' then redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]) end
return 1
""")

NOTIFIED = Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'nt', 1) end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
""")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _uids(text: str) -> tuple[int, ...]:
    return tuple(int(u) for u in text.split(",") if u)


def _offer(offer_id: int, reply: list[Any]) -> Offer | None:
    flat, pushed = reply
    if not flat:
        return None
    h = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
    spec = NewOffer(
        offer_id, int(h["a"]), float(h["la"]), float(h["lo"]), int(h["mt"]), bytes(h["c"]),
        _text(h["l"]), waves_from_json(h["w"]), int(h["cr"]), int(h["dl"]))
    winner = h.get("win")
    return Offer(spec, _text(h["s"]), int(winner) if winner else None,
                 tuple(int(u) for u in pushed), int(h["n"]), int(h["p"]),
                 _uids(_text(h.get("wu", b""))), _text(h.get("nt", b"0")) == "1")


@implementer(IOfferStore)
class RedisOffers:
    """The offers of the whole cluster in Redis; see the module docstring.
    Every call fails with :class:`~daojia_msg.core.errors.StoreUnavailable`
    rather than hang (:class:`Redis` guards it)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.due = redis.key("offers", "due")

    def _hash(self, offer_id: int) -> str:
        return self.redis.key("offer", offer_id)

    def create(self, offer: NewOffer, due_ms: int) -> Deferred[None]:
        fields: list[Any] = [
            "a", offer.appcode, "la", repr(offer.lat), "lo", repr(offer.lon),
            "mt", offer.msgtype, "c", offer.content, "l", offer.logid,
            "w", offer.waves_json(), "cr", offer.created_ms, "dl", offer.deadline_ms,
            "s", OPEN, "n", 0, "p", -1, "wu", "", "nt", 0]
        d = CREATE(self.redis, [self._hash(offer.offer_id), self.due],
                   [offer.offer_id, offer.deadline_ms + KEEP_MS, due_ms, *fields])
        return d.addCallback(lambda _: None)

    def claim(self, now_ms: int, lease_until_ms: int, limit: int) -> Deferred[list[int]]:
        d = CLAIM(self.redis, [self.due], [now_ms, lease_until_ms, limit])
        return d.addCallback(lambda ids: [int(i) for i in ids])

    def load(self, offer_id: int) -> Deferred[Offer | None]:
        key = self._hash(offer_id)
        return LOAD(self.redis, [key, key + ":to"], []).addCallback(
            lambda reply: _offer(offer_id, reply))

    def begin_wave(self, offer_id: int, wave: int, uids: list[int],
                   now_ms: int) -> Deferred[bool]:
        key = self._hash(offer_id)
        d = BEGIN_WAVE(self.redis, [key, key + ":to", key + ":offered"],
                       [wave, now_ms, ",".join(map(str, uids)), *uids])
        return d.addCallback(bool)

    def end_wave(self, offer_id: int, wave: int, due_ms: int) -> Deferred[bool]:
        d = END_WAVE(self.redis, [self._hash(offer_id), self.due], [wave, due_ms, offer_id])
        return d.addCallback(bool)

    def reschedule(self, offer_id: int, due_ms: int) -> Deferred[None]:
        d = RESCHEDULE(self.redis, [self._hash(offer_id), self.due], [due_ms, offer_id])
        return d.addCallback(lambda _: None)

    def accept(self, offer_id: int, appcode: int, uid: int, now_ms: int,
               lease_until_ms: int) -> Deferred[AcceptResult]:
        key = self._hash(offer_id)
        d = ACCEPT(self.redis, [key, key + ":offered", self.due],
                   [appcode, uid, now_ms, lease_until_ms, offer_id])
        return d.addCallback(lambda reply: AcceptResult(_text(reply)))

    def expire(self, offer_id: int, now_ms: int, lease_until_ms: int) -> Deferred[bool]:
        d = EXPIRE(self.redis, [self._hash(offer_id), self.due],
                   [now_ms, lease_until_ms, offer_id])
        return d.addCallback(bool)

    def hold(self, offer_id: int, until_ms: int) -> Deferred[None]:
        d = HOLD(self.redis, [self._hash(offer_id), self.due], [until_ms, offer_id])
        return d.addCallback(lambda _: None)

    def notified(self, offer_id: int) -> Deferred[None]:
        d = NOTIFIED(self.redis, [self._hash(offer_id), self.due], [offer_id])
        return d.addCallback(lambda _: None)

    def forget(self, offer_id: int) -> Deferred[None]:
        return self.redis.call("ZREM", self.due, offer_id).addCallback(lambda _: None)
