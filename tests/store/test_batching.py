"""The group committer, on a fake ``runInteraction`` whose transactions the
test completes by hand."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.store.batching import GroupCommitter, lane_of


class Boom(Exception):
    pass


class FakePool:
    """Records each interaction; :meth:`commit` runs the oldest and fires it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self.txn: list[str] = []  # what the ops "wrote", in order

    def runInteraction(self, interaction: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((interaction, args, d))
        return d

    def commit(self, i: int = 0) -> None:
        """Run and fire the ``i``-th interaction in flight (the oldest by default)."""
        interaction, args, d = self.pending.pop(i)
        try:
            result = interaction(self.txn, *args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def fail(self, error: Exception, i: int = 0) -> None:
        self.pending.pop(i)[2].errback(error)

    def ops(self, i: int = 0) -> int:
        """How many writes the ``i``-th interaction in flight carries."""
        return len(self.pending[i][1][0])


def write(name: str) -> Any:
    def op(txn: list[str]) -> str:
        txn.append(name)
        return name.upper()

    return op


class GroupCommitterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pool = FakePool()
        self.committer = GroupCommitter(self.pool.runInteraction)

    def test_first_write_goes_at_once(self) -> None:
        d = self.committer.submit(write("a"))
        self.assertEqual(len(self.pool.pending), 1)
        self.assertNoResult(d)
        self.pool.commit()
        self.assertEqual(self.successResultOf(d), "A")
        self.assertEqual((self.committer.flushes, self.committer.submitted), (1, 1))

    def test_writes_queued_meanwhile_share_the_next_transaction(self) -> None:
        first = self.committer.submit(write("a"))
        rest = [self.committer.submit(write(n)) for n in "bcd"]
        self.assertEqual(len(self.pool.pending), 1)
        self.pool.commit()
        self.assertEqual(self.successResultOf(first), "A")
        for d in rest:
            self.assertNoResult(d)
        self.assertEqual(len(self.pool.pending), 1)
        self.pool.commit()
        self.assertEqual([self.successResultOf(d) for d in rest], ["B", "C", "D"])
        self.assertEqual(self.pool.txn, ["a", "b", "c", "d"])
        self.assertEqual(self.committer.flushes, 2)

    def test_failed_transaction_fails_its_writes_only(self) -> None:
        first = self.committer.submit(write("a"))
        queued = [self.committer.submit(write(n)) for n in "bc"]
        self.pool.fail(Boom())
        self.failureResultOf(first, Boom)
        self.pool.commit()
        self.assertEqual([self.successResultOf(d) for d in queued], ["B", "C"])

    def test_failing_op_fails_the_whole_flush(self) -> None:
        def broken(txn: Any) -> None:
            raise Boom()

        self.committer.submit(write("a"))
        ok, bad = self.committer.submit(write("b")), self.committer.submit(broken)
        self.pool.commit()
        self.pool.commit()
        self.failureResultOf(ok, Boom)
        self.failureResultOf(bad, Boom)

    def test_a_failure_result_fails_its_caller_alone(self) -> None:
        """An interaction that decides one write failed (the MySQL store's
        merged flushes) returns a Failure in its place."""
        def failed_alone(txn: Any) -> Failure:
            return Failure(Boom())

        self.committer.submit(write("a"))
        ok, bad = self.committer.submit(write("b")), self.committer.submit(failed_alone)
        self.pool.commit()
        self.pool.commit()
        self.assertEqual(self.successResultOf(ok), "B")
        self.failureResultOf(bad, Boom)

    def test_pressure_while_writes_pile_up(self) -> None:
        committer = GroupCommitter(self.pool.runInteraction, max_ops=2, pressure_at=3)
        seen: list[bool] = []
        committer.on_pressure = seen.append
        committer.submit(write("a"))  # flushed at once: nothing waits
        for n in "bc":
            committer.submit(write(n))
        self.assertEqual((committer.waiting, seen), (2, []))
        committer.submit(write("d"))
        self.assertEqual((committer.waiting, seen), (3, [True]))
        committer.submit(write("e"))
        self.assertEqual(seen, [True])  # said once
        self.pool.commit()  # the next flush takes b and c: 2 wait, above half (1)
        self.assertEqual((committer.waiting, seen), (2, [True]))
        self.pool.commit()  # then d and e
        self.assertEqual((committer.waiting, seen), (0, [True, False]))
        self.pool.commit()
        self.assertEqual(self.pool.txn, ["a", "b", "c", "d", "e"])
        self.assertEqual(GroupCommitter(self.pool.runInteraction, max_ops=10).pressure_at, 40)

    def test_run_interaction_raising(self) -> None:
        def refuse(*args: Any) -> Deferred[Any]:
            raise Boom()

        committer = GroupCommitter(refuse)
        self.failureResultOf(committer.submit(write("a")), Boom)
        self.assertFalse(committer.busy)
        self.successResultOf(committer.drain())

    def test_write_submitted_by_a_callback_goes_next(self) -> None:
        later: list[Deferred[str]] = []
        first = self.committer.submit(write("a"))
        first.addCallback(lambda _: later.append(self.committer.submit(write("c"))))
        second = self.committer.submit(write("b"))
        self.pool.commit()
        self.pool.commit()
        self.assertEqual(self.successResultOf(second), "B")
        self.assertEqual(self.successResultOf(later[0]), "C")
        self.assertEqual(self.pool.txn, ["a", "b", "c"])
        self.assertEqual(self.committer.flushes, 2)

    def test_max_ops(self) -> None:
        committer = GroupCommitter(self.pool.runInteraction, max_ops=2)
        ds = [committer.submit(write(n)) for n in "abcde"]
        for _ in range(3):
            self.pool.commit()
        self.assertEqual([self.successResultOf(d) for d in ds], list("ABCDE"))
        self.assertEqual(committer.flushes, 3)  # a, then b c, then d e

    def test_drain(self) -> None:
        self.successResultOf(self.committer.drain())
        self.committer.submit(write("a"))
        self.committer.submit(write("b"))
        drained = self.committer.drain()
        self.pool.commit()
        self.assertNoResult(drained)
        self.pool.commit()
        self.successResultOf(drained)
        self.assertFalse(self.committer.busy)

    def test_max_ops_must_be_positive(self) -> None:
        self.assertRaises(ValueError, GroupCommitter, self.pool.runInteraction, 0)


def affinities(lanes: int) -> list[int]:
    """One affinity per lane, in lane order: ``affinities(n)[k]`` goes to lane k."""
    found: dict[int, int] = {}
    candidate = 0
    while len(found) < lanes:
        found.setdefault(lane_of(candidate, lanes), candidate)
        candidate += 1
    return [found[k] for k in range(lanes)]


class LaneTests(SynchronousTestCase):
    def test_lanes_spread_regular_ids(self) -> None:
        """uids of one stride (all even, a multiple of the shard count apart)
        still use every lane."""
        for stride in (1, 2, 16):
            lanes = {lane_of(10**9 + stride * k, 4) for k in range(100)}
            self.assertEqual(lanes, {0, 1, 2, 3}, stride)

    def test_same_affinity_same_lane(self) -> None:
        self.assertEqual(len({lane_of(12345, 8) for _ in range(3)}), 1)
        self.assertEqual(len({lane_of(("uid", 7), 8) for _ in range(3)}), 1)


class ConcurrentGroupCommitterTests(SynchronousTestCase):
    """Three lanes: at most three flushes in flight (``spread_at`` 1: a lane
    flushes whenever it is idle, as every lane does under load)."""

    def setUp(self) -> None:
        self.pool = FakePool()
        self.committer = GroupCommitter(self.pool.runInteraction, concurrency=3, spread_at=1)
        self.lane = affinities(3)

    def test_at_most_concurrency_flushes_in_flight(self) -> None:
        """Ten writes over the three lanes: three flushes at once (one per
        lane), the rest queued; each finished flush starts its lane's next."""
        ds = [self.committer.submit(write(f"w{i}"), affinity=self.lane[i % 3]) for i in range(10)]
        self.assertEqual((len(self.pool.pending), self.committer.in_flight), (3, 3))
        peak = 0
        while self.pool.pending:
            peak = max(peak, len(self.pool.pending))
            self.pool.commit(len(self.pool.pending) - 1)  # the newest first
        self.assertEqual(peak, 3)
        self.assertEqual([self.successResultOf(d) for d in ds], [f"W{i}" for i in range(10)])
        self.assertEqual(self.committer.flushes, 6)  # 3 at once, then each lane's queue
        self.assertFalse(self.committer.busy)

    def test_one_affinity_runs_in_order_one_flush_at_a_time(self) -> None:
        a = self.lane[0]
        first = self.committer.submit(write("a1"), affinity=a)
        rest = [self.committer.submit(write(n), affinity=a) for n in ("a2", "a3")]
        other = self.committer.submit(write("b1"), affinity=self.lane[1])
        self.assertEqual(len(self.pool.pending), 2)  # a1, b1: a2 and a3 wait behind a1
        self.assertEqual(self.pool.ops(0), 1)
        self.pool.commit(0)
        self.assertEqual(self.successResultOf(first), "A1")
        for d in rest:
            self.assertNoResult(d)
        self.assertEqual(self.pool.ops(1), 2)  # a2 and a3, together, after a1
        self.pool.commit(1)
        self.assertEqual([self.successResultOf(d) for d in rest], ["A2", "A3"])
        self.pool.commit(0)
        self.assertEqual(self.successResultOf(other), "B1")
        self.assertEqual(self.pool.txn, ["a1", "a2", "a3", "b1"])

    def test_lanes_finish_in_any_order(self) -> None:
        """A later lane's flush that commits first answers its callers first;
        within a flush, callers are answered in the order they submitted."""
        answered: list[str] = []
        slow = self.committer.submit(write("s"), affinity=self.lane[0])
        slow.addCallback(answered.append)
        self.committer.submit(write("busy"), affinity=self.lane[1])
        for name in ("f1", "f2"):
            self.committer.submit(write(name), affinity=self.lane[1]).addCallback(answered.append)
        self.pool.commit(1)  # lane 1's first flush ("busy")
        self.pool.commit(1)  # lane 1's second: f1, f2
        self.assertEqual(answered, ["F1", "F2"])
        self.assertNoResult(slow)
        self.pool.commit(0)
        self.assertEqual(answered, ["F1", "F2", "S"])

    def test_a_failed_flush_fails_only_its_callers(self) -> None:
        bad = self.committer.submit(write("x"), affinity=self.lane[0])
        queued = self.committer.submit(write("y"), affinity=self.lane[0])
        good = self.committer.submit(write("z"), affinity=self.lane[1])
        self.pool.fail(Boom(), 0)
        self.failureResultOf(bad, Boom)
        self.assertNoResult(queued)
        self.assertNoResult(good)
        self.pool.commit(0)  # lane 1 ("z")
        self.pool.commit(0)  # lane 0's next ("y"): the lane goes on after a failure
        self.assertEqual((self.successResultOf(good), self.successResultOf(queued)), ("Z", "Y"))

    def test_drain_waits_for_every_lane(self) -> None:
        self.successResultOf(self.committer.drain())
        for k in range(3):
            self.committer.submit(write(f"w{k}"), affinity=self.lane[k])
        self.committer.submit(write("w0b"), affinity=self.lane[0])
        drained = self.committer.drain()
        self.pool.commit(2)
        self.pool.commit(1)
        self.assertNoResult(drained)
        self.pool.commit(0)  # lane 0: w0; w0b is next
        self.assertNoResult(drained)
        self.pool.commit(0)
        self.successResultOf(drained)
        self.assertFalse(self.committer.busy)

    def test_drain_does_not_wait_for_later_writes(self) -> None:
        """drain() fires once what was submitted before it is done, even if
        writes submitted since are still queued in the same lane."""
        a = self.lane[0]
        self.committer.submit(write("first"), affinity=a)
        drained = self.committer.drain()
        later = self.committer.submit(write("later"), affinity=a)
        self.pool.commit()
        self.successResultOf(drained)
        self.assertNoResult(later)
        self.assertTrue(self.committer.busy)
        self.pool.commit()
        self.assertEqual(self.successResultOf(later), "LATER")

    def test_no_affinity_goes_to_the_least_loaded_lane(self) -> None:
        for k in (0, 1):
            self.committer.submit(write(f"busy{k}"), affinity=self.lane[k])
            self.committer.submit(write(f"queued{k}"), affinity=self.lane[k])
        free = self.committer.submit(write("free"))
        self.assertEqual(len(self.pool.pending), 3)  # went to idle lane 2 at once
        self.pool.commit(2)
        self.assertEqual(self.successResultOf(free), "FREE")

    def test_a_write_submitted_by_a_callback_joins_its_lane_after_the_rest(self) -> None:
        a = self.lane[0]
        later: list[Deferred[str]] = []
        first = self.committer.submit(write("a"), affinity=a)
        first.addCallback(lambda _: later.append(self.committer.submit(write("c"), affinity=a)))
        self.committer.submit(write("b"), affinity=a)
        self.pool.commit()
        self.assertEqual(self.pool.ops(), 2)  # b, then c, in one flush
        self.pool.commit()
        self.assertEqual(self.successResultOf(later[0]), "C")
        self.assertEqual(self.pool.txn, ["a", "b", "c"])

    def test_concurrency_must_be_positive(self) -> None:
        self.assertRaises(ValueError, GroupCommitter, self.pool.runInteraction, 10, 0)


class SpreadTests(SynchronousTestCase):
    """Two lanes, ``spread_at`` 3: a second flush only for three waiting writes."""

    def setUp(self) -> None:
        self.pool = FakePool()
        self.committer = GroupCommitter(self.pool.runInteraction, concurrency=2, spread_at=3)
        self.a, self.b = affinities(2)

    def test_light_load_one_flush_at_a_time(self) -> None:
        """A's write flushes at once; B's two wait (below spread_at) and go
        when A's flush ends, before A's next."""
        first = self.committer.submit(write("a1"), affinity=self.a)
        b = [self.committer.submit(write(n), affinity=self.b) for n in ("b1", "b2")]
        later = self.committer.submit(write("a2"), affinity=self.a)
        self.assertEqual((len(self.pool.pending), self.committer.in_flight), (1, 1))
        self.pool.commit()
        self.assertEqual(self.successResultOf(first), "A1")
        # B waited longest: it goes first, alone; A's a2 waits for it.
        self.assertEqual((len(self.pool.pending), self.pool.ops(0)), (1, 2))
        self.pool.commit()
        self.assertEqual([self.successResultOf(d) for d in b], ["B1", "B2"])
        self.pool.commit()
        self.assertEqual(self.successResultOf(later), "A2")
        self.assertEqual(self.pool.txn, ["a1", "b1", "b2", "a2"])
        self.assertEqual((self.committer.flushes, self.committer.in_flight), (3, 0))

    def test_a_lane_with_spread_at_writes_overlaps(self) -> None:
        self.committer.submit(write("a1"), affinity=self.a)
        for n in ("b1", "b2"):
            self.committer.submit(write(n), affinity=self.b)
        self.assertEqual(len(self.pool.pending), 1)
        self.committer.submit(write("b3"), affinity=self.b)  # the third: B goes too
        self.assertEqual((len(self.pool.pending), self.pool.ops(1)), (2, 3))
        self.assertEqual(self.committer.in_flight, 2)

    def test_weight_counts_towards_spread_at(self) -> None:
        """One write of weight 3 (a batch of three rows) is enough to overlap."""
        self.committer.submit(write("a1"), affinity=self.a)
        self.committer.submit(write("b-batch"), affinity=self.b, weight=3)
        self.assertEqual(self.committer.in_flight, 2)
        self.pool.commit()
        self.pool.commit()
        self.assertFalse(self.committer.busy)

    def test_a_busy_lane_does_not_starve_another(self) -> None:
        """A's writes keep coming while its flush runs; when it ends, B's lone
        write goes first (then A's, which are enough to overlap)."""
        self.committer.submit(write("a1"), affinity=self.a)
        waiting = self.committer.submit(write("b1"), affinity=self.b)
        for k in range(2, 6):
            self.committer.submit(write(f"a{k}"), affinity=self.a)
        self.assertEqual(len(self.pool.pending), 1)  # a lane has one flush at most
        self.pool.commit()
        self.assertEqual([self.pool.ops(0), self.pool.ops(1)], [1, 4])  # B's, then A's
        self.pool.commit()
        self.assertEqual(self.successResultOf(waiting), "B1")
        self.pool.commit()
        self.assertEqual(self.pool.txn, ["a1", "b1", "a2", "a3", "a4", "a5"])
        self.assertFalse(self.committer.busy)
