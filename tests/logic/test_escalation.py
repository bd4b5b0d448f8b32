"""Offline escalation on one node (daojia_msg.logic.escalation): a logic
stack on a ``task.Clock`` with the SQLite store inline, the in-memory
schedule and a fake HTTP client whose answers the tests give."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import random
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daojia_msg.config import default_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.escalation import SIGNATURE_HEADER, verify
from daojia_msg.core.model import Kind
from daojia_msg.logic import escalation
from daojia_msg.logic.escalation import Escalator, backoff
from daojia_msg.logic.interfaces import IEscalationPoster
from daojia_msg.logic.sending import PushItem
from daojia_msg.metrics.delivery import COUNTERS
from daojia_msg.metrics.escalation import EscalationsCollector
from daojia_msg.metrics.registry import make_registry
from daojia_msg.store.escalations import MemoryEscalations
from tests.helpers import Stack
from tests.metrics.test_registry import scrape, value

URL = "https://ops.example.com/escalate"


@implementer(IEscalationPoster)
class FakePoster:
    """Records each POST; answers with what :attr:`answers` holds (a status,
    an exception, or None: never answered), 200 once it is empty."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, str, bytes, dict[str, str]]] = []
        self.answers: list[Any] = []
        self.hanging: list[Deferred[int]] = []
        self.clock: Any = None
        self.stopped = False

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        self.posts.append((self.clock.seconds(), url, body, headers))
        answer = self.answers.pop(0) if self.answers else 200
        if answer is None:
            d: Deferred[int] = Deferred()
            self.hanging.append(d)
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return Deferred.fromCoroutine(_now(answer))

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return Deferred.fromCoroutine(_now(None))


async def _now(value: Any) -> Any:
    return value


def escalating_config() -> Any:
    config = default_config()
    app = dataclasses.replace(config.apps[1001], escalation_url=URL)
    return config.replace(apps={**config.apps, 1001: app})


class EscalationTestCase(SynchronousTestCase):
    cancel_on_ack = True

    def setUp(self) -> None:
        self.stack = Stack(escalating_config())
        self.clock = self.stack.clock
        self.schedule = MemoryEscalations()
        self.poster = FakePoster()
        self.poster.clock = self.clock
        self.escalator = self.make_escalator(self.schedule, self.poster)
        self.stack.logic.sending.escalator = self.escalator

    def make_escalator(self, schedule: Any, poster: FakePoster) -> Escalator:
        escalator = Escalator(self.stack.logic.ctx, schedule, self.stack.store, poster,
                              cancel_on_ack=self.cancel_on_ack, rng=random.Random(7))
        escalator.startService()
        self.addCleanup(lambda: escalator.running and escalator.stopService())
        return escalator

    def push(self, after_s: int = 10, to_uid: int = 42, content: bytes = b"order 7") -> int:
        [outcome] = self.pushed(PushItem(to_uid, 1001, 5, content, "order-7",
                                         escalate_after_s=after_s))
        return int(outcome.msgid)  # type: ignore[union-attr]

    def pushed(self, item: PushItem, pusher: int = 0) -> list[Any]:
        """Push ``item``; its escalation is written at the end of the reactor turn."""
        d = Deferred.fromCoroutine(self.stack.logic.push_s2c([item], pusher))
        self.clock.advance(0)
        return self.successResultOf(d)

    def advance(self, seconds: float, step: float = 0.1) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)


