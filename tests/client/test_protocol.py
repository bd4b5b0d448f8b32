"""Tests for daojia_msg.client.protocol: one connection against a faked server."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.client.client import MsgClientProtocol, RecentIds
from daojia_msg.client.errors import (
    ConnectionLost,
    KickedOut,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    ResultError,
)
from daojia_msg.protocol.codec import encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import APP, UID, acked, answer, one, push_frame, sent


class ProtocolTestsMixin:
    def connect(self, **kwargs: Any) -> tuple[MsgClientProtocol, StringTransport, Clock]:
        clock = Clock()
        self.messages: list[pb.Message] = []
        self.kicks: list[tuple[int, str]] = []
        kwargs.setdefault("on_message", self.messages.append)
        kwargs.setdefault("on_kickout", lambda code, reason: self.kicks.append((code, reason)))
        proto = MsgClientProtocol(clock, UID, APP, **kwargs)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def login(
        self, proto: MsgClientProtocol, transport: StringTransport, heartbeat_s: int = 60
    ) -> None:
        d = proto.login("tok")
        answer(proto, one(transport), pb.LoginResponse(session_id="s1", heartbeat_s=heartbeat_s))
        self.successResultOf(d)  # type: ignore[attr-defined]


class RequestTests(ProtocolTestsMixin, SynchronousTestCase):
    def test_login_bytes(self) -> None:
        """LOGIN is the 32-byte header of docs/protocol.md §2 plus a LoginRequest body."""
        proto, transport, _ = self.connect()
        proto.login("123:abc", device_id="dev", client_version="1.0")
        body = pb.LoginRequest(
            token="123:abc", device_id="dev", client_version="1.0"
        ).SerializeToString()
        raw = transport.value()
        self.assertEqual(raw, encode(Cmd.LOGIN, APP, 0, UID, 1, body))
        self.assertEqual(
            struct.unpack("!HBBIIQIII", raw[:32]), (0x58DA, 1, 0x01, APP, 0, UID, 1, 0, len(body))
        )
        self.assertEqual(raw[32:], body)

    def test_sequence_and_headers(self) -> None:
        """Each request takes the next sequenceid; C2S/C2C carry their msgtype."""
        proto, transport, _ = self.connect()
        proto.c2s(1, b"gps", logid="L1")
        proto.c2c(7, 1002, 3, b"hello", client_msg_id="cm1", logid="L2")
        proto.keepalive()
        proto.c2c(7, 1002, 3, b"again")
        proto.c2c(7, 1002, 3, b"again")
        frames = sent(transport)
        self.assertEqual([f.sequenceid for f in frames], [1, 2, 3, 4, 5])
        self.assertEqual(
            [f.cmd for f in frames], [Cmd.C2S, Cmd.C2C, Cmd.KEEPALIVE, Cmd.C2C, Cmd.C2C]
        )
        self.assertEqual([f.msgtype for f in frames], [1, 3, 0, 3, 3])
        self.assertEqual(
            {(f.uid, f.appcode, f.reserve, f.version) for f in frames}, {(UID, APP, 0, 1)}
        )
        self.assertEqual(
            pb.C2SRequest.FromString(frames[0].body), pb.C2SRequest(content=b"gps", logid="L1")
        )
        c2c = pb.C2CRequest.FromString(frames[1].body)
        self.assertEqual(
            c2c,
            pb.C2CRequest(
                to_uid=7, to_appcode=1002, content=b"hello", client_msg_id="cm1", logid="L2"
            ),
        )
        self.assertEqual(frames[2].body, b"")
        auto = [pb.C2CRequest.FromString(f.body).client_msg_id for f in frames[3:]]
        self.assertEqual([len(a) for a in auto], [32, 32])
        self.assertNotEqual(auto[0], auto[1])

    def test_other_bodies(self) -> None:
        proto, transport, _ = self.connect()
        proto.ack([1, 2])
        proto.pull(after_msgid=5, limit=10)
        proto.history(peer_uid=9, before_msgid=100, limit=3)
        proto.logout()
        ack, pull, history, logout = sent(transport)
        self.assertEqual(list(pb.Ack.FromString(ack.body).msgids), [1, 2])
        self.assertEqual(
            pb.PullRequest.FromString(pull.body), pb.PullRequest(after_msgid=5, limit=10)
        )
        self.assertEqual(
            pb.HistoryRequest.FromString(history.body),
            pb.HistoryRequest(peer_uid=9, before_msgid=100, limit=3),
        )
        self.assertEqual((logout.cmd, logout.body), (Cmd.LOGOUT, b""))

    def test_responses_out_of_order(self) -> None:
        """Responses are matched by sequenceid, whatever their order."""
        proto, transport, _ = self.connect()
        d1 = proto.c2s(1, b"a")
        d2 = proto.history()
        d3 = proto.c2c(7, 1002, 0, b"b")
        f1, f2, f3 = sent(transport)
        answer(proto, f3, pb.Result(msgid=33, logid="l3"))
        answer(proto, f1, pb.Result(msgid=11, logid="l1"))
        answer(proto, f2, pb.HistoryResponse(messages=[pb.Message(msgid=5)], has_more=True))
        self.assertEqual(self.successResultOf(d1).msgid, 11)
        self.assertEqual(self.successResultOf(d3).logid, "l3")
        history = self.successResultOf(d2)
        self.assertIsInstance(history, pb.HistoryResponse)
        self.assertEqual(([m.msgid for m in history.messages], history.has_more), ([5], True))

    def test_byte_at_a_time(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.pull()
        request = one(transport)
        data = encode(
            request.cmd | RESPONSE_BIT,
            APP,
            0,
            UID,
            request.sequenceid,
            pb.PullResponse().SerializeToString(),
        )
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
        self.assertIsInstance(self.successResultOf(d), pb.PullResponse)

    def test_login(self) -> None:
        proto, transport, clock = self.connect()
        d = proto.login("tok")
        answer(
            proto,
            one(transport),
            pb.LoginResponse(session_id="s9", heartbeat_s=60, offline_count=3),
        )
        self.assertEqual(self.successResultOf(d).offline_count, 3)
        self.assertTrue(proto.logged_in)
        self.assertEqual(proto.session_id, "s9")

    def test_non_ok(self) -> None:
        """A non-OK code fails the Deferred with ResultError carrying the response."""
        proto, transport, _ = self.connect()
        d = proto.c2s(9, b"x")
        answer(proto, one(transport), pb.Result(code=Code.NO_ROUTE, reason="no topic"))
        err = self.failureResultOf(d, ResultError).value
        self.assertEqual((err.code, err.code_name, err.reason), (10, "NO_ROUTE", "no topic"))
        self.assertEqual(err.response.reason, "no topic")
        self.assertEqual(str(err), "NO_ROUTE: no topic")

    def test_login_refused(self) -> None:
        proto, transport, clock = self.connect()
        d = proto.login("bad")
        answer(proto, one(transport), pb.LoginResponse(code=Code.UNAUTHORIZED, reason="bad token"))
        err = self.failureResultOf(d, ResultError).value
        self.assertEqual(err.code, Code.UNAUTHORIZED)
        self.assertIsInstance(err.response, pb.LoginResponse)
        self.assertFalse(proto.logged_in)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_error_body_of_another_type(self) -> None:
        """An error answer to PULL still yields the code, whatever body the server chose."""
        proto, transport, _ = self.connect()
        d = proto.pull()
        answer(proto, one(transport), pb.Result(code=Code.NOT_LOGGED_IN, reason="login first"))
        self.assertEqual(self.failureResultOf(d, ResultError).value.code, Code.NOT_LOGGED_IN)

    def test_wrong_response_cmd(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.c2s(1, b"x")
        request = one(transport)
        answer(proto, request._replace(cmd=Cmd.ACK))
        self.failureResultOf(d, ProtocolError)

    def test_undecodable_body(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.c2s(1, b"x")
        request = one(transport)
        proto.dataReceived(
            encode(request.cmd | RESPONSE_BIT, APP, 1, UID, request.sequenceid, b"\xff\xff")
        )
        self.failureResultOf(d, ProtocolError)

    def test_timeout(self) -> None:
        proto, transport, clock = self.connect()
        d = proto.c2s(1, b"x")
        request = one(transport)
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        err = self.failureResultOf(d, RequestTimeout).value
        self.assertEqual((err.cmd, err.sequenceid, err.timeout), (Cmd.C2S, 1, 10.0))
        answer(proto, request)  # a late answer is ignored
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_configured_timeout(self) -> None:
        proto, transport, clock = self.connect(request_timeout=2.5)
        d = proto.keepalive()
        clock.advance(2.5)
        self.failureResultOf(d, RequestTimeout)

    def test_answer_cancels_timer(self) -> None:
        proto, transport, clock = self.connect()
        d = proto.keepalive()
        answer(proto, one(transport), pb.Result(server_time_ms=5))
        self.assertEqual(self.successResultOf(d).server_time_ms, 5)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        proto, transport, clock = self.connect()
        d = proto.c2s(1, b"x")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_lost_fails_outstanding(self) -> None:
        proto, transport, clock = self.connect()
        d1, d2 = proto.c2s(1, b"x"), proto.pull()
        proto.connectionLost(Failure(error.ConnectionDone()))
        for d in (d1, d2):
            err = self.failureResultOf(d, ConnectionLost).value
            self.assertIsInstance(err, error.ConnectionLost)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(proto.c2s(1, b"y"), NotConnected)
        self.successResultOf(proto.when_closed())

    def test_not_connected_before_connect(self) -> None:
        proto = MsgClientProtocol(Clock(), UID, APP)
        self.failureResultOf(proto.keepalive(), NotConnected)
        closed = proto.when_closed()
        self.assertNoResult(closed)

    def test_bad_magic_closes(self) -> None:
        proto, transport, _ = self.connect()
        proto.dataReceived(b"\x00\x00")
        self.assertTrue(transport.disconnecting)


class PushTests(ProtocolTestsMixin, SynchronousTestCase):
    def test_push_delivered_and_acked(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(push_frame(7, logid="L7"))
        self.assertEqual([(m.msgid, m.logid) for m in self.messages], [(7, "L7")])
        self.assertEqual(sent(transport), [])  # the ACK waits for the end of the turn
        clock.advance(0)
        frame = one(transport)
        self.assertEqual((frame.cmd, frame.uid, frame.appcode), (Cmd.ACK, UID, APP))
        self.assertEqual(list(pb.Ack.FromString(frame.body).msgids), [7])

    def test_duplicate_not_delivered_but_acked(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(push_frame(7))
        clock.advance(0)
        answer(proto, one(transport))
        proto.dataReceived(push_frame(7, cmd=Cmd.S2C, seq=2))
        clock.advance(0)
        self.assertEqual(len(self.messages), 1)
        self.assertEqual(acked(sent(transport)), [[7]])

    def test_acks_coalesced(self) -> None:
        """Pushes of one reactor turn share one ACK frame, without repeats."""
        proto, transport, clock = self.connect()
        proto.dataReceived(push_frame(1) + push_frame(2, seq=2))
        proto.dataReceived(push_frame(3, cmd=Cmd.S2C, seq=3) + push_frame(2, seq=4))
        clock.advance(0)
        self.assertEqual(acked(sent(transport)), [[1, 2, 3]])
        self.assertEqual([m.msgid for m in self.messages], [1, 2, 3])

    def test_ack_batches(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(b"".join(push_frame(i, seq=i) for i in range(1, 1501)))
        clock.advance(0)
        self.assertEqual([len(ids) for ids in acked(sent(transport))], [1000, 500])

    def test_no_auto_ack(self) -> None:
        proto, transport, clock = self.connect(auto_ack=False)
        proto.dataReceived(push_frame(1))
        clock.advance(0)
        self.assertEqual((len(self.messages), sent(transport)), (1, []))

    def test_callback_error_still_acks(self) -> None:
        def broken(message: pb.Message) -> None:
            raise ValueError("app bug")

        proto, transport, clock = self.connect(on_message=broken)
        proto.dataReceived(push_frame(1))
        clock.advance(0)
        self.assertEqual(acked(sent(transport)), [[1]])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_queued_acks_go_before_logout(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(push_frame(1))
        proto.logout()
        self.assertEqual([f.cmd for f in sent(transport)], [Cmd.ACK, Cmd.LOGOUT])
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 10.0)  # only request timeouts

    def test_pending_ack_cancelled_on_loss(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(push_frame(1))
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_recent_ids_bounded(self) -> None:
        recent = RecentIds(3)
        self.assertEqual([recent.add(i) for i in (1, 2, 3, 1, 4)], [True, True, True, False, True])
        self.assertEqual(len(recent), 3)
        self.assertNotIn(2, recent)  # least recently seen goes first
        self.assertIn(1, recent)

    def test_kickout(self) -> None:
        proto, transport, clock = self.connect()
        self.login(proto, transport)
        d = proto.c2s(1, b"x")
        body = pb.Kickout(
            reason_code=KickReason.LOGIN_ELSEWHERE, reason="other device"
        ).SerializeToString()
        proto.dataReceived(encode(Cmd.KICKOUT, APP, 0, UID, 9, body))
        self.assertEqual(self.kicks, [(1, "other device")])
        self.assertEqual(proto.kickout, (1, "other device"))
        proto.connectionLost(Failure(error.ConnectionDone()))
        err = self.failureResultOf(d, KickedOut).value
        self.assertEqual(err.reason_code, KickReason.LOGIN_ELSEWHERE)
        self.assertEqual(clock.getDelayedCalls(), [])


class KeepaliveTests(ProtocolTestsMixin, SynchronousTestCase):
    def test_server_interval(self) -> None:
        proto, transport, clock = self.connect()
        self.login(proto, transport, heartbeat_s=30)
        clock.advance(29)
        self.assertEqual(sent(transport), [])
        clock.advance(1)
        frame = one(transport)
        self.assertEqual((frame.cmd, frame.sequenceid), (Cmd.KEEPALIVE, 2))
        answer(proto, frame)
        clock.advance(30)
        self.assertEqual(one(transport).cmd, Cmd.KEEPALIVE)
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_configured_interval(self) -> None:
        proto, transport, clock = self.connect(heartbeat_s=5)
        self.login(proto, transport, heartbeat_s=60)
        clock.advance(5)
        self.assertEqual(one(transport).cmd, Cmd.KEEPALIVE)
        proto.connectionLost(Failure(error.ConnectionDone()))

    def test_disabled(self) -> None:
        proto, transport, clock = self.connect(heartbeat_s=0)
        self.login(proto, transport)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_none_before_login(self) -> None:
        proto, transport, clock = self.connect()
        clock.advance(600)
        self.assertEqual(sent(transport), [])

    def test_unanswered_keepalive_drops_connection(self) -> None:
        proto, transport, clock = self.connect()
        self.login(proto, transport, heartbeat_s=30)
        clock.advance(30)
        self.assertEqual(one(transport).cmd, Cmd.KEEPALIVE)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_logout_stops_keepalive(self) -> None:
        proto, transport, clock = self.connect()
        self.login(proto, transport)
        d = proto.logout()
        answer(proto, one(transport))
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])


class DrainTests(ProtocolTestsMixin, SynchronousTestCase):
    def page(
        self, proto: Any, transport: StringTransport, after: int, ids: list[int], more: bool
    ) -> None:
        request = one(transport)
        self.assertEqual(request.cmd, Cmd.PULL)
        self.assertEqual(
            pb.PullRequest.FromString(request.body), pb.PullRequest(after_msgid=after, limit=100)
        )
        messages = [pb.Message(msgid=i, content=b"m") for i in ids]
        answer(proto, request, pb.PullResponse(messages=messages, has_more=more))

    def test_drain_pages_and_acks(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.drain()
        self.page(proto, transport, 0, [10, 11], True)
        self.page(proto, transport, 11, [12], False)
        request = one(transport)
        self.assertEqual(list(pb.Ack.FromString(request.body).msgids), [10, 11, 12])
        self.assertNoResult(d)
        answer(proto, request)
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual([m.msgid for m in self.messages], [10, 11, 12])

    def test_ack_batches_of_1000(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.drain()
        for n in range(12):
            ids = list(range(n * 100 + 1, n * 100 + 101))
            self.page(proto, transport, n * 100, ids, n < 11)
            if n == 9:
                request = one(transport)
                self.assertEqual(len(pb.Ack.FromString(request.body).msgids), 1000)
                answer(proto, request)
        request = one(transport)
        self.assertEqual(list(pb.Ack.FromString(request.body).msgids), list(range(1001, 1201)))
        answer(proto, request)
        self.assertEqual(self.successResultOf(d), 1200)

    def test_without_ack(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.drain(ack=False)
        self.page(proto, transport, 0, [1], False)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(sent(transport), [])

    def test_empty(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.drain()
        self.page(proto, transport, 0, [], False)
        self.assertEqual((self.successResultOf(d), sent(transport)), (0, []))

    def test_seen_messages_not_redelivered(self) -> None:
        proto, transport, clock = self.connect()
        proto.dataReceived(push_frame(10))
        clock.advance(0)
        answer(proto, one(transport))
        d = proto.drain()
        self.page(proto, transport, 0, [10, 11], False)
        request = one(transport)
        self.assertEqual(list(pb.Ack.FromString(request.body).msgids), [10, 11])
        answer(proto, request)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual([m.msgid for m in self.messages], [10, 11])

    def test_pull_error(self) -> None:
        proto, transport, _ = self.connect()
        d = proto.drain()
        answer(proto, one(transport), pb.PullResponse(code=Code.UNAVAILABLE))
        self.assertEqual(self.failureResultOf(d, ResultError).value.code, Code.UNAVAILABLE)
