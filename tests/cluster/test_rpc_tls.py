"""The internal RPC over mutual TLS, on loopback with the real reactor: a node
with a certificate from the cluster's CA is served; one without a certificate,
with one from another CA, or over plain TCP is refused; the client refuses a
listener whose certificate the CA did not sign."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from daojia_msg.cluster.rpc import RpcPeers, RpcServerFactory
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import Kind, SessionRecord, StoredMessage
from daojia_msg.tls import ClientTLS, ServerTLS, client_options
from tests.tlscerts import CA, Issued

R: Any = reactor
SECRET = "a-cluster-secret-of-some-length"
RECORD = SessionRecord(uid=42, appcode=1001, node_id=2, session_id="s-1", since_ms=1)
MESSAGE = StoredMessage(2**40 + 7, 42, 1001, 41, 1001, 7, Kind.C2C, b"over mutual TLS",
                        1795700000123, "mtls-1")


class Logic:
    """What node 2's listener hands to logic."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, StoredMessage]] = []

    def deliver_local(self, session_id: str, msg: StoredMessage) -> bool:
        self.delivered.append((session_id, msg))
        return True

    def kick_local(self, uid: int, appcode: int, session_id: str, reason_code: int,
                   reason: str) -> bool:
        return True


class MutualTLSTests(TestCase):
    async def listen(self, issued: Issued, secret: str = "") -> None:
        """Node 2's RPC listener on loopback, requiring a client certificate from the CA."""
        self.logic = Logic()
        self.server = RpcServerFactory(self.logic, R, secret)
        wrapped = TLSMemoryBIOFactory(ServerTLS("rpc", issued.cert, issued.key, ca=self.ca.path),
                                      False, self.server)
        port: Any = await serverFromString(R, "tcp:0:interface=127.0.0.1").listen(wrapped)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.server.disconnect_all)
        self.address = ("127.0.0.1", port.getHost().port)

    def peers(self, *, tls: ClientTLS | None = None, secret: str = "",
              endpoint_for: Any = None) -> RpcPeers:
        """Node 1's RPC client."""
        async def address_of(node_id: int) -> tuple[str, int] | None:
            return self.address if node_id == 2 else None

        peers = RpcPeers(R, address_of, node_id=1, secret=secret, timeout=3.0, tls=tls,
                         endpoint_for=endpoint_for)
        self.addCleanup(peers.close)
        return peers

    def setUp(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        self.ca = CA(directory, "cluster CA")
        self.stranger = CA(os.path.join(directory, "stranger"), "stranger CA")
        self.node1 = self.ca.issue("node 1", purpose="both", stem="node1")
        self.node2 = self.ca.issue("node 2", purpose="both", stem="node2")
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        return Deferred.fromCoroutine(self.listen(self.node2))

    def node1_tls(self) -> ClientTLS:
        return ClientTLS("rpc client", self.node1.cert, self.node1.key, self.ca.path)

    def refusals(self) -> list[str]:
        """What node 2 logged about the TLS layer refusing a peer."""
        return [e["why"] for e in self.events
                if "closed: TLS" in e.get("log_format", "")]

    async def test_a_node_with_a_certificate_from_the_ca_is_served(self) -> None:
        self.assertTrue(await self.peers(tls=self.node1_tls()).deliver(RECORD, MESSAGE))
        self.assertEqual(self.logic.delivered, [("s-1", MESSAGE)])

    async def test_auth_still_runs_inside_tls(self) -> None:
        await self.server.disconnect_all()
        await self.listen(self.node2, secret=SECRET)
        peers = self.peers(tls=self.node1_tls(), secret=SECRET)
        self.assertTrue(await peers.deliver(RECORD, MESSAGE))
        [proto] = self.server.connections
        self.assertEqual((proto.authenticated, proto.node), (True, 1))

    async def refused(self, endpoint_for: Any) -> PeerUnavailable:
        peers = self.peers(endpoint_for=endpoint_for)
        e = await self.assertFailure(peers.deliver(RECORD, MESSAGE), PeerUnavailable)
        self.assertEqual(self.logic.delivered, [])
        return e

    async def test_a_node_without_a_certificate_is_refused(self) -> None:
        def endpoint(host: str, port: int) -> IStreamClientEndpoint:
            return wrapClientTLS(client_options(host, ca=self.ca.path),
                                 TCP4ClientEndpoint(R, host, port))

        await self.refused(endpoint)
        self.assertEqual(len(self.refusals()), 1)
        self.assertIn("certificate", self.refusals()[0])

    async def test_a_node_with_a_certificate_from_another_ca_is_refused(self) -> None:
        intruder = self.stranger.issue("intruder", purpose="both", stem="intruder")

        def endpoint(host: str, port: int) -> IStreamClientEndpoint:
            options = client_options(host, ca=self.ca.path, cert=intruder.cert, key=intruder.key)
            return wrapClientTLS(options, TCP4ClientEndpoint(R, host, port))

        await self.refused(endpoint)
        self.assertEqual(len(self.refusals()), 1)
        self.assertIn("certificate", self.refusals()[0])

    async def test_plain_tcp_is_refused(self) -> None:
        await self.refused(lambda host, port: TCP4ClientEndpoint(R, host, port))

    async def test_the_client_refuses_a_listener_the_ca_did_not_sign(self) -> None:
        await self.server.disconnect_all()
        await self.listen(self.stranger.issue("impostor", purpose="both", stem="impostor"))
        e = await self.assertFailure(self.peers(tls=self.node1_tls()).deliver(RECORD, MESSAGE),
                                     PeerUnavailable)
        self.assertIn("TLS: certificate verify failed", str(e))
        self.assertEqual(self.logic.delivered, [])
