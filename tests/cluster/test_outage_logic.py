"""What logic does while its node is cut off from Redis within the grace
(docs/operations.md §3): LOGIN is refused at once, the sessions it has keep
chatting (:attr:`Context.logins` False, :attr:`Context.available` True)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.protocol.codes import Code
from tests.helpers import Stack


class LoginsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()
        self.alice = self.stack.login(1)
        self.bob = self.stack.login(2)
        self.logins = [False]
        self.stack.logic.ctx.logins = lambda: self.logins[0]

    def test_login_refused_at_once(self) -> None:
        carol = self.stack.connect()
        response = carol.login(3)  # no Redis call: answered before any would time out
        self.assertEqual(response.code, Code.UNAVAILABLE)
        self.assertNotIn((3, 1001), self.stack.logic.local)
        self.logins[0] = True
        self.assertEqual(self.stack.connect().login(3).code, Code.OK)

    def test_login_again_on_a_session_refused(self) -> None:
        self.assertEqual(self.alice.login(1).code, Code.UNAVAILABLE)
        self.assertIn((1, 1001), self.stack.logic.local)  # the session itself stays

    def test_the_sessions_it_has_keep_chatting(self) -> None:
        result = self.alice.c2c(2, b"during the outage")
        self.assertEqual(result.code, Code.OK)
        [msg] = self.bob.pushed_messages()
        self.assertEqual((msg.msgid, msg.content), (result.msgid, b"during the outage"))
        self.assertEqual(self.bob.ack([msg.msgid]).code, Code.OK)
        self.assertEqual(self.alice.pull().code, Code.OK)
