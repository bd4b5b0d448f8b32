# -*- test-case-name: tests.web.test_offers -*-
"""``POST /v1/offers`` and ``GET /v1/offers/{offer_id}`` (docs/openapi.yaml):
nearby order offers (:mod:`daojia_msg.logic.offers`).

The key must be of the offer app's user system (else 403). Every field is
checked with a 400 naming it: ``lat`` within ±85.05112878, ``lon`` within
±180, ``msgtype`` 0 to 2**32-1, ``content`` UTF-8 text within
``limits.max_content``, 1 to 10 ``waves`` of ``radius_m`` above 0 and at most
50,000, ``count`` 1 to 100 and ``after_s`` at least 0 and below
``accept_deadline_s``, which is above 0 and at most 3,600. An unknown
``offer_id`` (or one past its retention, or not a decimal id) is a 404.
"""

from __future__ import annotations

from typing import Any

from twisted.web import server

from daojia_msg.core.convert import MAX_ID
from daojia_msg.core.geo import PositionError, check_position
from daojia_msg.core.offers import ACCEPTED, Wave
from daojia_msg.logic.offers import MAX_COUNT, MAX_DEADLINE_S, MAX_RADIUS_M, MAX_WAVES
from daojia_msg.protocol import errors
from daojia_msg.web.endpoints import Answer, Api, Endpoint, json_answer
from daojia_msg.web.keys import Caller, target_app
from daojia_msg.web.parsing import Fields, content_of, read_json

OFFER_FIELDS = frozenset({"appcode", "lat", "lon", "msgtype", "content", "waves",
                          "accept_deadline_s"})
WAVE_FIELDS = frozenset({"radius_m", "count", "after_s"})


def _wave(data: object, i: int, deadline_s: float) -> Wave:
    name = f"waves[{i}]"
    if not isinstance(data, dict):
        raise errors.BadRequest(f"{name}: expected an object with radius_m, count and after_s")
    f = Fields(data, WAVE_FIELDS, f"{name}.")
    radius_m = f.number("radius_m")
    if not 0 < radius_m <= MAX_RADIUS_M:
        raise errors.BadRequest(f"{name}.radius_m: expected more than 0 and at most "
                                f"{MAX_RADIUS_M:,.0f} metres")
    count = f.required("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise errors.BadRequest(f"{name}.count: expected an integer from 1 to {MAX_COUNT}")
    after_s = f.number("after_s")
    if not 0 <= after_s < deadline_s:
        raise errors.BadRequest(f"{name}.after_s: expected at least 0 and below "
                                "accept_deadline_s")
    return Wave(radius_m, count, after_s)


class OfferEndpoint(Endpoint):
    """``GET /v1/offers/{offer_id}``: the offer's state and who it was pushed to."""

    def __init__(self, api: Api, segment: bytes) -> None:
        super().__init__(api)
        self.segment = segment

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        text = self.segment.decode("ascii", "replace")
        found = None
        if text.isdigit() and len(text) <= 20 and 0 < int(text) <= MAX_ID:
            found = await self.api.logic.offers.view(int(text))
        if found is None:
            return json_answer(404, {"error": "no such offer"})
        offer, state = found
        if offer.spec.appcode not in caller.appcodes:
            raise errors.Forbidden("the offer's app is not in this API key's user system")
        answer: dict[str, Any] = {"offer_id": str(offer.spec.offer_id), "state": state}
        if state == ACCEPTED:
            answer["winner_uid"] = offer.winner_uid
        answer["pushed_to"] = list(offer.pushed_to)
        return json_answer(200, answer)


class OffersEndpoint(Endpoint):
    """``POST /v1/offers``; its child segments are offer ids (``param`` and
    ``template`` describe them to the OpenAPI test)."""

    methods = (b"POST",)
    admitted = True
    param = "offer_id"

    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self.template = OfferEndpoint(api, b"{offer_id}")

    def getChild(self, path: bytes, request: Any) -> OfferEndpoint:
        return OfferEndpoint(self.api, path)

    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        f = Fields(read_json(request), OFFER_FIELDS)
        appcode = f.u32("appcode")
        target_app(self.api.config, caller, appcode, "appcode")
        lat, lon = f.number("lat"), f.number("lon")
        try:
            check_position(lat, lon)
        except PositionError as e:
            raise errors.BadRequest(str(e)) from None
        msgtype = f.u32("msgtype")
        f.required("content")
        content = content_of(f, self.api.limits.max_content)
        deadline_s = f.number("accept_deadline_s")
        if not 0 < deadline_s <= MAX_DEADLINE_S:
            raise errors.BadRequest(f"accept_deadline_s: expected more than 0 and at most "
                                    f"{MAX_DEADLINE_S:,.0f} seconds")
        waves = f.required("waves")
        if not isinstance(waves, list) or not 1 <= len(waves) <= MAX_WAVES:
            raise errors.BadRequest(f"waves: expected an array of 1 to {MAX_WAVES} waves")
        checked = [_wave(w, i, deadline_s) for i, w in enumerate(waves)]
        offer = await self.api.logic.offers.create(appcode, lat, lon, msgtype, content, checked,
                                                   deadline_s)
        return json_answer(200, {"offer_id": str(offer.offer_id), "logid": offer.logid})
