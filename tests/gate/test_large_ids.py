"""uids, msgids and cursors up to 2**64 on the wire: refused or ignored, never a failure."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack

BIG = 2**63


class SixtyFourBitTests(SynchronousTestCase):
    """SQLite (and Java clients) are signed 64-bit: values >= 2**63 are handled
    in logic and never reach the store, where they would fail a whole batch."""

    def setUp(self) -> None:
        self.stack = Stack()
        self.alice = self.stack.login(1)
        self.bob = self.stack.login(2)

    def test_big_ack_id_is_ignored(self) -> None:
        sent = self.alice.c2c(2)
        self.assertEqual(self.bob.ack([BIG, 2**64 - 1, sent.msgid]).code, Code.OK)
        self.assertEqual(list(self.bob.pull().messages), [])

    def test_big_uids_are_bad_requests(self) -> None:
        self.assertEqual(self.alice.c2c(BIG).code, Code.BAD_REQUEST)
        conn = self.stack.connect()
        self.assertEqual(conn.login(BIG, 1001).code, Code.BAD_REQUEST)

    def test_big_cursors(self) -> None:
        sent = self.alice.c2c(2)
        self.assertEqual(list(self.bob.pull(after=BIG).messages), [])
        self.assertEqual([m.msgid for m in self.bob.history(before=2**64 - 1).messages],
                         [sent.msgid])
        self.assertEqual(list(self.bob.history(peer=BIG).messages), [])

    def test_big_ack_does_not_fail_others_in_the_same_commit(self) -> None:
        hold = self.stack.store.pool.hold()
        self.bob.send(Cmd.ACK, pb.Ack(msgids=[BIG]))
        self.alice.send(Cmd.C2C, pb.C2CRequest(to_uid=2, to_appcode=1001, content=b"x"))
        hold()
        [ack] = [f for f in self.bob.received() if f.cmd & 0x80]
        [c2c] = [f for f in self.alice.received() if f.cmd & 0x80]
        for frame in (ack, c2c):
            r = pb.Result()
            r.ParseFromString(frame.body)
            self.assertEqual(r.code, Code.OK)
