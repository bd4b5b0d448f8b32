"""Tests for ``msgctl chat`` on a fake standard input and a faked gate."""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from daojia_msg.protocol.codec import encode
from daojia_msg.protocol.codes import Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import answer, sent
from tests.msgctl.fakes import CliTestCase


class ChatTests(CliTestCase):
    def attach(self, proto: Protocol) -> None:
        self.stdin = proto
        proto.makeConnection(StringTransport())

    def logged_in_chat(self) -> Deferred[int]:
        """``msgctl chat`` as 7@1001 to 8, logged in, nothing offline."""
        d = self.run_cli("chat", "--uid", "7", "--appcode", "1001", "--to", "8", stdio=self.attach)
        self.gate.accept()
        self.gate.login()
        self.gate.answer(Cmd.PULL, pb.PullResponse())
        return d

    def end_of_input(self, d: Deferred[int]) -> int:
        """End standard input: the chat logs out; its exit status."""
        self.stdin.connectionLost(Failure(error.ConnectionDone()))
        self.gate.answer(Cmd.LOGOUT)
        self.gate.close()
        return self.exit_code(d)

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
        self.assertEqual(self.end_of_input(d), 0)
        self.assertEqual(
            self.out.getvalue(),
            "[8@1001 msgid=5 logid=L5] offline\n[8@1001 msgid=7 logid=L7] live\n",
        )
        self.assertIn("*** logged in as 7@1001, 1 offline message(s)\n", self.err.getvalue())
        self.assertIn("*** sent msgid=6 logid=L6\n", self.err.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_kicked_elsewhere_ends_chat(self) -> None:
        d = self.logged_in_chat()
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

    def test_a_server_push_names_the_server_and_its_msgtype(self) -> None:
        d = self.logged_in_chat()
        s2c = pb.Message(msgid=9, to_uid=7, to_appcode=1001, msgtype=5, content=b"order",
                         logid="L9", kind=pb.S2C)
        self.gate.proto.dataReceived(_frame(Cmd.S2C, s2c.SerializeToString()))
        self.reactor.advance(0)
        self.gate.answer(Cmd.ACK)
        self.assertEqual(self.end_of_input(d), 0)
        self.assertEqual(self.out.getvalue(), "[server msgtype=5 msgid=9 logid=L9] order\n")

    def test_a_dropped_connection_is_announced_and_a_line_typed_offline_goes_later(self) -> None:
        d = self.logged_in_chat()
        self.gate.close()
        self.assertIn("*** connection lost: reconnecting", self.err.getvalue())
        self.stdin.dataReceived(b"while away\n")
        self.reactor.advance(60)  # the backoff
        self.gate.accept()
        self.gate.login()
        self.assertIn("*** sending 1 line(s) typed while offline", self.err.getvalue())
        pull, c2c = sent(self.gate.transport)
        self.assertEqual((pull.cmd, c2c.cmd), (Cmd.PULL, Cmd.C2C))
        answer(self.gate.proto, pull, pb.PullResponse())
        answer(self.gate.proto, c2c, pb.Result(msgid=6, logid="L6"))
        self.assertEqual(pb.C2CRequest.FromString(c2c.body).content, b"while away")
        self.assertIn("*** sent msgid=6 logid=L6\n", self.err.getvalue())
        self.assertEqual(self.end_of_input(d), 0)

    def test_ctrl_c_names_the_lines_that_were_never_sent(self) -> None:
        self.logged_in_chat()
        self.gate.close()
        self.stdin.dataReceived(b"first\nsecond\n")
        for trigger, args, kw in self.reactor.triggers["before"]["shutdown"]:  # what Ctrl-C does
            trigger(*args, **kw)
        self.assertIn("*** 2 line(s) not sent:\n***   first\n***   second\n", self.err.getvalue())

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
