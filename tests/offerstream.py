"""The ``offers`` stream of a Redis Streams bus, for end-to-end tests of
nearby order offers: the entries a test's node published (those after the
test began), and their deletion at cleanup (the stream itself only if no
other entry is left)."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from daojia_msg.config import RedisConfig
from daojia_msg.redisconn import connect

R: Any = reactor
TOPIC = "offers"


class OffersStream:
    def __init__(self, test: TestCase, url: str) -> None:
        self.url = url
        self.since = f"{int(time.time() * 1000)}-0"
        test.addCleanup(self.delete)

    async def _call(self, *args: Any) -> Any:
        redis = await connect(RedisConfig(url=self.url, key_prefix=""))
        try:
            return await redis.call(*args)
        finally:
            await redis.close()

    async def entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self._call("XRANGE", TOPIC, self.since, "+")
        return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entry_id, flat in reply]

    async def published(self) -> list[tuple[Any, str]]:
        """The entries' JSON and logid, once there is one (looked for every
        50 ms for up to 5 s: the node publishes right after the outcome S2C)."""
        for _ in range(100):
            found = await self.entries()
            if found:
                break
            await deferLater(R, 0.05, lambda: None)
        return [(json.loads(fields[b"msg"]), fields[b"logid"].decode()) for _, fields in found]

    async def delete(self) -> None:
        for entry_id, _ in await self.entries():
            await self._call("XDEL", TOPIC, entry_id)
        if await self._call("XLEN", TOPIC) == 0:
            await self._call("DEL", TOPIC)
