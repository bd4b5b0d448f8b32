"""Tests for msgctl (daojia_msg.msgctl.cli), on a fake reactor and a faked gate."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from treq.testing import StubTreq
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from daojia_msg.auth import TokenError, verify_token
from daojia_msg.msgctl import cli
from daojia_msg.protocol.codec import Frame, encode
from daojia_msg.protocol.codes import Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import answer, one

NOW = 1_700_000_000


class FakeGate:
    """The server end of the CLI's TCP connection attempts on a MemoryReactor."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.proto: Any = None
        self.transport = StringTransport()

    def accept(self) -> None:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        self.proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def refuse(self) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(error.ConnectionRefusedError())
        )

    def request(self, cmd: int) -> Frame:
        frame = one(self.transport)
        assert frame.cmd == cmd, frame
        return frame

    def answer(self, cmd: int, body: Any = None) -> Frame:
        frame = self.request(cmd)
        answer(self.proto, frame, body)
        return frame

    def login(self, **fields: Any) -> str:
        frame = self.answer(Cmd.LOGIN, pb.LoginResponse(heartbeat_s=60, **fields))
        return pb.LoginRequest.FromString(frame.body).token

    def close(self) -> None:
        self.proto.connectionLost(Failure(error.ConnectionDone()))


class CliTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.gate = FakeGate(self.reactor)
        self.out = io.StringIO()
        self.err = io.StringIO()

    def run_cli(self, *argv: str, **kwargs: Any) -> Deferred[int]:
        args = cli.build_parser().parse_args(argv)
        return cli.run(self.reactor, args, self.out, self.err, **kwargs)

    def exit_code(self, d: Deferred[int]) -> int:
        return self.successResultOf(d)

    def bad_args(self, *argv: str) -> str:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            cli.build_parser().parse_args(argv)
        self.assertEqual(caught.exception.code, 2)
        return stderr.getvalue()


class TokenTests(CliTestCase):
    def test_demo_secret(self) -> None:
        code = self.exit_code(self.run_cli("token", "--appcode", "1001", "--uid", "7"))
        self.assertEqual(code, 0)
        token = self.out.getvalue().strip()
        self.assertEqual(verify_token("demo-secret-1001", 1001, 7, token, NOW), NOW + 86400)
        self.assertRaises(TokenError, verify_token, "demo-secret-1002", 1001, 7, token, NOW)
        self.assertRaises(TokenError, verify_token, "demo-secret-1001", 1001, 8, token, NOW)

    def test_secret_and_ttl(self) -> None:
        d = self.run_cli(
            "token", "--appcode", "5000", "--uid", "9", "--secret", "s3", "--ttl", "60"
        )
        self.assertEqual(self.exit_code(d), 0)
        token = self.out.getvalue().strip()
        self.assertEqual(verify_token("s3", 5000, 9, token, NOW), NOW + 60)

    def test_secret_required_for_other_apps(self) -> None:
        code = self.exit_code(self.run_cli("token", "--appcode", "5000", "--uid", "9"))
        self.assertEqual(code, 2)
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(
            self.err.getvalue(),
            "msgctl: error: --secret is required: appcode 5000 is not a demo app (1001, 1002)\n",
        )


