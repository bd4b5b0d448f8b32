"""The gate's connection is what logic expects of it: :class:`IClientConnection`."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daojia_msg.logic.interfaces import IClientConnection
from daojia_msg.protocol.codes import Cmd
from tests.helpers import Stack


class ClientConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack()

    def test_a_gate_connection_provides_the_interface(self) -> None:
        conn = self.stack.connect()
        self.assertTrue(verifyObject(IClientConnection, conn.proto))

    def test_push_returns_the_nonzero_sequenceid_it_wrote(self) -> None:
        conn = self.stack.connect()
        conn.login(42, 1001)
        conn.received()
        first = conn.proto.push(Cmd.S2C, 5, b"")
        second = conn.proto.push(Cmd.S2C, 5, b"")
        self.assertEqual((first, second), (1, 2))
        self.assertEqual([f.sequenceid for f in conn.received()], [1, 2])

    def test_push_returns_0_when_nothing_was_written(self) -> None:
        conn = self.stack.connect()
        self.assertEqual(conn.proto.push(Cmd.S2C, 5, b""), 0)  # not logged in
        conn.login(42, 1001)
        conn.received()
        conn.proto.close()
        self.assertEqual(conn.proto.push(Cmd.S2C, 5, b""), 0)
        self.assertEqual(conn.received(), [])

    def test_connection_attributes_follow_its_life(self) -> None:
        conn = self.stack.connect()
        self.assertTrue(conn.proto.connected)
        self.assertEqual(conn.proto.peer, "10.0.0.1:40000")
        self.assertIsNone(conn.proto.session)
        conn.login(42, 1001)
        self.assertEqual((conn.proto.session.uid, conn.proto.session.appcode), (42, 1001))
        conn.proto.close()
        self.assertFalse(conn.proto.connected)
