"""Tests for ``msgctl offer`` (daojia_msg.msgctl.dispatch) against a stubbed
HTTP API whose offer changes with the fake reactor's time."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from daojia_msg.msgctl.demoargs import DEFAULT_WAVES, Wave
from daojia_msg.msgctl.dispatch import wave_of
from tests.msgctl.fakes import CliTestCase

#: The offer's state ``elapsed`` seconds after its creation.
Script = Callable[[float], dict[str, Any]]


class OfferApi(Resource):
    isLeaf = True

    def __init__(self, clock: Any, script: Script, nearby: list[dict[str, Any]]) -> None:
        super().__init__()
        self.clock = clock
        self.script = script
        self.nearby = nearby
        self.created_at: float | None = None
        self.posted: list[Any] = []
        self.gets: list[str] = []
        self.post_status = 200

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None and request.path == b"/v1/offers"
        self.posted.append(json.loads(request.content.read()))
        self.created_at = self.clock.seconds()
        request.setResponseCode(self.post_status)
        if self.post_status != 200:
            return json.dumps({"error": "waves: at most 10"}).encode()
        return json.dumps({"offer_id": "1000", "logid": "3e8"}).encode()

    def render_GET(self, request: Request) -> bytes:
        self.gets.append(request.uri.decode())
        assert request.getHeader("authorization") == "Bearer demo-key-1002"
        if request.path == b"/v1/nearby":
            return json.dumps({"drivers": self.nearby}).encode()
        assert request.path == b"/v1/offers/1000" and self.created_at is not None
        return json.dumps({"offer_id": "1000",
                           **self.script(self.clock.seconds() - self.created_at)}).encode()


def _won_in_wave_2(elapsed: float) -> dict[str, Any]:
    if elapsed < 4:
        return {"state": "open", "pushed_to": [101, 102]}
    if elapsed < 5.5:
        return {"state": "open", "pushed_to": [101, 102, 104, 103]}
    return {"state": "accepted", "winner_uid": 103, "pushed_to": [101, 102, 104, 103]}


class WaveOfTests(SynchronousTestCase):
    def test_the_last_wave_due(self) -> None:
        waves = (Wave(1000, 2, 0), Wave(2500, 3, 4), Wave(5000, 10, 8))
        self.assertEqual([wave_of(waves, t) for t in (0, 0.5, 3.9, 4, 7.9, 8, 100)],
                         [0, 0, 0, 1, 1, 2, 2])
        self.assertEqual(wave_of((Wave(100, 1, 2),), 0.5), 0)


class OfferTests(CliTestCase):
    def offer(self, api: OfferApi, *argv: str, seconds: float = 30) -> Deferred[int]:
        """``msgctl offer`` for up to ``seconds`` of fake time, the API answering at once."""
        stub = StubTreq(api)
        d = self.run_cli("offer", *argv, http=stub)
        for _ in range(int(seconds * 10)):
            stub.flush()
            if d.called:
                break
            self.reactor.advance(0.1)
        return d

    def test_waves_and_the_winner(self) -> None:
        api = OfferApi(self.reactor, _won_in_wave_2,
                       [{"uid": 101, "distance_m": 499.6}, {"uid": 102, "distance_m": 910.2},
                        {"uid": 103, "distance_m": 1502}])
        d = self.offer(api, "--deadline", "12", "pick", "up", "at", "gate", "3")
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(api.posted, [{
            "appcode": 1002, "lat": 31.2304, "lon": 121.4737, "msgtype": 5,
            "content": "pick up at gate 3", "accept_deadline_s": 12.0,
            "waves": [{"radius_m": 1000.0, "count": 2, "after_s": 0.0},
                      {"radius_m": 2500.0, "count": 3, "after_s": 3.0},
                      {"radius_m": 5000.0, "count": 10, "after_s": 6.0}]}])
        self.assertEqual(self.out.getvalue().splitlines(), [
            "offer 1000 (logid 3e8) near 31.2304,121.4737 on app 1002: 3 wave(s), "
            "accept deadline 12 s",
            "  wave 1: up to 2 driver(s) within 1000 m at +0 s",
            "  wave 2: up to 3 driver(s) within 2500 m at +3 s",
            "  wave 3: up to 10 driver(s) within 5000 m at +6 s",
            "wave 1 (+0.0 s): pushed to 101 (500 m), 102 (910 m)",
            "wave 2 (+4.2 s): pushed to 104, 103 (1502 m)",
            "won by driver 103 (wave 2), seen at +6.0 s; pushed to 4 driver(s) in 2 wave(s)",
        ])
        nearby = [g for g in api.gets if g.startswith("/v1/nearby")]
        self.assertEqual(nearby[0], "/v1/nearby?appcode=1002&lat=31.2304&lon=121.4737"
                                    "&radius_m=5000&limit=100")
        self.assertEqual(len(nearby), 2)  # once per wave seen
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_expired(self) -> None:
        def script(elapsed: float) -> dict[str, Any]:
            return {"state": "open" if elapsed < 3.2 else "expired", "pushed_to": [7]}

        api = OfferApi(self.reactor, script, [])
        d = self.offer(api, "--deadline", "3", "--wave", "800:1:0", "--appcode", "1001",
                       "--api-key", "demo-key-1002", "--lat", "1.5", "--lon", "-2")
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(api.posted[0]["content"], "new order near 1.5,-2.0")
        self.assertEqual(self.out.getvalue().splitlines()[-2:], [
            "wave 1 (+0.0 s): pushed to 7",
            "expired: nobody accepted in time; pushed to 1 driver(s) in 1 wave(s)"])

    def test_an_offer_open_past_its_deadline_is_an_error(self) -> None:
        api = OfferApi(self.reactor, lambda t: {"state": "open", "pushed_to": []}, [])
        d = self.offer(api, "--deadline", "2", "--wave", "800:1:0", "--poll", "1")
        self.assertEqual(self.exit_code(d), 1)
        self.assertIn("msgctl: error: offer 1000 is still open 5 s after its creation, past its "
                      "deadline (2 s)", self.err.getvalue())

    def test_the_api_refusing_the_offer(self) -> None:
        api = OfferApi(self.reactor, _won_in_wave_2, [])
        api.post_status = 400
        d = self.offer(api)
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(self.err.getvalue(), "msgctl: error: HTTP 400: waves: at most 10\n")

    def test_waves_are_checked_before_asking(self) -> None:
        api = OfferApi(self.reactor, _won_in_wave_2, [])
        d = self.offer(api, "--deadline", "5", "--wave", "800:1:0", "--wave", "900:1:5")
        self.assertEqual(self.exit_code(d), 2)
        self.assertIn("every wave must start before --deadline 5 s", self.err.getvalue())
        d = self.offer(api, *[a for _ in range(11) for a in ("--wave", "800:1:0")])
        self.assertEqual(self.exit_code(d), 2)
        self.assertEqual(api.posted, [])
        self.assertIn("RADIUS_M:COUNT:AFTER_S", self.bad_args("offer", "--wave", "800:1"))
        self.assertIn("from 1 to 100", self.bad_args("offer", "--wave", "800:101:0"))
        self.assertIn("--deadline", self.bad_args("offer", "--deadline", "0"))

    def test_the_default_waves_fit_the_default_deadline(self) -> None:
        self.assertLess(max(w.after_s for w in DEFAULT_WAVES), 20)
