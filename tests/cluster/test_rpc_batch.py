"""DeliverMany: the pushes to one peer of one reactor turn go as one call."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.cluster.rpc import InternalError, RpcServerProtocol, client
from daojia_msg.cluster.rpc.commands import (
    BATCH_BYTES,
    BATCH_CONTENT,
    BATCH_ITEMS,
    PUSHED,
    DeliverMany,
)
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import SessionRecord, StoredMessage
from tests.cluster.test_rpc import RECORD, Cluster, FakeLogic, message


class SessionsLogic(FakeLogic):
    """Holds only the sessions named in ``held``; fails the messages in ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.held = {"s-42"}
        self.failing: set[int] = set()

    def deliver_local(self, session_id: str, msg: StoredMessage) -> bool:
        if msg.msgid in self.failing:
            raise RuntimeError(f"cannot push {msg.msgid}")
        self.delivered.append((session_id, msg))
        return session_id in self.held


class EarlierVersion(RpcServerProtocol):
    """A node of a version without DeliverMany: it answers UNHANDLED."""

    def locateResponder(self, name: bytes) -> Any:
        return None if name == b"DeliverMany" else super().locateResponder(name)


class ShortAnswers(RpcServerProtocol):
    """A node that answers a DeliverMany for one message fewer than asked."""

    @DeliverMany.responder
    def deliver_many(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pushed": [PUSHED] * (len(items) - 1)}


class DeliverManyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.c = Cluster()
        self.c.logic = self.c.server.logic = SessionsLogic()
        # An open connection first (a lone push goes as a Deliver).
        first = self.c.deliver(RECORD, message(1))
        self.c.connect()
        self.assertIs(self.successResultOf(first), True)
        self.c.logic.delivered.clear()
        self.c.peers.calls.clear()

    def turn(self, *pushes: tuple[SessionRecord, StoredMessage]) -> list[Deferred[bool]]:
        """Pushes within one reactor turn, then the end of the turn and the exchange."""
        waiting = [self.c.peers.deliver(record, msg) for record, msg in pushes]
        self.c.reactor.advance(0)
        self.c.flush()
        return waiting

    def test_one_call_for_the_turn(self) -> None:
        msgs = [message(n) for n in range(10, 15)]
        waiting = self.turn(*[(RECORD, m) for m in msgs])
        self.assertEqual([self.successResultOf(d) for d in waiting], [True] * 5)
        self.assertEqual(self.c.logic.delivered, [("s-42", m) for m in msgs])
        self.assertEqual(self.c.peers.calls, {("2", "ok"): 1})
        # The next turn is a call of its own.
        self.turn((RECORD, message(20)), (RECORD, message(21)))
        self.assertEqual(self.c.peers.calls, {("2", "ok"): 2})

    def test_each_message_its_own_answer(self) -> None:
        gone = SessionRecord(RECORD.uid, RECORD.appcode, 2, "s-old", 0)
        self.c.logic.failing = {12}
        pushed, not_held, failed, after = self.turn(
            (RECORD, message(10)), (gone, message(11)), (RECORD, message(12)),
            (RECORD, message(13)))
        self.assertIs(self.successResultOf(pushed), True)
        self.assertIs(self.successResultOf(not_held), False)
        f = self.failureResultOf(failed, PeerUnavailable)
        self.assertIn("refused the message", f.getErrorMessage())
        self.assertIs(self.successResultOf(after), True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # the server logged why

    def test_content_over_the_limit_refused_alone(self) -> None:
        c = Cluster(max_content=100)
        first = c.deliver(RECORD, message(1))
        c.connect()
        self.successResultOf(first)
        over, fine = [c.peers.deliver(RECORD, message(n, content=b"x" * size))
                      for n, size in ((2, 101), (3, 100))]
        c.reactor.advance(0)
        c.flush()
        self.failureResultOf(over, PeerUnavailable)
        self.assertIs(self.successResultOf(fine), True)
        self.assertEqual([m.msgid for _, m in c.logic.delivered], [1, 3])

    def test_long_content_goes_alone(self) -> None:
        long = message(11, content=b"y" * (BATCH_CONTENT + 1))
        waiting = self.turn((RECORD, message(10)), (RECORD, long), (RECORD, message(12)))
        self.assertEqual([self.successResultOf(d) for d in waiting], [True] * 3)
        # A Deliver for the long one, a DeliverMany for the two others.
        self.assertEqual(self.c.peers.calls, {("2", "ok"): 2})
        self.assertEqual(sorted(m.msgid for _, m in self.c.logic.delivered), [10, 11, 12])

    def test_a_full_batch_goes_at_once(self) -> None:
        waiting = [self.c.peers.deliver(RECORD, message(n)) for n in range(BATCH_ITEMS + 1)]
        [pump] = self.c.pumps
        pump.flush(advanceClock=False)  # before the end of the turn: the full one went
        self.assertEqual([self.successResultOf(d) for d in waiting[:BATCH_ITEMS]],
                         [True] * BATCH_ITEMS)
        self.assertNoResult(waiting[-1])
        self.c.reactor.advance(0)
        self.c.flush()
        self.assertIs(self.successResultOf(waiting[-1]), True)
        self.assertEqual(self.c.peers.calls, {("2", "ok"): 2})

    def test_bytes_bound_the_batch(self) -> None:
        per = BATCH_CONTENT - 1000
        count = BATCH_BYTES // per + 1
        waiting = self.turn(*[(RECORD, message(n, content=b"z" * per)) for n in range(count)])
        self.assertEqual([self.successResultOf(d) for d in waiting], [True] * count)
        self.assertEqual(self.c.peers.calls, {("2", "ok"): 2})

    def test_timeout_fails_each(self) -> None:
        waiting = [self.c.peers.deliver(RECORD, message(n)) for n in (10, 11, 12)]
        self.c.reactor.advance(0)  # sent, but the peer never answers (no flush)
        self.c.reactor.advance(3.0)
        for d in waiting:
            self.assertIn("no answer within 3 s",
                          self.failureResultOf(d, PeerUnavailable).getErrorMessage())
        self.assertEqual(self.c.peers.calls, {("2", "timeout"): 1})

    def test_the_peer_fails_the_call(self) -> None:
        """An answer of the wrong length fails each message (none is taken
        for pushed)."""
        c = Cluster()
        c.server.protocol = ShortAnswers
        waiting = [c.peers.deliver(RECORD, message(n)) for n in (10, 11)]
        c.reactor.advance(0)
        c.connect()
        for d in waiting:
            f = self.failureResultOf(d, PeerUnavailable)
            self.assertIsInstance(f.value.__cause__, InternalError)
            self.assertIn("answered 1 for 2 messages", f.getErrorMessage())

    def test_a_full_batch_failing_at_once(self) -> None:
        """A full batch that fails at once (a slow peer being backed off from)
        goes once the next batch is in place: a caller that pushes again from
        its errback joins the next batch, which goes at the end of the turn."""
        link = self.c.peers._links[2]
        link.slow_until = self.c.reactor.seconds() + 5
        again: list[Deferred[bool]] = []
        first = [self.c.peers.deliver(RECORD, message(n)) for n in range(BATCH_ITEMS)]
        first[0].addErrback(lambda _: again.append(self.c.peers.deliver(RECORD, message(999))))
        last = self.c.peers.deliver(RECORD, message(5000))  # sends the full one: it fails
        for d in first[1:]:
            self.failureResultOf(d, PeerUnavailable)
        [pushed_again] = again  # from first[0]'s errback
        self.assertNoResult(pushed_again)
        self.c.reactor.advance(0)
        for d in (pushed_again, last):
            self.assertIn("backing off", self.failureResultOf(d, PeerUnavailable).getErrorMessage())

    def test_max_inflight_counts_pushes(self) -> None:
        """MAX_PEER_INFLIGHT bounds the pushes waiting on a peer, a
        DeliverMany counting its messages."""
        self.patch(client, "MAX_PEER_INFLIGHT", 10)
        waiting = [self.c.peers.deliver(RECORD, message(n)) for n in range(10)]
        self.c.reactor.advance(0)  # ten pushes out in one call, unanswered yet
        more = [self.c.peers.deliver(RECORD, message(n)) for n in (20, 21)]
        self.c.reactor.advance(0)
        for d in more:
            self.assertIn("10 pushes already wait",
                          self.failureResultOf(d, PeerUnavailable).getErrorMessage())
        self.c.flush()
        self.assertEqual([self.successResultOf(d) for d in waiting], [True] * 10)

    def test_an_earlier_version_one_by_one(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        c = Cluster()
        c.server.protocol = EarlierVersion
        first = c.deliver(RECORD, message(1))
        c.connect()
        self.successResultOf(first)
        # Two batches out before the first answer: both go again one by one.
        waiting = [c.peers.deliver(RECORD, message(n)) for n in range(10, 10 + BATCH_ITEMS + 2)]
        c.reactor.advance(0)
        c.flush()
        self.assertTrue(all(self.successResultOf(d) for d in waiting))
        self.assertEqual([m.msgid for _, m in c.logic.delivered],
                         [1, *range(10, 10 + BATCH_ITEMS + 2)])
        said = [e for e in events if "does not take DeliverMany" in e.get("log_format", "")]
        self.assertEqual(len(said), 1)
        # Remembered: the next turn's pushes go as Deliver straight away.
        c.peers.calls.clear()
        waiting = [c.peers.deliver(RECORD, message(n)) for n in (13, 14)]
        c.reactor.advance(0)
        c.flush()
        self.assertEqual([self.successResultOf(d) for d in waiting], [True] * 2)
        self.assertEqual(c.peers.calls, {("2", "ok"): 2})
