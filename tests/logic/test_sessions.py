"""Sessions on one node: kickout, shutdown, session ids."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.logic.service import new_session_id
from daojia_msg.protocol.codes import Cmd, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack


class KickoutTests(SynchronousTestCase):
    def test_admin_kickout(self) -> None:
        stack = Stack()
        a = stack.login(1)
        kicked = self.successResultOf(Deferred.fromCoroutine(stack.logic.kickout(1, 1001)))
        self.assertEqual(kicked, 1)
        [frame] = a.received()
        body = pb.Kickout()
        body.ParseFromString(frame.body)
        self.assertEqual((frame.cmd, body.reason_code), (Cmd.KICKOUT, KickReason.ADMIN))
        self.assertTrue(a.closing)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(stack.logic.kickout(1, 1001))),
                         0)

    def test_kick_all_on_shutdown(self) -> None:
        stack = Stack()
        conns = [stack.login(uid) for uid in (1, 2, 3)]
        self.assertEqual(stack.logic.kick_all(KickReason.SHUTDOWN, "bye"), 3)
        self.assertTrue(all(c.closing for c in conns))
        self.assertEqual(stack.logic.local, {})


class SessionIdTests(SynchronousTestCase):
    def test_32_random_hex_digits(self) -> None:
        ids = {new_session_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        for session_id in ids:
            self.assertRegex(session_id, r"^[0-9a-f]{32}$")

    def test_one_system_call_per_256_ids(self) -> None:
        from daojia_msg.logic import sessions

        calls: list[int] = []

        def urandom(n: int) -> bytes:
            calls.append(n)
            return bytes(range(256)) * (n // 256)

        self.patch(sessions.os, "urandom", urandom)
        self.patch(sessions, "_random", sessions._RandomBytes())
        ids = [new_session_id() for _ in range(257)]
        self.assertEqual(calls, [4096, 4096])
        self.assertEqual(ids[0], bytes(range(16)).hex())
        self.assertEqual(ids[1], bytes(range(16, 32)).hex())
        self.assertEqual(ids[256], ids[0])  # the second (fake) buffer, from its start
