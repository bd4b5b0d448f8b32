"""Logic in a cluster, with fake peers: remote delivery, kicks, moving sessions."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import SessionRecord, StoredMessage
from daojia_msg.logic.interfaces import IPeers
from daojia_msg.logic.service import PushItem, PushOutcome
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack


@implementer(IPeers)
class FakePeers:
    def __init__(self) -> None:
        self.delivered: list[tuple[SessionRecord, StoredMessage]] = []
        self.kicked: list[tuple[SessionRecord, int]] = []
        #: node_id -> True (pushed), False (no such session) or an exception.
        self.answers: dict[int, object] = {}

    def deliver(self, record: SessionRecord, message: StoredMessage) -> Deferred[bool]:
        self.delivered.append((record, message))
        answer = self.answers.get(record.node_id, True)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(bool(answer))

    def kick(self, record: SessionRecord, reason_code: int, reason: str) -> Deferred[bool]:
        self.kicked.append((record, reason_code))
        return succeed(True)


def remote(uid: int, node: int, session: str = "s-remote") -> SessionRecord:
    return SessionRecord(uid, 1001, node, session, 1)


class RemoteDeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack(node_id=1)
        self.peers = FakePeers()
        verifyObject(IPeers, self.peers)
        self.stack.logic.peers = self.peers
        self.alice = self.stack.login(1)

    def test_delivered_on_the_node_that_holds_the_session(self) -> None:
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        result = self.alice.c2c(2, b"to node 2")
        self.assertEqual(result.code, Code.OK)
        [(record, msg)] = self.peers.delivered
        self.assertEqual((record.node_id, msg.msgid, msg.content), (2, result.msgid, b"to node 2"))
        # Node 2 counts the push; this node only counts the acceptance.
        totals = self.stack.logic.stats.totals()
        self.assertEqual((totals["accepted"], totals["pushed"], totals["stored"]), (1, 0, 0))

    def test_unreachable_node_leaves_it_pending(self) -> None:
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        self.peers.answers[2] = PeerUnavailable("node 2 down")
        result = self.alice.c2c(2)
        self.assertEqual(result.code, Code.OK)  # durable: OK even though the push failed
        self.assertEqual(self.stack.logic.stats.totals()["stored"], 1)
        self.assertEqual(self.successResultOf(self.stack.store.count_pending(2, 1001)), 1)

    def test_sender_is_answered_once_the_other_node_took_the_push(self) -> None:
        """Durable, then the push handed to the node that holds the recipient,
        then the sender's Result (see LogicService._c2c_stored)."""
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        slow: Deferred[bool] = Deferred()
        self.peers.deliver = lambda record, message: slow  # type: ignore[method-assign]
        self.alice.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x"))
        self.assertEqual(self.alice.received(), [])
        slow.callback(True)
        [answer] = self.alice.received()
        self.assertEqual(pb.Result.FromString(answer.body).code, Code.OK)

    def test_follows_a_session_that_moved(self) -> None:
        """The recipient reconnected on node 3 while we handed the push to node 2."""
        self.successResultOf(self.stack.sessions.register(remote(2, node=2, session="old")))
        sessions = self.stack.sessions

        def moved(record: SessionRecord, message: StoredMessage) -> Deferred[bool]:
            self.peers.delivered.append((record, message))
            if record.node_id == 2:
                sessions.register(remote(2, node=3, session="new"))
                return succeed(False)  # node 2: no such session any more
            return succeed(True)

        self.peers.deliver = moved  # type: ignore[method-assign]
        self.assertEqual(self.alice.c2c(2).code, Code.OK)
        self.assertEqual([(r.node_id, r.session_id) for r, _ in self.peers.delivered],
                         [(2, "old"), (3, "new")])
        self.assertEqual(self.stack.logic.stats.totals()["stored"], 0)

    def test_stale_record_is_tried_once(self) -> None:
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        self.peers.answers[2] = False
        self.alice.c2c(2)
        self.assertEqual(len(self.peers.delivered), 1)
        self.assertEqual(self.stack.logic.stats.totals()["stored"], 1)

    def test_http_push_online_flag(self) -> None:
        self.successResultOf(self.stack.sessions.register(remote(2, node=2)))
        [outcome] = self.successResultOf(Deferred.fromCoroutine(
            self.stack.logic.push_s2c([PushItem(2, 1001, 5, b"order")])))
        assert isinstance(outcome, PushOutcome)
        self.assertTrue(outcome.online)
        self.peers.answers[2] = PeerUnavailable("down")
        [outcome] = self.successResultOf(Deferred.fromCoroutine(
            self.stack.logic.push_s2c([PushItem(2, 1001, 5, b"order")])))
        assert isinstance(outcome, PushOutcome)
        self.assertFalse(outcome.online)


