"""C2S on real buses, end to end: a node routes GPS to Redis Streams and orders
to RabbitMQ; app servers read them with daojia_msg.consumer (and msgctl tail)."""

from __future__ import annotations

import io
import os
import socket
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.protocols.portforward import ProxyServer

from daojia_msg.bus.envelope import Envelope
from daojia_msg.client.errors import ResultError
from daojia_msg.config import BusConfig, ListenConfig, Route, default_config, parse_redis_url
from daojia_msg.consumer import consume
from daojia_msg.msgctl import cli
from daojia_msg.node import Node
from daojia_msg.protocol.codes import Code
from tests.bus.amqp_helpers import require_rabbitmq
from tests.nodes import NodeTestCase
from tests.servers import TrackingProxyFactory, require_redis

R: Any = reactor


class Watching(io.StringIO):
    """A text stream that fires ``seen`` once ``text`` was written to it."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen: Deferred[None] = Deferred()

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.text in self.getvalue() and not self.seen.called:
            self.seen.callback(None)
        return n


class Arrivals:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.first: Deferred[Envelope] = Deferred()

    def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        if not self.first.called:
            self.first.callback(envelope)


class HoldingProxy(ProxyServer):
    """Forwards to the server, or holds what the client sends while ``held``."""

    def dataReceived(self, data: bytes) -> None:
        factory: HoldingProxyFactory = self.factory  # type: ignore[assignment]
        if factory.held:
            factory.waiting.append((self, data))
        else:
            super().dataReceived(data)


class HoldingProxyFactory(TrackingProxyFactory):
    protocol = HoldingProxy

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.held = False
        self.waiting: list[tuple[ProxyServer, bytes]] = []

    def release(self) -> None:
        self.held = False
        waiting, self.waiting = self.waiting, []
        for server, data in waiting:
            ProxyServer.dataReceived(server, data)

    def cut(self) -> None:
        for server in self.servers:
            server.transport.abortConnection()


class BusesEndToEnd(NodeTestCase):
    async def start_with_buses(self, default_bus: str, buses: dict[str, str],
                               exchange: str, max_pending: int = 10000) -> Node:
        config = default_config().replace(
            data_dir=os.path.abspath(self.mktemp()),
            listen=ListenConfig(gate="tcp:0:interface=127.0.0.1", http="tcp:0:interface=127.0.0.1"),
            bus=BusConfig(url=default_bus, amqp_exchange=exchange, publish_timeout_s=5.0,
                          webhook_retries=1, webhook_timeout_s=1.0, max_pending=max_pending),
            buses=buses,
            routes=(Route(1001, 1, self.gps, ""), Route(1001, 2, self.orders, "orders")),
        )
        return await self.run_node(config)

    def setUp(self) -> None:
        self.gps = f"gps-{uuid.uuid4().hex[:8]}"
        self.orders = f"orders-{uuid.uuid4().hex[:8]}"

    async def test_routes_to_redis_streams_and_rabbitmq(self) -> None:
        redis_url = require_redis()
        amqp = require_rabbitmq()
        exchange = f"msgp-test-{uuid.uuid4().hex[:8]}"
        await self.start_with_buses(redis_url, {"orders": amqp}, exchange)
        gps, orders = Arrivals(), Arrivals()
        stop_gps = await consume(R, redis_url, self.gps, gps)
        self.addCleanup(stop_gps)
        stop_orders = await consume(R, amqp, self.orders, orders, exchange=exchange)
        self.addCleanup(stop_orders)
        self.addCleanup(self._delete_stream, redis_url)

        alice, _ = await self.client(1)
        sent_gps = await alice.c2s(1, b"31.23,121.47", logid="gps-trace-1")
        sent_order = await alice.c2s(2, b'{"order": 42} \xff', logid="order-trace-1")
        got_gps = await gps.first.addTimeout(10, R)
        got_order = await orders.first.addTimeout(10, R)
        for got, sent, content, topic in ((got_gps, sent_gps, b"31.23,121.47", self.gps),
                                          (got_order, sent_order, b'{"order": 42} \xff',
                                           self.orders)):
            self.assertEqual((got.topic, got.logid, got.message.msgid, got.message.content),
                             (topic, sent.logid, sent.msgid, content))
            self.assertEqual((got.message.from_uid, got.message.from_appcode), (1, 1001))
        self.assertEqual((len(gps.envelopes), len(orders.envelopes)), (1, 1))
        routes = {(r["msgtype"], r["kind"]): r["accepted"]
                  for r in self.node.stats.snapshot()["by_route"]}
        self.assertEqual((routes[(1, "C2S")], routes[(2, "C2S")]), (1, 1))

    async def _delete_stream(self, redis_url: str) -> None:
        from daojia_msg.config import RedisConfig
        from daojia_msg.redisconn import connect

        redis = await connect(RedisConfig(url=redis_url, key_prefix=""))
        await redis.call("DEL", self.gps)
        await redis.close()

    async def test_bus_down_is_unavailable(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        # The default bus is a webhook nobody listens on.
        await self.start_with_buses(f"http://127.0.0.1:{closed}/c2s", {"orders": "memory:"},
                                    "unused")
        alice, _ = await self.client(1)
        with self.assertRaises(ResultError) as e:
            await alice.c2s(1, b"lost?")
        self.assertEqual(e.exception.code, Code.UNAVAILABLE)
        ok = await alice.c2s(2, b"the memory bus is up")  # other routes keep working
        self.assertEqual(ok.code, Code.OK)
        self.assertEqual(len(self.node.router.buses["orders"].topics[self.orders]), 1)  # type: ignore[attr-defined]

    async def test_lagging_redis_pauses_the_gate_and_loses_nothing(self) -> None:
        """Real Redis behind a proxy that holds the bus's commands: the frames
        waiting reach ``bus.max_pending``, the gate stops reading; released,
        every frame is answered OK and in the stream, and the gate reads again.
        Then Redis goes away: UNAVAILABLE, and the node keeps serving."""
        redis_url = require_redis()
        self.addCleanup(self._delete_stream, redis_url)
        target = parse_redis_url(redis_url)
        proxy = HoldingProxyFactory(target.host, target.port)
        listening = R.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        proxied = f"redis://127.0.0.1:{listening.getHost().port}/{target.db}"
        await self.start_with_buses(proxied, {"orders": "memory:"}, "unused", max_pending=4)
        changes: list[bool] = []
        engaged: Deferred[None] = Deferred()
        on_pressure = self.node.router.on_pressure

        def watch(on: bool, source: str = "bus") -> None:
            changes.append(on)
            on_pressure(on, source)
            if on and not engaged.called:
                engaged.callback(None)

        self.node.router.on_pressure = watch
        alice, _ = await self.client(1)
        await alice.c2s(1, b"warm-up")  # the bus's connection is up and idle
        proxy.held = True
        sent = [alice.c2s(1, b"fix %d" % i, logid=f"bp-{i}") for i in range(12)]
        await engaged.addTimeout(10, R)
        self.assertTrue(self.node.gate.pressure)
        proxy.release()
        results = await gatherResults(sent).addTimeout(10, R)
        self.assertEqual([r.code for r in results], [Code.OK] * 12)
        # On at max_pending, off at half: as often as 12 frames over a cap of 4 take.
        self.assertEqual(changes, [True, False] * (len(changes) // 2))
        self.assertGreaterEqual(len(changes), 2)
        self.assertFalse(self.node.gate.pressure)
        self.assertEqual(await self._stream_length(redis_url), 13)
        # Redis gone: UNAVAILABLE (nothing acknowledged), other routes still served.
        await listening.stopListening()
        proxy.cut()
        with self.assertRaises(ResultError) as e:
            await alice.c2s(1, b"lost?").addTimeout(10, R)
        self.assertEqual(e.exception.code, Code.UNAVAILABLE)
        self.assertEqual((await alice.c2s(2, b"orders still go")).code, Code.OK)
        self.assertEqual(await self._stream_length(redis_url), 13)

    async def _stream_length(self, redis_url: str) -> int:
        from daojia_msg.config import RedisConfig
        from daojia_msg.redisconn import connect

        redis = await connect(RedisConfig(url=redis_url, key_prefix=""))
        try:
            return int(await redis.call("XLEN", self.gps))
        finally:
            await redis.close()

    async def test_msgctl_tail(self) -> None:
        redis_url = require_redis()
        self.addCleanup(self._delete_stream, redis_url)
        await self.start_with_buses(redis_url, {"orders": "memory:"}, "unused")
        out, err = io.StringIO(), Watching("*** tailing")
        args = cli.build_parser().parse_args(["tail", self.gps, "--bus", redis_url, "--count", "1"])
        tail = cli.run(R, args, out, err)
        alice, _ = await self.client(1)
        # The tail reads new entries only: send once it says it is reading.
        await err.seen.addTimeout(10, R)
        await alice.c2s(1, b"hello tail", logid="tail-1")
        self.assertEqual(await tail.addTimeout(10, R), 0)
        self.assertIn("logid=tail-1 hello tail", out.getvalue())
