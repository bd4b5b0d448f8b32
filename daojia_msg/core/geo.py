# -*- test-case-name: tests.core.test_geo -*-
"""Positions: the content of a C2S on a geo route, and distances.

A geo route's C2S content is UTF-8 ``"<lat>,<lon>"`` (decimal degrees) or a
JSON object with numbers ``lat`` and ``lon`` (other members are allowed and
left to the app servers). Latitudes are those Redis GEO stores (±85.05112878,
the Web Mercator bound), longitudes ±180; anything else is a
:class:`PositionError`. Distances are great-circle distances on Redis'
sphere, so the embedded index and Redis agree to the metre.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: Redis GEO's bounds (GEOADD refuses beyond them).
MAX_LAT = 85.05112878
MAX_LON = 180.0
#: The longest position content accepted (a JSON object with a few extra
#: members fits; a position never needs more).
MAX_POSITION_BYTES = 512
#: Redis GEO's earth radius (``geohash_helper.c``), metres.
EARTH_RADIUS_M = 6372797.560856

_TEXT = re.compile(rb"\s*([+-]?[0-9]{1,3}(?:\.[0-9]{1,20})?)\s*,"
                   rb"\s*([+-]?[0-9]{1,3}(?:\.[0-9]{1,20})?)\s*")


class PositionError(ValueError):
    """Content that is not a position, or one out of range."""


@dataclass(frozen=True, slots=True)
class Located:
    """One uid found near a point (``GET /v1/nearby``)."""

    uid: int
    distance_m: float
    lat: float
    lon: float
    updated_ms: int


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def check_position(lat: object, lon: object) -> tuple[float, float]:
    """``(lat, lon)`` as floats if both are finite numbers within the bounds."""
    for name, value, bound in (("lat", lat, MAX_LAT), ("lon", lon, MAX_LON)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PositionError(f"{name} must be a number")
        if not -bound <= value <= bound:  # NaN fails this too
            raise PositionError(f"{name} must be within ±{bound:g} degrees")
    return float(lat), float(lon)  # type: ignore[arg-type]


def parse_position(content: bytes) -> tuple[float, float]:
    """The ``(lat, lon)`` a geo C2S carries; :class:`PositionError` if none."""
    if len(content) > MAX_POSITION_BYTES:
        raise PositionError(f"a position is at most {MAX_POSITION_BYTES} bytes")
    m = _TEXT.fullmatch(content)
    if m is not None:
        return check_position(float(m[1]), float(m[2]))
    if content.lstrip()[:1] != b"{":
        raise PositionError('expected "<lat>,<lon>" or a JSON object with lat and lon')
    try:
        obj = _DECODER.decode(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PositionError("not valid JSON") from None
    if not isinstance(obj, dict) or "lat" not in obj or "lon" not in obj:
        raise PositionError("expected a JSON object with lat and lon")
    return check_position(obj["lat"], obj["lon"])


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, as Redis GEO computes it)."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    u = math.sin((p2 - p1) / 2)
    v = math.sin(math.radians(lon2 - lon1) / 2)
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(u * u + math.cos(p1) * math.cos(p2) * v * v))


def format_position(lat: float, lon: float) -> bytes:
    """The text form of a position, as clients may send it."""
    return b"%.6f,%.6f" % (lat, lon)
