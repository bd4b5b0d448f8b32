"""End to end over TLS: a real node whose gate and HTTP API are ``ssl:``
listeners, on loopback, with the client library and treq verifying its
certificate; old TLS refused; certificates reloaded in process (the SIGHUP
itself is in :mod:`tests.test_tls_twistd`)."""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.client import MsgClient, MsgClientProtocol, TLSFailed, gate_endpoint
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.tls import client_endpoint, client_options
from tests.tlsnodes import R, TLSNodeTestCase


class Outcome(Protocol):
    """Fires ``ended`` with the reason the connection ended."""

    def __init__(self) -> None:
        self.ended: Deferred[list[Failure]] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended.callback([reason])


@implementer(IOpenSSLClientConnectionCreator)
class OldClient:
    """A client that speaks TLS 1.1 and nothing else."""

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        connection = SSL.Connection(context, None)
        connection.set_connect_state()
        return connection


class GateOverTLSTests(TLSNodeTestCase):
    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.start_tls_node())

    async def test_login_and_c2c_over_tls(self) -> None:
        alice, _ = await self.tls_client(1)
        bob, bob_inbox = await self.tls_client(2)
        result = await alice.c2c(2, 1001, 7, b"hello over TLS", logid="tls-1")
        self.assertEqual((result.code, result.logid), (Code.OK, "tls-1"))
        [msg] = await bob_inbox.wait(1)
        self.assertEqual((msg.msgid, msg.from_uid, msg.content), (result.msgid, 1, b"hello over TLS"))
        proto: MsgClientProtocol = await bob.when_ready()
        transport: Any = proto.transport
        self.assertIn(transport.getHandle().get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(await self.presented(bob), "msgplatform node")

    async def test_an_https_push_reaches_a_tls_client(self) -> None:
        _, inbox = await self.tls_client(2)
        code, answer = await self.https("POST", "/v1/push", {
            "to_uid": 2, "to_appcode": 1001, "msgtype": 5, "content": "order 42"})
        self.assertEqual(code, 200, answer)
        self.assertTrue(answer["online"])
        [msg] = await inbox.wait(1)
        self.assertEqual((str(msg.msgid), msg.kind, msg.content),
                         (answer["msgid"], pb.S2C, b"order 42"))

    async def test_a_tls_1_1_client_is_refused(self) -> None:
        outcome = Outcome()
        endpoint = wrapClientTLS(OldClient(), TCP4ClientEndpoint(R, "127.0.0.1",
                                                                  self.port("gate")))
        await connectProtocol(endpoint, outcome)
        [reason] = await outcome.ended.addTimeout(10, R)
        self.assertIsInstance(reason.value, SSL.Error)
        self.assertIn("protocol version", str(reason.value))
        self.assertEqual(self.node.gate.connections, set())

    async def test_a_client_that_trusts_another_ca_is_refused_and_stops(self) -> None:
        endpoint = gate_endpoint(R, "127.0.0.1", self.port("gate"), tls=True,
                                 ca=self.other_ca.path)
        client = MsgClient(R, endpoint, 1, 1001, lambda: self.token(1))
        client.startService()
        self.addCleanup(client.stopService)
        failure = await self.assertFailure(client.when_ready().addTimeout(10, R), TLSFailed)
        self.assertEqual(str(failure), "TLS handshake failed: certificate verify failed")
        await deferLater(R, 0, lambda: None)  # it stops right after failing its waiters
        self.assertFalse(client.running)  # it does not retry a certificate that will not verify

    async def test_a_certificate_that_does_not_name_the_host_is_refused(self) -> None:
        endpoint = client_endpoint(R, "127.0.0.1", self.port("gate"),
                                   tls=client_options("chat.example.com", ca=self.ca.path))
        proto = MsgClientProtocol(R, 1, 1001, heartbeat_s=0)
        await connectProtocol(endpoint, proto)
        e = await self.assertFailure(proto.login(self.token(1)), TLSFailed)
        self.assertEqual(e.why, "the server's certificate does not name the host connected to")

    async def test_a_logout_closes_with_close_notify(self) -> None:
        """The node closes through TLS: the client reads a clean end, and the
        node logs no error about it."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        client, _ = await self.tls_client(3)
        proto = await client.when_ready()
        ended: Deferred[None] = proto.when_closed()
        reasons: list[Failure] = []
        lost = proto.connectionLost

        def record(reason: Failure = connectionDone) -> None:
            reasons.append(reason)
            lost(reason)

        proto.connectionLost = record  # type: ignore[method-assign]
        result = await proto.logout()
        self.assertEqual(result.code, Code.OK)
        await ended.addTimeout(10, R)
        self.assertIsInstance(reasons[0].value, ConnectionDone)
        self.assertEqual([e for e in events if e.get("log_failure")], [])
        self.assertEqual(self.flushLoggedErrors(), [])


class ReloadTests(TLSNodeTestCase):
    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.start_tls_node())

    async def test_new_clients_get_the_new_certificate_and_old_ones_keep_working(self) -> None:
        old, old_inbox = await self.tls_client(1)
        self.ca.issue("msgplatform node, renewed", stem="server")  # over the same files
        self.assertEqual(self.node.reload_tls(), 2)  # the gate's and the HTTP API's
        new, new_inbox = await self.tls_client(2)
        self.assertEqual(await self.presented(new), "msgplatform node, renewed")
        self.assertEqual(await self.presented(old), "msgplatform node")
        await old.c2c(2, 1001, 7, b"from the old connection")
        await new.c2c(1, 1001, 7, b"to the old connection")
        [to_new] = await new_inbox.wait(1)
        [to_old] = await old_inbox.wait(1)
        self.assertEqual((to_new.content, to_old.content),
                         (b"from the old connection", b"to the old connection"))
        code, _ = await self.https("GET", "/v1/stats")
        self.assertEqual(code, 200)

    async def test_a_bad_certificate_is_logged_and_the_old_one_kept(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        with open(self.server.cert, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\ntruncated\n")
        self.assertEqual(self.node.reload_tls(), 0)
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual([e["name"] for e in errors], ["gate", "http"])
        self.assertIn(os.path.basename(self.server.cert), errors[0]["why"])
        client, _ = await self.tls_client(1)
        self.assertEqual(await self.presented(client), "msgplatform node")
