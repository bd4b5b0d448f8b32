"""Tests for :mod:`daojia_msg.ids`: Snowflake-style message ids, driven by a fake clock."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.ids import EPOCH_MS, MAX_NODE, MAX_SEQ, SEQ_BITS, TIME_SHIFT, IdGenerator

#: 2023-11-14T22:13:20.5Z: exactly representable in a float, so ms arithmetic is exact.
T0 = 1700000000.5
T0_MS = 1700000000500


class FakeNow:
    """A wall clock that tests set, forwards or backwards."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def parts(msgid: int) -> tuple[int, int, int]:
    """(Unix ms, node id, sequence) of ``msgid``."""
    return (msgid >> TIME_SHIFT) + EPOCH_MS, (msgid >> SEQ_BITS) & MAX_NODE, msgid & MAX_SEQ


class LayoutTests(SynchronousTestCase):
    def test_constants(self) -> None:
        self.assertEqual((MAX_NODE, MAX_SEQ, TIME_SHIFT), (1023, 4095, 22))
        self.assertEqual(EPOCH_MS, 1577836800000)

    def test_node_id_in_bits(self) -> None:
        for node in (0, 1, 2, 513, 1023):
            gen = IdGenerator(node, FakeNow(T0))
            for _ in range(3):
                msgid = gen.next_id()
                self.assertEqual((msgid >> 12) & 0x3FF, node)
                self.assertEqual(parts(msgid)[0], T0_MS)
        gen = IdGenerator(1023, FakeNow(T0))
        first = gen.next_id()
        self.assertEqual(first, ((T0_MS - EPOCH_MS) << 22) | (1023 << 12) | 0)
        self.assertEqual(gen.next_id(), first + 1)

    def test_fits_signed_64(self) -> None:
        # Late in the 41-bit range (2089) the top bit is still 0.
        gen = IdGenerator(MAX_NODE, FakeNow((EPOCH_MS + 2**41 - 1) / 1000))
        msgid = gen.next_id()
        self.assertLess(msgid, 2**63)
        self.assertGreater(msgid, 2**62)

    def test_different_nodes_never_collide(self) -> None:
        now = FakeNow(T0)
        a, b = IdGenerator(1, now), IdGenerator(2, now)
        ids = [gen.next_id() for _ in range(5000) for gen in (a, b)]
        self.assertEqual(len(set(ids)), len(ids))

    def test_invalid_node_id(self) -> None:
        for bad in (-1, 1024, 2**32):
            self.assertRaises(ValueError, IdGenerator, bad, FakeNow(T0))
        IdGenerator(0, FakeNow(T0))
        IdGenerator(1023, FakeNow(T0))

    def test_twisted_clock(self) -> None:
        clock = Clock()
        clock.advance(T0)
        gen = IdGenerator(3, clock.seconds)
        a = gen.next_id()
        clock.advance(0.25)
        b = gen.next_id()
        self.assertEqual((parts(a)[0], parts(b)[0]), (T0_MS, T0_MS + 250))


class MonotonicTests(SynchronousTestCase):
    def assertStrictlyIncreasing(self, ids: list[int]) -> None:
        for prev, cur in zip(ids, ids[1:], strict=False):
            if not cur > prev:
                self.fail(f"id {cur} after {prev}")
        self.assertEqual(len(set(ids)), len(ids))

    def test_same_millisecond(self) -> None:
        gen = IdGenerator(7, FakeNow(T0))
        ids = [gen.next_id() for _ in range(4096)]
        self.assertStrictlyIncreasing(ids)
        self.assertEqual({parts(i)[0] for i in ids}, {T0_MS})
        self.assertEqual([parts(i)[2] for i in ids], list(range(4096)))

    def test_more_than_4096_in_one_ms_borrow_the_next(self) -> None:
        gen = IdGenerator(7, FakeNow(T0))
        ids = [gen.next_id() for _ in range(3 * 4096 + 10)]
        self.assertStrictlyIncreasing(ids)
        self.assertEqual(parts(ids[4095]), (T0_MS, 7, 4095))
        self.assertEqual(parts(ids[4096]), (T0_MS + 1, 7, 0))
        self.assertEqual(parts(ids[8192]), (T0_MS + 2, 7, 0))
        self.assertEqual(parts(ids[-1]), (T0_MS + 3, 7, 9))

    def test_clock_catches_up_after_borrowing(self) -> None:
        now = FakeNow(T0)
        gen = IdGenerator(7, now)
        ids = [gen.next_id() for _ in range(3 * 4096)]  # borrowed up to T0_MS + 2
        now.t = T0 + 0.001  # the real clock is still behind the borrowed ms
        ids += [gen.next_id() for _ in range(10)]
        self.assertEqual(parts(ids[-1]), (T0_MS + 3, 7, 9))
        now.t = T0 + 0.0625  # and now past it (exact in binary: ms T0_MS + 62)
        ids.append(gen.next_id())
        self.assertStrictlyIncreasing(ids)
        self.assertEqual(parts(ids[-1]), (T0_MS + 62, 7, 0))

    def test_time_moves_forward(self) -> None:
        now = FakeNow(T0)
        gen = IdGenerator(1, now)
        a = gen.next_id()
        now.t += 0.5
        b = gen.next_id()
        self.assertEqual(parts(b), (T0_MS + 500, 1, 0))
        self.assertGreater(b, a)

    def test_clock_stepping_back(self) -> None:
        now = FakeNow(T0)
        gen = IdGenerator(9, now)
        ids = [gen.next_id() for _ in range(100)]
        for step in (-5.0, -0.001, -3600.0):
            now.t = T0 + step
            ids += [gen.next_id() for _ in range(5000)]  # also exhausts whole ms while behind
        now.t = T0 + 0.25
        ids += [gen.next_id() for _ in range(100)]
        now.t = T0 + 100
        ids += [gen.next_id() for _ in range(100)]
        self.assertStrictlyIncreasing(ids)
        self.assertEqual(parts(ids[-1])[0], T0_MS + 100000)

    def test_random_walk_clock(self) -> None:
        rng = random.Random(7)
        now = FakeNow(T0)
        gen = IdGenerator(4, now)
        ids = []
        for _ in range(20000):
            now.t = (
                T0 + rng.choice([0, 0, 0.0001, 0.001, -0.002, -1, 0.5]) + rng.randrange(0, 3) / 1000
            )
            ids.append(gen.next_id())
        self.assertStrictlyIncreasing(ids)


