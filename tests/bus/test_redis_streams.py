"""The Redis Streams bus and stream reader on a real Redis: the exact entries,
MAXLEN trimming, pipelining, failures that never hang, and the consumer.

Other tests share the Redis database: each test uses streams of random names
and deletes them at cleanup; nothing here flushes a database.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast
from uuid import uuid4

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus.envelope import Envelope
from daojia_msg.bus.errors import BusUnavailable
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.redis_streams import MAX_BATCH, RedisStreamsBus, RedisStreamsConsumer
from daojia_msg.config import BusConfig, parse_redis_url
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.servers import closed_port, listen, require_redis

#: Reply timeout of the failure tests.
TIMEOUT = 0.2
#: "Quickly" on the real reactor: a few timeouts, with room for a loaded
#: machine; a hang would take txredisapi's reconnect backoff or forever.
QUICK = 2.0


def new_topic() -> str:
    return f"msgp-test-{uuid4().hex[:12]}"


def message(n: int = 1, logid: str = "log-1") -> bytes:
    """A serialized C2S Message; its bytes are not valid UTF-8."""
    payload = pb.Message(msgid=2**64 - 1 - n, from_uid=7, from_appcode=1001, msgtype=1,
                         content=b"\xff\xfe\x00\x80gps", logid=logid,
                         kind=pb.C2S).SerializeToString()
    return payload






async def unavailable(test: TestCase, d: Deferred[Any]) -> BusUnavailable:
    """The :class:`BusUnavailable` that ``d`` fails with (else the test fails)."""
    error: BusUnavailable = await test.assertFailure(d, BusUnavailable)
    return error


class Silent(Protocol):
    """A server that accepts and never answers."""


class FreezableProxy(ProxyServer):
    """Forwards to Redis, or swallows what the client sends while frozen."""

    def dataReceived(self, data: bytes) -> None:
        if not cast(ControlledProxyFactory, self.factory).frozen:
            super().dataReceived(data)


class ControlledProxyFactory(ProxyFactory):
    """A TCP proxy to Redis that can go silent or cut every connection."""

    protocol = FreezableProxy

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.frozen = False
        self.servers: list[ProxyServer] = []

    def buildProtocol(self, addr: Any) -> ProxyServer | None:
        p = super().buildProtocol(addr)
        if p is not None:
            self.servers.append(p)
        return p


class RedisTestCase(TestCase):
    """A raw connection for checks (``self.raw``), streams deleted at cleanup."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = require_redis()
        u = parse_redis_url(self.url)
        self.raw = await txredisapi.Connection(
            u.host, u.port, dbid=u.db, reconnect=False, charset=None, convertNumbers=False,
            password=u.password or None, connectTimeout=2, replyTimeout=2)
        self.addCleanup(self.raw.disconnect)
        self.topic = self.stream()

    def stream(self) -> str:
        """A fresh stream name, deleted at cleanup."""
        name = new_topic()
        self.addCleanup(lambda: self.raw.execute_command("DEL", name))
        return name

    async def open_bus(self, url: str | None = None, **options: Any) -> RedisStreamsBus:
        maxlen = options.pop("stream_maxlen", 1_000_000)
        config = BusConfig(url=url or self.url, stream_maxlen=maxlen)
        bus = RedisStreamsBus(url or self.url, config, reactor, **options)
        await bus.start()
        self.addCleanup(bus.stop)
        return bus

    async def entries(self, topic: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self.raw.execute_command("XRANGE", topic, "-", "+")
        return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entry_id, flat in reply]

    async def xlen(self, topic: str) -> int:
        return int(await self.raw.execute_command("XLEN", topic))