class DueTimeTests(EscalationTestCase):
    def test_posted_within_2_s_of_its_due_time_signed(self) -> None:
        pushed_at = self.clock.seconds()
        msgid = self.push(after_s=10)
        self.advance(9.9)
        self.assertEqual(self.poster.posts, [])
        self.advance(2.0)
        [(at, url, body, headers)] = self.poster.posts
        self.assertTrue(pushed_at + 10 <= at <= pushed_at + 12, at - pushed_at)
        self.assertEqual(url, URL)
        self.assertEqual(json.loads(body), {
            "msgid": str(msgid), "logid": "order-7", "to_uid": 42, "to_appcode": 1001,
            "msgtype": 5, "content_b64": base64.b64encode(b"order 7").decode()})
        self.assertEqual(headers["Content-Type"], "application/json")
        # The receiver's check: the hex HMAC-SHA256 of the exact bytes, keyed by the secret.
        expected = hmac.new(b"demo-secret-1001", body, hashlib.sha256).hexdigest()
        self.assertEqual(headers[SIGNATURE_HEADER], expected)
        self.assertTrue(verify("demo-secret-1001", body, headers[SIGNATURE_HEADER]))
        self.assertFalse(verify("demo-secret-1002", body, headers[SIGNATURE_HEADER]))

    def test_counted_escalated_once_per_route_and_never_posted_again(self) -> None:
        self.push(after_s=1)
        self.push(after_s=1, to_uid=43)
        self.advance(3600)
        self.assertEqual(len(self.poster.posts), 2)
        self.assertEqual(self.stack.logic.stats.snapshot()["totals"]["escalated"], 2)
        self.assertEqual(self.stack.logic.stats.by_route[(1001, 5, Kind.S2C)][
            COUNTERS.index("escalated")], 2)
        self.assertEqual(self.escalator.counts["posted"], 2)
        self.assertEqual(len(self.schedule), 0)
        registry = make_registry(self.stack.logic.stats, lambda: 0, lambda: 0)
        registry.register(EscalationsCollector(lambda: self.escalator.counts))
        samples = scrape(registry)
        self.assertEqual(value(samples["msgplatform_escalations"],
                               "msgplatform_escalations_total", outcome="posted"), 2)
        self.assertEqual(value(samples["msgplatform_messages_escalated"],
                               "msgplatform_messages_escalated_total",
                               appcode="1001", msgtype="5", kind="S2C"), 2)

    def test_online_or_not_it_is_escalated(self) -> None:
        conn = self.stack.login(42)
        self.push(after_s=5)
        self.assertEqual(len(conn.pushed_messages()), 1)  # pushed, never ACKed
        self.advance(7)
        self.assertEqual(len(self.poster.posts), 1)

    def test_a_push_without_escalate_after_s_is_not_scheduled(self) -> None:
        self.push(after_s=0)
        self.assertEqual(len(self.schedule), 0)
        self.advance(10)
        self.assertEqual(self.poster.posts, [])

    def test_an_idempotent_repeat_is_not_escalated_twice(self) -> None:
        item = PushItem(42, 1001, 5, b"x", idempotency_key="k1", escalate_after_s=2)
        for _ in range(2):
            self.pushed(item, 1001)
        self.assertEqual(len(self.schedule), 1)
        self.advance(4)
        self.assertEqual(len(self.poster.posts), 1)


class AckTests(EscalationTestCase):
    def test_the_ack_cancels(self) -> None:
        conn = self.stack.login(42)
        msgid = self.push(after_s=10)
        self.advance(5)
        self.assertEqual(conn.ack([msgid]).code, 0)
        self.assertEqual(len(self.schedule), 0)  # dropped at once on one node
        self.advance(20)
        self.assertEqual(self.poster.posts, [])

    def test_an_ack_after_the_post_changes_nothing(self) -> None:
        conn = self.stack.login(42)
        msgid = self.push(after_s=1)
        self.advance(2)
        self.assertEqual(conn.ack([msgid]).code, 0)
        self.assertEqual(len(self.poster.posts), 1)
        self.assertEqual(self.stack.logic.stats.totals()["escalated"], 1)


class AckCheckedAtDueTimeTests(EscalationTestCase):
    """As in a cluster: the ACK leaves the entry; the store says at due time."""

    cancel_on_ack = False

    def test_the_ack_cancels_at_due_time(self) -> None:
        conn = self.stack.login(42)
        msgid = self.push(after_s=10)
        self.assertEqual(conn.ack([msgid]).code, 0)
        self.assertEqual(len(self.schedule), 1)
        self.advance(12)
        self.assertEqual(self.poster.posts, [])
        self.assertEqual(len(self.schedule), 0)
        self.assertEqual(self.escalator.counts["cancelled"], 1)


