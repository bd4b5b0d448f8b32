"""Idempotent HTTP pushes across a cluster: two nodes on MySQL (real Redis,
MariaDB and sockets).

What an app server is promised (docs/operations.md §3 and the API's
``Idempotency-Key``): a key names one message for 7 days whichever node its
requests reach. A resend through the other node, the header or a batch
item's ``idempotency_key`` alike, is answered with the first msgid and
stores nothing; the same key sent to both nodes at once is one message too.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from daojia_msg.config import MySQLConfig
from daojia_msg.node import Node
from tests.store.mysql.fixtures import fresh_database, query
from tests.test_cluster import R, TwoNodes

SHARDS = 2
#: Offline recipients: what is stored for them stays pending, to be counted.
UIDS = (71, 72, 73)


class ClusterIdempotencyTests(TwoNodes):
    timeout = 60

    async def asyncSetUp(self) -> None:
        self.url = fresh_database(self)
        await self.start_pair(MySQLConfig(url=self.url, shards=SHARDS, pool_min=1, pool_max=4))
        self.pool = HTTPConnectionPool(R)
        self.addCleanup(self.pool.closeCachedConnections)

    async def post(self, node: Node, path: str, body: Any,
                   key: str | None = None) -> tuple[int, Any]:
        port = int(node.ports["http"].getHost().port)  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}{path}"
        headers = {b"Authorization": [b"Bearer demo-key-1001"]}
        if key is not None:
            headers[b"Idempotency-Key"] = [key.encode()]
        response = await treq.post(url,
                                   data=json.dumps(body).encode(), headers=Headers(headers),
                                   pool=self.pool)
        return response.code, json.loads(await response.text())

    def push(self, node: Node, uid: int, content: str, key: str) -> Deferred[tuple[int, Any]]:
        body = {"to_uid": uid, "to_appcode": 1001, "msgtype": 5, "content": content}
        return Deferred.fromCoroutine(self.post(node, "/v1/push", body, key))

    def stored_for(self, uid: int) -> int:
        return sum(int(query(self.url, f"SELECT COUNT(*) FROM messages_{n} "
                                       f"WHERE to_uid = {uid}")[0][0])
                   for n in range(SHARDS))

    async def test_a_resend_through_the_other_node_is_the_first_message(self) -> None:
        status, first = await self.push(self.node1, UIDS[0], "order 1 offered", "order-1")
        self.assertEqual(status, 200, first)
        status, again = await self.push(self.node2, UIDS[0], "order 1 offered", "order-1")
        self.assertEqual(status, 200, again)
        self.assertEqual((again["msgid"], again["logid"]), (first["msgid"], first["logid"]))
        # A batch item's key is the same key space, through either node.
        status, batch = await self.post(self.node2, "/v1/push/batch", {"messages": [
            {"to_uid": UIDS[0], "to_appcode": 1001, "msgtype": 5,
             "content": "order 1 offered", "idempotency_key": "order-1"}]})
        self.assertEqual(status, 200, batch)
        self.assertEqual(batch["results"][0]["msgid"], first["msgid"])
        # Another key is another message.
        status, other = await self.push(self.node2, UIDS[0], "order 2 offered", "order-2")
        self.assertNotEqual(other["msgid"], first["msgid"])
        self.assertEqual(self.stored_for(UIDS[0]), 2)

    async def test_one_key_sent_to_both_nodes_at_once_is_one_message(self) -> None:
        for round_, uid in enumerate(UIDS[1:]):
            key = f"race-{round_}"
            answers = await gatherResults([self.push(self.node1, uid, "offer", key),
                                           self.push(self.node2, uid, "offer", key)])
            self.assertEqual([status for status, _ in answers], [200, 200], answers)
            self.assertEqual(len({body["msgid"] for _, body in answers}), 1, answers)
            self.assertEqual(self.stored_for(uid), 1)
