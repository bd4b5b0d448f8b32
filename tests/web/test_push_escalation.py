"""``escalate_after_s`` on POST /v1/push and batch items (docs/openapi.yaml):
an integer from 1 to 3,600 for an app that has an ``escalation_url``, else
400; an accepted push is scheduled (daojia_msg.logic.escalation)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from daojia_msg.config import parse_config
from daojia_msg.logic.escalation import Escalator
from daojia_msg.logic.interfaces import IEscalationPoster
from daojia_msg.store.escalations import MemoryEscalations
from tests.web.helpers import SHOP, TWO_SYSTEMS, ApiTestCase, Client, Response, push_body

ESCALATING = TWO_SYSTEMS.replace(
    'api_key = "key-1001"\n', 'api_key = "key-1001"\nescalation_url = "https://shop.example/esc"\n')


@implementer(IEscalationPoster)
class NoPoster:
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        raise AssertionError("nothing is due in these tests")

    def stop(self) -> Deferred[None]:
        return succeed(None)


class PushEscalationTests(ApiTestCase):
    def setUp(self) -> None:
        self.build(parse_config(ESCALATING))
        self.schedule = MemoryEscalations()
        self.escalator = Escalator(self.logic.ctx, self.schedule, self.store, NoPoster())
        self.logic.sending.escalator = self.escalator

    def request(self, method: str, path: str, body: object = None,
                headers: dict[str, str] | None = None, peer: str = "127.0.0.1") -> Response:
        """As the base's, the reactor turn run to its end (the escalations of
        the turn are written then, before the answer)."""
        client = Client(self.site, peer)
        client.send(method, path, json.dumps(body).encode(), headers)
        self.node.clock.advance(0)
        return client.response()

    def test_accepted_and_scheduled(self) -> None:
        now_ms = int(self.node.clock.seconds() * 1000)
        response = self.push(push_body(escalate_after_s=30))
        self.assertEqual(response.status, 200, response.body)
        msgid = int(response.json()["msgid"])
        self.assertEqual(len(self.schedule), 1)
        [claim] = self.successResultOf(self.schedule.claim(now_ms + 30_000, 1000, 10, "t"))
        self.assertEqual((claim.msgid, claim.to_uid, claim.to_appcode, claim.first_due_ms),
                         (msgid, 42, 1001, now_ms + 30_000))

    def test_bounds(self) -> None:
        for good in (1, 3600):
            self.assertEqual(self.push(push_body(escalate_after_s=good)).status, 200)
        for bad in (0, -1, 3601, 1.5, "10", True, [], {}):
            with self.subTest(bad=bad):
                self.assertError(self.push(push_body(escalate_after_s=bad)), 400,
                                 "escalate_after_s")
        self.assertEqual(len(self.schedule), 2)

    def test_null_is_absent(self) -> None:
        self.assertEqual(self.push(push_body(escalate_after_s=None)).status, 200)
        self.assertEqual(len(self.schedule), 0)

    def test_an_app_without_escalation_url_is_400(self) -> None:
        error = self.assertError(self.push(push_body(to_appcode=1002, escalate_after_s=10)),
                                 400, "escalation_url")
        self.assertIn("1002", error)
        self.assertEqual(self.store.batches, [])

    def test_batch_items(self) -> None:
        messages: list[dict[str, Any]] = [
            push_body(to_uid=1, escalate_after_s=60),
            push_body(to_uid=2, escalate_after_s=0),
            push_body(to_uid=3, to_appcode=1002, escalate_after_s=60),
            push_body(to_uid=4),
        ]
        response = self.request("POST", "/v1/push/batch", {"messages": messages}, SHOP)
        self.assertEqual(response.status, 200)
        results = response.json()["results"]
        self.assertIn("msgid", results[0])
        self.assertEqual(results[1]["code"], 1)
        self.assertIn("escalate_after_s", results[1]["error"])
        self.assertEqual(results[2]["code"], 1)
        self.assertIn("escalation_url", results[2]["error"])
        self.assertIn("msgid", results[3])
        self.assertEqual(len(self.schedule), 1)
