"""Bounded answers (daojia_msg.logic.answers, docs/protocol.md §7.4): a store
whose Deferreds fire late, on a :class:`Clock`. TIMEOUT after
``store.answer_timeout_s`` (3 s) for C2C, ACK and C2S; the late success
stores the message, delivers it, and a resend finds it; UNAVAILABLE when the
store refused; LOGIN, PULL and HISTORY past the limit are UNAVAILABLE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable, StoreUncertain
from daojia_msg.logic.answers import Answers
from daojia_msg.logic.service import PushItem, PushOutcome
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.bus.test_router import HeldBus
from tests.helpers import Stack


def _timeout() -> errors.Timeout:
    return errors.Timeout("late")


class AnswersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.answers = Answers(self.clock, 3.0)

    def test_in_time(self) -> None:
        work: Deferred[int] = Deferred()
        answer = self.answers.bound(work, _timeout)
        self.clock.advance(2.9)
        work.callback(7)
        self.assertEqual(self.successResultOf(answer), 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.answers.timeouts, 0)

    def test_done_at_once_needs_no_timer(self) -> None:
        work = succeed(7)
        self.assertIs(self.answers.bound(work, _timeout), work)
        self.assertIs(self.answers.bound_from(0.0, work, _timeout), work)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_late_work_goes_on(self) -> None:
        """The answer times out; the work is not cancelled, and its late
        result goes nowhere (a late unexpected failure is logged)."""
        cancelled: list[bool] = []
        work: Deferred[int] = Deferred(lambda d: cancelled.append(True))
        done: list[int] = []
        work.addCallback(lambda v: done.append(v) or v)
        answer = self.answers.bound(work, _timeout)
        self.clock.advance(3)
        self.assertEqual(str(self.failureResultOf(answer, errors.Timeout).value), "late")
        self.assertEqual(cancelled, [])
        work.callback(7)
        self.assertEqual(done, [7])
        failing: Deferred[int] = Deferred()
        self.failureResultOf(self._late(failing), errors.Timeout)
        failing.errback(RuntimeError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        quiet: Deferred[int] = Deferred()
        self.failureResultOf(self._late(quiet), errors.Timeout)
        quiet.errback(errors.Unavailable("said where it was raised"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def _late(self, work: Deferred[int]) -> Deferred[int]:
        answer = self.answers.bound(work, _timeout)
        self.clock.advance(3)
        return answer

    def test_one_timer_for_many(self) -> None:
        works: list[Deferred[int]] = [Deferred() for _ in range(100)]
        answers = [self.answers.bound(w, _timeout) for w in works]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3)
        for a in answers:
            self.failureResultOf(a, errors.Timeout)
        self.assertEqual(self.answers.timeouts, 100)  # msgplatform_answer_timeouts_total

    def test_bound_from_counts_from_started(self) -> None:
        self.clock.advance(100)
        work: Deferred[int] = Deferred()
        answer = self.answers.bound_from(98.0, work, _timeout)
        self.clock.advance(0.9)
        self.assertNoResult(answer)
        self.clock.advance(0.1)
        self.failureResultOf(answer, errors.Timeout)
        late = self.answers.bound_from(90.0, Deferred(), _timeout)  # no time left
        self.failureResultOf(late, errors.Timeout)
        self.assertEqual(self.answers.timeouts, 2)

    def test_bound_since_shares_the_timer_when_started_a_moment_ago(self) -> None:
        """Started within a tenth of the limit: timed from now on the shared
        queue (one timer for all); started earlier: exactly from then."""
        self.clock.advance(100)
        works: list[Deferred[int]] = [Deferred() for _ in range(10)]
        answers = [self.answers.bound_since(99.8, w, _timeout) for w in works]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2.9)
        self.assertNoResult(answers[0])  # up to 0.2 s past started + 3
        self.clock.advance(0.1)
        for a in answers:
            self.failureResultOf(a, errors.Timeout)
        late = self.answers.bound_since(self.clock.seconds() - 2.0, Deferred(), _timeout)
        self.clock.advance(0.9)
        self.assertNoResult(late)
        self.clock.advance(0.1)
        self.failureResultOf(late, errors.Timeout)  # 3 s after it started
        self.assertEqual(self.answers.timeouts, 11)
        # Started past the limit already: timed from now, not given up at once.
        past = self.answers.bound_since(self.clock.seconds() - 5.0, Deferred(), _timeout)
        self.clock.advance(2.9)
        self.assertNoResult(past)
        self.clock.advance(0.1)
        self.failureResultOf(past, errors.Timeout)


class HeldStore:
    """Make one method of a stack's store answer only when released: the
    real store then runs (a late success), or the Deferred fails (a late
    failure)."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.real: Callable[..., Deferred[Any]] = getattr(stack.store, name)
        self.held: list[tuple[Deferred[None], Deferred[Any]]] = []
        setattr(stack.store, name, self._call)

    def _call(self, *args: Any) -> Deferred[Any]:
        gate: Deferred[None] = Deferred()
        d = gate.addCallback(lambda _: self.real(*args))
        self.held.append((gate, d))
        return d

    def release(self, error: Exception | None = None) -> None:
        held, self.held = self.held, []
        for gate, _ in held:
            if error is None:
                gate.callback(None)
            else:
                gate.errback(error)


