# -*- test-case-name: tests.store.test_positions -*-
"""Live positions of geo routes (:class:`IPositions`): in memory on one node,
a Redis GEO set in a cluster.

Redis key layout (``P``: the node's ``redis.key_prefix``), per appcode:

``P geo:<appcode>`` -- GEO set (a sorted set)
    member ``<uid>``, its latest position.
``P geot:<appcode>`` -- sorted set
    member ``<uid>``, score the Unix ms of its latest report: what expires,
    and each answer's ``updated_ms``.
``P geos:<appcode>`` -- hash
    field ``<uid>`` -> the session id that reported it, so a late drop of an
    old session (a close on node A) never erases the position of a newer login
    (on node B).

Reports are written in batches: those that arrive within one reactor turn
(a GPS frame each, from many connections) go in one script call per appcode,
the latest per uid, instead of a round trip each, which cost more node CPU
than the rest of a C2S. A drop waits for the batch in flight, so it never
overtakes the report it drops. Each write is one Lua script (atomic, one
round trip). :meth:`nearby` drops
up to :data:`EXPIRE_BATCH` stale positions of the appcode before it searches,
so its answer holds only fresh ones; the node's sweep does the same every
second for every geo appcode.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.core.geo import EARTH_RADIUS_M, Located, distance_m
from daojia_msg.logic.interfaces import IPositions
from daojia_msg.redisconn import Redis, Script

#: Stale positions dropped per appcode by one script call.
EXPIRE_BATCH = 1000

_EXPIRE = """
local function expire(before, batch)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. before, 'LIMIT', 0, batch)
  if #stale > 0 then
    redis.call('ZREM', KEYS[1], unpack(stale))
    redis.call('ZREM', KEYS[2], unpack(stale))
    redis.call('HDEL', KEYS[3], unpack(stale))
  end
  return #stale
