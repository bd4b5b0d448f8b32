"""A gate connection over TLS closes through the TLS layer (close_notify), not
with a TCP half close under it; over plain TCP it still half-closes. Over TLS
the peer keeps being read until it answers, and is aborted after
``limits.close_grace_s`` if it never does. In memory: real TLS, fake sockets."""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from daojia_msg import tls
from daojia_msg.client.protocol import MsgClientProtocol
from daojia_msg.gate.protocol import GateProtocol
from daojia_msg.protocol.codes import KickReason
from tests.helpers import Stack
from tests.tlscerts import CA, tls_in_memory


class RecordingClient(MsgClientProtocol):
    """A client that keeps why its connection ended."""

    reason: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        super().connectionLost(reason)


class TLSCloseTests(SynchronousTestCase):
    def setUp(self) -> None:
        ca = CA(os.path.abspath(self.mktemp()))
        server = ca.issue("gate", stem="server")
        self.stack = Stack()
        self.server_tls = tls.ServerTLS("gate", server.cert, server.key)
        self.client_tls = tls.client_options("127.0.0.1", ca=ca.path)

    def connect(self, uid: int = 7) -> tuple[RecordingClient, GateProtocol, IOPump]:
        """A TLS connection in memory, logged in as ``uid``."""
        client = RecordingClient(self.stack.clock, uid, 1001, heartbeat_s=0)
        _, server_tls, pump = tls_in_memory(self.stack.factory, self.server_tls, client,
                                            self.client_tls, self.stack.clock)
        self.server_transport: FakeTransport = server_tls.transport
        gate = server_tls.wrappedProtocol
        d = client.login(self.stack.token(uid))
        pump.flush()
        self.assertEqual(self.successResultOf(d).code, 0)
        self.assertTrue(client.handshake_done)
        return client, gate, pump

    def test_a_logout_ends_with_close_notify(self) -> None:
        client, gate, pump = self.connect()
        d = client.logout()
        pump.flush()
        self.assertEqual(self.successResultOf(d).code, 0)
        # The client got the answer, then TLS's close_notify: a clean end (a TCP
        # close without it would read as ConnectionLost), and so did the gate.
        assert client.reason is not None
        self.assertIsInstance(client.reason.value, ConnectionDone)
        self.assertFalse(gate.connected)
        self.assertEqual(self.stack.factory.connections, set())
        self.assertEqual(self.stack.clock.getDelayedCalls(), [])  # no abort pending

    def test_a_kick_ends_with_close_notify(self) -> None:
        client, gate, pump = self.connect()
        gate.kick(KickReason.ADMIN, "by an operator")
        pump.flush()
        self.assertEqual(client.kickout, (KickReason.ADMIN, "by an operator"))
        assert client.reason is not None
        self.assertIsInstance(client.reason.value, ConnectionDone)
        self.assertEqual(self.stack.factory.connections, set())

    def test_a_peer_that_never_answers_is_aborted_after_the_grace(self) -> None:
        client, gate, pump = self.connect()
        aborted: list[bool] = []
        self.server_transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        gate.close()  # the client is never pumped again: it never answers close_notify
        self.stack.clock.advance(self.stack.config.limits.close_grace_s - 0.1)
        self.assertEqual(aborted, [])
        self.stack.clock.advance(0.2)
        self.assertEqual(aborted, [True])


class HalfCloseTransport(StringTransport):
    """A string transport that records half closes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def loseWriteConnection(self) -> None:
        self.calls.append("loseWriteConnection")

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")
        super().loseConnection()

    def unregisterProducer(self) -> None:
        self.calls.append("unregisterProducer")
        super().unregisterProducer()


class CloseRuleTests(SynchronousTestCase):
    def gate(self, transport: StringTransport) -> GateProtocol:
        stack = Stack()
        proto = stack.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
        proto.makeConnection(transport)
        return proto

    def test_tls_closes_through_the_tls_layer(self) -> None:
        transport = HalfCloseTransport()
        directlyProvides(transport, ISSLTransport)
        self.gate(transport).close()
        self.assertEqual(transport.calls, ["unregisterProducer", "loseConnection"])

    def test_tcp_still_half_closes(self) -> None:
        transport = HalfCloseTransport()
        self.gate(transport).close()
        self.assertEqual(transport.calls, ["loseWriteConnection"])