class C2CTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()
        self.a = self.stack.login(1)
        self.b = self.stack.login(2)

    def send(self, client_msg_id: str = "cm-1") -> None:
        self.a.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x",
                                           client_msg_id=client_msg_id), msgtype=7)

    def test_timeout_then_late_success_then_resend(self) -> None:
        held = HeldStore(self.stack, "store")
        self.send()
        self.stack.clock.advance(2.9)
        self.assertEqual(self.a.received(), [])
        self.stack.clock.advance(0.1)
        answer = self.a.response()
        self.assertEqual(answer.code, Code.TIMEOUT)
        self.assertIn("client_msg_id", answer.reason)
        # The store completes late: stored, and pushed to the online recipient.
        held.release()
        [pushed] = self.b.pushed_messages()
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 1)
        # The resend: the first msgid, not stored twice.
        self.stack.store.store = held.real  # type: ignore[method-assign]
        resend = self.a.c2c(2, client_msg_id="cm-1")
        self.assertEqual((resend.code, resend.msgid), (Code.OK, pushed.msgid))
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 1)
        self.assertEqual(self.stack.logic.stats.totals()["accepted"], 1)

    def test_late_failure_stores_nothing(self) -> None:
        held = HeldStore(self.stack, "store")
        self.send()
        self.stack.clock.advance(3)
        self.assertEqual(self.a.response().code, Code.TIMEOUT)
        held.release(StoreUnavailable("read timeout"))
        self.assertEqual(self.b.pushed_messages(), [])
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_refused_before_accepting_is_unavailable(self) -> None:
        self.stack.store.store = lambda batch: fail(StoreUnavailable("down"))  # type: ignore
        self.assertEqual(self.a.c2c(2).code, Code.UNAVAILABLE)

    def test_failed_during_commit_is_timeout(self) -> None:
        self.stack.store.store = lambda batch: fail(StoreUncertain("lost"))  # type: ignore
        self.assertEqual(self.a.c2c(2).code, Code.TIMEOUT)

    def test_in_time_leaves_no_timer(self) -> None:
        held = HeldStore(self.stack, "store")
        self.send()
        self.stack.clock.advance(2)
        held.release()
        self.assertEqual(self.a.response().code, Code.OK)
        timers = self.stack.logic.answers._deadlines
        self.assertEqual(len(timers), 0)

    def test_ack_timeout(self) -> None:
        msgid = self.a.c2c(2).msgid
        self.b.received()
        held = HeldStore(self.stack, "ack")
        self.b.send(Cmd.ACK, pb.Ack(msgids=[msgid]))
        self.stack.clock.advance(3)
        answer = self.b.response()
        self.assertEqual(answer.code, Code.TIMEOUT)
        self.assertIn("ACK again", answer.reason)
        held.release()
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 0)
        self.stack.store.ack = held.real  # type: ignore[method-assign]
        self.assertEqual(self.b.ack([msgid]).code, Code.OK)

    def test_ack_failed_during_commit_is_timeout(self) -> None:
        self.stack.store.ack = lambda *a: fail(StoreUncertain("lost"))  # type: ignore
        self.assertEqual(self.b.ack([1]).code, Code.TIMEOUT)
        self.stack.store.ack = lambda *a: fail(StoreUnavailable("down"))  # type: ignore
        self.assertEqual(self.b.ack([1]).code, Code.UNAVAILABLE)


