"""Two node processes on one Redis and MySQL: GET /v1/nodes lists both, and
GET /v1/trace/{logid} on either shows the path of a C2C that crossed them,
with the events of both nodes (this node's trace buffer, the other's over the
internal RPC), scoped to the key's user system.

Waits on events (a node's "serving" line, a client's login, a message's
arrival); what the nodes publish on a timer (their heartbeats, the ACK's
trace event) is asked again until it shows, within a deadline.
"""

from __future__ import annotations

import re
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from daojia_msg.auth import mint_token
from daojia_msg.chaos.servers import free_ports
from daojia_msg.client.client import MsgClient
from tests.nodes import Inbox
from tests.processes import TWISTD, NodeProcessesTestCase, Watched

R: Any = reactor
SHOP = "Bearer demo-key-1001"
TAXI = "Bearer taxi-key-2001"


class TraceAcrossNodes(NodeProcessesTestCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.pool = HTTPConnectionPool(R, persistent=False)

    def spawn_node(self, i: int, gate: int, http: int, rpc: int) -> Watched:
        argv = [TWISTD, "-n", "--pidfile=", "msgplatform", "--config", self.write_config(
                    f"node{i}", 2, "ops-rpc-secret-0123456789",
                    '[log]\ntrace_buffer = 10000\n[apps.2001]\nusersystem = "taxi"\n'
                    'secret = "taxi-secret-2001"\napi_key = "taxi-key-2001"\n'),
                "--gate", f"tcp:{gate}:interface=127.0.0.1",
                "--http", f"tcp:{http}:interface=127.0.0.1",
                "--rpc", f"tcp:{rpc}:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1"]
        return self.spawn(f"node{i}", argv, b" serving", stop_signal=signal.SIGTERM)

    async def client(self, uid: int, gate: int) -> tuple[MsgClient, Inbox]:
        inbox = Inbox()

        def token() -> str:
            return mint_token("demo-secret-1001", 1001, uid, int(R.seconds()) + 600)

        client = MsgClient(R, TCP4ClientEndpoint(R, "127.0.0.1", gate), uid, 1001, token,
                           on_message=inbox.on_message)
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_ready().addTimeout(30, R)
        return client, inbox

    async def get(self, http: int, path: str, key: str = SHOP) -> tuple[int, Any]:
        response = await treq.get(f"http://127.0.0.1:{http}{path}",
                                  headers={"Authorization": [key]}, pool=self.pool)
        return response.code, await response.json()

    async def until(self, ask: Callable[[], Awaitable[Any]], done: Callable[[Any], bool],
                    within_s: float = 10.0) -> Any:
        """``ask()`` again every 0.2 s until ``done`` says its answer will do."""
        deadline = R.seconds() + within_s
        while True:
            answer = await ask()
            if done(answer) or R.seconds() > deadline:
                return answer
            await deferLater(R, 0.2, lambda: None)

    async def test_trace_of_a_c2c_across_two_nodes(self) -> None:
        gates, https, rpcs = free_ports(2), free_ports(2), free_ports(2)
        nodes = [self.spawn_node(i, gates[i], https[i], rpcs[i]) for i in range(2)]
        lines = await gatherResults([n.ready.addTimeout(60, R) for n in nodes])
        ids = [int(re.search(rb"node (\d+) serving", line).group(1))  # type: ignore[union-attr]
               for line in lines]

        alice, _ = await self.client(1, gates[0])
        _, bob_inbox = await self.client(2, gates[1])
        logid = f"ops-{uuid.uuid4().hex[:8]}"
        result = await alice.c2c(2, 1001, 7, b"across", f"m-{logid}", logid=logid)
        [msg] = await bob_inbox.wait(1)
        self.assertEqual(msg.msgid, result.msgid)

        # The nodes: both, with their gates and (from their next heartbeat) one session each.
        code, answer = await self.until(
            lambda: self.get(https[0], "/v1/nodes"),
            lambda a: [n["sessions"] for n in a[1]["nodes"]] == [1, 1])
        self.assertEqual(code, 200)
        by_id = {n["node_id"]: n for n in answer["nodes"]}
        self.assertEqual(set(by_id), set(ids))
        for i in range(2):
            self.assertEqual(by_id[ids[i]]["gate"], f"127.0.0.1:{gates[i]}")
            self.assertEqual((by_id[ids[i]]["connections"], by_id[ids[i]]["sessions"]), (1, 1))
            self.assertGreater(by_id[ids[i]]["since_ms"], 1_700_000_000_000)

        # The trace, asked on the node that took it in: both nodes' events.
        msgid = str(result.msgid)
        code, trace = await self.until(
            lambda: self.get(https[0], f"/v1/trace/{logid}"),
            lambda a: any("acked" in e["event"] for e in a[1]["events"]))
        self.assertEqual(code, 200)
        self.assertEqual((trace["missing_nodes"], trace["untraced_nodes"], trace["truncated"]),
                         ([], [], False))
        events = trace["events"]
        self.assertEqual({e["node"] for e in events}, set(ids))
        times = [e["ts_ms"] for e in events]
        self.assertEqual(times, sorted(times))
        self.assertTrue(all(e["msgid"] == msgid for e in events), events)
        sender_side = [e["event"] for e in events if e["node"] == ids[0]]
        recipient_side = [e["event"] for e in events if e["node"] == ids[1]]
        self.assertTrue(any("stored" in text for text in sender_side), sender_side)
        self.assertTrue(any("pushed" in text for text in recipient_side), recipient_side)
        self.assertTrue(any("acked" in text for text in recipient_side), recipient_side)
        self.assertEqual({(e["uid"], e["appcode"]) for e in events if "acked" in e["event"]},
                         {("2", 1001)})
        # The other node gathers the same path.
        code, other = await self.get(https[1], f"/v1/trace/{logid}")
        self.assertEqual([(e["node"], e["event"]) for e in other["events"]],
                         [(e["node"], e["event"]) for e in events])
        # Another user system's key sees none of it.
        code, taxi = await self.get(https[0], f"/v1/trace/{logid}", key=TAXI)
        self.assertEqual((code, taxi["events"]), (200, []))
        # A node that stopped is no longer asked; one that does not answer would be missing.
        nodes[1].kill(signal.SIGTERM)
        await nodes[1].ended
        code, alone = await self.until(
            lambda: self.get(https[0], f"/v1/trace/{logid}"),
            lambda a: {e["node"] for e in a[1]["events"]} == {ids[0]})
        self.assertEqual({e["node"] for e in alone["events"]}, {ids[0]})
        self.assertEqual(alone["missing_nodes"], [])