class ArgumentTests(CliTestCase):
    def test_missing_uid(self) -> None:
        self.assertIn("--uid", self.bad_args("token", "--appcode", "1001"))

    def test_bad_integers(self) -> None:
        self.assertIn("expected an integer", self.bad_args("token", "--appcode", "x", "--uid", "1"))
        self.assertIn("from 1 to", self.bad_args("token", "--appcode", "1001", "--uid", "0"))
        self.assertIn("--appcode", self.bad_args("token", "--appcode", str(2**32), "--uid", "1"))

    def test_no_command(self) -> None:
        self.bad_args()
        self.assertIn("invalid choice", self.bad_args("frobnicate"))

    def test_required_options(self) -> None:
        self.assertIn("--to", self.bad_args("send", "--uid", "1", "--appcode", "1001", "hi"))
        self.assertIn("TEXT", self.bad_args("send", "--uid", "1", "--appcode", "1001", "--to", "2"))
        self.assertIn("--msgtype", self.bad_args("c2s", "--uid", "1", "--appcode", "1001", "x"))
        self.assertIn("--to-appcode", self.bad_args("push", "--to", "1", "--msgtype", "0", "x"))

    def test_defaults(self) -> None:
        args = cli.build_parser().parse_args(
            ["chat", "--uid", "1", "--appcode", "1001", "--to", "2"]
        )
        self.assertEqual(
            (args.host, args.port, args.to_appcode, args.msgtype), ("127.0.0.1", 7000, None, 0)
        )

    def test_main_parses_before_the_reactor(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        with self.assertRaises(SystemExit) as caught:
            cli.main(["token"])
        self.assertEqual(caught.exception.code, 2)


class GateCommandTests(CliTestCase):
    def test_send(self) -> None:
        d = self.run_cli(
            "send",
            "--uid",
            "7",
            "--appcode",
            "1001",
            "--to",
            "8",
            "--to-appcode",
            "1002",
            "hello",
            "world",
        )
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 7000))
        self.gate.accept()
        token = self.gate.login()
        verify_token("demo-secret-1001", 1001, 7, token, NOW)
        c2c = self.gate.answer(Cmd.C2C, pb.Result(msgid=123, logid="abc"))
        body = pb.C2CRequest.FromString(c2c.body)
        self.assertEqual((body.to_uid, body.to_appcode, body.content), (8, 1002, b"hello world"))
        self.assertEqual(len(body.client_msg_id), 32)
        self.gate.answer(Cmd.LOGOUT)
        self.assertTrue(self.gate.transport.disconnecting)
        self.assertNoResult(d)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(self.out.getvalue(), "msgid=123 logid=abc\n")

    def test_connection_refused(self) -> None:
        d = self.run_cli(
            "send", "--uid", "7", "--appcode", "1001", "--to", "8", "--port", "7001", "x"
        )
        self.gate.refuse()
        self.assertEqual(self.exit_code(d), 1)
        self.assertTrue(
            self.err.getvalue().startswith("msgctl: error: cannot connect to 127.0.0.1:7001: ")
        )
        self.assertEqual(self.err.getvalue().count("\n"), 1)

    def test_login_refused(self) -> None:
        d = self.run_cli("pull", "--uid", "7", "--appcode", "1001", "--secret", "wrong")
        self.gate.accept()
        self.gate.answer(Cmd.LOGIN, pb.LoginResponse(code=Code.UNAUTHORIZED, reason="bad token"))
        self.gate.close()
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(
            self.err.getvalue(), "msgctl: error: login failed: UNAUTHORIZED: bad token\n"
        )

    def test_result_error(self) -> None:
        d = self.run_cli("c2s", "--uid", "7", "--appcode", "1001", "--msgtype", "9", "x")
        self.gate.accept()
        self.gate.login()
        c2s = self.gate.answer(Cmd.C2S, pb.Result(code=Code.NO_ROUTE, reason="no topic"))
        self.assertEqual(c2s.msgtype, 9)
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(self.err.getvalue(), "msgctl: error: c2s failed: NO_ROUTE: no topic\n")

    def test_pull_ack(self) -> None:
        d = self.run_cli("pull", "--uid", "7", "--appcode", "1001", "--ack")
        self.gate.accept()
        self.gate.login(offline_count=1)
        m = pb.Message(msgid=5, from_uid=8, from_appcode=1002, content="héllo".encode(), logid="L5")
        self.gate.answer(Cmd.PULL, pb.PullResponse(messages=[m]))
        ack = self.gate.answer(Cmd.ACK)
        self.assertEqual(list(pb.Ack.FromString(ack.body).msgids), [5])
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(self.out.getvalue(), "[8@1002 msgid=5 logid=L5] héllo\n")
        self.assertEqual(self.err.getvalue(), "1 pending message(s), acked\n")

    def test_pull_without_ack(self) -> None:
        d = self.run_cli("pull", "--uid", "7", "--appcode", "1001")
        self.gate.accept()
        self.gate.login()
        self.gate.answer(Cmd.PULL, pb.PullResponse(messages=[pb.Message(msgid=5)]))
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(self.err.getvalue(), "1 pending message(s)\n")

    def test_history(self) -> None:
        d = self.run_cli(
            "history", "--uid", "7", "--appcode", "1001", "--peer", "8", "--limit", "1"
        )
        self.gate.accept()
        self.gate.login()
        m = pb.Message(
            msgid=9, from_uid=7, from_appcode=1001, to_uid=8, to_appcode=1002, content=b"yo"
        )
        req = self.gate.answer(Cmd.HISTORY, pb.HistoryResponse(messages=[m], has_more=True))
        self.assertEqual(
            pb.HistoryRequest.FromString(req.body), pb.HistoryRequest(peer_uid=8, limit=1)
        )
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(self.out.getvalue(), "[7@1001 -> 8@1002 msgid=9 logid=] yo\n")
        self.assertEqual(self.err.getvalue(), "(more: --before 9)\n")