end
"""

# KEYS = geo, geot, geos. ARGV: per position lon, lat, uid, now_ms, session id.
UPDATE = Script("""
local geo, at, by = {}, {}, {}
for i = 1, #ARGV, 5 do
  geo[#geo + 1] = ARGV[i]; geo[#geo + 1] = ARGV[i + 1]; geo[#geo + 1] = ARGV[i + 2]
  at[#at + 1] = ARGV[i + 3]; at[#at + 1] = ARGV[i + 2]
  by[#by + 1] = ARGV[i + 2]; by[#by + 1] = ARGV[i + 4]
end
redis.call('GEOADD', KEYS[1], unpack(geo))
redis.call('ZADD', KEYS[2], unpack(at))
redis.call('HSET', KEYS[3], unpack(by))
return #ARGV / 5
""")

#: Positions per appcode in one UPDATE call at most.
UPDATE_BATCH = 500

# KEYS = geo, geot, geos. ARGV: uid, session id. 1 if it dropped the position.
DROP = Script("""
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
""")

# KEYS = geo, geot, geos. ARGV: before_ms, batch. How many were dropped.
EXPIRE = Script(_EXPIRE + "return expire(ARGV[1], ARGV[2])")

# KEYS = geo, geot, geos. ARGV: lon, lat, radius_m, limit, since_ms, batch.
# Returns a flat list: uid, distance, lon, lat, updated_ms per position.
NEARBY = Script(_EXPIRE + """
expire(ARGV[5], ARGV[6])
local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                         'BYRADIUS', ARGV[3], 'm', 'ASC', 'COUNT', ARGV[4],
                         'WITHCOORD', 'WITHDIST')
local out = {}
for _, item in ipairs(found) do
  local at = redis.call('ZSCORE', KEYS[2], item[1])
  if at then
    out[#out + 1] = item[1]
    out[#out + 1] = item[2]
    out[#out + 1] = item[3][1]
    out[#out + 1] = item[3][2]
    out[#out + 1] = at
  end
end
return out
""")

#: Metres per degree of latitude on Redis' sphere.
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180


#: The memory index's cells: 0.01 degree squares (about 1.1 km north-south).
CELL_DEG = 0.01


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


@implementer(IPositions)
class MemoryPositions:
    """Positions of one node's sessions in dicts, each appcode's in report
    order (a report moves its uid to the end), so expiry pops the oldest only,
    and in cells of :data:`CELL_DEG` degrees, so :meth:`nearby` looks only at
    the cells its circle's box covers (all positions when those are more),
    a box check first, then the distance.
    """

    def __init__(self) -> None:
        #: appcode -> uid -> (lat, lon, updated_ms, session id), oldest report first.
        self._apps: dict[int, dict[int, tuple[float, float, int, str]]] = {}
        #: appcode -> cell -> the uids whose position is in it.
        self._cells: dict[int, dict[tuple[int, int], set[int]]] = {}

    def _unindex(self, appcode: int, uid: int, lat: float, lon: float) -> None:
        cells = self._cells[appcode]
        key = _cell(lat, lon)
        members = cells[key]
        members.discard(uid)
        if not members:
            del cells[key]

    def update(self, appcode: int, uid: int, session_id: str, lat: float, lon: float,
               now_ms: int) -> Deferred[None]:
        positions = self._apps.get(appcode)
        if positions is None:
            positions = self._apps[appcode] = {}
            self._cells[appcode] = {}
        old = positions.pop(uid, None)
        key = _cell(lat, lon)
        if old is None or _cell(old[0], old[1]) != key:
            if old is not None:
                self._unindex(appcode, uid, old[0], old[1])
            self._cells[appcode].setdefault(key, set()).add(uid)
        positions[uid] = (lat, lon, now_ms, session_id)
        return succeed(None)

    def drop(self, appcode: int, uid: int, session_id: str) -> Deferred[bool]:
        positions = self._apps.get(appcode, {})
        entry = positions.get(uid)
        if entry is None or entry[3] != session_id:
            return succeed(False)
        del positions[uid]
        self._unindex(appcode, uid, entry[0], entry[1])
        return succeed(True)

    def _candidates(self, appcode: int, lat: float, lon: float, dlat: float,
                    dlon: float) -> Iterable[int]:
        """The uids of the cells the box covers, or every uid when the box
        covers more cells than there are positions (or wraps)."""
        positions = self._apps.get(appcode, {})
        lo_lat, lo_lon = _cell(lat - dlat, lon - dlon)
        hi_lat, hi_lon = _cell(lat + dlat, lon + dlon)
        count = (hi_lat - lo_lat + 1) * (hi_lon - lo_lon + 1)
        if dlon >= 180.0 or abs(lon) + dlon > 180.0 or count > len(positions):
            return positions
        cells = self._cells.get(appcode, {})
        return [uid for i in range(lo_lat, hi_lat + 1) for j in range(lo_lon, hi_lon + 1)
                for uid in cells.get((i, j), ())]

    def nearby(self, appcode: int, lat: float, lon: float, radius_m: float, limit: int,
               since_ms: int) -> Deferred[list[Located]]:
        dlat = radius_m / _M_PER_DEG
        edge = abs(lat) + dlat
        dlon = 360.0 if edge >= 89.0 else dlat / math.cos(math.radians(edge))
        positions = self._apps.get(appcode, {})
        found: list[tuple[float, int, float, float, int]] = []
        for uid in self._candidates(appcode, lat, lon, dlat, dlon):
            plat, plon, at, _ = positions[uid]
            if at < since_ms or abs(plat - lat) > dlat:
                continue
            d = abs(plon - lon)
            if min(d, 360.0 - d) > dlon:
                continue
            dist = distance_m(lat, lon, plat, plon)
            if dist <= radius_m:
                found.append((dist, uid, plat, plon, at))
        return succeed([Located(uid, dist, plat, plon, at)
                        for dist, uid, plat, plon, at in heapq.nsmallest(limit, found)])

    def expire(self, appcodes: frozenset[int], before_ms: int) -> Deferred[int]:
        dropped = 0
        for appcode in appcodes:
            positions = self._apps.get(appcode)
            while positions:
                uid, entry = next(iter(positions.items()))
                if entry[2] >= before_ms:
                    break
                del positions[uid]
                self._unindex(appcode, uid, entry[0], entry[1])
                dropped += 1
        return succeed(dropped)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def __len__(self) -> int:
        return sum(map(len, self._apps.values()))


def _nothing(_: object) -> None:
    return None


def _first_failure(failure: Failure) -> Failure:
    """The failure of the first script call that failed (not gatherResults' wrapper)."""
    if isinstance(failure.value, FirstError):
        return failure.value.subFailure
    return failure


def _located(reply: list[Any]) -> list[Located]:
    return [Located(int(reply[i]), float(reply[i + 1]), float(reply[i + 3]), float(reply[i + 2]),
                    int(float(reply[i + 4])))
            for i in range(0, len(reply), 5)]


@implementer(IPositions)
class RedisPositions:
    """Positions of the whole cluster in Redis; see the module docstring.
    Every call fails with :class:`~daojia_msg.core.errors.StoreUnavailable`
    rather than hang (:class:`Redis` guards it)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        #: Reports waiting for the next batch: appcode -> uid -> the script's arguments.
        self._waiting: dict[int, dict[int, tuple[str, str, int, int, bytes]]] = {}
        #: Fires once the waiting reports are written (or failed).
        self._written: Deferred[None] | None = None
        self._flush_call: Any = None
        #: The batch being written now, which a drop waits for.
        self._in_flight: Deferred[None] | None = None

    def _keys(self, appcode: int) -> list[str]:
        key = self.redis.key
        return [key("geo", appcode), key("geot", appcode), key("geos", appcode)]

    def update(self, appcode: int, uid: int, session_id: str, lat: float, lon: float,
               now_ms: int) -> Deferred[None]:
        """Queued for the batch written at the end of this reactor turn; the
        Deferred (shared by the batch) fires once it is written."""
        waiting = self._waiting.get(appcode)
        if waiting is None:
            waiting = self._waiting[appcode] = {}
        waiting[uid] = (repr(lon), repr(lat), uid, now_ms, session_id.encode())
        if self._written is None:
            self._written = Deferred()
            self._flush_call = self.redis.clock.callLater(0, self.flush)
        return self._written

    def flush(self) -> Deferred[None]:
        """Write the waiting reports now (one script call per appcode and
        :data:`UPDATE_BATCH`); fires once written."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        waiting, self._waiting = self._waiting, {}
        written, self._written = self._written, None
        calls = []
        for appcode, positions in waiting.items():
            args = [a for entry in positions.values() for a in entry]
            for i in range(0, len(args), 5 * UPDATE_BATCH):
                calls.append(UPDATE(self.redis, self._keys(appcode), args[i:i + 5 * UPDATE_BATCH]))
        d: Deferred[None] = gatherResults(calls, consumeErrors=True).addCallbacks(
            _nothing, _first_failure)
        self._in_flight = d
        d.addBoth(self._landed, d)
        if written is not None:
            d.chainDeferred(written)
        return d

    def _landed(self, result: object, d: Deferred[None]) -> object:
        if self._in_flight is d:
            self._in_flight = None
        return result

    def drop(self, appcode: int, uid: int, session_id: str) -> Deferred[bool]:
        """After the batch in flight, if any: a report is never written after
        the drop that follows it."""
        waiting = self._waiting.get(appcode, {})
        entry = waiting.get(uid)
        if entry is not None and entry[4] == session_id.encode():
            del waiting[uid]
        in_flight = self._in_flight
        if in_flight is None:
            return self._drop(appcode, uid, session_id)
        after: Deferred[None] = Deferred()

        def landed(result: object) -> object:
            after.callback(None)
            return result

        in_flight.addBoth(landed)
        return after.addCallback(lambda _: self._drop(appcode, uid, session_id))

    def _drop(self, appcode: int, uid: int, session_id: str) -> Deferred[bool]:
        return DROP(self.redis, self._keys(appcode), [uid, session_id.encode()]).addCallback(bool)

    def stop(self) -> Deferred[None]:
        return self.flush() if self._written is not None else succeed(None)

    def nearby(self, appcode: int, lat: float, lon: float, radius_m: float, limit: int,
               since_ms: int) -> Deferred[list[Located]]:
        d = NEARBY(self.redis, self._keys(appcode),
                   [repr(lon), repr(lat), repr(float(radius_m)), limit, since_ms, EXPIRE_BATCH])
        return d.addCallback(_located)

    def expire(self, appcodes: frozenset[int], before_ms: int) -> Deferred[int]:
        return Deferred.fromCoroutine(self._expire(appcodes, before_ms))

    async def _expire(self, appcodes: frozenset[int], before_ms: int) -> int:
        dropped = 0
        for appcode in sorted(appcodes):
            dropped += int(await EXPIRE(self.redis, self._keys(appcode),
                                        [before_ms, EXPIRE_BATCH]))
        return dropped
