"""``POST /v1/offers`` and ``GET /v1/offers/{offer_id}``: every field and
limit checked (400 naming it), the key's user system only, the answers'
shapes, and an offer followed from open to accepted."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from daojia_msg.config import OffersConfig, parse_config
from tests.web.helpers import SHOP, TAXI, ApiTestCase, Response, two_systems
from tests.web.test_nearby import GEO_ROUTES, LAT, LON


def body(**changes: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "appcode": 1002, "lat": LAT, "lon": LON, "msgtype": 5, "content": "order 77",
        "waves": [{"radius_m": 1000, "count": 2, "after_s": 0},
                  {"radius_m": 3000, "count": 5, "after_s": 10}],
        "accept_deadline_s": 30}
    offer.update(changes)
    return {k: v for k, v in offer.items() if v is not None}


class OffersApiTests(ApiTestCase):
    def setUp(self) -> None:
        self.build(parse_config(GEO_ROUTES))

    def report(self, uid: int, east_m: float) -> None:
        self.node.login(uid, 1002)
        session = self.logic.local[(uid, 1002)]
        self.logic.positions.report(session, b"%.6f,%.6f" % (LAT, LON + east_m / 95_200))

    def post(self, offer: object, headers: dict[str, str] | None = SHOP) -> Response:
        raw = offer if isinstance(offer, bytes) else json.dumps(offer).encode()
        return self.request("POST", "/v1/offers", raw, headers)

    def get(self, offer_id: str, headers: dict[str, str] | None = SHOP) -> Response:
        return self.request("GET", f"/v1/offers/{offer_id}", headers=headers)

    def test_created_pushed_and_accepted(self) -> None:
        self.report(7, 100)
        self.report(8, 500)
        self.report(9, 2000)
        response = self.post(body())
        self.assertEqual(response.status, 200)
        created = response.json()
        self.assertEqual(sorted(created), ["logid", "offer_id"])
        offer_id = created["offer_id"]
        self.assertTrue(offer_id.isdigit())
        self.assertEqual(created["logid"], format(int(offer_id), "x"))
        self.assertEqual(self.get(offer_id).json(),
                         {"offer_id": offer_id, "state": "open", "pushed_to": [7, 8]})
        session = self.logic.local[(8, 1002)]
        d = Deferred.fromCoroutine(self.logic.offers.accept(session, offer_id.encode()))
        self.assertEqual(self.successResultOf(d).code, 0)
        self.node.clock.advance(0)  # the outcome is told after the Result
        self.assertEqual(self.get(offer_id).json(),
                         {"offer_id": offer_id, "state": "accepted", "winner_uid": 8,
                          "pushed_to": [7, 8]})
        self.assertEqual([json.loads(p) for p, _ in self.node.bus.topics["offers"]],
                         [{"offer_id": offer_id, "state": "accepted", "winner_uid": 8}])

    def test_expired_after_the_deadline(self) -> None:
        offer_id = self.post(body(accept_deadline_s=0.5,
                                  waves=[{"radius_m": 10, "count": 1, "after_s": 0.25}])
                             ).json()["offer_id"]
        self.node.clock.advance(0.5)
        self.assertEqual(self.get(offer_id).json(),
                         {"offer_id": offer_id, "state": "expired", "pushed_to": []})

    def test_the_key_s_user_system_only(self) -> None:
        self.assertEqual(self.post(body(), TAXI).status, 403)
        offer_id = self.post(body()).json()["offer_id"]
        self.assertEqual(self.get(offer_id, TAXI).status, 403)
        self.assertEqual(self.get(offer_id, {}).status, 401)
        self.assertEqual(self.post(body(), {}).status, 401)

    def test_unknown_offers_are_404(self) -> None:
        for offer_id in ("1", "0", "x", "-1", "1" * 30, "%20"):
            response = self.get(offer_id)
            self.assertEqual((response.status, response.json()),
                             (404, {"error": "no such offer"}), offer_id)
        self.assertEqual(self.request("GET", "/v1/offers", headers=SHOP).status, 405)

    def test_an_unknown_wave_field_names_its_wave(self) -> None:
        waves = [{"radius_m": 1000, "count": 1, "after_s": 0},
                 {"radius_m": 1000, "count": 1, "after_s": 0, "foo": 1}]
        response = self.post(body(waves=waves))
        self.assertEqual((response.status, response.json()),
                         (400, {"error": "waves[1].foo: unknown field"}))

    def test_every_field_and_limit_is_checked(self) -> None:
        wave = {"radius_m": 1000, "count": 1, "after_s": 0}
        cases: list[tuple[object, str]] = [
            (b"{", "body"),
            ([], "expected a JSON object"),
            (body(extra=1), "extra: unknown field"),
            (body(appcode=None), "appcode: is required"),
            (body(appcode=9999), "appcode: no app"),
            (body(lat=None), "lat: is required"),
            (body(lat="31.2"), "lat: expected a number"),
            (body(lat=True), "lat: expected a number"),
            (body(lat=86), "lat"),
            (body(lon=181), "lon"),
            (body(msgtype=-1), "msgtype"),
            (body(content=None), "content: is required"),
            (body(content=7), "content: expected a string"),
            (body(content="x" * 65001), "content: over"),
            (body(msgtype=10, content="<script>"), "rich content"),  # app 1002's rich msgtype
            (body(waves=None), "waves: is required"),
            (body(waves=[]), "waves: expected an array of 1 to 10"),
            (body(waves=[wave] * 11), "waves: expected an array of 1 to 10"),
            (body(waves={"radius_m": 1}), "waves: expected an array"),
            (body(waves=[1]), "waves[0]: expected an object"),
            (body(waves=[{**wave, "x": 1}]), "waves[0].x: unknown field"),
            (body(waves=[{**wave, "radius_m": 0}]), "waves[0].radius_m"),
            (body(waves=[{**wave, "radius_m": 50_001}]), "waves[0].radius_m"),
            (body(waves=[wave, {**wave, "count": 0}]), "waves[1].count"),
            (body(waves=[{**wave, "count": 101}]), "waves[0].count"),
            (body(waves=[{**wave, "count": 1.5}]), "waves[0].count"),
            (body(waves=[{**wave, "after_s": -1}]), "waves[0].after_s"),
            (body(waves=[{**wave, "after_s": 30}]), "waves[0].after_s: expected at least 0 "
                                                    "and below accept_deadline_s"),
            (body(waves=[{"count": 1, "after_s": 0}]), "waves[0].radius_m"),
            (body(accept_deadline_s=None), "accept_deadline_s: is required"),
            (body(accept_deadline_s=0), "accept_deadline_s"),
            (body(accept_deadline_s=3600.5), "accept_deadline_s"),
        ]
        for offer, reason in cases:
            response = self.post(offer)
            self.assertEqual(response.status, 400, (offer, response.body))
            self.assertIn(reason, response.json()["error"], offer)
        limits = body(waves=[{"radius_m": 50_000, "count": 100, "after_s": 3599.9}] * 10,
                      accept_deadline_s=3600)
        self.assertEqual(self.post(limits).status, 200)
        self.assertEqual(len(self.node.offers), 1)


class OffersOffTests(ApiTestCase):
    def test_a_node_without_offers_answers_400(self) -> None:
        self.build(two_systems().replace(offers=OffersConfig()))
        response = self.request("POST", "/v1/offers", json.dumps(body()).encode(), SHOP)
        self.assertEqual((response.status, response.json()),
                         (400, {"error": "offers are not configured on this node ([offers])"}))
        self.assertEqual(self.request("GET", "/v1/offers/1", headers=SHOP).status, 404)
