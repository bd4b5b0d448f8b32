"""Tests for daojia_msg.client.client: the reconnecting MsgClient on a fake endpoint."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.client.backoff import SendBackoff
from daojia_msg.client.client import MsgClient
from daojia_msg.client.errors import KickedOut, NotConnected, ResultError
from daojia_msg.protocol.codec import Frame, encode
from daojia_msg.protocol.codes import Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import APP, UID, FakeEndpoint, answer, one, push_frame, sent


class MsgClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.tokens: list[str] = []
        self.messages: list[pb.Message] = []
        self.kicks: list[tuple[int, str]] = []
        self.client = MsgClient(
            self.clock,
            self.endpoint,
            UID,
            APP,
            self.token,
            on_message=self.messages.append,
            on_kickout=lambda code, reason: self.kicks.append((code, reason)),
            backoff=backoffPolicy(jitter=lambda: 0),
        )

    def tearDown(self) -> None:
        self.client.stopService()
        for proto, _transport in self.endpoint.connections:
            if proto.connected_ok:
                proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def token(self) -> str:
        self.tokens.append(f"token{len(self.tokens) + 1}")
        return self.tokens[-1]

    def transport(self) -> StringTransport:
        return self.endpoint.connections[-1][1]

    def proto(self) -> Any:
        return self.endpoint.connections[-1][0]

    def login(self, code: int = Code.OK, offline: list[int] | None = None) -> Frame:
        """Answer the LOGIN of the newest connection and the drain that follows."""
        request = one(self.transport())
        self.assertEqual(request.cmd, Cmd.LOGIN)
        answer(self.proto(), request, pb.LoginResponse(code=code, heartbeat_s=60))
        if code != Code.OK:
            return request
        pull = one(self.transport())
        self.assertEqual(pull.cmd, Cmd.PULL)
        messages = [pb.Message(msgid=i) for i in offline or []]
        answer(self.proto(), pull, pb.PullResponse(messages=messages))
        if offline:
            answer(self.proto(), one(self.transport()))
        return request

    def test_logs_in_then_drains(self) -> None:
        self.client.startService()
        ready = self.client.when_ready()
        sending = self.client.c2s(1, b"gps")
        self.assertNoResult(ready)
        request = one(self.transport())
        self.assertEqual(pb.LoginRequest.FromString(request.body).token, "token1")
        answer(self.proto(), request, pb.LoginResponse(offline_count=2))
        self.assertIs(self.successResultOf(ready), self.proto()._protocol)
        pull, c2s = sent(self.transport())
        self.assertEqual(pull.cmd, Cmd.PULL)  # the drain goes first
        answer(
            self.proto(), pull, pb.PullResponse(messages=[pb.Message(msgid=5), pb.Message(msgid=6)])
        )
        self.assertEqual([m.msgid for m in self.messages], [5, 6])
        answer(self.proto(), one(self.transport()))  # the drain's ACK
        self.assertEqual(c2s.cmd, Cmd.C2S)
        answer(self.proto(), c2s, pb.Result(msgid=99))
        self.assertEqual(self.successResultOf(sending).msgid, 99)

    def test_when_drained_fires_after_the_drains_ack(self) -> None:
        drained = self.client.when_drained()
        self.client.startService()
        request = one(self.transport())
        answer(self.proto(), request, pb.LoginResponse(offline_count=1))
        self.assertTrue(self.client.logged_in)
        pull = one(self.transport())
        answer(self.proto(), pull, pb.PullResponse(messages=[pb.Message(msgid=7)]))
        self.assertNoResult(drained)  # its ACK is not answered yet: 7 is still pending
        answer(self.proto(), one(self.transport()))
        self.assertEqual(self.successResultOf(drained), 1)

    def test_when_drained_fails_when_stopped(self) -> None:
        drained = self.client.when_drained()
        self.client.startService()
        self.client.stopService()
        self.failureResultOf(drained, NotConnected)

    def test_reconnects_with_fresh_token(self) -> None:
        self.client.startService()
        self.login()
        self.endpoint.lose(error.ConnectionLost())
        self.assertFalse(self.client.logged_in)
        self.assertEqual(len(self.endpoint.connections), 1)
        self.clock.advance(1.5)  # backoffPolicy: 1.0 * 1.5 ** 1
        self.assertEqual(len(self.endpoint.connections), 2)
        request = self.login()
        self.assertEqual(pb.LoginRequest.FromString(request.body).token, "token2")
        self.assertTrue(self.client.logged_in)

    def test_backoff_grows(self) -> None:
        self.endpoint.failures = [error.ConnectionRefusedError(), error.ConnectionRefusedError()]
        self.client.startService()
        self.clock.advance(1.5)
        self.assertEqual(len(self.endpoint.connections), 0)
        self.clock.advance(2.25)  # 1.5 ** 2
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_fail_after_failures(self) -> None:
        self.endpoint.hold = True
        self.client.startService()
        ready = self.client.when_ready(fail_after_failures=1)
        self.assertNoResult(ready)
        self.endpoint.held.pop().errback(error.ConnectionRefusedError())
        self.clock.advance(0)
        self.failureResultOf(ready, error.ConnectionRefusedError)
        self.client.stopService()  # as a caller would, once told (not re-entrant)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dedup_across_reconnect(self) -> None:
        self.client.startService()
        self.login()
        self.proto().dataReceived(push_frame(70))
        self.endpoint.lose()  # before the ACK went out
        self.clock.advance(1.5)
        self.login(offline=[70, 71])
        self.assertEqual([m.msgid for m in self.messages], [70, 71])

    def test_c2c_resent_with_same_client_msg_id(self) -> None:
        self.client.startService()
        self.login()
        d = self.client.c2c(7, 1002, 0, b"hi")
        first = pb.C2CRequest.FromString(one(self.transport()).body)
        self.endpoint.lose(error.ConnectionLost())
        self.clock.advance(1.5)
        answer(self.proto(), one(self.transport()), pb.LoginResponse())
        pull, again = sent(self.transport())
        self.assertEqual((pull.cmd, again.cmd), (Cmd.PULL, Cmd.C2C))
        self.assertEqual(pb.C2CRequest.FromString(again.body), first)
        answer(self.proto(), again, pb.Result(msgid=1))
        self.assertEqual(self.successResultOf(d).msgid, 1)

    def test_c2c_resent_after_timeout_with_backoff(self) -> None:
        """TIMEOUT (13): resent with the same client_msg_id after 0.5 s, then
        after 1 s more; the server's dedup answers the first msgid."""
        self.client.startService()
        self.login()
        d = self.client.c2c(7, 1002, 0, b"hi")
        first = one(self.transport())
        answer(self.proto(), first, pb.Result(code=Code.TIMEOUT, reason="stalled"))
        self.clock.advance(0.4)
        self.assertEqual(sent(self.transport()), [])
        self.clock.advance(0.1)
        second = one(self.transport())
        self.assertEqual(second.body, first.body)
        answer(self.proto(), second, pb.Result(code=Code.TIMEOUT))
        self.clock.advance(0.9)
        self.assertEqual(sent(self.transport()), [])
        self.clock.advance(0.1)
        third = one(self.transport())
        self.assertEqual(third.body, first.body)
        answer(self.proto(), third, pb.Result(msgid=5))
        self.assertEqual(self.successResultOf(d).msgid, 5)

    def test_c2c_timeout_resends_are_bounded(self) -> None:
        self.client.startService()
        self.login()
        d = self.client.c2c(7, 1002, 0, b"hi")
        for _ in range(3):  # the send and send_retries (2) resends
            answer(self.proto(), one(self.transport()), pb.Result(code=Code.TIMEOUT))
            self.clock.advance(4)
        self.assertEqual(self.failureResultOf(d, ResultError).value.code, Code.TIMEOUT)
        self.assertEqual(sent(self.transport()), [])

    def test_unknown_code_is_resent_other_errors_are_not(self) -> None:
        self.client.startService()
        self.login()
        d = self.client.c2c(7, 1002, 0, b"hi")
        answer(self.proto(), one(self.transport()), pb.Result(code=99))
        self.clock.advance(0.5)
        answer(self.proto(), one(self.transport()), pb.Result(msgid=6))
        self.assertEqual(self.successResultOf(d).msgid, 6)
        for code in (Code.BAD_REQUEST, Code.UNAVAILABLE):
            d = self.client.c2c(7, 1002, 0, b"hi")
            answer(self.proto(), one(self.transport()), pb.Result(code=code))
            self.assertEqual(self.failureResultOf(d, ResultError).value.code, code)
            self.clock.advance(5)
            self.assertEqual(sent(self.transport()), [])

    def test_rate_limited_pauses_c2c_and_c2s(self) -> None:
        """A RATE_LIMITED answer (not carried out) fails the call and starts a
        pause: a C2C or C2S asked for during it is refused at once by the
        client, RATE_LIMITED, and nothing is written; after the pause they go."""
        self.client.send_backoff = SendBackoff(self.clock, rng=lambda: 1.0)
        self.client.startService()
        self.login()
        d = self.client.c2c(7, 1002, 0, b"hi")
        answer(self.proto(), one(self.transport()), pb.Result(code=Code.RATE_LIMITED))
        self.assertEqual(self.failureResultOf(d, ResultError).value.code, Code.RATE_LIMITED)
        self.clock.advance(0.04)
        for d in (self.client.c2c(7, 1002, 0, b"again"), self.client.c2s(3, b"up")):
            error = self.failureResultOf(d, ResultError).value
            self.assertEqual(error.code, Code.RATE_LIMITED)
            self.assertTrue(error.reason.startswith("held back: the client pauses"), error.reason)
        self.assertEqual(sent(self.transport()), [])
        self.clock.advance(0.01)  # the 50 ms pause is over
        d = self.client.c2s(3, b"up")
        request = one(self.transport())
        self.assertEqual(request.cmd, Cmd.C2S)
        answer(self.proto(), request, pb.Result(code=Code.RATE_LIMITED))
        self.failureResultOf(d, ResultError)
        self.assertAlmostEqual(self.client.send_backoff.remaining(), 0.1)  # the second in a row
        self.clock.advance(0.1)
        d = self.client.c2c(7, 1002, 0, b"hi")
        answer(self.proto(), one(self.transport()), pb.Result(msgid=9))
        self.assertEqual(self.successResultOf(d).msgid, 9)
        self.assertEqual(self.client.send_backoff.refusals, 0)

    def test_resend_after_timeout_goes_during_a_pause(self) -> None:
        """A resend after TIMEOUT may concern a stored message: it is sent
        even while a pause holds, and its answer is the call's."""
        self.client.send_backoff = SendBackoff(self.clock, cap_s=5.0, rng=lambda: 1.0)
        self.client.startService()
        self.login()
        d = self.client.c2c(7, 1002, 0, b"hi", client_msg_id="m1")
        first = one(self.transport())
        other = self.client.c2s(3, b"up")
        answer(self.proto(), first, pb.Result(code=Code.TIMEOUT))
        for _ in range(5):  # five refusals in a row: a pause of 1.6 s
            self.client.send_backoff.refused()
        answer(self.proto(), one(self.transport()), pb.Result(code=Code.RATE_LIMITED))
        self.failureResultOf(other, ResultError)
        self.clock.advance(0.5)
        self.assertTrue(self.client.send_backoff.paused())
        again = one(self.transport())
        self.assertEqual(again.body, first.body)
        answer(self.proto(), again, pb.Result(msgid=4))
        self.assertEqual(self.successResultOf(d).msgid, 4)

    def test_without_send_backoff_every_c2c_is_sent(self) -> None:
        client = MsgClient(self.clock, self.endpoint, UID, APP, self.token, send_backoff=False)
        self.assertIsNone(client.send_backoff)
        client.startService()
        self.login()
        for _ in range(3):
            d = client.c2c(7, 1002, 0, b"hi")
            answer(self.proto(), one(self.transport()), pb.Result(code=Code.RATE_LIMITED))
            self.assertEqual(self.failureResultOf(d, ResultError).value.code, Code.RATE_LIMITED)
        client.stopService()

    def kick(self, reason_code: int) -> None:
        body = pb.Kickout(reason_code=reason_code, reason="r").SerializeToString()
        self.proto().dataReceived(encode(Cmd.KICKOUT, APP, 0, UID, 3, body))
        self.endpoint.lose()

    def test_kickout_elsewhere_stops(self) -> None:
        self.client.startService()
        self.login()
        self.kick(KickReason.LOGIN_ELSEWHERE)
        self.assertEqual(self.kicks, [(1, "r")])
        self.assertEqual(self.client.last_kickout, (1, "r"))
        self.assertTrue(self.transport().disconnecting)
        self.clock.advance(60)
        self.assertEqual(len(self.endpoint.connections), 1)
        self.failureResultOf(self.client.keepalive(), NotConnected)

    def test_kickout_admin_fails_requests(self) -> None:
        self.client.startService()
        self.login()
        d = self.client.history()
        self.kick(KickReason.ADMIN)
        self.assertEqual(self.failureResultOf(d, KickedOut).value.reason_code, KickReason.ADMIN)
        self.assertFalse(self.client.running)

    def test_kickout_shutdown_reconnects(self) -> None:
        self.client.startService()
        self.login()
        self.kick(KickReason.SHUTDOWN)
        self.clock.advance(1.5)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.login()
        self.assertTrue(self.client.logged_in)

    def test_login_refused_stops(self) -> None:
        self.client.startService()
        ready = self.client.when_ready()
        self.login(code=Code.UNAUTHORIZED)
        self.assertEqual(self.failureResultOf(ready, ResultError).value.code, Code.UNAUTHORIZED)
        self.assertFalse(self.client.running)

    def test_login_unavailable_retries(self) -> None:
        self.client.startService()
        ready = self.client.when_ready()
        self.login(code=Code.UNAVAILABLE)
        self.assertTrue(self.transport().disconnecting)
        self.endpoint.lose()
        self.clock.advance(1.5)
        self.login()
        self.successResultOf(ready)

    def test_logout_stops(self) -> None:
        self.client.startService()
        self.login()
        d = self.client.logout()
        request = one(self.transport())
        self.assertEqual(request.cmd, Cmd.LOGOUT)
        answer(self.proto(), request)
        self.assertNoResult(d)  # until the connection closes
        self.endpoint.lose()
        self.successResultOf(d)
        self.assertFalse(self.client.running)

    def test_stopped(self) -> None:
        self.failureResultOf(self.client.pull(), NotConnected)
