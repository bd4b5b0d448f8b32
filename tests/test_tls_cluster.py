"""Two nodes in one process whose internal RPC is mutual TLS (cluster.rpc_tls_*),
sharing real Redis: a chat across them goes over the TLS RPC; a node whose
certificate another CA signed cannot hand the other one a push (it stays
pending for PULL)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from daojia_msg.config import ClusterConfig, ListenConfig, RedisConfig, default_config
from daojia_msg.node import Node
from tests.nodes import Inbox, NodeTestCase, R
from tests.servers import redis_prefix, require_redis
from tests.tlscerts import CA, Issued


class MutualTLSClusterTests(NodeTestCase):
    def setUp(self) -> Any:
        self.redis_url = require_redis()
        self.prefix = redis_prefix(self)
        directory = os.path.abspath(self.mktemp())
        self.ca = CA(directory, "cluster CA")
        self.data = os.path.abspath(self.mktemp())
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def asyncSetUp(self) -> None:
        self.node1 = await self.start_cluster_node(self.ca.issue("node 1", purpose="both",
                                                                  stem="node1"))

    async def start_cluster_node(self, issued: Issued, ca: CA | None = None) -> Node:
        config = default_config().replace(
            data_dir=self.data,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                http="tcp:0:interface=127.0.0.1",
                                rpc="tcp:0:interface=127.0.0.1"),
            redis=RedisConfig(url=self.redis_url, key_prefix=self.prefix, reply_timeout_s=2.0),
            cluster=ClusterConfig(heartbeat_s=0.5, ttl_s=1.5, rpc_timeout_s=2.0,
                                  drain_grace_s=0.0, rpc_tls_cert=issued.cert,
                                  rpc_tls_key=issued.key, rpc_tls_ca=(ca or self.ca).path))
        node = Node(config, R)
        node.startService()
        self.addCleanup(self.stop_node, node)
        await node.ready
        return node

    async def client_on(self, node: Node, uid: int) -> tuple[Any, Inbox]:
        self.node = node
        return await self.client(uid)

    async def test_a_chat_across_the_nodes_goes_over_mutual_tls(self) -> None:
        node2 = await self.start_cluster_node(self.ca.issue("node 2", purpose="both",
                                                             stem="node2"))
        alice, _ = await self.client_on(self.node1, 1)
        _, bob_inbox = await self.client_on(node2, 2)
        result = await alice.c2c(2, 1001, 7, b"across mutual TLS")
        [msg] = await bob_inbox.wait(1)
        self.assertEqual((msg.msgid, msg.content), (result.msgid, b"across mutual TLS"))
        assert node2.rpc is not None
        [link] = node2.rpc.connections
        transport: Any = link.transport
        self.assertEqual(transport.getPeerCertificate().get_subject().CN, "node 1")
        self.assertEqual(node2.reload_tls(), 2)  # its listener and its client

    async def test_a_node_from_another_ca_cannot_push_to_this_one(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        stranger = CA(os.path.join(self.data, "stranger"), "stranger CA")
        node2 = await self.start_cluster_node(
            stranger.issue("node 2", purpose="both", stem="node2"), stranger)
        alice, alice_inbox = await self.client_on(self.node1, 1)
        bob, _ = await self.client_on(node2, 2)
        result = await bob.c2c(1, 1001, 7, b"refused at the door")
        page = await alice.pull()
        self.assertEqual([m.msgid for m in page.messages], [result.msgid])  # pending
        self.assertEqual(alice_inbox.messages, [])
        refused = [e for e in events if "closed: TLS" in e.get("log_format", "")]
        self.assertTrue(refused, "node 1's TLS layer refused node 2")
