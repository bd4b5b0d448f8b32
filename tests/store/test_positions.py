"""Live positions (:class:`IPositions`): one behaviour suite, run on the
in-memory index and on a real Redis (a private key prefix, deleted at cleanup),
and what only Redis has (its keys)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from daojia_msg.core.geo import distance_m
from daojia_msg.logic.interfaces import IPositions
from daojia_msg.store.positions import EXPIRE_BATCH, MemoryPositions, RedisPositions
from tests.store.test_redis import open_redis

#: People's Square, Shanghai, and points east of it (1 millidegree of
#: longitude there is about 95 m).
LAT, LON = 31.2304, 121.4737


def east(metres_per_95: int) -> float:
    return LON + metres_per_95 * 0.001


def make_positions_tests(fixture: Callable[[TestCase], Any]) -> type[TestCase]:
    class PositionsTests(TestCase):
        async def setUp(self) -> None:  # type: ignore[override]
            self.positions = await maybeDeferred(fixture, self)

        def test_interface(self) -> None:
            self.assertTrue(verifyObject(IPositions, self.positions))

        async def fill(self, *uids: int, at: int = 1000, appcode: int = 1002) -> None:
            for uid in uids:
                await self.positions.update(appcode, uid, f"s{uid}", LAT, east(uid), at)

        async def test_nearest_first_within_the_radius_and_limit(self) -> None:
            await self.fill(3, 1, 2, 50)
            found = await self.positions.nearby(1002, LAT, LON, 1000.0, 10, 0)
            self.assertEqual([p.uid for p in found], [1, 2, 3])  # 50 is ~4.7 km away
            for p in found:
                self.assertLess(abs(p.distance_m - distance_m(LAT, LON, LAT, east(p.uid))), 1.0)
                self.assertAlmostEqual(p.lat, LAT, places=4)
                self.assertAlmostEqual(p.lon, east(p.uid), places=4)
                self.assertEqual(p.updated_ms, 1000)
            two = await self.positions.nearby(1002, LAT, LON, 1000.0, 2, 0)
            self.assertEqual([p.uid for p in two], [1, 2])
            self.assertEqual(await self.positions.nearby(1002, LAT, LON, 50.0, 10, 0), [])

        async def test_appcodes_apart(self) -> None:
            await self.fill(1, appcode=1001)
            self.assertEqual(await self.positions.nearby(1002, LAT, LON, 1000.0, 10, 0), [])
            self.assertEqual(len(await self.positions.nearby(1001, LAT, LON, 1000.0, 10, 0)), 1)

        async def test_a_report_replaces_the_last(self) -> None:
            await self.fill(1)
            await self.positions.update(1002, 1, "s1", LAT, east(5), 2000)
            [p] = await self.positions.nearby(1002, LAT, LON, 1000.0, 10, 0)
            self.assertAlmostEqual(p.lon, east(5), places=4)
            self.assertEqual(p.updated_ms, 2000)

        async def test_drop_only_by_the_session_that_reported(self) -> None:
            await self.fill(1, 2)
            await self.positions.update(1002, 2, "newer", LAT, east(2), 1500)
            self.assertTrue(await self.positions.drop(1002, 1, "s1"))
            self.assertFalse(await self.positions.drop(1002, 1, "s1"))
            self.assertFalse(await self.positions.drop(1002, 2, "s2"))  # an older session's close
            found = await self.positions.nearby(1002, LAT, LON, 1000.0, 10, 0)
            self.assertEqual([p.uid for p in found], [2])

        async def test_old_positions_are_expired_or_skipped(self) -> None:
            await self.fill(1, at=1000)
            await self.fill(2, at=5000)
            self.assertEqual(await self.positions.expire(frozenset({1002, 1001}), 4000), 1)
            found = await self.positions.nearby(1002, LAT, LON, 1000.0, 10, 0)
            self.assertEqual([p.uid for p in found], [2])
            await self.fill(3, at=1000)  # old, not yet swept: a query skips it
            found = await self.positions.nearby(1002, LAT, LON, 1000.0, 10, 4000)
            self.assertEqual([p.uid for p in found], [2])

        async def test_across_the_antimeridian_and_near_a_pole(self) -> None:
            await self.positions.update(7, 1, "a", 0.0, 179.9995, 1)
            await self.positions.update(7, 2, "b", 85.0, 10.0, 1)
            [p] = await self.positions.nearby(7, 0.0, -179.9995, 500.0, 10, 0)
            self.assertEqual(p.uid, 1)
            self.assertLess(p.distance_m, 200)
            [q] = await self.positions.nearby(7, 85.0, 10.01, 5000.0, 10, 0)
            self.assertEqual(q.uid, 2)

    return PositionsTests


class MemoryPositionsTests(make_positions_tests(lambda test: MemoryPositions())):  # type: ignore[misc]
    def test_expire_pops_the_oldest_only(self) -> None:
        positions = MemoryPositions()
        for uid in range(5):
            positions.update(1, uid, "s", LAT, LON, 1000 + uid)
        positions.update(1, 0, "s", LAT, LON, 2000)  # reported again: now the newest
        self.assertEqual(self.successResultOf(positions.expire(frozenset({1}), 1003)), 2)
        self.assertEqual(len(positions), 3)


    def test_the_cells_answer_as_a_full_scan_would(self) -> None:
        """Random positions, moves, drops and expiry (a fixed seed): every query
        answers what the distance to every position says, and no empty cell
        is left behind."""
        rng = random.Random(18)
        positions = MemoryPositions()
        for step in range(3000):
            uid = rng.randrange(400)
            lat, lon = LAT + rng.uniform(-0.2, 0.2), LON + rng.uniform(-0.2, 0.2)
            if step % 7 == 0:
                positions.drop(1, uid, "s")
            else:
                positions.update(1, uid, "s", lat, lon, step)
        positions.expire(frozenset({1}), 500)
        everyone = positions._apps[1]
        for _ in range(200):
            lat, lon = LAT + rng.uniform(-0.25, 0.25), LON + rng.uniform(-0.25, 0.25)
            radius = rng.choice([100.0, 1000.0, 5000.0, 50_000.0])
            found = self.successResultOf(positions.nearby(1, lat, lon, radius, 100, 0))
            expected = sorted((distance_m(lat, lon, p[0], p[1]), uid)
                              for uid, p in everyone.items()
                              if distance_m(lat, lon, p[0], p[1]) <= radius)[:100]
            self.assertEqual([p.uid for p in found], [uid for _, uid in expected])
        self.assertEqual(sum(map(len, positions._cells[1].values())), len(everyone))
        self.assertTrue(all(positions._cells[1].values()))


def redis_fixture(test: TestCase) -> Deferred[RedisPositions]:
    async def make() -> RedisPositions:
        return RedisPositions(await open_redis(test))

    return Deferred.fromCoroutine(make())


class RedisPositionsTests(make_positions_tests(redis_fixture)):  # type: ignore[misc]
    async def test_keys(self) -> None:
        positions = self.positions
        redis = positions.redis
        await positions.update(1002, 9, "s9", LAT, LON, 1234)
        keys = sorted(k.decode() for k in await redis.call("KEYS", redis.prefix + "*"))
        self.assertEqual(keys, [redis.key(k, 1002) for k in ("geo", "geos", "geot")])
        self.assertEqual(await redis.call("HGET", redis.key("geos", 1002), 9), b"s9")
        await positions.drop(1002, 9, "s9")
        self.assertEqual(await redis.call("KEYS", redis.prefix + "*"), [])

    async def test_expiry_in_batches(self) -> None:
        positions = self.positions
        for uid in range(EXPIRE_BATCH + 5):
            await positions.update(1, uid + 1, "s", LAT, LON, 10)
        self.assertEqual(await positions.expire(frozenset({1}), 20), EXPIRE_BATCH)
        self.assertEqual(await positions.expire(frozenset({1}), 20), 5)

    async def test_reports_of_one_turn_are_one_batch(self) -> None:
        positions = self.positions
        calls = []
        real = positions.redis.call

        def counting(*args: Any) -> Any:
            calls.append(args[0])
            return real(*args)

        positions.redis.call = counting  # type: ignore[method-assign]
        written = [positions.update(1002, uid, f"s{uid}", LAT, east(uid), 10) for uid in (1, 2, 3)]
        positions.update(1002, 1, "s1", LAT, east(4), 11)  # the latest of a uid wins
        positions.update(1001, 9, "s9", LAT, east(1), 10)
        self.assertEqual(len({id(d) for d in written}), 1)
        await written[0]
        self.assertEqual(calls, ["EVALSHA", "EVALSHA"])  # one per appcode
        found = await positions.nearby(1002, LAT, LON, 1000.0, 10, 0)
        self.assertEqual([(p.uid, p.updated_ms) for p in found], [(2, 10), (3, 10), (1, 11)])

    async def test_a_drop_is_never_overtaken_by_its_report(self) -> None:
        positions = self.positions
        positions.update(1002, 1, "s1", LAT, LON, 10)
        self.assertFalse(await positions.drop(1002, 1, "s1"))  # still waiting: never written
        await positions.stop()
        self.assertEqual(await positions.nearby(1002, LAT, LON, 1000.0, 10, 0), [])
        positions.update(1002, 2, "s2", LAT, LON, 10)
        in_flight = positions.flush()
        dropped = positions.drop(1002, 2, "s2")  # waits for the batch in flight
        await in_flight
        self.assertTrue(await dropped)
        self.assertEqual(await positions.nearby(1002, LAT, LON, 1000.0, 10, 0), [])
