# -*- test-case-name: tests.msgctl.test_fleet,tests.msgctl.test_dispatch -*-
"""The command lines of the live-map demo: ``msgctl drivers`` (simulated
drivers on the map) and ``msgctl offer`` (an order offered to them in waves).

Their defaults fit the demo apps: drivers are on the driver app 1002 around
People's Square, Shanghai, and report positions on its geo route (msgtype 1);
offers go out on msgtype 5 (1002's priority msgtype, "new orders"), are
accepted on msgtype 3 and answered on msgtype 4 (docs/protocol.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The demo's centre: People's Square, Shanghai (the README's nearby query).
CENTRE_LAT, CENTRE_LON = 31.2304, 121.4737
#: The demo apps' driver app, and its geo, offer, accept and result msgtypes.
DRIVER_APP = 1002
GEO_MSGTYPE, OFFER_MSGTYPE, ACCEPT_MSGTYPE, RESULT_MSGTYPE = 1, 5, 3, 4
#: ``POST /v1/offers`` limits (docs/openapi.yaml).
MAX_WAVES, MAX_WAVE_COUNT, MAX_RADIUS_M, MAX_DEADLINE_S = 10, 100, 50_000, 3600


@dataclass(frozen=True)
class Wave:
    """One wave of an offer: up to ``count`` uids within ``radius_m``,
    ``after_s`` seconds after the offer is created."""

    radius_m: float
    count: int
    after_s: float

    def as_json(self) -> dict[str, float | int]:
        return {"radius_m": self.radius_m, "count": self.count, "after_s": self.after_s}


#: Three rings: the nearest two at once, three more within 2.5 km after 3 s,
#: anyone within 5 km after 6 s (drivers accepting within 10 s often leave
#: the first wave unanswered long enough for the next).
DEFAULT_WAVES = (Wave(1000, 2, 0), Wave(2500, 3, 3), Wave(5000, 10, 6))


def _ranged(kind: Callable[[str], Any], lo: Any, hi: Any, what: str,
            show: Callable[[Any], str] = str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not lo <= value <= hi:  # NaN fails this too
            raise argparse.ArgumentTypeError(
                f"expected {what} from {show(lo)} to {show(hi)}, got {show(value)}")
        return value

    parse.__name__ = what.split()[-1]  # argparse names the type in its messages
    return parse


def integer(lo: int, hi: int) -> Callable[[str], int]:
    return _ranged(int, lo, hi, "an integer")


def number(lo: float, hi: float, what: str = "a number") -> Callable[[str], float]:
    return _ranged(float, lo, hi, what, lambda v: f"{v:g}")


def wave(text: str) -> Wave:
    """``RADIUS_M:COUNT:AFTER_S``, e.g. ``1000:2:0``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected RADIUS_M:COUNT:AFTER_S, got {text!r}")
    radius = number(1, MAX_RADIUS_M, "a radius in metres")(parts[0])
    count = integer(1, MAX_WAVE_COUNT)(parts[1])
    after = number(0, MAX_DEADLINE_S, "seconds after the creation")(parts[2])
    return Wave(radius, count, after)


def add_demo_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                      where: argparse.ArgumentParser, http: argparse.ArgumentParser) -> None:
    """``drivers`` (connects to the gate: ``where``) and ``offer`` (the HTTP API: ``http``)."""
    centre = argparse.ArgumentParser(add_help=False)
    centre.add_argument("--appcode", type=integer(0, 2**32 - 1), default=DRIVER_APP,
                        help="the drivers' app (default %(default)s, the demo driver app)")
    centre.add_argument("--lat", type=number(-85, 85, "a latitude"), default=CENTRE_LAT,
                        help="the centre's latitude (default %(default)s)")
    centre.add_argument("--lon", type=number(-180, 180, "a longitude"), default=CENTRE_LON,
                        help="the centre's longitude (default %(default)s)")

    p = sub.add_parser("drivers", parents=[centre, where],
                       help="simulated drivers: log in, drive loops through a centre and report "
                            "their positions; with --accept, accept the offers they get")
    p.add_argument("--count", type=integer(1, 1000), default=10,
                   help="how many drivers (default %(default)s)")
    p.add_argument("--first-uid", type=integer(1, 2**63), default=101, metavar="UID",
                   help="the first driver's uid; the others follow (default %(default)s)")
    p.add_argument("--secret", help="the app's token secret (default: the demo secret of 1001/1002)")
    p.add_argument("--spread", type=number(10, 50_000, "metres"), default=2000, metavar="METRES",
                   help="how far out the drivers go: driver k of N drives a loop through the "
                        "centre out to k/N of it (default %(default)g)")
    p.add_argument("--speed", type=number(0, 100, "metres per second"), default=10,
                   metavar="M/S", help="how fast they drive (default %(default)g m/s)")
    p.add_argument("--every", type=number(0.5, 3600, "seconds"), default=3, metavar="SECONDS",
                   help="seconds between two position reports (default %(default)g)")
    p.add_argument("--duration", type=number(0, 86400 * 365, "seconds"), default=0,
                   metavar="SECONDS", help="log out after this long (default: run until Ctrl-C)")
    p.add_argument("--accept", action="store_true",
                   help="accept each offer received, after a random pause (--accept-within)")
    p.add_argument("--accept-within", type=number(0, 3600, "seconds"), default=10,
                   metavar="SECONDS",
                   help="with --accept: pause from 0.5 s to this long (default %(default)g)")
    p.add_argument("--seed", type=int, default=None, help="seed of the pauses (repeatable runs)")
    p.add_argument("--geo-msgtype", type=integer(0, 2**32 - 1), default=GEO_MSGTYPE,
                   help="the geo route's msgtype (default %(default)s)")
    p.add_argument("--offer-msgtype", type=integer(0, 2**32 - 1), default=OFFER_MSGTYPE,
                   help="the msgtype offers arrive on (default %(default)s)")
    p.add_argument("--accept-msgtype", type=integer(0, 2**32 - 1), default=ACCEPT_MSGTYPE,
                   help="offers.accept_msgtype (default %(default)s)")
    p.add_argument("--result-msgtype", type=integer(0, 2**32 - 1), default=RESULT_MSGTYPE,
                   help="offers.result_msgtype (default %(default)s)")

    p = sub.add_parser("offer", parents=[centre, http],
                       help="offer an order near a point in waves (POST /v1/offers), then print "
                            "who got it in which wave and who won")
    p.add_argument("--msgtype", type=integer(0, 2**32 - 1), default=OFFER_MSGTYPE,
                   help="the offer's msgtype (default %(default)s)")
    p.add_argument("--wave", type=wave, action="append", metavar="RADIUS_M:COUNT:AFTER_S",
                   help="a wave (repeat for more, up to 10; default: "
                        + " ".join(f"{w.radius_m:g}:{w.count}:{w.after_s:g}" for w in DEFAULT_WAVES)
                        + ")")
    p.add_argument("--deadline", type=number(1, MAX_DEADLINE_S, "seconds"), default=20,
                   metavar="SECONDS", help="accept_deadline_s (default %(default)g)")
    p.add_argument("--poll", type=number(0.1, 60, "seconds"), default=0.5, metavar="SECONDS",
                   help="seconds between two GET /v1/offers/{id} (default %(default)g)")
    p.add_argument("--api-key", help="the app's API key (default: demo-key-<A> for 1001/1002)")
    p.add_argument("text", nargs="*", metavar="TEXT",
                   help="the offer's content (default: \"new order near <lat>,<lon>\")")
