"""Nearby order offers on a real node whose default bus is Redis Streams:
the outcome is one entry of the stream ``offers``, its ``msg`` the JSON
object of docs/protocol.md §7.6 (not a protobuf envelope), its ``logid`` the
offer's; the accept frames never reach a stream."""

from __future__ import annotations

import os
from dataclasses import replace

from daojia_msg.config import BusConfig, ListenConfig, default_config
from tests.nodes import NodeTestCase
from tests.offerstream import OffersStream
from tests.servers import require_redis

LAT, LON = 31.2304, 121.4737


class OffersOnRedisStreamsTests(NodeTestCase):
    async def test_the_outcome_is_one_json_entry_of_the_offers_stream(self) -> None:
        url = require_redis()
        stream = OffersStream(self, url)
        config = default_config().replace(
            data_dir=os.path.abspath(self.mktemp()),
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                http="tcp:0:interface=127.0.0.1"),
            bus=BusConfig(url=url, publish_timeout_s=5.0),  # the outcomes
            buses={"local": "memory:"},  # the positions, on the demo's geo route
            routes=tuple(replace(r, bus="local") for r in default_config().routes))
        await self.run_node(config)
        driver, inbox = await self.client(7, 1002)
        await driver.c2s(1, b"%.6f,%.6f" % (LAT, LON))
        code, answer = await self.http("POST", "/v1/offers", {
            "appcode": 1002, "lat": LAT, "lon": LON, "msgtype": 5, "content": "order",
            "waves": [{"radius_m": 100, "count": 1, "after_s": 0}], "accept_deadline_s": 60})
        self.assertEqual(code, 200, answer)
        [offer] = await inbox.wait(1)
        self.assertEqual(int(offer.logid, 16), int(answer["offer_id"]))  # how a phone finds it
        await driver.c2s(3, answer["offer_id"].encode())
        await inbox.wait(2)
        self.assertEqual(await stream.published(), [
            ({"offer_id": answer["offer_id"], "state": "accepted", "winner_uid": 7},
             answer["logid"])])