class PublishTests(RedisTestCase):
    async def test_provides_interface(self) -> None:
        bus = await self.open_bus()
        self.assertTrue(verifyObject(IMessageBus, bus))

    async def test_entry_holds_exact_bytes_and_logid(self) -> None:
        bus = await self.open_bus()
        payload = message()
        with self.assertRaises(UnicodeDecodeError):
            payload.decode()
        numeric = b"12345"  # would come back as an int with convertNumbers
        await bus.publish(self.topic, payload, "log-1")
        await bus.publish(self.topic, numeric, "42")
        await bus.publish(self.topic, b"", "")
        entries = await self.entries(self.topic)
        self.assertEqual([fields for _, fields in entries], [
            {b"msg": payload, b"logid": b"log-1"},
            {b"msg": numeric, b"logid": b"42"},
            {b"msg": b"", b"logid": b""},
        ])
        # Field order as DESIGN.md §3 has it: msg, then logid.
        flat = (await self.raw.execute_command("XRANGE", self.topic, "-", "+"))[0][1]
        self.assertEqual(flat[::2], [b"msg", b"logid"])

    async def test_maxlen_trims_approximately(self) -> None:
        bus = await self.open_bus(stream_maxlen=10)
        count = 1000
        await gatherResults([bus.publish(self.topic, message(n), f"l{n}") for n in range(count)])
        # "~" trims whole stream nodes only: at most one node over the limit stays.
        _, node = await self.raw.execute_command("CONFIG", "GET", "stream-node-max-entries")
        length = await self.xlen(self.topic)
        self.assertGreaterEqual(length, 10)
        self.assertLessEqual(length, 10 + int(node))
        self.assertLess(length, count // 4)
        entries = await self.entries(self.topic)
        self.assertEqual(entries[-1][1][b"logid"], f"l{count - 1}".encode())

    async def test_one_turn_is_one_pipeline(self) -> None:
        bus = await self.open_bus(max_batch=1000)
        count = 500
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(count)]
        self.assertEqual(bus.pipelines, 0)  # nothing sent before the turn ends
        self.assertEqual(await gatherResults(ds), [None] * count)
        self.assertEqual(bus.pipelines, 1)
        self.assertEqual(bus.largest_batch, count)
        entries = await self.entries(self.topic)
        self.assertEqual([f[b"logid"] for _, f in entries],
                         [f"l{n}".encode() for n in range(count)])

    async def test_batches_are_bounded(self) -> None:
        bus = await self.open_bus()
        self.assertEqual(bus.max_batch, MAX_BATCH)
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(450)]
        await gatherResults(ds)
        self.assertEqual(bus.pipelines, -(-450 // MAX_BATCH))
        self.assertEqual(bus.largest_batch, MAX_BATCH)
        entries = await self.entries(self.topic)
        self.assertEqual([f[b"logid"] for _, f in entries],
                         [f"l{n}".encode() for n in range(450)])

    async def test_publishes_during_a_round_trip_share_the_next_pipeline(self) -> None:
        bus = await self.open_bus()
        first = bus.publish(self.topic, message(), "first")
        later: list[Deferred[None]] = []
        seen: list[int] = []

        def while_in_flight() -> None:
            # Runs right after the flush (scheduled before it, same delay).
            seen.append(bus.pipelines)
            later.extend(bus.publish(self.topic, message(n), f"l{n}") for n in range(80))

        reactor.callLater(0, while_in_flight)
        await first
        await gatherResults(later)
        self.assertEqual(seen, [1])
        self.assertEqual(bus.pipelines, 2)
        self.assertEqual(bus.largest_batch, 80)
        self.assertEqual(await self.xlen(self.topic), 81)

    async def test_error_reply_fails_only_its_caller(self) -> None:
        bus = await self.open_bus()
        not_a_stream = self.stream()
        await self.raw.execute_command("SET", not_a_stream, "x")
        good = bus.publish(self.topic, message(), "a")
        bad = bus.publish(not_a_stream, message(), "b")
        also_good = bus.publish(self.topic, message(), "c")
        await good
        error = await unavailable(self, bad)
        self.assertIn("WRONGTYPE", str(error))
        await also_good
        self.assertEqual(bus.pipelines, 1)
        self.assertEqual(await self.xlen(self.topic), 2)

    async def test_not_started_or_stopped_fails(self) -> None:
        bus = RedisStreamsBus(self.url, BusConfig(url=self.url), reactor)
        error = await unavailable(self, bus.publish(self.topic, b"x", "l"))
        self.assertIn("not connected", str(error))
        bus = await self.open_bus()
        await bus.stop()
        self.failureResultOf(bus.publish(self.topic, b"x", "l"), BusUnavailable)
        self.assertEqual(await self.xlen(self.topic), 0)

    async def test_stop_fails_queued_publishes(self) -> None:
        bus = await self.open_bus()
        d = bus.publish(self.topic, b"x", "l")
        await bus.stop()
        self.assertIn("stopped", str(self.failureResultOf(d, BusUnavailable).value))


class UnavailableTests(RedisTestCase):
    """Every failure is a prompt :class:`BusUnavailable`, never a hang."""

    async def test_start_on_closed_port(self) -> None:
        port = await closed_port(self)
        bus = RedisStreamsBus(f"redis://127.0.0.1:{port}/15", BusConfig(), reactor,
                              reply_timeout_s=TIMEOUT)
        started = time.monotonic()
        error = await unavailable(self, bus.start())
        self.assertTrue(str(error).startswith(f"cannot connect to Redis at 127.0.0.1:{port}/15"),
                        str(error))
        self.assertLess(time.monotonic() - started, QUICK)
        await bus.stop()

    async def test_start_on_silent_server(self) -> None:
        _, port = listen(self, ServerFactory.forProtocol(Silent))
        bus = RedisStreamsBus(f"redis://127.0.0.1:{port}/0", BusConfig(), reactor,
                              reply_timeout_s=TIMEOUT)
        started = time.monotonic()
        await unavailable(self, bus.start())
        self.assertLess(time.monotonic() - started, QUICK)

    async def proxied_bus(self) -> tuple[RedisStreamsBus, ControlledProxyFactory, IListeningPort]:
        u = parse_redis_url(self.url)
        proxy = ControlledProxyFactory(u.host, u.port)
        listening, port = listen(self, proxy)
        bus = await self.open_bus(f"redis://127.0.0.1:{port}/{u.db}", reply_timeout_s=TIMEOUT)
        await bus.publish(self.topic, message(), "before")
        return bus, proxy, listening

    async def test_server_went_away(self) -> None:
        bus, proxy, listening = await self.proxied_bus()
        await cast(Deferred[None], listening.stopListening())
        for server in proxy.servers:
            server.transport.loseConnection()
        started = time.monotonic()
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(50)]
        for d in ds:
            await unavailable(self, d)
        # And later ones at once, while it has no connection.
        await unavailable(self, bus.publish(self.topic, message(), "again"))
        self.assertLess(time.monotonic() - started, QUICK)
        self.assertEqual(await self.xlen(self.topic), 1)

    async def test_server_goes_silent(self) -> None:
        """The reply timeout fails the pipeline (and drops the connection)."""
        bus, proxy, _ = await self.proxied_bus()
        proxy.frozen = True
        started = time.monotonic()
        ds = [bus.publish(self.topic, message(n), f"l{n}") for n in range(50)]
        for d in ds:
            error = await unavailable(self, d)
            self.assertIn("Not received Redis response", str(error))
        self.assertLess(time.monotonic() - started, QUICK)

    async def test_connection_that_gave_up_is_replaced(self) -> None:
        """txredisapi stops reconnecting for good when SELECT fails on a
        reconnect; the bus then starts a new connection."""
        bus = await self.open_bus()
        gone = bus._conn
        await gone.disconnect()  # the state txredisapi leaves behind: stopped, empty
        error = await unavailable(self, bus.publish(self.topic, b"x", "l"))
        self.assertIn("not connected", str(error))
        self.assertIsNot(bus._conn, gone)
        await bus._conn.ping()  # waits for the new connection
        await bus.publish(self.topic, message(), "after")
        self.assertEqual(await self.xlen(self.topic), 1)


class Stuck:
    """A connection whose pipeline never comes (e.g. waiting for a connection)."""

    def __init__(self) -> None:
        self._factory = SimpleNamespace(size=1, pool=[], stopped=False)
        self.waiting: list[Deferred[Any]] = []

    def pipeline(self) -> Deferred[Any]:
        self.waiting.append(Deferred())
        return self.waiting[-1]

    def disconnect(self) -> Deferred[None]:
        return succeed(None)


class DeadlineTests(SynchronousTestCase):
    """The backstop deadline and the bounded queue, on a Clock."""

    def stuck_bus(self, config: BusConfig | None = None,
                  **options: Any) -> tuple[RedisStreamsBus, Clock, Stuck]:
        clock = Clock()
        bus = RedisStreamsBus("redis://127.0.0.1:1/15", config or BusConfig(), clock,
                              reply_timeout_s=TIMEOUT, **options)
        stuck = Stuck()
        bus._conn = stuck
        return bus, clock, stuck

    def test_deadline_when_no_reply_ever_comes(self) -> None:
        bus, clock, stuck = self.stuck_bus()
        ds = [bus.publish("t", b"x", "l") for _ in range(3)]
        clock.advance(0)
        self.assertEqual((bus.pipelines, len(stuck.waiting)), (1, 1))
        clock.advance(TIMEOUT * 1.5 - 0.01)
        for d in ds:
            self.assertNoResult(d)
        clock.advance(0.01)
        for d in ds:
            error = self.failureResultOf(d, BusUnavailable).value
            self.assertIn("no reply within 0.3 s", str(error))
        self.assertTrue(stuck.waiting[0].called)  # cancelled
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_queue_is_bounded(self) -> None:
        self.assertEqual(self.stuck_bus()[0].max_queued, 2 * BusConfig().max_pending)
        bus, clock, _ = self.stuck_bus(BusConfig(max_pending=10), max_batch=2)
        first = bus.publish("t", b"x", "l")
        clock.advance(0)  # in flight now
        queued = [bus.publish("t", b"x", "l") for _ in range(bus.max_queued)]
        self.assertEqual(bus.max_queued, 200)
        refused = bus.publish("t", b"x", "l")
        self.assertIn("already wait", str(self.failureResultOf(refused, BusUnavailable).value))
        for d in [first, *queued]:
            self.assertNoResult(d)
        self.successResultOf(bus.stop())
        for d in queued:
            self.failureResultOf(d, BusUnavailable)
        clock.advance(1)
        self.failureResultOf(first, BusUnavailable)

    def test_reply_timeout_fits_in_the_publish_timeout(self) -> None:
        bus = RedisStreamsBus("redis://h/1", BusConfig(publish_timeout_s=0.6), Clock())
        self.assertAlmostEqual(bus.deadline, 0.6)
        bus = RedisStreamsBus("redis://h/1", BusConfig(), Clock())
        self.assertEqual((bus.reply_timeout, bus.deadline), (2.0, 3.0))


class Received:
    """Envelopes a consumer delivered; ``wait(n)`` fires once there are n."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        for n, d in list(self._waiting):
            if len(self.envelopes) >= n:
                self._waiting.remove((n, d))
                d.callback(None)

    def wait(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.envelopes) >= n:
            d.callback(None)
        else:
            self._waiting.append((n, d))
        d.addTimeout(QUICK * 5, reactor)
        return d


class ConsumerTests(RedisTestCase):
    async def consumer(self, received: Received, **options: Any) -> RedisStreamsConsumer:
        consumer = RedisStreamsConsumer(self.url, self.topic, reactor, received, **options)
        await consumer.start()
        self.addCleanup(consumer.stop)
        return consumer

    async def test_receives_what_is_published_after_start(self) -> None:
        bus = await self.open_bus()
        await bus.publish(self.topic, message(99, "old"), "old")
        received = Received()
        await self.consumer(received, block_ms=200)
        for n in range(3):
            await bus.publish(self.topic, message(n, f"m{n}"), f"log-{n}")
        await received.wait(3)
        self.assertEqual([e.logid for e in received.envelopes], ["log-0", "log-1", "log-2"])
        for n, envelope in enumerate(received.envelopes):
            self.assertEqual(envelope.topic, self.topic)
            self.assertEqual(envelope.message.msgid, 2**64 - 1 - n)
            self.assertEqual(envelope.message.content, b"\xff\xfe\x00\x80gps")
            self.assertEqual(envelope.message.kind, pb.C2S)

    async def test_reads_from_an_id_and_skips_what_is_not_an_envelope(self) -> None:
        bus = await self.open_bus()
        await bus.publish(self.topic, message(1), "first")
        await self.raw.execute_command("XADD", self.topic, "*", "other", "x")
        await bus.publish(self.topic, b"\xff\xff\xff", "garbage")
        await bus.publish(self.topic, message(2), "")  # no logid: the Message's own
        received = Received()
        await self.consumer(received, start_id="0")
        await received.wait(2)
        self.assertEqual([e.logid for e in received.envelopes], ["first", "log-1"])
        self.assertEqual(received.envelopes[1].message.msgid, 2**64 - 3)

    async def test_stop_while_blocked_is_prompt(self) -> None:
        consumer = RedisStreamsConsumer(self.url, self.topic, reactor, Received(),
                                        block_ms=30_000)
        await consumer.start()
        started = time.monotonic()
        await consumer.stop()
        self.assertLess(time.monotonic() - started, QUICK)

    async def test_start_on_closed_port(self) -> None:
        port = await closed_port(self)
        consumer = RedisStreamsConsumer(f"redis://127.0.0.1:{port}/15", self.topic, reactor,
                                        Received(), reply_timeout_s=TIMEOUT)
        await unavailable(self, consumer.start())
        await consumer.stop()