class AdvancePastTests(SynchronousTestCase):
    def test_restart_with_clock_behind(self) -> None:
        old = IdGenerator(5, FakeNow(T0))
        seen = [old.next_id() for _ in range(10)]
        max_seen = max(seen)
        # The node restarts with a clock 10 s behind and advances past the largest stored id.
        new = IdGenerator(5, FakeNow(T0 - 10))
        new.advance_past(max_seen)
        after = [new.next_id() for _ in range(5000)]
        self.assertGreater(after[0], max_seen)
        self.assertGreater(parts(after[0])[0], parts(max_seen)[0])
        self.assertEqual(len(set(after) | set(seen)), len(after) + len(seen))
        self.assertEqual(after, sorted(after))

    def test_without_advance_past_a_restart_could_repeat(self) -> None:
        """Why the floor is needed: the same clock after a restart issues the same ids."""
        a = IdGenerator(5, FakeNow(T0)).next_id()
        self.assertEqual(IdGenerator(5, FakeNow(T0)).next_id(), a)
        gen = IdGenerator(5, FakeNow(T0))
        gen.advance_past(a)
        self.assertGreater(gen.next_id(), a)

    def test_floor_from_another_node_same_ms(self) -> None:
        other = IdGenerator(1023, FakeNow(T0))
        for _ in range(4000):
            high = other.next_id()
        gen = IdGenerator(0, FakeNow(T0))
        gen.advance_past(high)
        self.assertGreater(gen.next_id(), high)

    def test_floor_below_last_does_not_go_back(self) -> None:
        now = FakeNow(T0)
        gen = IdGenerator(2, now)
        last = gen.next_id()
        gen.advance_past(IdGenerator(2, FakeNow(T0 - 60)).next_id())
        gen.advance_past(0)
        nxt = gen.next_id()
        self.assertEqual(nxt, last + 1)

    def test_floor_in_the_past_clock_ahead(self) -> None:
        gen = IdGenerator(2, FakeNow(T0))
        floor = IdGenerator(2, FakeNow(T0 - 1)).next_id()
        gen.advance_past(floor)
        self.assertEqual(parts(gen.next_id()), (T0_MS, 2, 0))

    def test_floor_far_in_the_future(self) -> None:
        now = FakeNow(T0)
        gen = IdGenerator(2, now)
        future = IdGenerator(2, FakeNow(T0 + 3600)).next_id()
        gen.advance_past(future)
        ids = [gen.next_id() for _ in range(5000)]
        self.assertTrue(all(i > future for i in ids))
        self.assertEqual(ids, sorted(set(ids)))


class TimeTests(SynchronousTestCase):
    def test_time_ms_round_trip(self) -> None:
        for t, ms in (
            (T0, T0_MS),
            (T0 + 0.25, T0_MS + 250),
            (EPOCH_MS / 1000, EPOCH_MS),
            (1893456000.0, 1893456000000),
        ):
            msgid = IdGenerator(11, FakeNow(t)).next_id()
            self.assertEqual(IdGenerator.time_ms(msgid), ms)

    def test_time_ms_of_borrowed(self) -> None:
        gen = IdGenerator(11, FakeNow(T0))
        ids = [gen.next_id() for _ in range(4097)]
        self.assertEqual(IdGenerator.time_ms(ids[-1]), T0_MS + 1)

    def test_floor_for(self) -> None:
        gen = IdGenerator(MAX_NODE, FakeNow(T0))
        ids = [gen.next_id() for _ in range(4096)]
        floor = IdGenerator.floor_for(T0_MS)
        self.assertLessEqual(floor, ids[0])
        self.assertLess(ids[-1], IdGenerator.floor_for(T0_MS + 1))
        self.assertEqual(IdGenerator.time_ms(floor), T0_MS)
        self.assertEqual(IdGenerator.floor_for(T0_MS), (T0_MS - EPOCH_MS) << 22)
        self.assertEqual(IdGenerator.floor_for(0), 0)
        self.assertEqual(IdGenerator.floor_for(EPOCH_MS), 0)
