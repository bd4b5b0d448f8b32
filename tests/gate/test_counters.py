"""What the gate counts for /metrics, on a real node: LOGINs by result,
KICKOUTs by reason, refused answers by code, connections by transport."""

from __future__ import annotations

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.client import HTTPConnectionPool

from daojia_msg.client.errors import ResultError
from daojia_msg.protocol.codes import Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.gate.wshelpers import WSNodeTestCase
from tests.nodes import R


class GateCounterTests(WSNodeTestCase):
    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        text = await response.text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    async def test_logins_kickouts_refusals_and_transports(self) -> None:
        await self.start_node()
        before = await self.scrape()
        self.assertEqual(before[("msgplatform_logins_total", (("result", "ok"),))], 0)
        self.assertEqual(before[("msgplatform_gate_connections", (("transport", "tcp"),))], 0)

        await self.client(7)                               # LOGIN OK over TCP
        browser = await self.ws()
        self.assertEqual((await browser.login(8)).code, Code.OK)  # and over WebSocket
        forged = await self.ws()
        answer = await forged.login(9, token="4102444800:" + "0" * 64)
        self.assertEqual(answer.code, Code.UNAUTHORIZED)
        again, _ = await self.client(7)                    # kicks the first phone session
        try:
            await again.c2c(7, 1001, 5, b"to myself")      # BAD_REQUEST
        except ResultError as e:
            self.assertEqual(e.code, Code.BAD_REQUEST)
        else:
            self.fail("a C2C to oneself was taken")
        ack = await browser.request(0x08, 1001, 8, pb.Ack(msgids=[1]).SerializeToString())
        self.assertEqual(pb.Result.FromString(ack.body).code, Code.OK)  # OK: not counted

        after = await self.scrape()

        def delta(name: str, label: str, value: str) -> float:
            key = (name, ((label, value),))
            return after[key] - before.get(key, 0)

        self.assertGreaterEqual(delta("msgplatform_logins_total", "result", "ok"), 3)
        self.assertEqual(delta("msgplatform_logins_total", "result", "unauthorized"), 1)
        self.assertGreaterEqual(delta("msgplatform_kickouts_total", "reason", "login_elsewhere"), 1)
        self.assertEqual(delta("msgplatform_frames_refused_total", "code", "unauthorized"), 1)
        self.assertEqual(delta("msgplatform_frames_refused_total", "code", "bad_request"), 1)
        self.assertEqual(delta("msgplatform_frames_refused_total", "code", "rate_limited"), 0)
        self.assertGreaterEqual(delta("msgplatform_requests_total", "cmd", "login"), 4)
        self.assertEqual(delta("msgplatform_requests_total", "cmd", "c2c"), 1)
        self.assertEqual(delta("msgplatform_requests_total", "cmd", "ack"), 1)
        for direction in ("received", "sent"):
            key = (f"msgplatform_gate_bytes_{direction}_total", ())
            self.assertGreater(after[key] - before[key], 32 * 6)  # six frames at least
        transports = {t: after[("msgplatform_gate_connections", (("transport", t),))]
                      for t in ("tcp", "tls", "websocket")}
        self.assertEqual(transports["websocket"], 2)
        self.assertEqual(transports["tls"], 0)
        self.assertGreaterEqual(transports["tcp"], 1)
        self.assertEqual(sum(transports.values()),
                         after[("msgplatform_connections", ())])
