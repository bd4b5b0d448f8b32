"""Three node processes behind HAProxy on loopback, sharing Redis and MySQL.

Users spread over the nodes chat; one node is killed with SIGKILL mid-stream;
its users reconnect through HAProxy and PULL. Every message the platform
acknowledged arrives, exactly once after de-duplication by msgid, and nothing
that was not acknowledged arrives.

Everything waits on events (a node's "serving" line, a client's login, the
arrival of the last expected message), each with a deadline; nothing sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections import defaultdict
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.chaos.servers import free_ports, haproxy_config
from daojia_msg.client.client import MsgClient
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.tracing import read_trace
from tests.processes import TWISTD, NodeProcessesTestCase
from tests.servers import require_haproxy

R: Any = reactor
USERS = 6
PER_SENDER = 25
KILL_AFTER = 40  # acknowledged messages before the SIGKILL


class Received:
    """What one user received (by msgid), and a Deferred for an expected set."""

    def __init__(self) -> None:
        self.msgids: dict[int, bytes] = {}
        self.deliveries = 0
        self._want: tuple[set[int], Deferred[None]] | None = None

    def on_message(self, msg: pb.Message) -> None:
        self.deliveries += 1
        self.msgids[msg.msgid] = msg.content
        self._check()

    def wait_for(self, expected: set[int]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._want = (expected, d)
        self._check()
        return d

    def _check(self) -> None:
        if self._want is not None and self._want[0] <= self.msgids.keys():
            _, d = self._want
            self._want = None
            d.callback(None)


class ThreeNodesBehindHAProxy(NodeProcessesTestCase):
    timeout = 240

    def setUp(self) -> None:
        super().setUp()
        self.haproxy = require_haproxy()

    def write_haproxy(self, front: int, gates: list[int], https: list[int]) -> str:
        path = os.path.join(self.dir, "haproxy.cfg")
        [api] = free_ports(1)
        with open(path, "w") as f:
            f.write(haproxy_config(front, api, list(zip(gates, https, strict=True))))
        return path

    async def test_sigkill_mid_stream(self) -> None:
        front, *ports = free_ports(10)
        gates, https, rpcs = ports[0:3], ports[3:6], ports[6:9]
        nodes = []
        for i in range(3):
            nodes.append(self.spawn(f"node{i}", [
                TWISTD, "-n", "--pidfile=", "msgplatform", "--config", self.write_config(
                    f"node{i}", 4, "e2e-rpc-secret-0123456789",
                    f'[log]\njson_file = "{self.dir}/node{i}.json"\n[limits]\nack_timeout_s = 2.0\n'),
                "--gate", f"haproxy:tcp:{gates[i]}:interface=127.0.0.1",
                "--http", f"tcp:{https[i]}:interface=127.0.0.1",
                "--rpc", f"tcp:{rpcs[i]}:interface=127.0.0.1",
                "--ws", "tcp:0:interface=127.0.0.1",
            ], b" serving"))
        lines = await gatherResults([n.ready.addTimeout(60, R) for n in nodes])
        node_ids = [int(re.search(rb"node (\d+) serving", line).group(1))  # type: ignore[union-attr]
                    for line in lines]
        self.spawn("haproxy", [self.haproxy, "-db", "-f", self.write_haproxy(front, gates, https)],
                   None)

        received = {uid: Received() for uid in range(1, USERS + 1)}
        clients: dict[int, MsgClient] = {}
        for uid in received:
            def token(uid: int = uid) -> str:
                return mint_token("demo-secret-1001", 1001, uid, int(R.seconds()) + 600)

            client = MsgClient(R, TCP4ClientEndpoint(R, "127.0.0.1", front), uid, 1001, token,
                               on_message=received[uid].on_message, send_retries=0)
            client.startService()
            self.addCleanup(client.stopService)
            clients[uid] = client
        await gatherResults([c.when_ready().addTimeout(30, R) for c in clients.values()])

        pool = HTTPConnectionPool(R, persistent=False)

        async def where(http_port: int) -> dict[int, int]:
            """uid -> the node of its session (any node's HTTP API sees them all)."""
            found = {}
            for uid in received:
                response = await treq.get(
                    f"http://127.0.0.1:{http_port}/v1/sessions?uid={uid}",
                    headers={"Authorization": ["Bearer demo-key-1001"]}, pool=pool)
                [session] = (await response.json())["sessions"]
                found[uid] = session["node"]
            return found

        before = await where(https[0])
        self.assertGreaterEqual(len(set(before.values())), 2, before)  # spread over the nodes
        victim_id = before[1]
        victim = nodes[node_ids.index(victim_id)]

        acknowledged: dict[int, set[int]] = defaultdict(set)
        count = [0]

        async def send_all(sender: int) -> None:
            to = sender % USERS + 1
            for k in range(PER_SENDER):
                client_msg_id = f"{sender}-{k}-{uuid.uuid4().hex}"
                for _ in range(30):
                    try:
                        result = await clients[sender].c2c(
                            to, 1001, 7, b"%d->%d #%d" % (sender, to, k), client_msg_id,
                            logid=f"e2e-{sender}-{k}",
                        ).addTimeout(5, R)
                    except Exception:
                        await clients[sender].when_ready().addTimeout(30, R)
                        continue
                    acknowledged[to].add(result.msgid)
                    count[0] += 1
                    if count[0] == KILL_AFTER:
                        victim.kill(signal.SIGKILL)
                    break
                else:
                    self.fail(f"user {sender} could not send message {k}")

        await gatherResults([Deferred.fromCoroutine(send_all(u)) for u in received])
        self.assertTrue(victim.ended.called, "the victim was not killed mid-stream")
        self.assertIn(count[0], range(USERS * PER_SENDER, USERS * PER_SENDER + 1))

        # Everybody gets everything acknowledged to them (pushed, or pulled after
        # reconnecting), exactly once by msgid, and nothing else.
        await gatherResults([received[uid].wait_for(acknowledged[uid]).addTimeout(60, R)
                             for uid in received])
        for uid, got in received.items():
            self.assertEqual(set(got.msgids), acknowledged[uid], f"user {uid}")
            contents = list(got.msgids.values())
            self.assertEqual(len(contents), len(set(contents)), f"user {uid}: stored twice")
            self.assertEqual(len(contents), PER_SENDER)
        # One search by logid shows a message's path across the nodes' JSON logs.
        # (In a ring over two or more nodes some neighbours sit on different
        # nodes; their first message went before the SIGKILL.)
        crossing = next(u for u in received if before[u] != before[u % USERS + 1])
        trace = read_trace(f"e2e-{crossing}-0",
                           [os.path.join(self.dir, f"node{i}.json") for i in range(3)])
        self.assertEqual({e["node"] for e in trace},
                         {before[crossing], before[crossing % USERS + 1]})
        times = [e["log_time"] for e in trace]
        self.assertEqual(times, sorted(times))
        texts = " | ".join(e["log_format"] for e in trace)
        for step in ("stored", "pushed", "acked"):
            self.assertIn(step, texts)
        # The victim's users reconnected through HAProxy to the other nodes.
        survivor = https[(node_ids.index(victim_id) + 1) % 3]
        after = await where(survivor)
        moved = [uid for uid, node in before.items() if node == victim_id]
        self.assertTrue(moved)
        self.assertNotIn(victim_id, after.values())
