"""Deadlines: one timer for many Deferreds that get the same time."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.deadlines import Deadlines, within


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

    def test_one_watched_during_the_stall_gets_its_time_too(self) -> None:
        """Busy from 0.1 to 7: ``late`` was watched at 4.9 (its request only
        went out at 7), due at 9.9. It gets 5 s from 7 as well."""
        early: Deferred[int] = Deferred()
        self.deadlines.watch(early)
        self.clock.advance(4.9)
        late: Deferred[int] = Deferred()
        self.deadlines.watch(late)
        self.clock.advance(2.1)  # the timer due at 5 runs at 7
        self.clock.advance(4.9)  # 11.9: past late's own deadline
        self.assertNoResult(early)
        self.assertNoResult(late)
        self.clock.advance(0.1)
        self.failureResultOf(early, TimeoutError)
        self.failureResultOf(late, TimeoutError)

    def test_a_stall_noticed_with_nothing_due_yet(self) -> None:
        """The first one settled, the timer still ran for it, late: the others
        get their time too."""
        first: Deferred[int] = Deferred()
        self.deadlines.watch(first)
        self.clock.advance(3)
        second: Deferred[int] = Deferred()
        self.deadlines.watch(second)  # due at 8
        first.callback(1)
        self.clock.advance(4)  # the timer due at 5 runs at 7: nothing due, a stall
        self.assertEqual(self.deadlines.stalls, 1)
        self.clock.advance(4.9)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.failureResultOf(second, TimeoutError)

    def test_a_caller_may_still_cancel_an_extended_one(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.clock.advance(7)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((len(self.deadlines), self.clock.getDelayedCalls()), (0, []))

    def test_stop_forgets_extended_ones(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.clock.advance(7)
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertNoResult(d)

    def test_watched_by_a_callback_of_a_timeout_keeps_one_timer(self) -> None:
        first: Deferred[int] = Deferred()
        later: list[Deferred[int]] = []

        def watch_another(failure: Any) -> Any:
            later.append(self.deadlines.watch(Deferred()))
            return failure

        self.deadlines.watch(first).addErrback(watch_another)
        self.clock.advance(2)
        second: Deferred[int] = Deferred()
        self.deadlines.watch(second)
        self.clock.advance(3)
        self.failureResultOf(first, TimeoutError)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.failureResultOf(second, TimeoutError)
        self.clock.advance(3)
        self.failureResultOf(later[0], TimeoutError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_only_once(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.clock.advance(7)  # stalled: 5 s more, to 12
        self.clock.advance(8)  # stalled again, at 15: no more
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.deadlines.stalls, 2)

    def test_a_little_late_is_not_a_stall(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.clock.advance(6.25)  # a quarter of the timeout late: still a timeout
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.deadlines.stalls, 0)

    def test_extended_ones_keep_the_order_of_deadlines(self) -> None:
        first: Deferred[int] = Deferred()
        self.deadlines.watch(first)
        self.clock.advance(7)  # stalled: first waits to 12
        self.clock.advance(2)
        second: Deferred[int] = Deferred()
        self.deadlines.watch(second)  # due at 14, after first
        self.clock.advance(4.5)  # the timer due at 12 runs at 13.5: stalled again
        self.failureResultOf(first, TimeoutError)  # it had its one more timeout
        self.assertNoResult(second)  # 5 s from 13.5
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), 18.5)
        self.clock.advance(5)
        self.failureResultOf(second, TimeoutError)
        self.assertEqual(self.deadlines.stalls, 2)

    def test_the_stall_is_logged(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.deadlines.watch(Deferred())
        self.clock.advance(8)
        [event] = [e for e in events if e.get("log_namespace", "").startswith("daojia_msg")]
        self.assertEqual(
            formatEvent(event),
            "deadlines: the node was stalled, this timer ran 3.0 s late;"
            " 1 waiting get 5 s more")
        self.deadlines.stop()

    def test_stop(self) -> None:
        d: Deferred[int] = Deferred()
        self.deadlines.watch(d)
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNoResult(d)


class AddedTests(SynchronousTestCase):
    """Deadlines.add: timed without a callback; discard() ends the timing."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock, 5.0)

    def test_time_up_cancels_and_the_canceller_answers(self) -> None:
        d: Deferred[int] = Deferred(lambda d: d.errback(ValueError("late")))
        self.deadlines.add(d)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, ValueError)  # no TimeoutError: nobody watched its result
        self.assertEqual((len(self.deadlines), self.clock.getDelayedCalls()), (0, []))

    def test_discarded_in_time(self) -> None:
        first: Deferred[int] = Deferred()
        second: Deferred[int] = Deferred()
        key = self.deadlines.add(first)
        self.clock.advance(1)
        self.deadlines.add(second)
        self.deadlines.discard(key)
        self.deadlines.discard(key)  # twice: nothing more
        self.clock.advance(5)
        self.assertNoResult(first)
        self.failureResultOf(second, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stall_gives_added_ones_more_time_too(self) -> None:
        d: Deferred[int] = Deferred()
        key = self.deadlines.add(d)
        self.clock.advance(9)  # 4 s late: a stall
        self.assertNoResult(d)
        self.deadlines.discard(key)
        self.assertEqual((len(self.deadlines), self.clock.getDelayedCalls()), (0, []))


class WithinTests(SynchronousTestCase):
    """:func:`within`: one Deferred's own time limit, with the same rule for a stall."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_in_time(self) -> None:
        d: Deferred[int] = Deferred()
        within(d, 4.0, self.clock)
        d.callback(3)
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_on_time_it_times_out(self) -> None:
        cancelled: list[Any] = []
        d: Deferred[int] = within(Deferred(cancelled.append), 4.0, self.clock)
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("within 4 s", str(self.failureResultOf(d, TimeoutError).value))
        self.assertEqual(len(cancelled), 1)

    def test_late_by_a_stall_one_more_timeout(self) -> None:
        answered: Deferred[str] = within(Deferred(), 4.0, self.clock)
        silent: Deferred[str] = within(Deferred(), 4.0, self.clock)
        self.clock.advance(9)  # 5 s late: more than a quarter of 4 s
        self.assertNoResult(answered)
        answered.callback("after the stall")
        self.assertEqual(self.successResultOf(answered), "after the stall")
        self.clock.advance(3.9)
        self.assertNoResult(silent)
        self.clock.advance(0.1)
        self.failureResultOf(silent, TimeoutError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_only_once(self) -> None:
        d: Deferred[str] = within(Deferred(), 4.0, self.clock)
        self.clock.advance(9)
        self.clock.advance(9)  # late again: no more
        self.failureResultOf(d, TimeoutError)

    def test_what_the_timeout_makes_of_the_result(self) -> None:
        seen: list[Any] = []

        def mine(result: Any, timeout: float) -> Any:
            seen.append(timeout)
            return "gave up"

        d: Deferred[str] = within(Deferred(), 4.0, self.clock, mine)
        self.clock.advance(4)
        self.assertEqual((self.successResultOf(d), seen), ("gave up", [4.0]))

    def test_a_cancel_by_the_caller_stays_a_cancel(self) -> None:
        d: Deferred[str] = within(Deferred(), 4.0, self.clock, lambda r, t: "not this")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_already_fired(self) -> None:
        self.assertEqual(self.successResultOf(within(succeed(1), 4.0, self.clock)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
