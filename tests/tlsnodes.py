"""A real node whose gate and HTTP API are TLS (``ssl:0``) with throw-away
certificates, and clients that verify them, for the TLS end-to-end tests."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import quoteStringArgument
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.client import MsgClient, MsgClientProtocol, gate_endpoint
from daojia_msg.config import ListenConfig, default_config
from daojia_msg.node import Node
from daojia_msg.tls import trust_root
from tests.nodes import Inbox, NodeTestCase
from tests.tlscerts import CA, Issued

R: Any = reactor


def ssl_description(issued: Issued, port: int = 0) -> str:
    return (f"ssl:{port}:interface=127.0.0.1:privateKey={quoteStringArgument(issued.key)}"
            f":certKey={quoteStringArgument(issued.cert)}")


class TLSNodeTestCase(NodeTestCase):
    """A node with a TLS gate and a TLS HTTP API, signed by ``self.ca``;
    ``self.other_ca`` signed nothing the node holds."""

    async def start_tls_node(self) -> Node:
        self.tls_dir = os.path.abspath(self.mktemp())
        self.ca = CA(self.tls_dir)
        self.other_ca = CA(os.path.join(self.tls_dir, "other"), "another CA")
        self.server = self.ca.issue("msgplatform node", stem="server")
        self.data_dir = os.path.abspath(self.mktemp())
        config = default_config().replace(
            data_dir=self.data_dir,
            listen=ListenConfig(gate=ssl_description(self.server),
                                http=ssl_description(self.server)))
        return await self.run_node(config)

    def token(self, uid: int, appcode: int = 1001) -> str:
        return mint_token(f"demo-secret-{appcode}", appcode, uid, int(R.seconds()) + 600)

    async def tls_client(self, uid: int, ca: str | None = None,
                         appcode: int = 1001) -> tuple[MsgClient, Inbox]:
        """A logged-in client over TLS that trusts ``ca`` (default: the node's CA)."""
        inbox = Inbox()
        endpoint = gate_endpoint(R, "127.0.0.1", self.port("gate"), tls=True,
                                 ca=ca or self.ca.path)
        client = MsgClient(R, endpoint, uid, appcode, lambda: self.token(uid, appcode),
                           on_message=inbox.on_message, on_kickout=inbox.on_kickout)
        drained = client.when_drained()
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_ready().addTimeout(10, R)
        await drained.addTimeout(10, R)
        return client, inbox

    async def presented(self, client: MsgClient) -> str:
        """The common name of the certificate the node showed ``client``."""
        proto: MsgClientProtocol = await client.when_ready()
        transport: Any = proto.transport
        return str(transport.getPeerCertificate().get_subject().CN)

    async def https(self, method: str, path: str, body: object = None,
                    key: str = "demo-key-1001") -> tuple[int, Any]:
        """A request to the TLS HTTP API with treq, trusting the node's CA."""
        import treq

        if not hasattr(self, "https_pool"):
            self.https_pool = HTTPConnectionPool(R)
            self.addCleanup(self.https_pool.closeCachedConnections)
        agent = Agent(R, contextFactory=BrowserLikePolicyForHTTPS(trust_root(self.ca.path)),
                      pool=self.https_pool)
        client = treq.client.HTTPClient(agent)
        response = await client.request(
            method, f"https://127.0.0.1:{self.port('http')}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": [f"Bearer {key}"]})
        text = await response.text()
        return response.code, json.loads(text) if text else None
