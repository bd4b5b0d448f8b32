"""Deadlines: one timer for many Deferreds that get the same time."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
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

    def test_a_late_timer_gives_one_more_timeout(self) -> None:
        """Fired 2 s late (more than a quarter of the 5 s): the node was
        stalled, and what it waits for may be unread or unsent. Each one past
        its deadline gets 5 s more from now, once."""
        answered: Deferred[str] = Deferred()
        silent: Deferred[str] = Deferred()
        self.deadlines.watch(answered)
        self.deadlines.watch(silent)
        self.clock.advance(7)
        self.assertNoResult(answered)
        self.assertNoResult(silent)
        self.assertEqual(self.deadlines.stalls, 1)
        answered.callback("read after the stall")
        self.assertEqual(self.successResultOf(answered), "read after the stall")
        self.clock.advance(4.9)
        self.assertNoResult(silent)
        self.clock.advance(0.1)
        self.failureResultOf(silent, TimeoutError)
        self.assertEqual((len(self.deadlines), self.clock.getDelayedCalls()), (0, []))

    def test_only_once(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.clock.advance(7)  # stalled: 5 s more, to 12
        self.clock.advance(8)  # stalled again, at 15: no more
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.deadlines.stalls, 1)

    def test_a_little_late_is_not_a_stall(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.clock.advance(6.25)  # a quarter of the timeout late: still a timeout
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.deadlines.stalls, 0)

    def test_extended_ones_keep_the_order_of_deadlines(self) -> None:
        first: Deferred[int] = Deferred()
        self.deadlines.watch(first)  # due at 5
        self.clock.advance(4)
        second: Deferred[int] = Deferred()
        self.deadlines.watch(second)  # due at 9
        self.clock.advance(4)  # at 8, 3 s late: first waits to 13, after second
        self.assertNoResult(first)
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), 9.0)
        self.clock.advance(1)
        self.failureResultOf(second, TimeoutError)
        self.assertNoResult(first)
        self.clock.advance(4)
        self.failureResultOf(first, TimeoutError)

    def test_the_stall_is_logged(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.deadlines.watch(Deferred())
        self.clock.advance(8)
        [event] = [e for e in events if e.get("log_namespace", "").startswith("daojia_msg")]
        self.assertEqual(
            formatEvent(event),
            "deadlines: the node was stalled, this timer ran 3.0 s late;"
            " 1 past their deadline wait 5 s more")
        self.deadlines.stop()

    def test_stop(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNoResult(d)
