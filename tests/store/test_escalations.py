"""The escalation schedules: one behaviour suite for the in-memory one and
the Redis one (real Redis, under a key prefix of the test's)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from daojia_msg.config import RedisConfig
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.escalation import Escalation, EscalationClaim
from daojia_msg.logic.interfaces import IEscalations
from daojia_msg.redisconn import connect
from daojia_msg.store.escalations import MemoryEscalations, RedisEscalations, SQLiteEscalations
from daojia_msg.store.sqlite import inline_sqlite_pool
from tests.servers import redis_prefix, require_redis

R: Any = reactor
T = 1_795_700_000_000


def entry(msgid: int, due_ms: int, to_uid: int = 42) -> Escalation:
    return Escalation(msgid, to_uid, 1001, due_ms)


class ScheduleSuite:
    schedule: Any
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any

    async def claim(self, now_ms: int, limit: int = 100, token: str = "a",
                    lease_ms: int = 30_000) -> list[EscalationClaim]:
        claims: list[EscalationClaim] = await self.schedule.claim(now_ms, lease_ms, limit, token)
        return claims

    async def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IEscalations, self.schedule))

    async def test_only_due_entries_are_claimed_oldest_first(self) -> None:
        await self.schedule.schedule([entry(3, T + 300), entry(1, T + 100), entry(2, T + 200)])
        self.assertEqual(await self.claim(T + 99), [])
        claims = await self.claim(T + 200)
        self.assertEqual([(c.msgid, c.to_uid, c.to_appcode, c.first_due_ms, c.attempts)
                          for c in claims], [(1, 42, 1001, T + 100, 0), (2, 42, 1001, T + 200, 0)])
        self.assertEqual({c.leased_until_ms for c in claims}, {T + 200 + 30_000})

    async def test_a_claim_keeps_others_off_until_its_lease_runs_out(self) -> None:
        await self.schedule.schedule([entry(1, T)])
        [mine] = await self.claim(T, token="a")
        self.assertEqual(await self.claim(T + 29_999, token="b"), [])
        [theirs] = await self.claim(T + 30_000, token="b")
        self.assertEqual(theirs.msgid, 1)
        # The first claim ran out: finishing or retrying it changes nothing.
        self.assertFalse(await self.schedule.finish(mine))
        self.assertFalse(await self.schedule.retry(mine, T + 31_000))
        self.assertTrue(await self.schedule.finish(theirs))
        self.assertEqual(await self.claim(T + 10**9, token="c"), [])

    async def test_the_limit(self) -> None:
        await self.schedule.schedule([entry(i, T + i) for i in range(1, 11)])
        self.assertEqual([c.msgid for c in await self.claim(T + 100, limit=3)], [1, 2, 3])
        self.assertEqual([c.msgid for c in await self.claim(T + 100, limit=100)],
                         list(range(4, 11)))

    async def test_retry_counts_an_attempt_and_moves_the_due_time(self) -> None:
        await self.schedule.schedule([entry(1, T)])
        [claim] = await self.claim(T)
        self.assertTrue(await self.schedule.retry(claim, T + 5_000))
        self.assertEqual(await self.claim(T + 4_999, token="b"), [])
        [again] = await self.claim(T + 5_000, token="b")
        self.assertEqual((again.attempts, again.first_due_ms), (1, T))

    async def test_scheduled_twice_is_kept_once(self) -> None:
        await self.schedule.schedule([entry(1, T)])
        await self.schedule.schedule([entry(1, T + 50)])
        [claim] = await self.claim(T + 100)
        self.assertEqual(claim.first_due_ms, T)

    async def test_cancel(self) -> None:
        await self.schedule.schedule([entry(1, T), entry(2, T), entry(3, T)])
        [first, *_] = await self.claim(T, limit=1)
        await self.schedule.cancel([1, 2])
        await self.schedule.cancel([])
        self.assertFalse(await self.schedule.finish(first))
        self.assertEqual([c.msgid for c in await self.claim(T + 10**6, token="b")], [3])

    async def test_big_uids_and_ids(self) -> None:
        # uids and msgids are signed 64-bit everywhere (core.convert.MAX_ID).
        await self.schedule.schedule([Escalation(2**63 - 1, 2**63 - 1, 2**32 - 1, T)])
        [claim] = await self.claim(T)
        self.assertEqual((claim.msgid, claim.to_uid, claim.to_appcode),
                         (2**63 - 1, 2**63 - 1, 2**32 - 1))


class MemoryScheduleTests(ScheduleSuite, TestCase):
    def setUp(self) -> None:
        self.schedule = MemoryEscalations()

    async def test_memory_follows_what_waits_not_what_was_acked(self) -> None:
        """ACKed entries leave the heap of due times too (it kept a slot each
        until its due time: an hour of escalations at escalate_after_s 3600)."""
        await self.schedule.schedule([entry(m, T + 3_600_000) for m in range(10_000)])
        await self.schedule.cancel(range(9_990))
        self.assertEqual(len(self.schedule), 10)
        self.assertLess(len(self.schedule._due), 2 * 10 + 1024 + 1)
        claims = await self.claim(T + 3_600_000)
        self.assertEqual(sorted(c.msgid for c in claims), list(range(9_990, 10_000)))


class SQLiteScheduleTests(ScheduleSuite, TestCase):
    def setUp(self) -> Any:
        self.path = os.path.join(os.path.abspath(self.mktemp()) + ".db")
        self.schedule = SQLiteEscalations(self.path, R, pool=inline_sqlite_pool(self.path))
        self.addCleanup(lambda: self.schedule.stop())
        return self.schedule.start()

    async def test_kept_across_a_restart(self) -> None:
        await self.schedule.schedule([entry(1, T), entry(2, T + 10)])
        [claim] = await self.claim(T, token="before")
        await self.schedule.stop()
        self.schedule = SQLiteEscalations(self.path, R, pool=inline_sqlite_pool(self.path))
        await self.schedule.start()
        self.assertEqual([c.msgid for c in await self.claim(T + 10)], [2])
        self.assertTrue(await self.schedule.finish(claim))  # its lease still holds

    async def test_a_file_that_cannot_be_written_is_unavailable(self) -> None:
        path = os.path.join(self.path, "no", "such", "dir.db")
        broken = SQLiteEscalations(path, R, pool=inline_sqlite_pool(path))
        with self.assertRaises(StoreUnavailable):
            await broken.start()
        await broken.stop()


class RedisScheduleTests(ScheduleSuite, TestCase):
    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def asyncSetUp(self) -> None:
        prefix = redis_prefix(self)
        self.redis = await connect(RedisConfig(url=require_redis(), key_prefix=prefix))
        self.addCleanup(self.redis.close)
        self.schedule = RedisEscalations(self.redis)

    async def test_a_large_batch(self) -> None:
        await self.schedule.schedule([entry(i, T) for i in range(1, 1202)])
        self.assertEqual(len(await self.claim(T, limit=2000)), 1201)
        await self.schedule.cancel(range(1, 1202))
