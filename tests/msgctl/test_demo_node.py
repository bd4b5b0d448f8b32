"""``msgctl drivers`` and ``msgctl offer`` against a real node (embedded
store): the drivers appear on GET /v1/nearby and leave it when they log out;
an offer reaches them in waves and one of them wins it."""

from __future__ import annotations

import io
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from daojia_msg.msgctl import cli
from tests.browser.driver import R
from tests.nodes import NodeTestCase

NEARBY = "/v1/nearby?appcode=1002&lat=31.2304&lon=121.4737&radius_m=5000&limit=100"


class DemoOnANodeTests(NodeTestCase):
    timeout = 60

    def msgctl(self, *argv: str) -> tuple[Deferred[int], io.StringIO, io.StringIO]:
        out, err = io.StringIO(), io.StringIO()
        return cli.run(R, cli.build_parser().parse_args(argv), out, err), out, err

    async def online(self, count: int, within_s: float = 10) -> list[dict[str, Any]]:
        """GET /v1/nearby until it answers ``count`` drivers (at most ``within_s``)."""
        for _ in range(int(within_s * 10)):
            code, body = await self.http("GET", NEARBY)
            self.assertEqual(code, 200, body)
            if len(body["drivers"]) == count:
                return list(body["drivers"])
            await deferLater(R, 0.1, lambda: None)
        self.fail(f"GET /v1/nearby still answers {body} after {within_s} s, not {count} drivers")

    async def test_drivers_appear_move_and_leave(self) -> None:
        await self.start_node()
        d, out, err = self.msgctl("drivers", "--port", str(self.port("gate")), "--count", "3",
                                  "--every", "0.5", "--speed", "50", "--duration", "6")
        first = await self.online(3)
        self.assertEqual(sorted(x["uid"] for x in first), [101, 102, 103])
        # Each starts at the far end of its loop (k/3 of 2,000 m out), nearest first.
        for x, far in zip(first, (667, 1333, 2000), strict=True):
            self.assertLess(abs(x["distance_m"] - far), 100, first)
        await deferLater(R, 1.2, lambda: None)
        _, body = await self.http("GET", NEARBY)
        moved = {x["uid"]: (x["lat"], x["lon"]) for x in body["drivers"]}
        self.assertTrue(all(moved[x["uid"]] != (x["lat"], x["lon"]) for x in first), body)
        self.assertEqual(await d, 0)
        await self.online(0, within_s=3)  # logged out: off the map within a second
        self.assertEqual(out.getvalue(), "")
        self.assertRegex(err.getvalue(), r"\*\*\* 3 driver\(s\) logged out after \d+ position")

    async def test_an_offer_reaches_the_drivers_and_one_wins(self) -> None:
        await self.start_node()
        code, _ = await self.http("POST", "/v1/offers", {})
        if code == 404:
            self.skipTest("this node has no POST /v1/offers")
        drivers, driver_out, _ = self.msgctl(
            "drivers", "--port", str(self.port("gate")), "--count", "6", "--every", "0.5",
            "--accept", "--accept-within", "1.5", "--seed", "5", "--duration", "30")
        await self.online(6)
        offer, out, err = self.msgctl(
            "offer", "--http", f"http://127.0.0.1:{self.port('http')}", "--deadline", "10",
            "--wave", "700:1:0", "--wave", "5000:5:1.2", "--poll", "0.2")
        self.assertEqual(await offer, 0, err.getvalue())
        lines = out.getvalue().splitlines()
        self.assertRegex(lines[0], r"^offer \d+ \(logid [0-9a-f]+\) near 31.2304,121.4737 on "
                                   r"app 1002: 2 wave\(s\), accept deadline 10 s$")
        offer_id = lines[0].split()[1]
        # The nearest driver (101, ~333 m out) alone in wave 1.
        self.assertIn("wave 1 (+", out.getvalue())
        self.assertRegex(out.getvalue(), r"wave 1 \(\+\d+\.\d s\): pushed to 101 \(\d+ m\)\n")
        won = re.search(r"won by driver (\d+) \(wave (\d)\)", out.getvalue())
        self.assertIsNotNone(won, out.getvalue())
        assert won is not None
        winner = won.group(1)
        for _ in range(50):  # the outcome S2C reaches the winner
            if f"driver {winner}: offer {offer_id}: won" in driver_out.getvalue():
                break
            await deferLater(R, 0.1, lambda: None)
        text = driver_out.getvalue()
        self.assertIn(f"driver {winner}: accepted offer {offer_id}: OK", text)
        self.assertIn(f"driver {winner}: offer {offer_id}: won", text)
        drivers.cancel()
        await drivers.addErrback(lambda f: None)
