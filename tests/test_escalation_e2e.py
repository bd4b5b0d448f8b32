"""Offline escalation end to end on one node: a real node (SQLite, demo
apps) whose app 1001 escalates to a twisted.web receiver on loopback. A push
not ACKed within ``escalate_after_s`` arrives there once, signed, and is
counted ``escalated`` in ``GET /v1/stats``; an ACKed one never arrives; a
receiver that fails at first gets it on a retry; one scheduled before a
restart is sent after it (``escalations.db``)."""

from __future__ import annotations

import base64
import dataclasses
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web import server

from daojia_msg.bus.escalation_receiver import EscalationReceiver
from daojia_msg.config import ListenConfig, default_config
from daojia_msg.core.escalation import Escalated
from daojia_msg.logic.escalation import Escalator
from tests.escalations import Receiver
from tests.nodes import NodeTestCase, R

SECRET = "demo-secret-1001"


def escalating(url: str) -> Any:
    """The demo config with app 1001 escalating to ``url``."""
    config = default_config()
    app = dataclasses.replace(config.apps[1001], escalation_url=url)
    return config.replace(apps={**config.apps, 1001: app})


class EscalationNodeTests(NodeTestCase):
    async def start(self, data_dir: str | None = None) -> None:
        if not hasattr(self, "receiver"):
            self.receiver = Receiver()
            self.receiver.listen(self)
        self.data_dir = data_dir or os.path.abspath(self.mktemp())
        config = escalating(self.receiver.url).replace(
            data_dir=self.data_dir,
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                               http="tcp:0:interface=127.0.0.1", ws=""))
        await self.run_node(config)

    def escalator(self) -> Escalator:
        escalator = self.node.logic.sending.escalator
        assert escalator is not None
        return escalator

    async def push(self, uid: int, after_s: int = 1, content: str = "order 7") -> str:
        code, answer = await self.http("POST", "/v1/push", {
            "to_uid": uid, "to_appcode": 1001, "msgtype": 5, "content": content,
            "logid": f"esc-{uid}", "escalate_after_s": after_s})
        self.assertEqual(code, 200, answer)
        return str(answer["msgid"])

    async def test_an_unacked_push_is_escalated_once_signed_and_counted(self) -> None:
        await self.start()
        online, inbox = await self.client(7)
        acked = await self.push(7)
        [msg] = await inbox.wait(1)
        await online.ack([msg.msgid])
        missed = await self.push(8, content="订单 7")  # offline
        await self.receiver.wait(1)
        [body] = self.receiver.bodies(SECRET)
        self.assertEqual(body, {"msgid": missed, "logid": "esc-8", "to_uid": 8,
                                "to_appcode": 1001, "msgtype": 5,
                                "content_b64": base64.b64encode("订单 7".encode()).decode()})
        self.assertNotEqual(acked, missed)
        await self.escalator().settled()
        code, stats = await self.http("GET", "/v1/stats")
        self.assertEqual(code, 200)
        self.assertEqual(stats["totals"]["escalated"], 1)
        [route] = [r for r in stats["by_route"] if (r["msgtype"], r["kind"]) == (5, "S2C")]
        self.assertEqual(route["escalated"], 1)
        # The ACKed one was found delivered at its due time; the other was POSTed.
        self.assertEqual(self.escalator().counts["cancelled"], 1)
        self.assertEqual(len(self.receiver.requests), 1)
        code, trace = await self.http("GET", "/v1/trace/esc-8")
        self.assertEqual(code, 200)
        self.assertTrue(any(e["event"].startswith(f"escalated {missed} to http://127.0.0.1:")
                            and e["uid"] == "8" for e in trace["events"]), trace)
        code, answer = await self.http("POST", "/v1/push", {
            "to_uid": 8, "to_appcode": 1002, "msgtype": 5, "content": "x",
            "escalate_after_s": 1})
        self.assertEqual(code, 400)
        self.assertIn("escalation_url", answer["error"])

    async def test_a_failing_receiver_gets_it_on_a_retry(self) -> None:
        await self.start()
        self.receiver.status = 503
        msgid = await self.push(9)
        await self.receiver.wait(1)
        self.receiver.status = 200
        await self.receiver.wait(2)  # after a backoff of 0.5 to 1 s
        bodies = self.receiver.bodies(SECRET)
        self.assertEqual([b["msgid"] for b in bodies], [msgid, msgid])
        await self.escalator().settled()
        self.assertEqual(self.escalator().counts, {"posted": 1, "failed": 1, "gave_up": 0,
                                                   "cancelled": 0})

    async def test_an_escalation_outlives_a_restart(self) -> None:
        """On one node the schedule is escalations.db in the data dir."""
        await self.start()
        msgid = await self.push(11, after_s=2)
        await self.stop_node(self.node)
        self.assertEqual(self.receiver.requests, [])
        await self.start(self.data_dir)
        await self.receiver.wait(1)
        self.assertEqual([b["msgid"] for b in self.receiver.bodies(SECRET)], [msgid])

    async def test_an_app_servers_receiver_checks_and_hands_it_over(self) -> None:
        """The node's POST through :class:`EscalationReceiver`, as an app server runs it."""
        got: list[Escalated] = []
        arrived: Deferred[None] = Deferred()

        def handle(escalated: Escalated) -> None:
            got.append(escalated)
            arrived.callback(None)

        site = server.Site(EscalationReceiver({1001: SECRET}, handle))
        site.noisy = False
        port = R.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.receiver = Receiver()
        self.receiver.url = f"http://127.0.0.1:{port.getHost().port}/esc"
        await self.start()
        msgid = await self.push(12, content="order 12")
        await arrived.addTimeout(15, R)
        self.assertEqual(got, [Escalated(int(msgid), "esc-12", 12, 1001, 5, b"order 12")])
        await self.escalator().settled()
        self.assertEqual(self.escalator().counts["posted"], 1)
