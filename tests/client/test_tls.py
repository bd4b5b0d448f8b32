"""The client library over TLS, in memory (real TLS, fake sockets): the gate's
endpoint, requests after a verified handshake, TLSFailed when the node's
certificate does not verify, and a plain hang-up during the handshake."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import IOPump
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.client import ConnectionLost, MsgClientProtocol, TLSFailed, gate_endpoint
from daojia_msg.tls import ServerTLS, TLSError, client_options
from tests.helpers import Stack
from tests.tlscerts import CA, tls_in_memory


class Hangup(Protocol):
    """A server that is not TLS: it closes on the first bytes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class EndpointTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertIsInstance(gate_endpoint(Clock(), "127.0.0.1", 7000), TCP4ClientEndpoint)

    def test_a_ca_that_cannot_be_read(self) -> None:
        e = self.assertRaises(TLSError, gate_endpoint, Clock(), "127.0.0.1", 7443, tls=True,
                              ca="no-such-ca.pem")
        self.assertIn("'no-such-ca.pem'", str(e))


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        self.ca = CA(directory)
        self.other_ca = CA(os.path.join(directory, "other"), "another CA")
        server = self.ca.issue("node", stem="server")
        self.server_tls = ServerTLS("gate", server.cert, server.key)
        self.stack = Stack()

    def connect(self, server_factory: Any, ca: str,
                tls: bool = True) -> tuple[MsgClientProtocol, IOPump]:
        client = MsgClientProtocol(self.stack.clock, 7, 1001, heartbeat_s=0)
        _, _, pump = tls_in_memory(server_factory, self.server_tls if tls else None, client,
                                   client_options("127.0.0.1", ca=ca), self.stack.clock,
                                   greet=False)
        return client, pump

    def test_requests_wait_for_a_verified_handshake(self) -> None:
        client, pump = self.connect(self.stack.factory, self.ca.path)
        self.assertTrue(client.tls)
        d = client.login(self.stack.token(7))  # written before the handshake: it waits
        self.assertFalse(client.handshake_done)
        pump.flush()
        self.assertTrue(client.handshake_done)
        self.assertEqual(self.successResultOf(d).code, 0)

    def test_a_certificate_another_ca_signed_fails_with_tls_failed(self) -> None:
        client, pump = self.connect(self.stack.factory, self.other_ca.path)
        d = client.login(self.stack.token(7))
        pump.flush()
        e = self.failureResultOf(d, TLSFailed).value
        self.assertEqual(str(e), "TLS handshake failed: certificate verify failed")
        self.assertIsInstance(e, ConnectionLost)  # code that catches ConnectionLost still does
        self.assertIs(client.tls_error, e)
        self.assertEqual(self.stack.factory.connections, set())

    def test_a_server_that_is_not_tls_is_a_lost_connection(self) -> None:
        client, pump = self.connect(Factory.forProtocol(Hangup), self.ca.path, tls=False)
        d = client.login(self.stack.token(7))
        pump.flush()
        e = self.failureResultOf(d, ConnectionLost).value
        self.assertNotIsInstance(e, TLSFailed)
        self.assertFalse(client.handshake_done)
