"""The operations dashboard in a real browser (Chromium via Playwright): it
asks for an API key, lists the node, plots delivery rate and ACK latency per
route as messages flow, and shows a message's path by its logid."""

from __future__ import annotations

from typing import Any

from daojia_msg.config import Config, ListenConfig, LogConfig, default_config
from tests.browser.driver import Browser
from tests.nodes import NodeTestCase

SENDER, RECEIVER, APP, MSGTYPE = 11, 12, 1001, 5

#: Whether the chart in ``arg`` (its data-testid) drew any pixel in the first
#: series' colour (#2563eb), i.e. a line of data, not only axes and grid.
DREW_A_LINE = """
    (testid) => {
      const canvas = document.querySelector(`[data-testid="${testid}"] canvas`);
      if (!canvas) return false;
      const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
      let hits = 0;
      for (let i = 0; i < data.length; i += 4)
        if (Math.abs(data[i] - 37) < 30 && Math.abs(data[i + 1] - 99) < 30
            && Math.abs(data[i + 2] - 235) < 30 && data[i + 3] > 128) hits++;
      return hits > 20 ? hits : false;
    }"""


class DashboardTests(NodeTestCase):
    timeout = 120

    def config(self) -> Config:
        return default_config().replace(
            data_dir=self.mktemp(),
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1", http="tcp:0:interface=127.0.0.1"),
            log=LogConfig(trace_buffer=10000),
        )

    async def test_dashboard_plots_and_traces(self) -> None:
        await self.run_node(self.config())
        sender, _ = await self.client(SENDER, APP)
        _, inbox = await self.client(RECEIVER, APP)
        browser = await Browser.start(self)
        url = f"http://127.0.0.1:{self.port('http')}/ops/"
        await browser.call("goto", page="ops", url=url)

        await browser.call("fill", page="ops", selector='[data-testid="api-key-input"]',
                           value="not-a-key")
        await browser.call("click", page="ops", selector='[data-testid="api-key-submit"]')
        await browser.call("waitFor", page="ops", selector='[data-testid="api-key-error"]')
        await browser.call("fill", page="ops", selector='[data-testid="api-key-input"]',
                           value="demo-key-1001")
        await browser.call("click", page="ops", selector='[data-testid="api-key-submit"]')

        rows = await browser.call("waitFor", page="ops", selector='[data-testid="node-row"]')
        self.assertEqual(rows, 1)
        await browser.call("waitFor", page="ops", selector='[data-testid="total-sessions"]',
                           text="2")

        logids = []
        for i in range(20):  # delivered and ACKed while the page polls
            result = await sender.c2c(RECEIVER, APP, MSGTYPE, b"order %d" % i,
                                      logid=f"order-{i}")
            logids.append(result.logid)
        await inbox.wait(20)
        for chart in ("chart-delivery", "chart-latency"):
            hits = await browser.call("waitUntil", page="ops", expression=DREW_A_LINE,
                                      arg=chart, timeout=20000)
            self.assertGreater(hits, 20)
        legend: list[str] = await browser.call("texts", page="ops",
                                               selector='[data-testid="chart-delivery"]')
        self.assertIn(f"C2C app {APP} type {MSGTYPE}", legend[0])

        await browser.call("fill", page="ops", selector='[data-testid="trace-input"]',
                           value="order-7")
        await browser.call("click", page="ops", selector='[data-testid="trace-submit"]')
        count = await browser.call("waitFor", page="ops", selector='[data-testid="trace-row"]',
                                   count=2)
        events: list[str] = await browser.call("texts", page="ops",
                                               selector='[data-testid="trace-row"]')
        self.assertGreaterEqual(count, 2)
        self.assertTrue(all(str(self.node.node_id) in row for row in events), events)
        self.assertTrue(any(str(RECEIVER) in row for row in events), events)
        await browser.screenshot("ops", "dashboard")
        errors: list[Any] = await browser.call("errors", page="ops")
        self.assertEqual([e for e in errors if "401" not in e], [])
