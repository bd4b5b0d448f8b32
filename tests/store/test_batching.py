"""The group committer, on a fake ``runInteraction`` whose transactions the
test completes by hand."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.store.batching import GroupCommitter


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

    def commit(self) -> None:
        interaction, args, d = self.pending.pop(0)
        try:
            result = interaction(self.txn, *args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def fail(self, error: Exception) -> None:
        self.pending.pop(0)[2].errback(error)


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
