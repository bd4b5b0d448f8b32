"""Offline escalation on two nodes sharing Redis and one message store: each
message not ACKed in time is POSTed once across the cluster (both nodes
claim from the same schedule), an ACK on the other node cancels it, and an
escalation whose node died while POSTing it is POSTed by the other node
once its claim's lease ran out."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList

from daojia_msg.logic import escalation
from daojia_msg.logic.escalation import Escalator
from daojia_msg.node import Node
from daojia_msg.store.escalations import RedisEscalations
from tests import test_cluster
from tests.escalations import Receiver
from tests.test_cluster import TwoNodes
from tests.test_escalation_e2e import SECRET, escalating


class ClusterEscalationTests(TwoNodes):
    async def asyncSetUp(self) -> None:
        self.receiver = Receiver()
        config = escalating(self.receiver.listen(self))
        self.patch(test_cluster, "default_config", lambda: config)
        await super().asyncSetUp()

    def escalator(self, node: Node) -> Escalator:
        escalator = node.logic.sending.escalator
        assert escalator is not None
        assert isinstance(escalator.schedule_store, RedisEscalations)
        return escalator

    async def push(self, node: Node, uid: int, after_s: int = 1) -> str:
        self.node = node
        code, answer = await self.http("POST", "/v1/push", {
            "to_uid": uid, "to_appcode": 1001, "msgtype": 5, "content": f"order for {uid}",
            "escalate_after_s": after_s})
        self.assertEqual(code, 200, answer)
        return str(answer["msgid"])

    async def settled(self) -> None:
        await DeferredList([self.escalator(n).settled() for n in (self.node1, self.node2)])

    async def test_one_post_per_message_across_the_cluster(self) -> None:
        msgids = []
        for uid in range(1, 21):  # pushed on both nodes
            msgids.append(await self.push(self.node1 if uid % 2 else self.node2, uid))
        acker, inbox = await self.client_on(self.node2, 100)
        acked = await self.push(self.node1, 100)  # ACKed on node 2
        [msg] = await inbox.wait(1)
        await acker.ack([msg.msgid])
        await self.receiver.wait(20)
        # One more poll of each node after the last due time: nothing comes again.
        last = await self.push(self.node1, 21)
        await self.receiver.wait(21)
        await self.settled()
        posted = [b["msgid"] for b in self.receiver.bodies(SECRET)]
        self.assertEqual(sorted(posted), sorted([*msgids, last]))
        self.assertNotIn(acked, posted)
        counts = [self.escalator(n).counts for n in (self.node1, self.node2)]
        self.assertEqual(sum(c["posted"] for c in counts), 21)
        self.assertEqual(sum(c["cancelled"] for c in counts), 1)
        assert self.node1.stats_flusher is not None and self.node2.stats_flusher is not None
        await self.node1.stats_flusher.flush()
        await self.node2.stats_flusher.flush()
        self.node = self.node1
        code, stats = await self.http("GET", "/v1/stats")
        self.assertEqual(stats["totals"]["escalated"], 21)

    async def test_the_escalation_of_a_node_that_died_posting_is_sent_by_the_other(self) -> None:
        self.patch(escalation, "LEASE_S", 3.0)
        self.patch(escalation, "LEASE_MARGIN_S", 1.0)
        self.receiver.hang = True  # the first POST never answers: its node dies in it
        msgid = await self.push(self.node1, 5)
        await self.receiver.wait(1)
        dying = next(n for n in (self.node1, self.node2) if self.escalator(n)._working)
        survivor = self.node2 if dying is self.node1 else self.node1
        self.receiver.hang = False
        await self.stop_node(dying)  # its claim is left in Redis, as a dead node's
        await self.receiver.wait(2)  # the lease (3 s) ran out: the survivor claims it
        await self.escalator(survivor).settled()
        self.assertEqual([b["msgid"] for b in self.receiver.bodies(SECRET)], [msgid, msgid])
        self.assertEqual(self.escalator(survivor).counts["posted"], 1)
        redis: Any = survivor.redis
        self.assertEqual(await redis.call("ZCARD", redis.key("esc", "due")), 0)
