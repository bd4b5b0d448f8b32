"""A real node on ``tcp:0`` for end-to-end tests, and a client's inbox.

The tests built on :class:`NodeTestCase` use the real reactor and wait only on
Deferreds that the events themselves fire (no sleeps, no polling).
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.client.client import MsgClient
from daojia_msg.config import Config, ListenConfig, default_config
from daojia_msg.node import Node
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

R: Any = reactor


class Inbox:
    """Messages a client received, and Deferreds fired when the n-th arrives."""

    def __init__(self) -> None:
        self.messages: list[pb.Message] = []
        self._waiters: list[tuple[int, Deferred[list[pb.Message]]]] = []
        self.kicks: list[int] = []
        self.kicked: Deferred[int] = Deferred()

    def on_message(self, msg: pb.Message) -> None:
        self.messages.append(msg)
        for n, d in list(self._waiters):
            if len(self.messages) >= n:
                self._waiters.remove((n, d))
                d.callback(self.messages[:n])

    def on_kickout(self, reason_code: int, reason: str) -> None:
        self.kicks.append(reason_code)
        if not self.kicked.called:
            self.kicked.callback(reason_code)

    def wait(self, n: int) -> Deferred[list[pb.Message]]:
        d: Deferred[list[pb.Message]] = Deferred()
        if len(self.messages) >= n:
            d.callback(self.messages[:n])
        else:
            self._waiters.append((n, d))
        return d.addTimeout(10, R)


class NodeTestCase(TestCase):
    async def start_node(self, data_dir: str | None = None) -> Node:
        self.data_dir = data_dir or os.path.abspath(self.mktemp())
        config = default_config().replace(
            data_dir=self.data_dir,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                               http="tcp:0:interface=127.0.0.1"),
        )
        return await self.run_node(config)

    async def run_node(self, config: Config) -> Node:
        """A node of ``config``, started and ready, stopped at cleanup."""
        node = Node(config, R)
        node.startService()
        self.addCleanup(self.stop_node, node)
        await node.ready
        self.node = node
        return node

    async def stop_node(self, node: Node) -> None:
        if node.running:
            await node.stopService()

    def port(self, name: str) -> int:
        return int(self.node.ports[name].getHost().port)  # type: ignore[attr-defined]

    async def client(self, uid: int, appcode: int = 1001) -> tuple[MsgClient, Inbox]:
        inbox = Inbox()
        endpoint = TCP4ClientEndpoint(R, "127.0.0.1", self.port("gate"))

        def token() -> str:
            return mint_token(f"demo-secret-{appcode}", appcode, uid, int(R.seconds()) + 600)

        client = MsgClient(R, endpoint, uid, appcode, token, on_message=inbox.on_message,
                           on_kickout=inbox.on_kickout)
        drained = client.when_drained()  # nothing races the login's PULL
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_ready()
        await drained.addTimeout(10, R)
        return client, inbox

    async def http(self, method: str, path: str, body: object = None,
                   key: str | None = "demo-key-1001") -> tuple[int, Any]:
        headers = {"Authorization": [f"Bearer {key}"]} if key else {}
        url = f"http://127.0.0.1:{self.port('http')}{path}"
        data = json.dumps(body).encode() if body is not None else None
        if not hasattr(self, "pool"):
            self.pool = HTTPConnectionPool(R)
            self.addCleanup(self.pool.closeCachedConnections)  # runs before the node stops
        response = await treq.request(method, url, data=data, headers=headers, pool=self.pool)
        text = await response.text()
        return response.code, json.loads(text) if text else None
