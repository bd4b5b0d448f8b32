"""Deadlines: one timer for many Deferreds that get the same time."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock, 5.0)

    def test_late_ones_time_out_in_order_on_one_timer(self) -> None:
        first: Deferred[int] = Deferred()
        self.deadlines.watch(first)
        self.clock.advance(2)
        second: Deferred[int] = Deferred()
        self.deadlines.watch(second)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3)
        self.failureResultOf(first, TimeoutError)
        self.assertNoResult(second)
        self.clock.advance(2)
        self.failureResultOf(second, TimeoutError)
        self.assertEqual((len(self.deadlines), self.clock.getDelayedCalls()), (0, []))

    def test_in_time_passes_its_result_and_leaves_no_timer(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        d.callback(7)
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing waits: no timer

    def test_failures_in_time_are_their_own(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        d.errback(ValueError("no"))
        self.failureResultOf(d, ValueError)

    def test_already_fired_is_not_watched(self) -> None:
        self.assertEqual(self.successResultOf(self.deadlines.watch(succeed(3))), 3)
        self.assertEqual((len(self.deadlines), self.clock.getDelayedCalls()), (0, []))

    def test_the_canceller_runs_and_may_answer(self) -> None:
        cancelled: list[Any] = []
        quiet: Deferred[str] = Deferred(lambda d: d.callback("fallback"))
        plain: Deferred[str] = Deferred(cancelled.append)
        self.deadlines.watch(quiet)
        self.deadlines.watch(plain)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(quiet), "fallback")
        self.assertEqual(cancelled, [plain])
        self.failureResultOf(plain, TimeoutError)

    def test_a_cancel_by_the_caller_stays_a_cancel(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNoResult(d)