class ChatTests(CliTestCase):
    def attach(self, proto: Protocol) -> None:
        self.stdin = proto
        proto.makeConnection(StringTransport())

    def test_chat(self) -> None:
        d = self.run_cli("chat", "--uid", "7", "--appcode", "1001", "--to", "8", stdio=self.attach)
        self.gate.accept()
        self.gate.login(offline_count=1)
        m = pb.Message(msgid=5, from_uid=8, from_appcode=1001, content=b"offline", logid="L5")
        self.gate.answer(Cmd.PULL, pb.PullResponse(messages=[m]))
        self.gate.answer(Cmd.ACK)
        self.stdin.dataReceived(b"hello there\r\n\n")
        c2c = self.gate.answer(Cmd.C2C, pb.Result(msgid=6, logid="L6"))
        self.assertEqual(pb.C2CRequest.FromString(c2c.body).content, b"hello there")
        self.assertEqual((c2c.msgtype, pb.C2CRequest.FromString(c2c.body).to_appcode), (0, 1001))
        self.gate.proto.dataReceived(push(7, b"live"))
        self.reactor.advance(0)
        self.gate.answer(Cmd.ACK)
        self.stdin.connectionLost(Failure(error.ConnectionDone()))
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(
            self.out.getvalue(),
            "[8@1001 msgid=5 logid=L5] offline\n[8@1001 msgid=7 logid=L7] live\n",
        )
        self.assertIn("*** logged in as 7@1001, 1 offline message(s)\n", self.err.getvalue())
        self.assertIn("*** sent msgid=6 logid=L6\n", self.err.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_kicked_elsewhere_ends_chat(self) -> None:
        d = self.run_cli("chat", "--uid", "7", "--appcode", "1001", "--to", "8", stdio=self.attach)
        self.gate.accept()
        self.gate.login()
        self.gate.answer(Cmd.PULL, pb.PullResponse())
        kick = pb.Kickout(reason_code=KickReason.LOGIN_ELSEWHERE, reason="elsewhere")
        self.gate.proto.dataReceived(_frame(Cmd.KICKOUT, kick.SerializeToString()))
        self.gate.close()
        self.assertEqual(self.exit_code(d), 1)
        self.assertIn("*** kicked out: LOGIN_ELSEWHERE elsewhere\n", self.err.getvalue())
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_connection_refused(self) -> None:
        d = self.run_cli("chat", "--uid", "7", "--appcode", "1001", "--to", "8", stdio=self.attach)
        self.gate.refuse()
        self.reactor.advance(0)
        self.assertEqual(self.exit_code(d), 1)
        self.assertIn("msgctl: error: cannot connect to 127.0.0.1:7000", self.err.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_login_refused(self) -> None:
        d = self.run_cli("chat", "--uid", "7", "--appcode", "1001", "--to", "8", stdio=self.attach)
        self.gate.accept()
        self.gate.answer(Cmd.LOGIN, pb.LoginResponse(code=Code.UNAUTHORIZED, reason="bad token"))
        self.gate.close()
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(
            self.err.getvalue(), "msgctl: error: login failed: UNAUTHORIZED: bad token\n"
        )


def _frame(cmd: int, body: bytes) -> bytes:
    return encode(cmd, 1001, 0, 7, 1, body)


def push(msgid: int, content: bytes) -> bytes:
    m = pb.Message(
        msgid=msgid,
        from_uid=8,
        from_appcode=1001,
        to_uid=7,
        to_appcode=1001,
        content=content,
        logid=f"L{msgid}",
    )
    return _frame(Cmd.C2C, m.SerializeToString())


class PushResource(Resource):
    isLeaf = True

    def __init__(self, code: int, answer: dict[str, Any]) -> None:
        super().__init__()
        self.code = code
        self.answer = answer
        self.seen: list[tuple[bytes, str | None, Any]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = json.loads(request.content.read())
        self.seen.append((request.path, request.getHeader("authorization"), body))
        request.setResponseCode(self.code)
        request.setHeader("content-type", "application/json")
        return json.dumps(self.answer).encode()


class PushTests(CliTestCase):
    def push(self, resource: PushResource, *extra: str) -> Deferred[int]:
        stub = StubTreq(resource)
        d = self.run_cli(
            "push",
            "--to",
            "8",
            "--to-appcode",
            "1002",
            "--msgtype",
            "3",
            *extra,
            "new",
            "order",
            http=stub,
        )
        stub.flush()
        return d

    def test_push(self) -> None:
        resource = PushResource(200, {"msgid": "77", "logid": "lg", "online": True})
        d = self.push(resource)
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(
            json.loads(self.out.getvalue()), {"msgid": "77", "logid": "lg", "online": True}
        )
        path, auth, body = resource.seen[0]
        self.assertEqual((path, auth), (b"/v1/push", "Bearer demo-key-1002"))
        self.assertEqual(
            body, {"to_uid": 8, "to_appcode": 1002, "msgtype": 3, "content": "new order"}
        )

    def test_api_key_and_logid(self) -> None:
        resource = PushResource(200, {"msgid": "1"})
        d = self.push(resource, "--api-key", "k", "--logid", "L1", "--http", "http://h:1/")
        self.assertEqual(self.exit_code(d), 0)
        _path, auth, body = resource.seen[0]
        self.assertEqual((auth, body["logid"]), ("Bearer k", "L1"))

    def test_http_error(self) -> None:
        d = self.push(PushResource(401, {"error": "bad api key"}))
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(self.err.getvalue(), "msgctl: error: HTTP 401: bad api key\n")

    def test_key_required_for_other_apps(self) -> None:
        d = self.run_cli("push", "--to", "8", "--to-appcode", "5000", "--msgtype", "3", "x")
        self.assertEqual(self.exit_code(d), 2)
        self.assertIn("--api-key is required", self.err.getvalue())


class StatsResource(Resource):
    isLeaf = True

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__()
        self.answer = answer
        self.seen: list[tuple[bytes, str | None]] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append((request.path, request.getHeader("authorization")))
        request.setHeader("content-type", "application/json")
        return json.dumps(self.answer).encode()


class StatsTests(CliTestCase):
    ANSWER = {
        "totals": {"accepted": 4, "pushed": 3, "acked": 3, "repushed": 1, "stored": 1,
                   "pulled": 1},
        "by_route": [{"appcode": 1001, "msgtype": 7, "kind": "C2C", "accepted": 4, "pushed": 3,
                      "acked": 3, "repushed": 1, "stored": 1, "pulled": 1,
                      "ack_latency": {"count": 3, "mean_ms": 40.1, "p50_ms": 25.0,
                                      "p90_ms": 100.0, "p99_ms": 100.0}}],
        "ack_latency": {"count": 3, "mean_ms": 40.1, "p50_ms": 25.0, "p90_ms": 100.0,
                        "p99_ms": None},
        "delivery_rate": 0.75, "delivery_rate_total": 0.75, "window_s": 300.0,
    }

    def test_table(self) -> None:
        resource = StatsResource(self.ANSWER)
        stub = StubTreq(resource)
        d = self.run_cli("stats", http=stub)
        stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(resource.seen, [(b"/v1/stats", "Bearer demo-key-1001")])
        lines = self.out.getvalue().splitlines()
        self.assertEqual(lines[0], "delivery rate: 75.00% (last 300 s), since the start: 75.00%")
        self.assertEqual(lines[2].split(),
                         ["1001", "7", "C2C", "4", "3", "3", "1", "1", "1", "25", "100"])
        self.assertEqual(lines[3].split(), ["total", "4", "3", "3", "1", "1", "1", "25", "-"])

    def test_json(self) -> None:
        stub = StubTreq(StatsResource(self.ANSWER))
        d = self.run_cli("stats", "--json", "--appcode", "1002", http=stub)
        stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(json.loads(self.out.getvalue()), self.ANSWER)
