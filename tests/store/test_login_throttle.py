"""Login brute-force lockouts: one behaviour suite for the in-memory throttle
(on a fake clock) and the Redis one (real Redis: its lock TTLs are read with
PTTL, never waited for)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from daojia_msg.config import RedisConfig
from daojia_msg.logic.interfaces import ILoginThrottle
from daojia_msg.redisconn import connect
from daojia_msg.store.login_throttle import (
    IDENTITY_FAILURES,
    LOCK_S,
    MAX_LOCK_S,
    MemoryLoginThrottle,
    RedisLoginThrottle,
)
from tests.servers import redis_prefix, require_redis

IP, OTHER_IP = "198.51.100.7", "203.0.113.9"


class ThrottleSuite:
    """What both implementations do, before any lockout expires."""

    throttle: Any

    async def fail(self, times: int, host: str = IP, appcode: int = 1001, uid: int = 42) -> None:
        for _ in range(times):
            await self.throttle.failed(host, appcode, uid)

    async def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ILoginThrottle, self.throttle))  # type: ignore[attr-defined]

    async def test_four_failures_lock_nothing(self) -> None:
        await self.fail(IDENTITY_FAILURES - 1)
        self.assertIsNone(await self.throttle.locked(IP, 1001, 42))  # type: ignore[attr-defined]

    async def test_five_failures_lock_the_identity_from_that_ip_only(self) -> None:
        await self.fail(IDENTITY_FAILURES)
        check = self.assertEqual  # type: ignore[attr-defined]
        check(await self.throttle.locked(IP, 1001, 42), "identity")
        check(await self.throttle.locked(OTHER_IP, 1001, 42), None)
        check(await self.throttle.locked(IP, 1002, 42), None)
        check(await self.throttle.locked(IP, 1001, 43), None)

    async def test_failures_from_one_ip_lock_every_login_from_it(self) -> None:
        for uid in range(1, 11):  # 10 identities, each below its own limit
            await self.fail(1, uid=uid)
        self.assertEqual(await self.throttle.locked(IP, 1001, 99), "ip")  # type: ignore[attr-defined]
        self.assertIsNone(await self.throttle.locked(OTHER_IP, 1001, 99))  # type: ignore[attr-defined]


class MemoryThrottleTests(ThrottleSuite, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.throttle = MemoryLoginThrottle(self.clock, ip_failures=10)

    def locked(self) -> str | None:
        return self.successResultOf(self.throttle.locked(IP, 1001, 42))

    def fail_now(self, times: int) -> None:
        for _ in range(times):
            self.throttle.failed(IP, 1001, 42)

    def test_the_lockout_lasts_60_seconds(self) -> None:
        self.fail_now(IDENTITY_FAILURES)
        self.clock.advance(LOCK_S - 0.001)
        self.assertEqual(self.locked(), "identity")
        self.clock.advance(0.001)
        self.assertIsNone(self.locked())

    def test_failures_spread_over_more_than_the_window_lock_nothing(self) -> None:
        self.fail_now(IDENTITY_FAILURES - 1)
        self.clock.advance(60)
        self.fail_now(1)
        self.assertIsNone(self.locked())

    def test_a_lockout_soon_after_the_last_doubles_up_to_15_minutes(self) -> None:
        lengths = []
        for _ in range(6):
            self.fail_now(IDENTITY_FAILURES)
            start = self.clock.seconds()
            while self.locked() is not None:
                self.clock.advance(1)
            lengths.append(self.clock.seconds() - start)
            self.clock.advance(30)  # within 60 s of its end
        self.assertEqual(lengths, [60, 120, 240, 480, 900, MAX_LOCK_S])

    def test_a_lockout_long_after_the_last_is_60_seconds_again(self) -> None:
        self.fail_now(IDENTITY_FAILURES)
        self.clock.advance(LOCK_S + 61)
        self.fail_now(IDENTITY_FAILURES)
        self.clock.advance(LOCK_S - 1)
        self.assertEqual(self.locked(), "identity")
        self.clock.advance(1)
        self.assertIsNone(self.locked())

    def test_the_ip_rule_can_be_turned_off(self) -> None:
        throttle = MemoryLoginThrottle(self.clock, ip_failures=0)
        for uid in range(1, 1000):
            throttle.failed(IP, 1001, uid)
        self.assertIsNone(self.successResultOf(throttle.locked(IP, 1001, 5000)))

    def test_memory_is_bounded(self) -> None:
        throttle = MemoryLoginThrottle(self.clock, ip_failures=10, max_entries=50)
        for uid in range(1000):
            throttle.failed(f"10.0.{uid // 250}.{uid % 250}", 1001, uid)
        self.assertLessEqual(len(throttle._entries), 50)


class RedisThrottleTests(ThrottleSuite, TestCase):
    async def asyncSetUp(self) -> None:
        prefix = redis_prefix(self)
        self.redis = await connect(RedisConfig(url=require_redis(), key_prefix=prefix))
        self.addCleanup(self.redis.close)
        self.throttle = RedisLoginThrottle(self.redis, ip_failures=10)

    def setUp(self) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self.asyncSetUp())

    async def lock_ms(self, scope: str, who: str) -> int:
        ttl: int = await self.redis.call("PTTL", self.redis.key("ll", scope, who))
        return ttl

    async def test_the_lockout_lasts_60_seconds(self) -> None:
        await self.fail(IDENTITY_FAILURES)
        ttl = await self.lock_ms("id", f"{IP}:1001:42")
        self.assertTrue(LOCK_S * 1000 - 5000 < ttl <= LOCK_S * 1000, ttl)

    async def test_a_lockout_soon_after_the_last_doubles_it(self) -> None:
        await self.fail(IDENTITY_FAILURES)
        # The lock ends (as if 60 s passed); its length stays known for 60 s more.
        await self.redis.call("DEL", self.redis.key("ll", "id", f"{IP}:1001:42"))
        await self.fail(IDENTITY_FAILURES)
        ttl = await self.lock_ms("id", f"{IP}:1001:42")
        self.assertTrue(2 * LOCK_S * 1000 - 5000 < ttl <= 2 * LOCK_S * 1000, ttl)

    async def test_doubling_stops_at_15_minutes(self) -> None:
        key = self.redis.key("lx", "id", f"{IP}:1001:42")
        await self.redis.call("SET", key, int(MAX_LOCK_S * 1000), "PX", 60000)
        await self.fail(IDENTITY_FAILURES)
        ttl = await self.lock_ms("id", f"{IP}:1001:42")
        self.assertTrue(MAX_LOCK_S * 1000 - 5000 < ttl <= MAX_LOCK_S * 1000, ttl)

    async def test_the_ip_lockout_lasts_60_seconds(self) -> None:
        for uid in range(1, 11):
            await self.fail(1, uid=uid)
        ttl = await self.lock_ms("ip", IP)
        self.assertTrue(LOCK_S * 1000 - 5000 < ttl <= LOCK_S * 1000, ttl)

    async def test_failure_windows_expire_with_their_first_failure(self) -> None:
        await self.fail(1)
        ttl: int = await self.redis.call("PTTL", self.redis.key("lf", "id", f"{IP}:1001:42"))
        self.assertTrue(55000 < ttl <= 60000, ttl)
