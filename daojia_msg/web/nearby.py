# -*- test-case-name: tests.web.test_nearby -*-
"""``GET /v1/nearby``: the online uids of an app nearest a point
(docs/openapi.yaml), from the live positions of its geo routes.

The key must be of the app's user system (else 403). Every parameter is
checked with a 400 naming it: ``lat`` within ±85.05112878, ``lon`` within
±180, ``radius_m`` above 0 and at most 50,000, ``limit`` an integer of at
least 1 (default 20; above 100 it is read as 100).
"""

from __future__ import annotations

import re

from twisted.web import server

from daojia_msg.core.geo import PositionError, check_position
from daojia_msg.logic.positions import NEARBY_LIMIT_MAX, NEARBY_RADIUS_MAX_M
from daojia_msg.protocol import errors
from daojia_msg.web.endpoints import Answer, Endpoint, json_answer
from daojia_msg.web.keys import Caller, target_app
from daojia_msg.web.parsing import MAX_U32

NEARBY_LIMIT_DEFAULT = 20

_INTEGER = re.compile(r"[0-9]{1,12}")
_POSITIVE = re.compile(r"0*[1-9][0-9]*")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,3})?")


def _param(request: server.Request, name: str, required: bool = True) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"), [])
    if len(values) > 1:
        raise errors.BadRequest(f"{name}: given more than once")
    if not values:
        if required:
            raise errors.BadRequest(f"{name}: is required")
        return None
    return values[0].decode("ascii", "replace")


def _integer(value: str, name: str, lo: int, hi: int) -> int:
    if not _INTEGER.fullmatch(value) or not lo <= int(value) <= hi:
        raise errors.BadRequest(f"{name}: expected an integer from {lo} to {hi}")
    return int(value)


def _decimal(value: str | None, name: str) -> float:
    if value is None or not _DECIMAL.fullmatch(value):
        raise errors.BadRequest(f"{name}: expected a decimal number")
    return float(value)


class Nearby(Endpoint):
    async def handle(self, method: bytes, request: server.Request, caller: Caller | None) -> Answer:
        assert caller is not None
        appcode = _integer(_param(request, "appcode") or "", "appcode", 0, MAX_U32)
        target_app(self.api.config, caller, appcode, "appcode")
        lat = _decimal(_param(request, "lat"), "lat")
        lon = _decimal(_param(request, "lon"), "lon")
        try:
            check_position(lat, lon)
        except PositionError as e:
            raise errors.BadRequest(str(e)) from None
        radius_m = _decimal(_param(request, "radius_m"), "radius_m")
        if not 0 < radius_m <= NEARBY_RADIUS_MAX_M:
            raise errors.BadRequest(
                f"radius_m: expected more than 0 and at most {NEARBY_RADIUS_MAX_M:,.0f} metres")
        given = _param(request, "limit", required=False)
        if given is not None and not _POSITIVE.fullmatch(given):
            raise errors.BadRequest("limit: expected an integer of at least 1")
        limit = (NEARBY_LIMIT_DEFAULT if given is None
                 else NEARBY_LIMIT_MAX if len(given.lstrip("0")) > 3
                 else min(int(given), NEARBY_LIMIT_MAX))
        found = await self.api.logic.nearby(appcode, lat, lon, radius_m, limit)
        return json_answer(200, {"drivers": [
            {"uid": p.uid, "distance_m": round(p.distance_m, 2), "lat": p.lat, "lon": p.lon,
             "updated_ms": p.updated_ms} for p in found]})
