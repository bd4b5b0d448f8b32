# -*- test-case-name: tests.store.test_login_throttle -*-
"""Login brute-force lockouts: on one node in memory, cluster-wide in Redis.

The rule (docs/operations.md §2): :data:`IDENTITY_FAILURES` forged or
malformed tokens for one ``(source IP, appcode, uid)`` within
:data:`WINDOW_S` lock that identity out from that IP for :data:`LOCK_S`; the
next lockout within :data:`WINDOW_S` of the end of one lasts twice as long,
up to :data:`MAX_LOCK_S`. ``limits.login_ip_failures`` such failures from one
IP within the window lock out every LOGIN from it for :data:`LOCK_S`. A
failure window starts with its first failure and ends :data:`WINDOW_S` later.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from daojia_msg.logic.interfaces import ILoginThrottle
from daojia_msg.redisconn import Redis, Script

WINDOW_S = 60.0
IDENTITY_FAILURES = 5
LOCK_S = 60.0
MAX_LOCK_S = 900.0
#: Entries the in-memory throttle keeps at most (each an IP or an identity an
#: outsider chose): past it the oldest go first.
MAX_ENTRIES = 100_000


class _Entry:
    __slots__ = ("window_end", "failures", "locked_until", "lock_s")

    def __init__(self) -> None:
        self.window_end = 0.0
        self.failures = 0
        self.locked_until = 0.0
        self.lock_s = 0.0  # the last lockout's length, while it can still double


@implementer(ILoginThrottle)
class MemoryLoginThrottle:
    """The rule on one node, in bounded memory."""

    def __init__(self, clock: IReactorTime, ip_failures: int,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.ip_failures = ip_failures
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()

    def locked(self, host: str, appcode: int, uid: int) -> Deferred[str | None]:
        now = self.clock.seconds()
        for scope, key in (("identity", ("id", host, appcode, uid)), ("ip", ("ip", host))):
            entry = self._entries.get(key)
            if entry is not None and entry.locked_until > now:
                return succeed(scope)
        return succeed(None)

    def failed(self, host: str, appcode: int, uid: int) -> Deferred[None]:
        now = self.clock.seconds()
        self._count(("id", host, appcode, uid), IDENTITY_FAILURES, now, double=True)
        if self.ip_failures:
            self._count(("ip", host), self.ip_failures, now, double=False)
        return succeed(None)

    def _count(self, key: tuple[Any, ...], limit: int, now: float, double: bool) -> None:
        entry = self._entries.pop(key, None) or _Entry()
        self._entries[key] = entry  # the newest last
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        if now >= entry.window_end:
            entry.window_end, entry.failures = now + WINDOW_S, 0
        entry.failures += 1
        if entry.failures < limit:
            return
        can_double = double and entry.lock_s and now < entry.locked_until + WINDOW_S
        entry.lock_s = min(entry.lock_s * 2, MAX_LOCK_S) if can_double else LOCK_S
        entry.locked_until = now + entry.lock_s
        entry.window_end, entry.failures = 0.0, 0


# KEYS: identity failures, identity lock, identity last lock length, IP
# failures, IP lock. ARGV: window ms, identity limit, IP limit (0: none),
# lock ms, max lock ms. The failure counters start their window at their first
# failure; a lock's length key outlives the lock by the window, so a lockout
# within the window of the end of the last one doubles it.
FAILED = Script("""
local window = tonumber(ARGV[1])
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], window) end
if n >= tonumber(ARGV[2]) then
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  local lock = tonumber(ARGV[4])
  if last > 0 then lock = math.min(last * 2, tonumber(ARGV[5])) end
  redis.call('SET', KEYS[2], lock, 'PX', lock)
  redis.call('SET', KEYS[3], lock, 'PX', lock + window)
  redis.call('DEL', KEYS[1])
end
local ip_limit = tonumber(ARGV[3])
if ip_limit > 0 then
  local m = redis.call('INCR', KEYS[4])
  if m == 1 then redis.call('PEXPIRE', KEYS[4], window) end
  if m >= ip_limit then
    redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[4])
    redis.call('DEL', KEYS[4])
  end
end
return 1
""")


@implementer(ILoginThrottle)
class RedisLoginThrottle:
    """The rule across a cluster: counters and locks are Redis keys with TTLs."""

    def __init__(self, redis: Redis, ip_failures: int) -> None:
        self.redis = redis
        self.ip_failures = ip_failures

    def _keys(self, host: str, appcode: int, uid: int) -> tuple[str, str, str, str, str]:
        key = self.redis.key
        who = f"{host}:{appcode}:{uid}"
        return (key("lf", "id", who), key("ll", "id", who), key("lx", "id", who),
                key("lf", "ip", host), key("ll", "ip", host))

    def locked(self, host: str, appcode: int, uid: int) -> Deferred[str | None]:
        _, id_lock, _, _, ip_lock = self._keys(host, appcode, uid)
        return self.redis.call("MGET", id_lock, ip_lock).addCallback(_scope)

    def failed(self, host: str, appcode: int, uid: int) -> Deferred[None]:
        args = [int(WINDOW_S * 1000), IDENTITY_FAILURES, self.ip_failures,
                int(LOCK_S * 1000), int(MAX_LOCK_S * 1000)]
        d = FAILED(self.redis, list(self._keys(host, appcode, uid)), args)
        return d.addCallback(lambda _: None)


def _scope(locks: list[Any]) -> str | None:
    identity, ip = locks
    if identity is not None:
        return "identity"
    if ip is not None:
        return "ip"
    return None
