"""Admission control of the HTTP API: at most ``limits.http_max_inflight``
pushes in work at once; the rest get 429 with Retry-After at once
(docs/openapi.yaml)."""

from __future__ import annotations

import json

from tests.web.helpers import SHOP, ApiTestCase, Client, parse_response, push_body, two_systems


class HttpAdmissionTests(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.build(two_systems(http_max_inflight=2))

    def send(self, path: str, body: object) -> Client:
        client = Client(self.site)
        client.send("POST", path, json.dumps(body).encode(), SHOP)
        return client

    def test_past_the_bound_429_at_once_then_admitted_again(self) -> None:
        self.store.hold = True
        first = self.send("/v1/push", push_body())
        second = self.send("/v1/push/batch", {"messages": [push_body(to_uid=2)]})
        third = self.send("/v1/push", push_body(to_uid=3))
        refused = parse_response(third.transport.value())
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.headers.get("retry-after"), "1")
        self.assertIn("over capacity", refused.json()["error"])
        self.assertEqual((first.transport.value(), second.transport.value()), (b"", b""))
        # Other endpoints are not bounded.
        self.assertEqual(self.request("GET", "/healthz").status, 200)
        self.store.release()
        self.assertEqual(parse_response(first.transport.value()).status, 200)
        self.assertEqual(parse_response(second.transport.value()).status, 200)
        api = self.site.resource.children[b"v1"].children[b"push"].api  # type: ignore[attr-defined]
        self.assertEqual((api.admission.inflight, api.admission.refused), (0, 1))
        self.store.hold = False
        self.assertEqual(self.push(push_body(to_uid=4)).status, 200)

    def test_slow_pushes_lower_the_bound_in_force(self) -> None:
        """Pushes answered later than limits.admission_target_ms lower the
        bound (here from 1,000: a push held 0.4 s against 100 ms halves it)."""
        self.build(two_systems(http_max_inflight=1000, admission_target_ms=100.0))
        api = self.site.resource.children[b"v1"].children[b"push"].api  # type: ignore[attr-defined]
        self.store.hold = True
        held = self.send("/v1/push", push_body())
        self.node.clock.advance(0.4)
        self.store.release()
        self.assertEqual(parse_response(held.transport.value()).status, 200)
        self.assertEqual(api.admission.limit, 500)

    def test_a_failed_push_frees_its_place(self) -> None:
        for _ in range(3):
            self.assertEqual(self.push(push_body(to_uid=0)).status, 400)
        self.assertEqual(self.push(push_body()).status, 200)

    def test_zero_is_no_bound(self) -> None:
        self.build(two_systems(http_max_inflight=0))
        self.store.hold = True
        clients = [self.send("/v1/push", push_body(to_uid=n)) for n in range(1, 6)]
        self.assertTrue(all(c.transport.value() == b"" for c in clients))
        self.store.release()
        self.assertTrue(all(parse_response(c.transport.value()).status == 200 for c in clients))