class RemoteKickTests(SynchronousTestCase):
    def test_login_kicks_the_session_on_another_node(self) -> None:
        stack = Stack(node_id=1)
        peers = FakePeers()
        stack.logic.peers = peers
        self.successResultOf(stack.sessions.register(remote(7, node=2)))
        stack.login(7)
        [(record, reason)] = peers.kicked
        self.assertEqual((record.node_id, reason), (2, KickReason.LOGIN_ELSEWHERE))

    def test_admin_kickout_on_another_node(self) -> None:
        stack = Stack(node_id=1)
        stack.logic.peers = FakePeers()
        self.successResultOf(stack.sessions.register(remote(7, node=2)))
        kicked = self.successResultOf(Deferred.fromCoroutine(stack.logic.kickout(7, 1001)))
        self.assertEqual(kicked, 1)


class LocalSideTests(SynchronousTestCase):
    """What this node does when another node hands it work."""

    def setUp(self) -> None:
        self.stack = Stack(node_id=2)
        self.bob = self.stack.login(2)
        self.session_id = self.stack.logic.local[(2, 1001)].record.session_id

    def message(self, msgid: int = 77) -> StoredMessage:
        from daojia_msg.core.model import Kind

        return StoredMessage(msgid, 1, 1001, 2, 1001, 3, Kind.C2C, b"x", 5, "L-77")

    def test_deliver_local(self) -> None:
        self.assertTrue(self.stack.logic.deliver_local(self.session_id, self.message()))
        [frame] = self.bob.received()
        msg = pb.Message()
        msg.ParseFromString(frame.body)
        self.assertEqual((frame.cmd, msg.msgid, msg.logid), (Cmd.C2C, 77, "L-77"))
        # The same message again is already waiting for its ACK: not pushed twice.
        self.assertTrue(self.stack.logic.deliver_local(self.session_id, self.message()))
        self.assertEqual(self.bob.received(), [])

    def test_deliver_local_wrong_session(self) -> None:
        self.assertFalse(self.stack.logic.deliver_local("other", self.message()))
        self.assertEqual(self.bob.received(), [])

    def test_kick_local(self) -> None:
        logic = self.stack.logic
        self.assertFalse(logic.kick_local(2, 1001, "other", KickReason.LOGIN_ELSEWHERE, "x"))
        self.assertFalse(self.bob.closing)
        self.assertTrue(logic.kick_local(2, 1001, self.session_id, KickReason.LOGIN_ELSEWHERE,
                                         "logged in elsewhere"))
        self.assertTrue(self.bob.closing)
        self.assertNotIn((2, 1001), logic.local)


class AvailabilityTests(SynchronousTestCase):
    def test_unavailable_node_refuses_what_needs_the_cluster(self) -> None:
        stack = Stack()
        alice = stack.login(1)
        up = [True]
        stack.logic.available = lambda: up[0]
        up[0] = False
        self.assertEqual(alice.c2c(2).code, Code.UNAVAILABLE)
        self.assertEqual(alice.ack([1]).code, Code.UNAVAILABLE)
        self.failureResultOf(Deferred.fromCoroutine(
            stack.logic.push_s2c([PushItem(2, 1001, 5, b"x")])), errors.Unavailable)
        self.assertEqual(alice.request(Cmd.KEEPALIVE).code, Code.OK)
        self.assertEqual(alice.pull().code, Code.OK)
        self.assertEqual(self.successResultOf(stack.store.count_pending(2, 1001)), 0)
        up[0] = True
        self.assertEqual(alice.c2c(2).code, Code.OK)


