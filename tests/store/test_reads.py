"""ReadBatcher: reads that queue while one is out share the next trip."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.store.reads import ReadBatcher, ReadStats, read_batch_txn


def double(txn: Any, x: int) -> int:
    txn.append(x)
    return 2 * x


def broken(txn: Any, x: int) -> int:
    raise ZeroDivisionError(x)


class Square:
    """A read that answers many at once: one ``txn`` entry per call of :meth:`many`."""

    def __call__(self, txn: Any, x: int) -> int:
        return self.many(txn, [(x,)])[0]

    def many(self, txn: Any, args: list[tuple[int]]) -> list[int]:
        txn.append(tuple(a for (a,) in args))
        return [a * a for (a,) in args]


class FakeRun:
    """``run(interaction, *args)`` that runs when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self.txn: list[int] = []

    def __call__(self, interaction: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((interaction, args, d))
        return d

    def finish(self, i: int = 0) -> None:
        interaction, args, d = self.calls.pop(i)
        try:
            result = interaction(self.txn, *args)
        except Exception:
            d.errback()
        else:
            d.callback(result)


class ReadBatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.run = FakeRun()
        self.reads = ReadBatcher(self.run)

    def test_first_read_goes_at_once_alone(self) -> None:
        d = self.reads.read(double, 3)
        [(interaction, args, _)] = self.run.calls
        self.assertEqual((interaction, args), (double, (3,)))
        self.run.finish()
        self.assertEqual(self.successResultOf(d), 6)

    def test_reads_that_wait_share_one_batch(self) -> None:
        first = self.reads.read(double, 1)
        waiting = [self.reads.read(double, x) for x in (2, 3, 4)]
        self.assertEqual(len(self.run.calls), 1)  # one batch out at a time
        self.run.finish()
        [(interaction, args, _)] = self.run.calls
        self.assertIs(interaction, read_batch_txn)
        self.assertEqual(self.reads.stats.in_flight, 3)  # the batch out
        self.run.finish()
        self.assertEqual([self.successResultOf(d) for d in [first, *waiting]], [2, 4, 6, 8])
        self.assertEqual(self.run.txn, [1, 2, 3, 4])  # in order
        self.assertEqual(self.reads.batches, 2)
        self.assertEqual(self.reads.stats.in_flight, 0)

    def test_reads_with_many_are_answered_by_one_call(self) -> None:
        square = Square()
        self.reads.read(double, 0)
        waiting = [self.reads.read(square, 2), self.reads.read(double, 5),
                   self.reads.read(square, 3), self.reads.read(square, 4)]
        self.run.finish()
        self.run.finish()
        self.assertEqual([self.successResultOf(d) for d in waiting], [4, 10, 9, 16])
        # double(0); then the batch: double(5) on its own, the squares in one call.
        self.assertEqual(self.run.txn, [0, 5, (2, 3, 4)])

    def test_a_lone_read_with_many_runs_as_itself(self) -> None:
        d = self.reads.read(Square(), 7)
        [(interaction, args, _)] = self.run.calls
        self.assertIsInstance(interaction, Square)
        self.run.finish()
        self.assertEqual(self.successResultOf(d), 49)
        self.assertEqual(self.run.txn, [(7,)])

    def test_batch_size_is_bounded(self) -> None:
        reads = ReadBatcher(self.run, max_reads=2)
        reads.read(double, 0)
        rest = [reads.read(double, x) for x in range(1, 6)]
        self.run.finish()
        self.run.finish()  # 1, 2
        self.assertEqual([self.successResultOf(d) for d in rest[:2]], [2, 4])
        self.assertNoResult(rest[2])
        self.run.finish()
        self.run.finish()
        self.assertEqual([self.successResultOf(d) for d in rest[2:]], [6, 8, 10])

    def test_several_in_flight(self) -> None:
        reads = ReadBatcher(self.run, max_in_flight=2)
        a, b, c = reads.read(double, 1), reads.read(double, 2), reads.read(double, 3)
        self.assertEqual(len(self.run.calls), 2)
        self.run.finish(1)
        self.assertEqual(self.successResultOf(b), 4)
        self.assertEqual(len(self.run.calls), 2)  # c went out as b came back
        self.run.finish()
        self.run.finish()
        self.assertEqual((self.successResultOf(a), self.successResultOf(c)), (2, 6))

    def test_a_failed_batch_gives_each_read_its_own_answer(self) -> None:
        self.reads.read(double, 1)
        good = self.reads.read(double, 2)
        bad = self.reads.read(broken, 3)
        self.run.finish()
        self.run.finish()  # the batch: broken raises, the whole batch fails
        self.assertEqual(len(self.run.calls), 2)  # both again, on their own
        self.assertEqual(self.reads.stats.in_flight, 2)
        self.run.finish()
        self.run.finish()
        self.assertEqual(self.successResultOf(good), 4)
        self.failureResultOf(bad, ZeroDivisionError)
        self.assertEqual(self.reads.stats.in_flight, 0)
        self.assertEqual(self.reads.stats.errors, {"unavailable": 0, "error": 1})

    def test_an_unavailable_database_fails_the_batch_at_once(self) -> None:
        """Down is down: the batch's reads all fail with it, none runs again."""
        self.reads.read(double, 1)
        waiting = [self.reads.read(double, x) for x in (2, 3)]
        self.run.finish()
        interaction, args, d = self.run.calls.pop()
        d.errback(StoreUnavailable("mysql: connection refused"))
        for w in waiting:
            self.failureResultOf(w, StoreUnavailable)
        self.assertEqual(self.run.calls, [])
        self.assertEqual(self.reads.stats.errors, {"unavailable": 2, "error": 0})
        self.assertEqual(self.reads.stats.in_flight, 0)

    def test_batchers_can_share_their_stats(self) -> None:
        """A store's batchers count into one ReadStats (/metrics)."""
        stats = ReadStats()
        one, two = ReadBatcher(self.run, stats=stats), ReadBatcher(self.run, stats=stats)
        good, bad = one.read(double, 1), two.read(broken, 2)
        self.assertEqual(stats.in_flight, 2)
        self.run.finish()
        self.run.finish()
        self.assertEqual(self.successResultOf(good), 2)
        self.failureResultOf(bad, ZeroDivisionError)
        self.assertEqual((stats.in_flight, stats.errors["error"]), (0, 1))

    def test_a_lone_read_fails_with_its_error(self) -> None:
        reads = ReadBatcher(lambda *a: fail(StoreUnavailable("down")))
        self.failureResultOf(reads.read(double, 1), StoreUnavailable)

    def test_run_raising_fails_the_read(self) -> None:
        def run(*a: Any) -> Deferred[Any]:
            raise RuntimeError("pool closed")

        reads = ReadBatcher(run)
        self.failureResultOf(reads.read(double, 1), RuntimeError)

    def test_synchronous_run(self) -> None:
        txn: list[int] = []
        reads = ReadBatcher(lambda f, *a: succeed(f(txn, *a)))
        self.assertEqual([self.successResultOf(reads.read(double, x)) for x in (1, 2)], [2, 4])

    def test_bad_bounds(self) -> None:
        self.assertRaises(ValueError, ReadBatcher, self.run, 0)
        self.assertRaises(ValueError, ReadBatcher, self.run, 1, 0)
