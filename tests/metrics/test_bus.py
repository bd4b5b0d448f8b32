"""The C2S buses on /metrics: a real node's publishes, and a bus that refuses."""

from __future__ import annotations

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import fail
from twisted.web.client import HTTPConnectionPool

from daojia_msg.client.errors import ResultError
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.protocol.codes import Code
from tests.nodes import NodeTestCase, R


class BusMetricsTests(NodeTestCase):
    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        pool = HTTPConnectionPool(R, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{self.port('http')}/metrics", pool=pool)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(await response.text())
                for s in family.samples}

    async def test_publishes_and_errors(self) -> None:
        node = await self.start_node()
        driver, _ = await self.client(7, 1002)
        for i in range(4):
            await driver.c2s(1, b"31.2,121.%d" % i)         # the demo geo route to topic gps
        bus = node.router.buses[""]
        real = bus.publish
        bus.publish = lambda *a: fail(BusUnavailable("broker gone"))  # type: ignore[method-assign]
        try:
            await driver.c2s(1, b"31.2,121.5")
        except ResultError as e:
            self.assertEqual(e.code, Code.UNAVAILABLE)
        else:
            self.fail("a refused publish was answered OK")
        bus.publish = real  # type: ignore[method-assign]
        samples = await self.scrape()
        default = (("bus", "default"),)
        self.assertEqual(samples[("msgplatform_bus_publish_seconds_count", default)], 5)
        self.assertEqual(samples[("msgplatform_bus_errors_total", default)], 1)
        self.assertEqual(samples[("msgplatform_bus_reconnects_total", default)], 0)  # in memory
        self.assertEqual(samples[("msgplatform_bus_pending", ())], 0)
        self.assertEqual(samples[("msgplatform_bus_max_pending", ())],
                         node.config.bus.max_pending)