class ResendRedeliveryTests(SynchronousTestCase):
    def test_resend_pushes_a_message_still_pending(self) -> None:
        """The node that stored the first send died before pushing it (here: the
        recipient was not reachable then); the resend, answered from de-dup on
        another node, pushes the pending original to the online recipient."""
        stack = Stack(node_id=1)
        alice = stack.login(1)
        first = alice.c2c(2, b"once", client_msg_id="cm-9")
        bob = stack.login(2)  # comes online after the first send
        self.assertEqual(bob.received(), [])
        again = alice.c2c(2, b"once", client_msg_id="cm-9")
        self.assertEqual(again.msgid, first.msgid)
        [msg] = bob.pushed_messages()
        self.assertEqual(msg.msgid, first.msgid)
        # Once ACKed, a further resend pushes nothing.
        bob.ack([first.msgid])
        alice.c2c(2, b"once", client_msg_id="cm-9")
        self.assertEqual(bob.received(), [])


class LoginRaceTests(SynchronousTestCase):
    """Two logins of one identity racing (cluster review)."""

    def test_a_login_that_lost_the_race_does_not_go_live(self) -> None:
        stack = Stack(node_id=1)
        sessions = stack.sessions
        real_lookup = sessions.lookup

        def newer_login_meanwhile(uid: int, appcode: int) -> Deferred[SessionRecord | None]:
            # Another node registered the same identity after us.
            sessions.register(remote(uid, node=2, session="newer"))
            return real_lookup(uid, appcode)

        sessions.lookup = newer_login_meanwhile  # type: ignore[method-assign]
        conn = stack.connect()
        self.assertEqual(conn.login(7).code, Code.UNAVAILABLE)
        self.assertNotIn((7, 1001), stack.logic.local)
        self.assertIsNone(conn.proto.session)
        record = self.successResultOf(real_lookup(7, 1001))
        assert record is not None
        self.assertEqual(record.session_id, "newer")  # the winner's record is untouched

    def test_remote_and_local_old_sessions_are_both_kicked(self) -> None:
        stack = Stack(node_id=1)
        peers = FakePeers()
        stack.logic.peers = peers
        local_old = stack.login(7)
        # Meanwhile the store says the identity is on node 2 (a racing login there).
        self.successResultOf(stack.sessions.register(remote(7, node=2)))
        stack.login(7, host="10.0.0.9")
        self.assertTrue(local_old.closing)
        self.assertEqual([(r.node_id, reason) for r, reason in peers.kicked],
                         [(2, KickReason.LOGIN_ELSEWHERE)])

    def test_failed_remote_kick_is_retried(self) -> None:
        stack = Stack(node_id=1)
        peers = FakePeers()
        attempts: list[SessionRecord] = []

        def flaky_kick(record: SessionRecord, reason_code: int, reason: str) -> Deferred[bool]:
            attempts.append(record)
            if len(attempts) < 3:
                return fail(PeerUnavailable("node 2 slow"))
            return succeed(True)

        peers.kick = flaky_kick  # type: ignore[method-assign]
        stack.logic.peers = peers
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        self.successResultOf(stack.sessions.register(remote(7, node=2)))
        self.assertEqual(stack.login(7).proto.session.uid, 7)  # type: ignore[union-attr]
        self.assertEqual(len(attempts), 1)
        stack.clock.advance(1)
        self.assertEqual(len(attempts), 2)
        stack.clock.advance(2)
        self.assertEqual(len(attempts), 3)  # kicked at last
        stack.clock.advance(60)
        self.assertEqual(len(attempts), 3)

    def test_kick_for_another_node_removes_the_record(self) -> None:
        stack = Stack(node_id=2)
        bob = stack.login(2)
        session_id = stack.logic.local[(2, 1001)].record.session_id
        self.assertTrue(stack.logic.kick_local(2, 1001, session_id, KickReason.ADMIN, "admin"))
        self.assertTrue(bob.closing)
        self.assertIsNone(self.successResultOf(stack.sessions.lookup(2, 1001)))

    def test_unavailable_node_refuses_login_and_c2s(self) -> None:
        stack = Stack()
        alice = stack.login(1)
        stack.logic.available = lambda: False
        self.assertEqual(stack.connect().login(3).code, Code.UNAVAILABLE)
        self.assertEqual(alice.request(Cmd.C2S, pb.C2SRequest(content=b"x"), msgtype=1).code,
                         Code.UNAVAILABLE)
        self.assertEqual(alice.login(1).code, Code.UNAVAILABLE)  # a re-LOGIN too


