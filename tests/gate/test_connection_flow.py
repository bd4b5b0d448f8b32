"""The flow of one connection: LOGOUT after earlier answers, pushes held during LOGIN, a peer that does not read, partial frames and the idle timeout."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.protocol.codes import Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack

BIG = 2**63


class LogoutOrderTests(SynchronousTestCase):
    def test_logout_waits_for_earlier_answers(self) -> None:
        stack = Stack()
        alice = stack.login(1)
        hold = stack.store.pool.hold()
        alice.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x"))
        alice.send(Cmd.LOGOUT)
        self.assertEqual(alice.received(), [])
        hold()
        frames = alice.received()
        self.assertEqual([f.cmd for f in frames], [Cmd.C2C | 0x80, Cmd.LOGOUT | 0x80])
        result = pb.Result()
        result.ParseFromString(frames[0].body)
        self.assertEqual(result.code, Code.OK)
        self.assertGreater(result.msgid, 0)
        self.assertTrue(alice.closing)


class LoginWindowTests(SynchronousTestCase):
    """Between registering a session and answering its LOGIN."""

    def setUp(self) -> None:
        self.stack = Stack()
        self.alice = self.stack.login(1)
        self.held: list[Deferred[int]] = []
        store = self.stack.store
        real = store.count_pending

        def slow_count(uid: int, appcode: int) -> Deferred[int]:
            d: Deferred[int] = Deferred()
            self.held.append(d)
            return d.addCallback(lambda _: real(uid, appcode))

        store.count_pending = slow_count  # type: ignore[method-assign]
        self.bob = self.stack.connect()
        self.bob.uid, self.bob.appcode = 2, 1001
        self.bob.send(Cmd.LOGIN, pb.LoginRequest(token=self.stack.token(2)))
        self.assertEqual(len(self.held), 1)

    def test_push_waits_for_the_login_answer(self) -> None:
        sent = self.alice.c2c(2)
        self.assertEqual(self.bob.received(), [])
        self.held[0].callback(None)
        frames = self.bob.received()
        self.assertEqual([f.cmd for f in frames], [Cmd.LOGIN | 0x80, Cmd.C2C])
        msg = pb.Message()
        msg.ParseFromString(frames[1].body)
        self.assertEqual(msg.msgid, sent.msgid)
        self.assertEqual((frames[1].uid, frames[1].appcode), (2, 1001))

    def test_kickout_in_the_window_carries_the_identity(self) -> None:
        Deferred.fromCoroutine(self.stack.logic.kickout(2, 1001, KickReason.ADMIN))
        [frame] = self.bob.received()
        self.assertEqual((frame.cmd, frame.uid, frame.appcode), (Cmd.KICKOUT, 2, 1001))

    def test_failed_login_after_registering_leaves_nothing(self) -> None:
        self.alice.c2c(2)  # held for bob
        self.held[0].errback(StoreUnavailable("down"))
        [answer] = self.bob.received()  # no push: the login failed
        response = pb.LoginResponse()
        response.ParseFromString(answer.body)
        self.assertEqual(response.code, Code.UNAVAILABLE)
        self.assertNotIn((2, 1001), self.stack.logic.local)
        self.assertIsNone(self.bob.proto.session)
        self.assertEqual(self.bob.request(Cmd.PULL, response=pb.PullResponse).code,
                         Code.NOT_LOGGED_IN)


class WriteBackPressureTests(SynchronousTestCase):
    def test_a_peer_that_does_not_read(self) -> None:
        """Its pushes wait in its lanes (docs/protocol.md, Back-pressure) and
        leave once it reads again; the gate stops reading it meanwhile."""
        stack = Stack()
        alice = stack.login(1)
        bob = stack.login(2)
        self.assertIs(bob.transport.producer, bob.proto)  # registered as a producer
        bob.proto.pauseProducing()  # what the transport does when its buffer is full
        self.assertEqual(bob.transport.producerState, "paused")  # we stop reading too
        sent = alice.c2c(2)
        self.assertEqual(sent.code, Code.OK)
        self.assertEqual(bob.received(), [])  # queued, not written
        self.assertEqual(len(stack.logic.local[(2, 1001)].window), 1)  # awaits its ACK
        bob.proto.resumeProducing()
        self.assertEqual(bob.transport.producerState, "producing")
        [push] = bob.received()
        msg = pb.Message()
        msg.ParseFromString(push.body)
        self.assertEqual(msg.msgid, sent.msgid)

    def test_stalled_peer_is_closed(self) -> None:
        stack = Stack()
        bob = stack.login(2)
        bob.proto.pauseProducing()
        stack.clock.advance(59)
        self.assertFalse(bob.transport.disconnected)
        stack.clock.advance(1)
        self.assertTrue(bob.transport.disconnected)


class IdleTests(SynchronousTestCase):
    def test_partial_frames_do_not_keep_a_connection(self) -> None:
        stack = Stack()
        bob = stack.login(2)
        frame = bob.frame(Cmd.KEEPALIVE)
        for i in range(3):
            stack.clock.advance(100)
            bob.send_raw(frame[i:i + 1])  # a byte, never a whole frame
        self.assertTrue(bob.closing)
