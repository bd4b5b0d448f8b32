"""Nearby order offers on a real node whose default bus is Redis Streams:
the outcome is one entry of the stream ``offers``, its ``msg`` the JSON
object of docs/protocol.md §7.6 (not a protobuf envelope), its ``logid`` the
offer's; the accept frames never reach a stream."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from daojia_msg.config import BusConfig, ListenConfig, RedisConfig, default_config
from daojia_msg.redisconn import Redis, connect
from tests.nodes import NodeTestCase
from tests.servers import require_redis

R: Any = reactor
LAT, LON = 31.2304, 121.4737


class OffersOnRedisStreamsTests(NodeTestCase):
    async def stream(self) -> Redis:
        """The bus's Redis; the test's entries of ``offers`` are deleted at cleanup."""
        redis = await connect(RedisConfig(url=self.url, key_prefix=""))
        since = f"{int(time.time() * 1000)}-0"

        async def cleanup() -> None:
            for entry_id, _ in await self.entries(redis, since):
                await redis.call("XDEL", "offers", entry_id)
            if await redis.call("XLEN", "offers") == 0:
                await redis.call("DEL", "offers")
            await redis.close()

        self.addCleanup(cleanup)
        self.since = since
        return redis

    async def entries(self, redis: Redis, since: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await redis.call("XRANGE", "offers", since, "+")
        return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entry_id, flat in reply]

    async def test_the_outcome_is_one_json_entry_of_the_offers_stream(self) -> None:
        self.url = require_redis()
        redis = await self.stream()
        config = default_config().replace(
            data_dir=os.path.abspath(self.mktemp()),
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1",
                                http="tcp:0:interface=127.0.0.1"),
            bus=BusConfig(url=self.url, publish_timeout_s=5.0))
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
        for _ in range(50):  # published after the outcome S2C
            if await self.entries(redis, self.since):
                break
            await deferLater(R, 0.1, lambda: None)
        [(_, fields)] = await self.entries(redis, self.since)
        self.assertEqual(json.loads(fields[b"msg"]),
                         {"offer_id": answer["offer_id"], "state": "accepted", "winner_uid": 7})
        self.assertEqual(fields[b"logid"].decode(), answer["logid"])