class DeliveryRetryTests(SynchronousTestCase):
    def test_unreachable_recipient_node_is_retried_while_pending(self) -> None:
        stack = Stack(node_id=1)
        peers = FakePeers()
        stack.logic.peers = peers
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        alice = stack.login(1)
        self.successResultOf(stack.sessions.register(remote(2, node=2)))
        peers.answers[2] = PeerUnavailable("node 2 slow")
        sent = alice.c2c(2)
        self.assertEqual(len(peers.delivered), 1)
        stack.clock.advance(2)  # first retry: still unreachable
        self.assertEqual(len(peers.delivered), 2)
        peers.answers[2] = True
        stack.clock.advance(4)  # second retry: pushed there
        self.assertEqual([m.msgid for _, m in peers.delivered], [sent.msgid] * 3)
        stack.clock.advance(60)
        self.assertEqual(len(peers.delivered), 3)  # no more

    def test_one_warning_per_unreachable_peer_per_interval(self) -> None:
        """Pushes failing towards one peer make one warning per 10 s with the
        count since the last, not a line each."""
        stack = Stack(node_id=1)
        peers = FakePeers()
        stack.logic.peers = peers
        events: list[dict[str, object]] = []
        stack.logic.routing.log = Logger(observer=events.append)
        alice = stack.login(1)
        self.successResultOf(stack.sessions.register(remote(2, node=2)))
        peers.answers[2] = PeerUnavailable("node 2 slow")
        for _ in range(5):
            self.assertEqual(alice.c2c(2).code, Code.OK)
        self.assertEqual([(e["peer_node"], e["count"]) for e in events], [(2, 0)])
        stack.clock.advance(10)
        alice.c2c(2)
        self.assertEqual([(e["peer_node"], e["count"]) for e in events], [(2, 0), (2, 4)])
        self.assertEqual(events[0]["error"], "node 2 slow")

    def test_no_retry_once_acked(self) -> None:
        stack = Stack(node_id=1)
        peers = FakePeers()
        stack.logic.peers = peers
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        alice = stack.login(1)
        self.successResultOf(stack.sessions.register(remote(2, node=2)))
        peers.answers[2] = PeerUnavailable("down")
        sent = alice.c2c(2)
        # The recipient pulled and ACKed it elsewhere meanwhile.
        self.successResultOf(stack.store.ack(2, 1001, [sent.msgid]))
        stack.clock.advance(60)
        self.assertEqual(len(peers.delivered), 1)

    def test_retries_bounded(self) -> None:
        stack = Stack(node_id=1)
        peers = FakePeers()
        stack.logic.peers = peers
        stack.logic.startService()
        self.addCleanup(stack.logic.stopService)
        alice = stack.login(1)
        self.successResultOf(stack.sessions.register(remote(2, node=2)))
        peers.answers[2] = PeerUnavailable("down")
        alice.c2c(2)
        for step in (2, 4, 8, 100, 100):
            stack.clock.advance(step)
        self.assertEqual(len(peers.delivered), 4)  # the first try and 3 retries
