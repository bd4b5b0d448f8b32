"""The operations dashboard's Drivers map in a real browser: ``msgctl
drivers`` runs simulated drivers against a real node, and the map plots
each of them (one SVG marker per uid, GET /v1/nearby) and follows them as
they move."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError

from daojia_msg.config import Config, ListenConfig, default_config
from daojia_msg.msgctl import cli
from tests.browser.driver import Browser, R
from tests.nodes import NodeTestCase

DRIVERS = 5

#: The plotted centre of a driver's marker (its uid in ``arg``), or null.
MARKER_AT = """
    (uid) => {
      const dot = document.querySelector(`[data-testid="driver-marker"][data-uid="${uid}"] circle`);
      return dot ? [Number(dot.getAttribute("cx")), Number(dot.getAttribute("cy"))] : null;
    }"""

#: Whether the marker of ``arg.uid`` is more than 3 units away from ``arg.at``.
MOVED = """
    ({ uid, at }) => {
      const dot = document.querySelector(`[data-testid="driver-marker"][data-uid="${uid}"] circle`);
      if (!dot) return false;
      const x = Number(dot.getAttribute("cx")), y = Number(dot.getAttribute("cy"));
      return Math.hypot(x - at[0], y - at[1]) > 3 ? [x, y] : false;
    }"""


class DriverMapTests(NodeTestCase):
    timeout = 120

    def config(self) -> Config:
        return default_config().replace(
            data_dir=self.mktemp(),
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1", http="tcp:0:interface=127.0.0.1"),
        )

    async def test_the_map_plots_moving_drivers(self) -> None:
        await self.run_node(self.config())
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args([
            "drivers", "--port", str(self.port("gate")), "--count", str(DRIVERS),
            "--every", "1", "--speed", "40", "--spread", "1500", "--duration", "40"])
        drivers = cli.run(R, args, out, err)
        browser = await Browser.start(self)
        await browser.call("goto", page="ops", url=f"http://127.0.0.1:{self.port('http')}/ops/")
        await browser.call("fill", page="ops", selector='[data-testid="api-key-input"]',
                           value="demo-key-1001")  # 1002's drivers: the same user system
        await browser.call("click", page="ops", selector='[data-testid="api-key-submit"]')

        count = await browser.call("waitFor", page="ops", selector='[data-testid="driver-marker"]',
                                   count=DRIVERS, timeout=20000)
        self.assertEqual(count, DRIVERS)
        uids: list[str] = await browser.call("evaluate", page="ops", expression="""
            () => [...document.querySelectorAll('[data-testid="driver-marker"]')]
                .map((m) => m.getAttribute("data-uid"))""")
        self.assertEqual(sorted(uids), [str(101 + i) for i in range(DRIVERS)])
        caption: list[str] = await browser.call("texts", page="ops",
                                                selector='[data-testid="map-caption"]')
        self.assertIn(f"{DRIVERS} drivers online on app 1002 within 3,000 m", caption[0])
        rows = await browser.call("count", page="ops", selector='[data-testid="map-driver-row"]')
        self.assertEqual(rows, DRIVERS)

        # Every marker inside the map, the farthest driver (105, 1,500 m out) too.
        at: dict[str, Any] = {}
        for uid in uids:
            at[uid] = await browser.call("evaluate", page="ops", expression=MARKER_AT, arg=uid)
            x, y = at[uid]
            self.assertTrue(0 < x < 960 and 0 < y < 480, (uid, x, y))
        # They drive 40 m/s: within two refreshes the outermost has moved on the map.
        moved = await browser.call("waitUntil", page="ops", expression=MOVED,
                                   arg={"uid": "105", "at": at["105"]}, timeout=15000)
        self.assertTrue(moved)
        await browser.screenshot("ops", "drivers-map")

        # A radius the form refuses: its error outlives the refreshes of the
        # query before (a marker moves again: a refresh came and went), and the
        # caption says the map is still that query.
        await browser.call("fill", page="ops", selector='[data-testid="map-radius"]', value="0")
        await browser.call("click", page="ops", selector='[data-testid="map-submit"]')
        moved_at = await browser.call("evaluate", page="ops", expression=MARKER_AT, arg="105")
        self.assertTrue(await browser.call("waitUntil", page="ops", expression=MOVED,
                                           arg={"uid": "105", "at": moved_at}, timeout=15000))
        self.assertEqual(await browser.call("texts", page="ops",
                                            selector='[data-testid="map-error"]'),
                         ["The radius is more than 0 and at most 50,000 metres."])
        caption = await browser.call("texts", page="ops", selector='[data-testid="map-caption"]')
        self.assertTrue(caption[0].startswith("Still showing the last valid query: "
                                              f"{DRIVERS} drivers online on app 1002 within "
                                              "3,000 m"), caption)
        await browser.screenshot("ops", "drivers-map-form-error")
        await browser.call("fill", page="ops", selector='[data-testid="map-radius"]', value="3000")
        await browser.call("click", page="ops", selector='[data-testid="map-submit"]')
        errors: list[Any] = await browser.call("errors", page="ops")
        self.assertEqual(errors, [])

        # Stopped (as by Ctrl-C), the drivers log out and leave the map at its next refresh.
        drivers.cancel()
        await drivers.addErrback(lambda f: f.trap(CancelledError))
        self.assertIn(f"*** {DRIVERS} driver(s) logged out after", err.getvalue())
        await browser.call("waitFor", page="ops", selector='[data-testid="driver-marker"]',
                           count=0, timeout=15000)
        self.assertEqual(await browser.call("count", page="ops",
                                            selector='[data-testid="map-driver-row"]'), 0)