class RetryTests(EscalationTestCase):
    def test_failures_are_retried_with_a_growing_backoff(self) -> None:
        self.poster.answers = [500, ConnectionRefusedError("refused"), TimeoutError(), 404, 200]
        self.push(after_s=1)
        self.advance(60)
        times = [p[0] for p in self.poster.posts]
        self.assertEqual(len(times), 5)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        for i, gap in enumerate(gaps):  # half to all of 1, 2, 4, 8 s, plus a poll
            step = min(escalation.BACKOFF_BASE_S * 2 ** i, escalation.BACKOFF_CAP_S)
            self.assertTrue(step / 2 <= gap <= step + escalation.POLL_S + 0.11, (i, gaps))
        self.assertEqual(self.escalator.counts, {"posted": 1, "failed": 4, "gave_up": 0,
                                                 "cancelled": 0})
        self.assertEqual(self.stack.logic.stats.totals()["escalated"], 1)
        self.assertEqual(len({p[2] for p in self.poster.posts}), 1)  # the same body

    def test_the_backoff_is_capped_and_jittered(self) -> None:
        rng = random.Random(1)
        delays = [backoff(n, rng) for n in range(1, 40)]
        self.assertTrue(all(d <= escalation.BACKOFF_CAP_S for d in delays))
        self.assertTrue(all(d >= escalation.BACKOFF_CAP_S / 2 for d in delays[10:]))
        self.assertGreater(len(set(delays[10:])), 20)  # spread, not one value

    def test_given_up_an_hour_after_it_fell_due(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.poster.answers = [503] * 1000
        self.push(after_s=60)
        self.advance(60 + 3600 + 120, step=0.5)
        posts = len(self.poster.posts)
        self.assertGreater(posts, 60)  # every minute at least, after the first few
        self.assertLess(posts, 100)
        last = self.poster.posts[-1][0] - self.poster.posts[0][0]
        self.assertLessEqual(last, 3600)
        self.assertEqual(self.escalator.counts["gave_up"], 1)
        self.assertEqual(self.escalator.counts["posted"], 0)
        self.assertEqual(len(self.schedule), 0)
        self.advance(600, step=0.5)
        self.assertEqual(len(self.poster.posts), posts)
        text = [formatEvent(e) for e in observer]
        self.assertTrue(any("given up" in t for t in text))
        self.assertFalse(any("demo-secret-1001" in t for t in text))

    def test_a_store_down_at_schedule_time_keeps_them_until_it_answers(self) -> None:
        down = StoreUnavailable("redis down")
        real = self.schedule.schedule
        self.schedule.schedule = lambda entries: fail(down)  # type: ignore[method-assign]
        self.push(after_s=2)  # still answered
        self.assertEqual(len(self.schedule), 0)
        self.advance(1)
        self.schedule.schedule = real  # type: ignore[method-assign]
        self.advance(3)
        self.assertEqual(len(self.poster.posts), 1)

    def test_a_schedule_down_at_claim_time_is_said_once_and_its_end(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.push(after_s=1)
        real = self.schedule.claim
        self.schedule.claim = lambda *a: fail(StoreUnavailable("redis down"))  # type: ignore
        self.advance(5)
        self.assertEqual(self.poster.posts, [])
        self.schedule.claim = real  # type: ignore[method-assign]
        self.advance(1)
        self.assertEqual(len(self.poster.posts), 1)
        text = [formatEvent(e) for e in observer]
        self.assertEqual(len([t for t in text if t.startswith("cannot claim")]), 1, text)
        self.assertEqual(len([t for t in text if "work again" in t]), 1, text)

    def test_at_most_concurrency_posts_under_way(self) -> None:
        self.poster.answers = [None] * 100
        for uid in range(1, 41):
            self.push(after_s=1, to_uid=uid)
        self.advance(3)
        self.assertEqual(len(self.poster.posts), escalation.CONCURRENCY)
        for d in list(self.poster.hanging):
            d.callback(200)
        self.advance(2)
        self.assertEqual(len(self.poster.posts), 2 * escalation.CONCURRENCY)


class BacklogTests(EscalationTestCase):
    def test_a_backlog_goes_at_the_receivers_pace_not_a_claim_per_poll(self) -> None:
        for uid in range(1, 101):
            self.push(after_s=1, to_uid=uid)
        self.advance(1.5)  # one poll past the due time, the receiver answering at once
        self.assertEqual(len(self.poster.posts), 100)
        self.assertEqual(len(self.schedule), 0)


class ClaimTests(EscalationTestCase):
    """Two escalators on one schedule, as two nodes on one Redis."""

    def test_one_post_per_message_across_two_escalators(self) -> None:
        other = FakePoster()
        other.clock = self.clock
        self.make_escalator(self.schedule, other)
        for uid in range(1, 11):
            self.push(after_s=1, to_uid=uid)
        self.advance(5)
        self.assertEqual(len(self.poster.posts) + len(other.posts), 10)
        bodies = [p[2] for p in self.poster.posts + other.posts]
        self.assertEqual(len(set(bodies)), 10)

    def test_no_post_late_in_its_lease(self) -> None:
        """A store that stalls past the lease's margin: the claim leaves the
        entry (another node may hold it by then), which is POSTed once later."""
        held: list[Deferred[Any]] = []
        real = self.stack.store.pending_message

        def stalled(to_uid: int, msgid: int) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append(d)
            return d

        self.stack.store.pending_message = stalled  # type: ignore[method-assign]
        msgid = self.push(after_s=1)
        self.advance(escalation.LEASE_S - escalation.LEASE_MARGIN_S + 2)
        self.assertEqual(len(held), 1)
        self.stack.store.pending_message = real  # type: ignore[method-assign]
        held[0].callback(self.successResultOf(real(42, msgid)))
        self.assertEqual(self.poster.posts, [])
        self.advance(escalation.LEASE_MARGIN_S)  # the lease ran out: claimed again
        self.assertEqual(len(self.poster.posts), 1)

    def test_a_schedule_blip_after_the_2xx_does_not_post_it_again(self) -> None:
        """The schedule refuses for 0.5 s just as the receiver answers 2xx:
        marking it done is tried again within the lease, so the entry is not
        claimed and POSTed again once the lease runs out."""
        real = self.schedule.finish
        down = {"on": False}

        def finish(claim: Any) -> Deferred[Any]:
            if down["on"]:
                return fail(StoreUnavailable("redis EVALSHA: not connected"))
            return real(claim)

        self.schedule.finish = finish  # type: ignore[method-assign]
        real_post = self.poster.post

        def post(url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
            down["on"] = True
            self.clock.callLater(0.5, down.update, on=False)
            return real_post(url, body, headers)

        self.poster.post = post  # type: ignore[method-assign]
        self.push(after_s=1)
        self.advance(2)
        self.assertEqual(len(self.poster.posts), 1)
        self.poster.post = real_post  # type: ignore[method-assign]
        self.advance(escalation.LEASE_S + 2)
        self.assertEqual(len(self.poster.posts), 1)
        self.assertEqual(len(self.schedule), 0)

    def test_a_stopping_escalator_hands_back_what_it_had_not_started(self) -> None:
        """Stopped (a rolling restart) with 16 POSTs hanging and more
        claimed behind them: those not started are due again at once and
        another node POSTs them within a poll; those under way keep their
        claims for the lease (they may have reached the receiver)."""
        self.poster.answers = [None] * escalation.CONCURRENCY
        for uid in range(1, 21):
            self.push(after_s=1, to_uid=uid)
        self.advance(2)
        self.assertEqual(len(self.poster.posts), escalation.CONCURRENCY)
        self.successResultOf(self.escalator.stopService())
        other = FakePoster()
        other.clock = self.clock
        self.make_escalator(self.schedule, other)
        self.advance(1)
        self.assertEqual(len(other.posts), 20 - escalation.CONCURRENCY)
        self.advance(escalation.LEASE_S)
        self.assertEqual(len(other.posts), 20)
        self.assertEqual(len(self.schedule), 0)

    def test_a_dead_escalators_claim_is_taken_over_after_its_lease(self) -> None:
        self.poster.answers = [None]  # its POST never answers: it dies in it
        self.push(after_s=1)
        self.advance(2)
        self.assertEqual(len(self.poster.posts), 1)
        self.escalator.stopService()  # dead: its claim stays until the lease runs out
        other = FakePoster()
        other.clock = self.clock
        self.make_escalator(self.schedule, other)
        self.advance(escalation.LEASE_S - 3)
        self.assertEqual(other.posts, [])
        self.advance(4)
        self.assertEqual(len(other.posts), 1)
        self.assertEqual(len(self.schedule), 0)


class BatchingTests(EscalationTestCase):
    def test_the_pushes_of_one_turn_are_scheduled_in_one_call(self) -> None:
        calls: list[int] = []
        real = self.schedule.schedule

        def counted(entries: Any) -> Deferred[None]:
            calls.append(len(entries))
            return real(entries)

        self.schedule.schedule = counted  # type: ignore[method-assign]
        pushes = [Deferred.fromCoroutine(self.stack.logic.push_s2c(
            [PushItem(uid, 1001, 5, b"x", escalate_after_s=5)])) for uid in range(1, 6)]
        for d in pushes:
            self.assertNoResult(d)  # answered once the escalation is written
        self.clock.advance(0)
        self.assertEqual(calls, [5])
        for d in pushes:
            self.successResultOf(d)

    def test_pushes_that_come_during_a_write_go_in_the_next_one(self) -> None:
        held: list[Deferred[None]] = []
        calls: list[int] = []

        def slow(entries: Any) -> Deferred[None]:
            calls.append(len(entries))
            d: Deferred[None] = Deferred()
            held.append(d)
            return d

        self.schedule.schedule = slow  # type: ignore[method-assign]
        first = Deferred.fromCoroutine(self.stack.logic.push_s2c(
            [PushItem(1, 1001, 5, b"x", escalate_after_s=5)]))
        self.clock.advance(0)
        later = [Deferred.fromCoroutine(self.stack.logic.push_s2c(
            [PushItem(uid, 1001, 5, b"x", escalate_after_s=5)])) for uid in range(2, 5)]
        self.clock.advance(0)
        self.assertEqual(calls, [1])  # the next waits for the write under way
        held[0].callback(None)
        self.successResultOf(first)
        self.assertEqual(calls, [1, 3])
        held[1].callback(None)
        for d in later:
            self.successResultOf(d)
