"""Nearby order offers (:class:`IOfferStore`): one behaviour suite, run on
the memory store and on a real Redis (a private key prefix, deleted at
cleanup), and what only Redis has: its keys, their expiry, and many accepts
racing on one offer (exactly one wins)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.offers import ACCEPTED, EXPIRED, OPEN, AcceptResult, NewOffer, Wave
from daojia_msg.logic.interfaces import IOfferStore
from daojia_msg.store.offers import KEEP_MS, MemoryOffers, RedisOffers
from tests.store.test_redis import open_redis

#: Now (Redis expires the keys a day after an offer's deadline by its own clock).
T0 = int(time.time()) * 1000
APP = 1002


def new_offer(offer_id: int = 77, deadline_s: float = 30, content: bytes = b"order \xff") -> NewOffer:
    return NewOffer(offer_id, APP, 31.2304, 121.4737, 5, content, "4d",
                    (Wave(1000.0, 2, 0.0), Wave(3000.0, 5, 10.0)), T0,
                    T0 + round(deadline_s * 1000))


def make_offer_store_tests(fixture: Callable[[TestCase], Any]) -> type[TestCase]:
    class OfferStoreTests(TestCase):
        async def setUp(self) -> None:  # type: ignore[override]
            self.offers = await maybeDeferred(fixture, self)

        def test_interface(self) -> None:
            self.assertTrue(verifyObject(IOfferStore, self.offers))

        async def test_created_as_given_and_loaded(self) -> None:
            offer = new_offer()
            await self.offers.create(offer, T0)
            loaded = await self.offers.load(77)
            self.assertEqual(loaded.spec, offer)
            self.assertEqual((loaded.state, loaded.winner_uid, loaded.pushed_to, loaded.next_wave,
                              loaded.pushing, loaded.wave_uids, loaded.notified),
                             (OPEN, None, (), 0, -1, (), False))
            self.assertIsNone(await self.offers.load(78))

        async def test_claims_take_due_work_and_lease_it(self) -> None:
            await self.offers.create(new_offer(1), T0)
            await self.offers.create(new_offer(2), T0 + 500)
            self.assertEqual(await self.offers.claim(T0 - 1, T0 + 3000, 10), [])
            self.assertEqual(await self.offers.claim(T0, T0 + 3000, 10), [1])
            self.assertEqual(await self.offers.claim(T0 + 600, T0 + 3600, 10), [2])
            self.assertEqual(await self.offers.claim(T0 + 2999, T0 + 6000, 10), [])
            self.assertEqual(await self.offers.claim(T0 + 3000, T0 + 6000, 1), [1])  # the lease ran out
            await self.offers.reschedule(1, T0 + 5000)
            self.assertEqual(await self.offers.claim(T0 + 4000, T0 + 7000, 10), [2])
            await self.offers.forget(2)
            self.assertEqual(await self.offers.claim(T0 + 9000, T0 + 9999, 10), [1])

        async def test_waves_are_recorded_once_in_order(self) -> None:
            await self.offers.create(new_offer(), T0)
            self.assertFalse(await self.offers.begin_wave(77, 1, [5], T0))  # not the next one
            self.assertTrue(await self.offers.begin_wave(77, 0, [7, 8], T0))
            self.assertFalse(await self.offers.begin_wave(77, 0, [9], T0))  # being pushed
            loaded = await self.offers.load(77)
            self.assertEqual((loaded.pushed_to, loaded.pushing, loaded.wave_uids), ((7, 8), 0, (7, 8)))
            self.assertFalse(await self.offers.end_wave(77, 1, T0 + 10_000))
            self.assertTrue(await self.offers.end_wave(77, 0, T0 + 10_000))
            self.assertFalse(await self.offers.end_wave(77, 0, T0 + 10_000))
            self.assertEqual(await self.offers.claim(T0 + 9999, T0 + 20_000, 10), [])
            self.assertEqual(await self.offers.claim(T0 + 10_000, T0 + 20_000, 10), [77])
            self.assertTrue(await self.offers.begin_wave(77, 1, [], T0 + 10_000))  # nobody near
            self.assertTrue(await self.offers.end_wave(77, 1, T0 + 30_000))
            loaded = await self.offers.load(77)
            self.assertEqual((loaded.pushed_to, loaded.next_wave, loaded.pushing), ((7, 8), 2, -1))
            self.assertFalse(await self.offers.begin_wave(77, 2, [9], T0 + 30_000))  # the deadline

        async def test_accepts(self) -> None:
            await self.offers.create(new_offer(), T0)
            await self.offers.begin_wave(77, 0, [7, 8], T0)

            async def accept(uid: int, appcode: int = APP, at: int = T0 + 1000) -> AcceptResult:
                return await self.offers.accept(77, appcode, uid, at, at + 3000)

            self.assertIs(await accept(9), AcceptResult.NOT_OFFERED)
            self.assertIs(await accept(7, appcode=1001), AcceptResult.NOT_OFFERED)
            self.assertIs(await self.offers.accept(78, APP, 7, T0, T0), AcceptResult.NOT_OFFERED)
            self.assertIs(await accept(8), AcceptResult.WON)
            self.assertIs(await accept(7), AcceptResult.TAKEN)
            self.assertIs(await accept(8), AcceptResult.AGAIN)
            self.assertIs(await accept(9), AcceptResult.NOT_OFFERED)
            loaded = await self.offers.load(77)
            self.assertEqual((loaded.state, loaded.winner_uid), (ACCEPTED, 8))
            self.assertFalse(await self.offers.expire(77, T0 + 40_000, T0 + 43_000))
            self.assertFalse(await self.offers.begin_wave(77, 1, [9], T0 + 2000))
            self.assertFalse(await self.offers.end_wave(77, 0, T0 + 10_000))
            # The accept leased the telling of its outcome to its node.
            self.assertEqual(await self.offers.claim(T0 + 3999, T0 + 9000, 10), [])
            self.assertEqual(await self.offers.claim(T0 + 4000, T0 + 9000, 10), [77])
            await self.offers.notified(77)
            self.assertTrue((await self.offers.load(77)).notified)
            self.assertEqual(await self.offers.claim(T0 + 99_000, T0 + 99_999, 10), [])

        async def test_hold_only_a_decided_untold_outcome(self) -> None:
            """hold() keeps claims off an outcome being told; an open offer's
            work and a told outcome are not touched."""
            await self.offers.create(new_offer(deadline_s=30), T0)
            await self.offers.hold(77, T0 + 50_000)  # open: its next work stays due
            self.assertEqual(await self.offers.claim(T0, T0 + 1000, 10), [77])
            await self.offers.begin_wave(77, 0, [7], T0)
            await self.offers.accept(77, APP, 7, T0 + 100, T0 + 3000)
            await self.offers.hold(77, T0 + 11_000)
            self.assertEqual(await self.offers.claim(T0 + 10_999, T0 + 12_000, 10), [])
            self.assertEqual(await self.offers.claim(T0 + 11_000, T0 + 12_000, 10), [77])
            await self.offers.notified(77)
            await self.offers.hold(77, T0 + 20_000)  # told: nothing is due again
            self.assertEqual(await self.offers.claim(T0 + 99_000, T0 + 99_999, 10), [])

        async def test_expiry_once_and_only_past_the_deadline(self) -> None:
            await self.offers.create(new_offer(deadline_s=30), T0)
            await self.offers.begin_wave(77, 0, [7], T0)
            self.assertFalse(await self.offers.expire(77, T0 + 29_999, T0 + 33_000))
            self.assertIs(await self.offers.accept(77, APP, 7, T0 + 30_000, T0 + 33_000),
                          AcceptResult.EXPIRED)
            self.assertTrue(await self.offers.expire(77, T0 + 30_000, T0 + 33_000))
            self.assertFalse(await self.offers.expire(77, T0 + 30_001, T0 + 33_000))
            self.assertEqual((await self.offers.load(77)).state, EXPIRED)
            self.assertIs(await self.offers.accept(77, APP, 7, T0 + 1, T0 + 3000),
                          AcceptResult.EXPIRED)
            self.assertFalse(await self.offers.expire(78, T0 + 30_000, T0 + 33_000))

    return OfferStoreTests


class MemoryOfferStoreTests(make_offer_store_tests(lambda test: MemoryOffers())):  # type: ignore[misc]
    async def test_a_bounded_number_kept_and_the_content_dropped_once_told(self) -> None:
        offers = MemoryOffers(max_offers=2)
        await offers.create(new_offer(offer_id=1), T0)
        await offers.create(new_offer(offer_id=2), T0)
        with self.assertRaises(StoreUnavailable) as caught:
            await offers.create(new_offer(offer_id=3), T0)
        self.assertIn("2 offers are kept on this node", str(caught.exception))
        await offers.notified(1)
        self.assertEqual((await offers.load(1)).spec.content, b"")
        self.assertEqual((await offers.load(2)).spec.content, new_offer().content)

    async def test_forgotten_a_day_after_the_deadline(self) -> None:
        await self.offers.create(new_offer(deadline_s=30), T0)
        await self.offers.claim(T0 + 30_000 + KEEP_MS - 1, T0, 10)
        self.assertIsNotNone(await self.offers.load(77))
        await self.offers.claim(T0 + 30_000 + KEEP_MS, T0, 10)
        self.assertIsNone(await self.offers.load(77))
        self.assertEqual(len(self.offers), 0)


def redis_fixture(test: TestCase) -> Deferred[RedisOffers]:
    async def make() -> RedisOffers:
        return RedisOffers(await open_redis(test))

    return Deferred.fromCoroutine(make())


class RedisOfferStoreTests(make_offer_store_tests(redis_fixture)):  # type: ignore[misc]
    async def test_keys_and_their_expiry(self) -> None:
        redis = self.offers.redis
        await self.offers.create(new_offer(deadline_s=30), T0)
        await self.offers.begin_wave(77, 0, [7, 8], T0)
        keys = sorted(k.decode() for k in await redis.call("KEYS", redis.prefix + "*"))
        self.assertEqual(keys, [redis.prefix + name for name in (
            "offer:77", "offer:77:offered", "offer:77:to", "offers:due")])
        at = await redis.call("PEXPIRETIME", redis.key("offer", 77))
        self.assertEqual(at, T0 + 30_000 + KEEP_MS)
        for key in ("offer:77:offered", "offer:77:to"):
            self.assertLessEqual(abs(await redis.call("PEXPIRETIME", redis.prefix + key) - at), 1000)

    async def test_of_many_concurrent_accepts_exactly_one_wins(self) -> None:
        """200 accepts fired at once, from as many uids, on two connections'
        worth of pipelining: one WON, every other TAKEN."""
        uids = list(range(1000, 1200))
        await self.offers.create(new_offer(), T0)
        await self.offers.begin_wave(77, 0, uids, T0)
        other = RedisOffers(await open_redis(self))  # as a second node
        other.redis.prefix = self.offers.redis.prefix
        other.due = self.offers.due
        results = await gatherResults([
            (self.offers if uid % 2 else other).accept(77, APP, uid, T0 + 1000, T0 + 4000)
            for uid in uids])
        self.assertEqual(results.count(AcceptResult.WON), 1)
        self.assertEqual(results.count(AcceptResult.TAKEN), len(uids) - 1)
        winner = uids[results.index(AcceptResult.WON)]
        self.assertEqual((await other.load(77)).winner_uid, winner)
