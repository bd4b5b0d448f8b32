"""Fixtures of the cluster tests: a Redis that fails on demand, a Redis test case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daojia_msg.cluster.registry import NodeRegistry
from daojia_msg.config import ClusterConfig, RedisConfig
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.redisconn import Redis, connect
from tests.servers import redis_prefix, require_redis

#: A fixed, realistic start time (2026-11-26) for the fake clocks.
T0 = 1795700000.0
CLUSTER = ClusterConfig()  # heartbeat 2 s, TTL 6 s, Redis outage grace 30 s


class FlakyRedis(Redis):
    """The same pool, but every call fails while ``down`` is set."""

    def __init__(self, real: Redis) -> None:
        super().__init__(real.pool, real.prefix, real.timeout)
        self.down = False

    async def call(self, *args: Any) -> Any:
        if self.down:
            raise StoreUnavailable(f"redis {args[0]}: down (test)")
        return await super().call(*args)


class RedisFixture(TestCase):
    """A Redis connection with a key prefix of its own; registries on fake clocks."""

    async def asyncSetUp(self) -> None:
        url = require_redis()
        self.prefix = redis_prefix(self)
        self.redis = await connect(RedisConfig(url=url, key_prefix=self.prefix))
        self.addCleanup(self.redis.close)

    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.asyncSetUp())

    def registry(self, wanted_id: int | None = None, *, clock: Clock | None = None,
                 connections: Callable[[], int] = lambda: 0,
                 on_purged: Callable[[], Any] = lambda: None,
                 on_rejoin: Callable[[], Any] = lambda: None,
                 redis: Redis | None = None) -> NodeRegistry:
        if clock is None:
            clock = Clock()
            clock.advance(T0)
        return NodeRegistry(
            redis or self.redis, CLUSTER, clock, wanted_id=wanted_id, gate=("10.0.0.1", 7000),
            rpc=("127.0.0.1", 7100), connections=connections, on_purged=on_purged,
            on_rejoin=on_rejoin,
        )

    async def started(self, wanted_id: int | None = None, **kwargs: Any) -> NodeRegistry:
        registry = self.registry(wanted_id, **kwargs)
        await registry.start()
        self.addCleanup(registry.stop)
        return registry

    async def kill(self, node_id: int) -> None:
        """What expiry does to a node that stopped heartbeating."""
        await self.redis.call("DEL", self.redis.key("lease", node_id),
                              self.redis.key("node", node_id))

    async def members(self) -> set[int]:
        return {int(m) for m in await self.redis.call("SMEMBERS", self.redis.key("nodes"))}
