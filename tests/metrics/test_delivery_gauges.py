"""Messages in flight on /metrics: pushes awaiting their ACK, by kind."""

from __future__ import annotations

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.client import HTTPConnectionPool

from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.gate.wshelpers import WSNodeTestCase
from tests.nodes import R


class UnackedTests(WSNodeTestCase):
    async def unacked(self) -> dict[str, float]:
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        samples = [s for family in text_string_to_metric_families(await response.text())
                   for s in family.samples]
        found = {s.labels["kind"]: s.value for s in samples
                 if s.name == "msgplatform_messages_unacked"}
        found["retries"] = next(s.value for s in samples
                                if s.name == "msgplatform_delivery_retries_waiting")
        return found

    async def test_pushes_awaiting_their_ack(self) -> None:
        await self.start_node()
        recipient = await self.ws()  # a raw client: it ACKs only when told
        self.assertEqual((await recipient.login(8)).code, Code.OK)
        sender, _ = await self.client(7)
        pushed = recipient.wait_for(Cmd.C2C)
        await sender.c2c(8, 1001, 5, b"one")
        message = pb.Message.FromString((await pushed).body)
        pushed = recipient.wait_for(Cmd.S2C)
        await self.http("POST", "/v1/push", {"to_uid": 8, "to_appcode": 1001, "msgtype": 5,
                                             "content": "two"})
        await pushed
        self.assertEqual(await self.unacked(), {"C2C": 1, "S2C": 1, "retries": 0})
        ack = pb.Ack(msgids=[message.msgid]).SerializeToString()
        answer = await recipient.request(Cmd.ACK, 1001, 8, ack)
        self.assertEqual(pb.Result.FromString(answer.body).code, Code.OK)
        self.assertEqual(await self.unacked(), {"C2C": 0, "S2C": 1, "retries": 0})