class ReadsTimeoutTests(SynchronousTestCase):
    """LOGIN, PULL and HISTORY past the limit are UNAVAILABLE."""

    def test_pull_and_history(self) -> None:
        stack = Stack()
        a = stack.login(1)
        for name, cmd, body, response in [
            ("pull", Cmd.PULL, pb.PullRequest(), pb.PullResponse),
            ("history", Cmd.HISTORY, pb.HistoryRequest(), pb.HistoryResponse),
        ]:
            held = HeldStore(stack, name)
            a.send(cmd, body)
            stack.clock.advance(3)
            self.assertEqual(a.response(response).code, Code.UNAVAILABLE, name)
            held.release()
            self.assertEqual(a.received(), [])
            setattr(stack.store, name, held.real)

    def test_login(self) -> None:
        """The LOGIN is refused and leaves no session behind."""
        stack = Stack()
        held = HeldStore(stack, "count_pending")
        conn = stack.connect()
        conn.uid, conn.appcode = 5, 1001
        conn.send(Cmd.LOGIN, pb.LoginRequest(token=stack.token(5)))
        stack.clock.advance(3)
        self.assertEqual(conn.response(pb.LoginResponse).code, Code.UNAVAILABLE)
        held.release()
        self.assertEqual(stack.logic.local, {})
        self.assertIsNone(self.successResultOf(stack.sessions.lookup(5, 1001)))
        stack.store.count_pending = held.real  # type: ignore[method-assign]
        self.assertEqual(conn.login(5).code, Code.OK)

    def test_relogin(self) -> None:
        stack = Stack()
        conn = stack.login(5)
        held = HeldStore(stack, "count_pending")
        conn.send(Cmd.LOGIN, pb.LoginRequest(token=stack.token(5)))
        stack.clock.advance(3)
        self.assertEqual(conn.response(pb.LoginResponse).code, Code.UNAVAILABLE)
        held.release()
        self.assertIn((5, 1001), stack.logic.local)  # the session stays


class C2STimeoutTests(SynchronousTestCase):
    def test_bus_that_does_not_confirm(self) -> None:
        """Not confirmed within ``bus.publish_timeout_s`` (5 s): TIMEOUT."""
        bus = HeldBus()
        stack = Stack(bus=bus)
        a = stack.login(1)
        a.send(Cmd.C2S, pb.C2SRequest(content=b"x"), msgtype=2)
        stack.clock.advance(4.9)
        self.assertEqual(a.received(), [])
        stack.clock.advance(0.1)
        answer = a.response()
        self.assertEqual(answer.code, Code.TIMEOUT)
        self.assertIn("may or may not be published", answer.reason)


class PushTimeoutTests(SynchronousTestCase):
    def push(self, stack: Stack, started: float | None = None,
             key: str = "k") -> Deferred[list[PushOutcome | errors.RequestError]]:
        return Deferred.fromCoroutine(stack.logic.push_s2c(
            [PushItem(2, 1001, 5, b"x", idempotency_key=key), PushItem(0, 1001, 5, b"bad")],
            1001, started))

    def test_counted_from_when_the_request_was_read(self) -> None:
        stack = Stack()
        held = HeldStore(stack, "store")
        d = self.push(stack, started=stack.clock.seconds() - 2)
        stack.clock.advance(0.9)
        self.assertNoResult(d)
        stack.clock.advance(0.1)
        timed_out, refused = self.successResultOf(d)
        self.assertIsInstance(timed_out, errors.Timeout)
        self.assertIsInstance(refused, errors.BadRequest)
        held.release()
        stack.store.store = held.real  # type: ignore[method-assign]
        [again, _] = self.successResultOf(self.push(stack))
        assert isinstance(again, PushOutcome)
        self.assertFalse(again.online)
        self.assertEqual(self.successResultOf(stack.store.count_pending(2, 1001)), 1)

    def test_store_refused(self) -> None:
        stack = Stack()
        stack.store.store = lambda batch: fail(StoreUnavailable("down"))  # type: ignore
        unavailable, _ = self.successResultOf(self.push(stack))
        self.assertIsInstance(unavailable, errors.Unavailable)
