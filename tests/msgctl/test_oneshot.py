"""Tests for msgctl's one-shot commands (token, send, c2s, pull, history) on a faked gate."""

from __future__ import annotations

from daojia_msg.auth import TokenError, verify_token
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.msgctl.fakes import NOW, CliTestCase


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

    def test_send_resends_after_timeout(self) -> None:
        """TIMEOUT: the same C2C (same client_msg_id) again after 0.5 s, then 1 s."""
        d = self.run_cli("send", "--uid", "7", "--appcode", "1001", "--to", "8", "hi")
        self.gate.accept()
        self.gate.login()
        first = self.gate.answer(Cmd.C2C, pb.Result(code=Code.TIMEOUT, reason="stalled"))
        self.reactor.advance(0.5)
        second = self.gate.answer(Cmd.C2C, pb.Result(code=Code.TIMEOUT, reason="stalled"))
        self.reactor.advance(0.9)
        self.assertEqual(self.gate.transport.value(), b"")
        self.reactor.advance(0.1)
        third = self.gate.answer(Cmd.C2C, pb.Result(msgid=5, logid="l5"))
        self.assertEqual({first.body, second.body, third.body}, {first.body})
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(self.out.getvalue(), "msgid=5 logid=l5\n")
        self.assertEqual(self.err.getvalue().splitlines(), [
            "msgctl: TIMEOUT: stalled; resending with the same client_msg_id (1 of 3)",
            "msgctl: TIMEOUT: stalled; resending with the same client_msg_id (2 of 3)"])

    def test_send_gives_up_after_three_resends(self) -> None:
        d = self.run_cli("send", "--uid", "7", "--appcode", "1001", "--to", "8", "hi")
        self.gate.accept()
        self.gate.login()
        for delay in (0.5, 1, 2, 0):
            self.gate.answer(Cmd.C2C, pb.Result(code=Code.TIMEOUT))
            self.reactor.advance(delay)
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 1)
        self.assertTrue(self.err.getvalue().endswith("msgctl: error: send failed: TIMEOUT\n"))

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

    def c2s(self, result: pb.Result) -> str:
        d = self.run_cli("c2s", "--uid", "7", "--appcode", "1002", "--msgtype", "3", "1000")
        self.gate.accept()
        self.gate.login()
        self.gate.answer(Cmd.C2S, result)
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        self.assertEqual(self.exit_code(d), 0)
        return self.out.getvalue()

    def test_c2s_published(self) -> None:
        self.assertEqual(self.c2s(pb.Result(msgid=12, logid="c")), "msgid=12 logid=c\n")

    def test_c2s_offer_accept(self) -> None:
        """An accept's OK has no msgid nor logid: no 'msgid=0 logid=' printed."""
        self.assertEqual(self.c2s(pb.Result(code=Code.OK, server_time_ms=NOW)), "accepted\n")

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
