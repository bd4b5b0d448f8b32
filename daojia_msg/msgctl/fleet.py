# -*- test-case-name: tests.msgctl.test_fleet -*-
"""``msgctl drivers``: simulated drivers for the live map and the offers demo.

Driver k of N (uids ``--first-uid`` on) logs in on the driver app with a
reconnecting :class:`MsgClient`, drives a loop from the centre out to
``k/N * --spread`` metres and back (alternate drivers the other way round)
and reports its position on the geo route every ``--every`` seconds as
``"<lat>,<lon>"``. A report is skipped while its driver is offline, so
nothing queues up behind a lost connection.

An offer push (``--offer-msgtype``) is printed; with ``--accept`` the driver
accepts it after a random pause (C2S ``--accept-msgtype`` whose content is
the offer_id) and prints the Result; the outcome the node sends
(``--result-msgtype``, ``{"offer_id", "state"}``) is printed too. At the end
(``--duration``, or Ctrl-C) every driver logs out, so its position leaves
the map at once.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall

from daojia_msg.auth import mint_token
from daojia_msg.client.client import NO_RECONNECT, MsgClient
from daojia_msg.client.errors import ClientError, ResultError, kick_reason_name
from daojia_msg.core.geo import EARTH_RADIUS_M, format_position
from daojia_msg.msgctl.common import (
    CONNECT_ERRORS,
    Ctx,
    connect_error,
    endpoint,
    login_error,
    secret,
)
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: Metres in a degree of latitude (and of longitude at the equator), on the
#: sphere the node measures distances on.
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
#: Golden angle: drivers' starting points spread evenly round the centre.
_GOLDEN = math.pi * (3 - math.sqrt(5))
#: The shortest pause before an accept.
MIN_ACCEPT_S = 0.5


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point ``north_m`` and ``east_m`` metres from ``(lat, lon)`` (flat
    earth: a few kilometres off by centimetres), longitude wrapped to ±180."""
    lat2 = lat + north_m / METRES_PER_DEGREE
    lon2 = lon + east_m / (METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return lat2, (lon2 + 180) % 360 - 180


@dataclass(frozen=True)
class Circuit:
    """A circle of ``radius_m`` around ``(lat, lon)``, driven at ``speed_mps``
    (negative: clockwise), starting at angle ``phase`` (radians from east)."""

    lat: float
    lon: float
    radius_m: float
    phase: float
    speed_mps: float

    def at(self, t: float) -> tuple[float, float]:
        """Where the driver is ``t`` seconds after the start, rounded to 6
        decimals (~0.1 m)."""
        angle = self.phase + self.speed_mps * t / self.radius_m
        lat, lon = offset(self.lat, self.lon, self.radius_m * math.sin(angle),
                          self.radius_m * math.cos(angle))
        return round(lat, 6), round(lon, 6)


def circuits(count: int, lat: float, lon: float, spread_m: float,
             speed_mps: float) -> list[Circuit]:
    """The paths of ``count`` drivers: driver k (from 1) loops through the
    centre and out to ``k/count`` of ``spread_m`` from it (a circle of half
    that across, beside the centre), starting at its far end, so their
    distances from the centre keep changing; the loops' directions are a
    golden angle apart, and every other one is driven clockwise."""
    paths = []
    for k in range(1, count + 1):
        radius = spread_m * k / count / 2
        phase = (k - 1) * _GOLDEN
        c_lat, c_lon = offset(lat, lon, radius * math.sin(phase), radius * math.cos(phase))
        paths.append(Circuit(c_lat, c_lon, radius, phase, speed_mps if k % 2 else -speed_mps))
    return paths


_HEX = re.compile(r"[0-9a-f]{1,16}")


def offer_id_of(message: pb.Message) -> str | None:
    """The offer_id (decimal) of an offer push: ``"offer_id"`` of a JSON
    object content if the app server put one there, else the push's logid,
    which is the offer's (``POST /v1/offers`` answers it): the offer_id in
    hexadecimal. None if neither is."""
    try:
        content = json.loads(message.content)
    except ValueError:
        content = None
    if isinstance(content, dict) and isinstance(content.get("offer_id"), str | int):
        return str(content["offer_id"])
    if _HEX.fullmatch(message.logid):
        return str(int(message.logid, 16))
    return None


def outcome(message: pb.Message) -> tuple[str, str] | None:
    """``(offer_id, state)`` of an offer's result S2C, or None if it is not one."""
    try:
        content = json.loads(message.content)
        return str(content["offer_id"]), str(content["state"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Settings:
    """What every driver shares (from the command line)."""

    appcode: int
    secret: str
    every_s: float
    geo_msgtype: int
    offer_msgtype: int
    accept_msgtype: int
    result_msgtype: int
    accept_within_s: float | None  # None: do not accept


class SimulatedDriver:
    """One driver: a reconnecting client, its reports and its accepts."""

    def __init__(self, ctx: Ctx, uid: int, path: Circuit, settings: Settings,
                 rng: random.Random) -> None:
        self.ctx = ctx
        self.uid = uid
        self.path = path
        self.settings = settings
        self.rng = rng
        self.reports = 0
        self.started_at = 0.0
        self._reporting: Deferred[Any] | None = None
        self._accepts: set[IDelayedCall] = set()
        self._loop = LoopingCall(self.report)
        self._loop.clock = ctx.reactor
        self.client = MsgClient(
            ctx.reactor, endpoint(ctx), uid, settings.appcode, self._token,
            on_message=self.received, on_kickout=self._kicked, client_version="msgctl-drivers")

    def _token(self) -> str:
        expires_at = int(self.ctx.reactor.seconds()) + 86400
        return mint_token(self.settings.secret, self.settings.appcode, self.uid, expires_at)

    def say(self, line: str) -> None:
        self.ctx.say(f"driver {self.uid}: {line}")

    def start(self) -> Deferred[Any]:
        """Connect; fires once logged in (or fails after one failed attempt)."""
        self.started_at = self.ctx.reactor.seconds()
        self.client.startService()
        return self.client.when_ready(fail_after_failures=1)

    def drive(self) -> None:
        """Report now and every ``every_s`` seconds."""
        self._loop.start(self.settings.every_s, now=True)

    def position(self) -> tuple[float, float]:
        return self.path.at(self.ctx.reactor.seconds() - self.started_at)

    def report(self) -> None:
        if not self.client.logged_in or self._reporting is not None:
            return  # offline, or the last report is still unanswered
        lat, lon = self.position()
        d = self.client.c2s(self.settings.geo_msgtype, format_position(lat, lon))
        self._reporting = d

        def done(result: object) -> None:
            self._reporting = None
            self.reports += 1

        def failed(f: Any) -> None:
            self._reporting = None
            self.ctx.note(f"driver {self.uid}: position not reported: {f.getErrorMessage()}")

        d.addCallbacks(done, failed)

    def received(self, message: pb.Message) -> None:
        s = self.settings
        text = message.content.decode("utf-8", "replace")
        if message.msgtype == s.result_msgtype and (result := outcome(message)) is not None:
            self.say(f"offer {result[0]}: {result[1]}")
            return
        if message.msgtype != s.offer_msgtype:
            self.say(f"message msgtype={message.msgtype}: {text}")
            return
        offer_id = offer_id_of(message)
        if offer_id is None:
            self.say(f"offer without an offer_id (logid {message.logid!r}): {text}")
            return
        if s.accept_within_s is None:
            self.say(f"offer {offer_id} received: {text}")
            return
        pause = self.rng.uniform(MIN_ACCEPT_S, max(MIN_ACCEPT_S, s.accept_within_s))
        self.say(f"offer {offer_id} received: {text} (accepting in {pause:.1f} s)")
        call: IDelayedCall = self.ctx.reactor.callLater(pause, self.accept, offer_id)
        self._accepts.add(call)

    def accept(self, offer_id: str) -> Deferred[None]:
        self._accepts = {c for c in self._accepts if c.active()}

        def accepted(result: pb.Result) -> None:
            self.say(f"accepted offer {offer_id}: OK")

        def refused(f: Any) -> None:
            if f.check(ResultError):
                self.say(f"accept of offer {offer_id} refused: {f.value}")
            else:
                self.say(f"accept of offer {offer_id} failed: {f.getErrorMessage()}")

        return self.client.c2s(self.settings.accept_msgtype, offer_id.encode()).addCallbacks(
            accepted, refused)

    def _kicked(self, code: int, reason: str) -> None:
        then = "stopped" if code in NO_RECONNECT else "reconnecting"
        self.ctx.note(f"driver {self.uid}: kicked out: {kick_reason_name(code)} {reason} "
                      f"({then})".replace("  ", " "))

    def stop(self) -> Deferred[None]:
        """No more reports or accepts; log out (the position leaves the map)."""
        if self._loop.running:
            self._loop.stop()
        for call in self._accepts:
            if call.active():
                call.cancel()
        self._accepts.clear()
        return self.client.logout()


class Fleet:
    """The drivers of one ``msgctl drivers``."""

    def __init__(self, ctx: Ctx, make: Callable[[int, Circuit], SimulatedDriver],
                 first_uid: int, paths: list[Circuit]) -> None:
        self.drivers = [make(first_uid + i, path) for i, path in enumerate(paths)]
        self._stopping: Deferred[Any] | None = None

    async def start(self) -> None:
        """Log every driver in (all at once), then start their reports."""
        results = await DeferredList([d.start() for d in self.drivers], consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        if failures:
            await self.stop()
            failures[0].raiseException()
        for driver in self.drivers:
            driver.drive()

    def stop(self) -> Deferred[Any]:
        if self._stopping is None:
            self._stopping = DeferredList([d.stop() for d in self.drivers], consumeErrors=True)
        return self._stopping


async def cmd_drivers(ctx: Ctx) -> int:
    a = ctx.args
    settings = Settings(
        appcode=a.appcode, secret=secret(a), every_s=a.every, geo_msgtype=a.geo_msgtype,
        offer_msgtype=a.offer_msgtype, accept_msgtype=a.accept_msgtype,
        result_msgtype=a.result_msgtype, accept_within_s=a.accept_within if a.accept else None)
    rng = random.Random(a.seed)
    paths = circuits(a.count, a.lat, a.lon, a.spread, a.speed)
    fleet = Fleet(ctx, lambda uid, path: SimulatedDriver(ctx, uid, path, settings, rng),
                  a.first_uid, paths)
    try:
        await fleet.start()
    except CONNECT_ERRORS as e:
        raise connect_error(ctx, e) from None
    except ClientError as e:
        raise login_error(ctx, e) from None
    last = a.first_uid + a.count - 1
    ctx.note(f"*** {a.count} driver(s) online on app {a.appcode}, uids {a.first_uid}..{last}, "
             f"driving loops through {a.lat},{a.lon} up to {a.spread:g} m out at {a.speed:g} m/s; a "
             f"position "
             f"every {a.every:g} s on msgtype {a.geo_msgtype}"
             + (f"; accepting offers (msgtype {a.offer_msgtype}) within {a.accept_within:g} s"
                if a.accept else "") + ". Ctrl-C logs them out.")
    ctx.reactor.addSystemEventTrigger("before", "shutdown", fleet.stop)  # Ctrl-C
    finished: Deferred[None] = Deferred()
    timer = ctx.reactor.callLater(a.duration, finished.callback, None) if a.duration else None
    try:
        await finished  # the duration, or forever: Ctrl-C stops the reactor
    finally:  # also when the command is cancelled
        if timer is not None and timer.active():
            timer.cancel()
        await fleet.stop()
        reports = sum(d.reports for d in fleet.drivers)
        ctx.note(f"*** {a.count} driver(s) logged out after {reports} position report(s)")
    return 0
