"""The RabbitMQ bus and consumer on a real RabbitMQ: the envelope on the wire,
publisher confirms, failures (no broker, a silent one, refused credentials, a
nack), a connection cut mid-way and the reconnect backoff, a channel closed
by the broker, stop(); and the confirm bookkeeping on a fake channel.

Others may share the broker: each test publishes to its own random exchange,
binds its own exclusive queues (gone with the test's connection) and deletes
the exchange at cleanup.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any, cast
from uuid import uuid4

import pika
from pika.adapters.twisted_connection import (
    ReceivedMessage,
    TwistedChannel,
    TwistedProtocolConnection,
)
from pika.exceptions import ChannelClosedByBroker
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory, ProxyFactory, ProxyServer
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus.amqp import (
    BACKOFF_INITIAL_S,
    CONNECT_TIMEOUT_S,
    CONTENT_TYPE,
    AmqpBus,
    AmqpConsumer,
    Broker,
    redact_url,
)
from daojia_msg.bus.envelope import Envelope
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.router import make_bus
from daojia_msg.config import BusConfig
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.servers import _reachable, closed_port, listen, missing

AMQP_URL = os.environ.get("MSGP_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
#: Bytes that are not UTF-8 (and not a protobuf ``Message`` either).
RAW = b"\x00\xff\xfe\x80 not utf-8 \xc3\x28"


def require_rabbitmq() -> str:
    """The test broker's URL (guest on vhost "/" unless MSGP_TEST_AMQP says otherwise)."""
    broker = Broker.parse(AMQP_URL)
    if not _reachable(broker.host, broker.port):
        missing(f"RabbitMQ is not running at {broker.host}:{broker.port} (set MSGP_TEST_AMQP)")
    return AMQP_URL


def with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` (same credentials and vhost)."""
    broker = Broker.parse(url)
    p = broker.parameters
    return (f"amqp://{p.credentials.username}:{p.credentials.password}@127.0.0.1:{port}/"
            f"{'%2F' if p.virtual_host == '/' else p.virtual_host}")


def message(**fields: Any) -> pb.Message:
    fields.setdefault("kind", pb.C2S)
    return pb.Message(**fields)






async def unavailable(d: Deferred[Any]) -> str:
    """The text of the :class:`BusUnavailable` that ``d`` fails with."""
    try:
        await d
    except BusUnavailable as e:
        return str(e)
    raise AssertionError(f"{d!r} did not fail with BusUnavailable")


def next_event(test: TestCase, source: object, amqp_event: str) -> Deferred[LogEvent]:
    """Fires with the next log event of ``source`` whose ``amqp_event`` field is
    ``amqp_event`` ("lost", "retry"): how a test waits for the bus without polling."""
    d: Deferred[LogEvent] = Deferred()

    def on_event(event: LogEvent) -> None:
        if (event.get("log_source") is source and event.get("amqp_event") == amqp_event
                and not d.called):
            globalLogPublisher.removeObserver(observe)
            d.callback(event)

    observe = cast(ILogObserver, on_event)
    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return d


class Raw:
    """A plain pika connection of the test's own, to look at the broker."""

    def __init__(self, proto: TwistedProtocolConnection, channel: TwistedChannel) -> None:
        self.proto = proto
        self.channel = channel

    @classmethod
    async def open(cls, test: TestCase, url: str) -> Raw:
        broker = Broker.parse(url, "msgplatform test")
        proto = TwistedProtocolConnection(broker.parameters, custom_reactor=reactor)
        await connectProtocol(TCP4ClientEndpoint(reactor, broker.host, broker.port), proto)
        await cast(Deferred[Any], proto.ready)
        raw = cls(proto, await proto.channel())
        test.addCleanup(raw.close)
        return raw

    async def close(self) -> None:
        closed = self.proto.close()
        if closed is not None:
            await closed

    async def bind(self, exchange: str, topic: str, **arguments: Any) -> str:
        """A new exclusive queue (gone with this connection) bound to ``topic``."""
        frame = await self.channel.queue_declare("", exclusive=True, arguments=arguments or None)
        queue = cast(str, frame.method.queue)
        await self.channel.queue_bind(queue, exchange, topic)
        return queue

    async def get(self, queue: str) -> ReceivedMessage | None:
        return cast("ReceivedMessage | None", await self.channel.basic_get(queue, auto_ack=True))

    async def declare_exchange(self, exchange: str, **kw: Any) -> None:
        """Declare (or check, with ``passive=True``) on a channel of its own:
        a mismatch closes that channel and fails with ChannelClosedByBroker."""
        channel = await self.proto.channel()
        try:
            await channel.exchange_declare(exchange, **kw)
        finally:
            if channel.is_open:
                channel.close()

    async def queue_exists(self, queue: str) -> bool:
        channel = await self.proto.channel()
        try:
            await channel.queue_declare(queue, passive=True)
        except ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            if e.reply_code == 405:  # RESOURCE_LOCKED: exclusive to another connection
                return True
            raise
        channel.close()
        return True

    async def delete_exchange(self, exchange: str) -> None:
        await self.channel.exchange_delete(exchange)

    async def delete_queue(self, queue: str) -> None:
        await self.channel.queue_delete(queue)


class Proxy:
    """A TCP proxy to the broker that the test can cut and switch off: "the
    network failed". It remembers its port, so it can listen there again."""

    def __init__(self, test: TestCase, host: str, port: int) -> None:
        self.test = test
        self.factory = _ProxyFactory(self, host, port)
        self.live: dict[Protocol, Deferred[None]] = {}
        self.servers: list[ProxyServer] = []
        self.listening: IListeningPort | None = None
        self.port = 0
        test.addCleanup(self.shut)

    def listen(self) -> None:
        self.listening = reactor.listenTCP(self.port, cast(Any, self.factory), interface="127.0.0.1")
        self.port = cast(IPv4Address, self.listening.getHost()).port

    async def stop_listening(self) -> None:
        if self.listening is not None:
            listening, self.listening = self.listening, None
            await cast(Deferred[None], listening.stopListening())

    def cut(self) -> None:
        """Drop every connection at once (no AMQP close, no FIN to wait for)."""
        for server in self.servers:
            if server.transport is not None:
                cast(Any, server.transport).abortConnection()
        self.servers = []

    async def shut(self) -> None:
        await self.stop_listening()
        self.cut()
        await gatherResults(list(self.live.values()))


class _ProxyServer(ProxyServer):
    factory: _ProxyFactory

    def connectionMade(self) -> None:
        self.tracker = self.factory.proxy
        self.tracker.live[self] = Deferred()
        self.tracker.servers.append(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.tracker.live.pop(self).callback(None)


class _ProxyClient(ProxyClient):
    def connectionMade(self) -> None:
        assert isinstance(self.peer, _ProxyServer)
        self.tracker = self.peer.tracker
        self.tracker.live[self] = Deferred()
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.tracker.live.pop(self).callback(None)


class _ProxyClientFactory(ProxyClientFactory):
    protocol = _ProxyClient


_ProxyServer.clientProtocolFactory = _ProxyClientFactory


class _ProxyFactory(ProxyFactory):
    protocol = _ProxyServer

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        super().__init__(host, port)
        self.proxy = proxy


class Silent(Protocol):
    """A server that accepts and never answers; ``factory.accepted`` fires on connect,
    ``factory.gone`` when the client went."""

    factory: SilentFactory

    def connectionMade(self) -> None:
        self.factory.accepted.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.gone.callback(None)


class SilentFactory(Factory):
    def __init__(self) -> None:
        self.accepted: Deferred[None] = Deferred()
        self.gone: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Silent()
        protocol.factory = self
        return protocol


class AmqpTestCase(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.url = require_rabbitmq()
        self.exchange = f"msgp-test-{uuid4().hex[:12]}"
        self.topic = f"topic.{uuid4().hex[:8]}"
        self.raw = await Raw.open(self, self.url)
        # Declared as the bus declares it, so queues can be bound before a bus starts.
        await self.raw.declare_exchange(self.exchange, exchange_type="topic", durable=True)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.raw.delete_exchange(self.exchange)))

    def bus(self, url: str | None = None, **kw: Any) -> AmqpBus:
        """A bus on this test's exchange, stopped at cleanup."""
        bus = AmqpBus(url or self.url, BusConfig(amqp_exchange=self.exchange), reactor, **kw)
        self.addCleanup(bus.stop)
        return bus

    async def started(self, url: str | None = None, **kw: Any) -> AmqpBus:
        bus = self.bus(url, **kw)
        await bus.start()
        return bus


class PublishTests(AmqpTestCase):
    def test_provides_the_interface(self) -> None:
        bus = make_bus(self.url, BusConfig(amqp_exchange=self.exchange), reactor)
        self.assertIsInstance(bus, AmqpBus)
        self.assertTrue(verifyObject(IMessageBus, bus))

    async def test_envelope_on_the_wire(self) -> None:
        bus = await self.started()
        self.assertTrue(bus.connected)
        queue = await self.raw.bind(self.exchange, self.topic)
        other = await self.raw.bind(self.exchange, self.topic + ".other")
        await bus.publish(self.topic, RAW, "log-1")
        got = await self.raw.get(queue)
        assert got is not None
        self.assertEqual(got.body, RAW)
        self.assertEqual(got.method.exchange, self.exchange)
        self.assertEqual(got.method.routing_key, self.topic)
        self.assertEqual(got.properties.delivery_mode, 2)
        self.assertEqual(got.properties.content_type, CONTENT_TYPE)
        self.assertEqual(got.properties.headers, {"logid": "log-1"})
        self.assertIsNone(got.properties.message_id)
        self.assertIsNone(await self.raw.get(queue))
        self.assertIsNone(await self.raw.get(other))  # the routing key is the topic, exactly

    async def test_exchange_is_a_durable_topic_exchange(self) -> None:
        await self.started()
        # Declaring it again with the same type and flags is accepted ...
        await self.raw.declare_exchange(self.exchange, exchange_type="topic", durable=True)
        # ... with others it is not.
        for kw in ({"exchange_type": "topic", "durable": False},
                   {"exchange_type": "direct", "durable": True}):
            await self.assertFailure(Deferred.fromCoroutine(
                self.raw.declare_exchange(self.exchange, **kw)), ChannelClosedByBroker)

    async def test_fires_only_on_the_broker_confirm(self) -> None:
        """Each publish fires after the broker's ack that covers its delivery
        tag (its own, or a later one with ``multiple`` set), never before."""
        frames: list[tuple[str, int, bool]] = []
        fired: list[tuple[int, int]] = []  # (delivery tag, confirm frames seen by then)
        original = TwistedChannel._on_delivery_confirmation

        def spy(channel: TwistedChannel, frame: Any) -> None:
            m = frame.method
            frames.append((type(m).__name__, m.delivery_tag, m.multiple))
            original(channel, frame)

        self.patch(TwistedChannel, "_on_delivery_confirmation", spy)
        bus = await self.started()
        queue = await self.raw.bind(self.exchange, self.topic)
        n = 300
        ds = [bus.publish(self.topic, b"%d" % i, f"log-{i}") for i in range(n)]
        for d in ds:
            self.assertNoResult(d)
        self.assertEqual(bus.unconfirmed, n)
        def on_fired(_: None, tag: int) -> None:
            fired.append((tag, len(frames)))

        for tag, d in enumerate(ds, 1):
            d.addCallback(on_fired, tag)
        await gatherResults(ds)
        self.assertEqual(bus.unconfirmed, 0)
        self.assertEqual([tag for tag, _ in fired], list(range(1, n + 1)))
        for tag, seen in fired:
            self.assertTrue(any(kind == "Ack" and (t == tag or (multiple and t >= tag))
                                for kind, t, multiple in frames[:seen]), (tag, frames[:seen]))
        for i in range(n):  # all there, in order
            got = await self.raw.get(queue)
            assert got is not None
            self.assertEqual((got.body, got.properties.headers), (b"%d" % i, {"logid": f"log-{i}"}))

    async def test_unrouted_topic_is_accepted(self) -> None:
        """Publishes are not mandatory: no queue bound, the broker still acks."""
        bus = await self.started()
        await bus.publish("nobody.listens", b"x", "log-1")

    async def test_nack_fails_that_publish_only(self) -> None:
        """A queue that is full and set to reject-publish makes the broker nack."""
        bus = await self.started()
        await self.raw.bind(self.exchange, self.topic, **{"x-max-length": 1,
                                                          "x-overflow": "reject-publish"})
        await bus.publish(self.topic, b"1", "log-1")
        failure = await unavailable(bus.publish(self.topic, b"2", "log-2"))
        self.assertIn("nack", str(failure))
        self.assertTrue(bus.connected)
        await bus.publish(self.topic + ".elsewhere", b"3", "log-3")

    async def test_topic_too_long_for_a_routing_key(self) -> None:
        bus = await self.started()
        failure = self.failureResultOf(bus.publish("t" * 256, b"x", "log-1"), BusUnavailable)
        self.assertIn("cannot publish", str(failure.value))
        self.assertTrue(bus.connected)
        await bus.publish("t" * 255, b"x", "log-1")


class UnavailableTests(AmqpTestCase):
    def test_publish_before_start_fails_at_once(self) -> None:
        bus = self.bus()
        self.assertFalse(bus.connected)
        failure = self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable)
        self.assertIn("not connected to RabbitMQ at amqp://guest@", str(failure.value))

    async def test_broker_down_fails_start_quickly(self) -> None:
        port = await closed_port(self)
        clock = Clock()
        bus = self.bus(with_port(self.url, port), clock=clock)
        when = bus.when_connected()
        failure = await unavailable(bus.start())
        self.assertIn(f"cannot connect to RabbitMQ at amqp://guest@127.0.0.1:{port}/", str(failure))
        self.assertIn("refused", str(failure))
        self.assertFalse(bus.connected)
        self.failureResultOf(when, BusUnavailable)
        self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable)
        self.assertEqual(clock.getDelayedCalls(), [])  # no reconnect loop after a failed start

    async def test_silent_broker_times_out(self) -> None:
        silent = SilentFactory()
        _, port = listen(self, silent)
        clock = Clock()
        bus = self.bus(with_port(self.url, port), clock=clock, connect_timeout_s=3)
        started = bus.start()
        await silent.accepted
        clock.advance(2.9)
        self.assertNoResult(started)
        clock.advance(0.1)
        failure = await unavailable(started)
        self.assertIn("no answer within 3 s", str(failure))
        await silent.gone  # the half-open connection was cut
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_refused_credentials_name_the_user_not_the_password(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        broker = Broker.parse(self.url)
        url = (f"amqp://{broker.parameters.credentials.username}:wrong-s3cret-pw@"
               f"{broker.host}:{broker.port}/")
        bus = self.bus(url)
        self.assertNotIn("wrong-s3cret-pw", repr(bus))
        failure = await unavailable(bus.start())
        self.assertIn("ACCESS_REFUSED", str(failure))
        self.assertIn(f"amqp://{broker.parameters.credentials.username}@", str(failure))
        self.assertNotIn("wrong-s3cret-pw", str(failure))
        for event in events:
            self.assertNotIn("wrong-s3cret-pw", formatEvent(event))
            self.assertNotIn("wrong-s3cret-pw", repr(event))

    async def test_unknown_vhost(self) -> None:
        bus = self.bus(self.url.rstrip("/") + "/no-such-vhost-" + uuid4().hex[:6])
        failure = await unavailable(bus.start())
        self.assertIn("NOT_ALLOWED", str(failure))

    async def test_exchange_declared_otherwise(self) -> None:
        """The exchange exists with another type: start() says so."""
        other = f"msgp-test-{uuid4().hex[:12]}"
        await self.raw.declare_exchange(other, exchange_type="direct", durable=True)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.raw.delete_exchange(other)))
        bus = AmqpBus(self.url, BusConfig(amqp_exchange=other), reactor)
        self.addCleanup(bus.stop)
        failure = await unavailable(bus.start())
        self.assertIn("PRECONDITION_FAILED", failure)
        self.assertIn("inequivalent arg 'type'", failure)

    def test_bad_url(self) -> None:
        with self.assertRaises(ValueError) as e:
            AmqpBus("amqp://u:s3cret@h:notaport/", BusConfig(), reactor)
        self.assertNotIn("s3cret", str(e.exception))


class ReconnectTests(AmqpTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        broker = Broker.parse(self.url)
        self.proxy = Proxy(self, broker.host, broker.port)
        self.proxy.listen()
        self.clock = Clock()
        self.queue = await self.raw.bind(self.exchange, self.topic)

    def delays(self) -> list[float]:
        return [call.getTime() - self.clock.seconds() for call in self.clock.getDelayedCalls()]

    async def test_cut_connection_fails_unconfirmed_then_reconnects_with_backoff(self) -> None:
        bus = await self.started(with_port(self.url, self.proxy.port), clock=self.clock)
        await bus.publish(self.topic, b"before", "log-0")

        # Publishes in flight when the network fails: none is confirmed, all fail.
        await self.proxy.stop_listening()  # (the open connection stays)
        lost = next_event(self, bus, "lost")
        in_flight = [bus.publish(self.topic, b"lost %d" % i, "log-x") for i in range(5)]
        self.proxy.cut()
        event = await lost
        self.assertEqual((event["failed"], event["delay"]), (5, BACKOFF_INITIAL_S))
        self.assertIn(BACKOFF_INITIAL_S, self.delays())
        for d in in_flight:
            self.assertIn("lost the connection", str(self.failureResultOf(d, BusUnavailable).value))
        self.assertFalse(bus.connected)
        self.assertEqual(bus.unconfirmed, 0)
        failure = self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable)
        self.assertIn("not connected", str(failure.value))
        when = bus.when_connected()

        # The broker stays unreachable: 0.5 s, then 1 s, 2 s, ... between attempts.
        for delay in (0.5, 1.0, 2.0, 4.0):
            self.assertEqual(self.delays(), [delay])  # and nothing else
            retry = next_event(self, bus, "retry")
            self.clock.advance(delay)
            self.assertEqual(self.delays(), [CONNECT_TIMEOUT_S])  # attempting
            event = await retry
            self.assertIn("refused", event["reason"])
        self.assertEqual(self.delays(), [8.0])
        self.assertNoResult(when)

        # Back: the next attempt connects and the delay starts over.
        self.proxy.listen()
        self.clock.advance(8.0)
        await when
        self.assertTrue(bus.connected)
        self.assertEqual(self.delays(), [])
        await bus.publish(self.topic, b"after", "log-2")
        bodies = []
        while (got := await self.raw.get(self.queue)) is not None:
            bodies.append(got.body)
        self.assertEqual(bodies[0], b"before")
        self.assertEqual(bodies[-1], b"after")  # "lost" ones may or may not have made it

        lost = next_event(self, bus, "lost")
        self.proxy.cut()
        self.assertEqual((await lost)["delay"], BACKOFF_INITIAL_S)

    async def test_backoff_is_capped(self) -> None:
        bus = await self.started(with_port(self.url, self.proxy.port), clock=self.clock,
                                 backoff_max_s=3.0)
        lost = next_event(self, bus, "lost")
        await self.proxy.stop_listening()
        self.proxy.cut()
        await lost
        seen = []
        for _ in range(4):
            [delay] = self.delays()
            seen.append(delay)
            retry = next_event(self, bus, "retry")
            self.clock.advance(delay)
            await retry
        self.assertEqual(seen, [0.5, 1.0, 2.0, 3.0])
        self.assertEqual(self.delays(), [3.0])

    async def test_channel_closed_by_broker_reconnects_and_redeclares(self) -> None:
        """Someone deletes the exchange: the next publish makes the broker close
        the channel (404); the bus fails it, reconnects and declares the exchange again."""
        bus = await self.started(clock=self.clock)
        await self.raw.delete_exchange(self.exchange)
        lost = next_event(self, bus, "lost")
        failure = await unavailable(bus.publish(self.topic, b"x", "log-1"))
        self.assertIn("NOT_FOUND", str(failure))
        self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable)
        self.assertEqual((await lost)["delay"], BACKOFF_INITIAL_S)
        self.clock.advance(BACKOFF_INITIAL_S)
        await bus.when_connected()
        await self.raw.declare_exchange(self.exchange, passive=True)  # it is back
        queue = await self.raw.bind(self.exchange, self.topic)
        await bus.publish(self.topic, b"again", "log-2")
        got = await self.raw.get(queue)
        assert got is not None
        self.assertEqual(got.body, b"again")


    async def test_broker_closes_the_connection(self) -> None:
        """``rabbitmqctl close_connection``: the bus logs the broker's reason and
        reconnects."""
        rabbitmqctl = shutil.which("rabbitmqctl") or shutil.which("/usr/sbin/rabbitmqctl")
        if rabbitmqctl is None:
            raise SkipTest("rabbitmqctl is not installed here (the broker may be elsewhere)")
        name = f"msgp-test-{uuid4().hex[:12]}"
        bus = await self.started(clock=self.clock, name=name)
        out, err, code = await getProcessOutputAndValue(
            rabbitmqctl, ["list_connections", "pid", "client_properties", "-q"], env=os.environ)
        if code != 0:
            raise SkipTest(f"rabbitmqctl cannot reach the broker: {err.decode(errors='replace')}")
        [pid] = [line.split("\t")[0] for line in out.decode().splitlines() if name in line]
        lost = next_event(self, bus, "lost")
        out, err, code = await getProcessOutputAndValue(
            rabbitmqctl, ["close_connection", pid, "msgplatform test"], env=os.environ)
        self.assertEqual(code, 0, err)
        event = await lost
        self.assertIn("closed by the broker: 320 CONNECTION_FORCED - msgplatform test",
                      event["reason"])
        self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable)
        self.clock.advance(event["delay"])
        await bus.when_connected()
        await bus.publish(self.topic, b"after", "log-2")
        got = await self.raw.get(self.queue)
        assert got is not None
        self.assertEqual(got.body, b"after")


class StopTests(AmqpTestCase):
    async def test_stop_fails_unconfirmed_and_leaves_nothing(self) -> None:
        clock = Clock()
        bus = await self.started(clock=clock)
        in_flight = bus.publish(self.topic, b"x", "log-1")
        stopped = bus.stop()
        failure = self.failureResultOf(in_flight, BusUnavailable)
        self.assertIn("stopped", str(failure.value))
        self.assertFalse(bus.connected)
        self.failureResultOf(bus.publish(self.topic, b"x", "log-2"), BusUnavailable)
        self.failureResultOf(bus.when_connected(), BusUnavailable)
        await stopped
        self.assertEqual(clock.getDelayedCalls(), [])  # no reconnect after stop()
        self.failureResultOf(bus.start(), BusUnavailable)

    async def test_stop_while_waiting_to_reconnect(self) -> None:
        broker = Broker.parse(self.url)
        proxy = Proxy(self, broker.host, broker.port)
        proxy.listen()
        clock = Clock()
        bus = await self.started(with_port(self.url, proxy.port), clock=clock)
        lost = next_event(self, bus, "lost")
        proxy.cut()
        await lost
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        when = bus.when_connected()
        await bus.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(when, BusUnavailable)

    async def test_stop_while_connecting(self) -> None:
        silent = SilentFactory()
        _, port = listen(self, silent)
        clock = Clock()
        bus = self.bus(with_port(self.url, port), clock=clock)
        started = bus.start()
        await silent.accepted
        await bus.stop()
        failure = await unavailable(started)
        self.assertIn("stopped", str(failure))
        await silent.gone
        self.assertEqual(clock.getDelayedCalls(), [])


class ConsumerTests(AmqpTestCase):
    def consumer(self, on_envelope: Callable[[Envelope], object], url: str | None = None,
                 **kw: Any) -> AmqpConsumer:
        consumer = AmqpConsumer(url or self.url, self.topic, reactor, on_envelope,
                                exchange=self.exchange, **kw)
        self.addCleanup(consumer.stop)
        return consumer

    def collector(self, n: int) -> tuple[list[Envelope], Deferred[None]]:
        got: list[Envelope] = []
        done: Deferred[None] = Deferred()

        def on_envelope(envelope: Envelope) -> None:
            got.append(envelope)
            if len(got) == n:
                done.callback(None)

        self.on_envelope = on_envelope
        return got, done

    async def test_receives_envelopes(self) -> None:
        got, done = self.collector(2)
        consumer = self.consumer(self.on_envelope)
        await consumer.start()
        bus = await self.started()
        first = message(msgid=7, from_uid=42, from_appcode=1001, msgtype=1,
                        content=b"\xff\xfe\x00 gps", logid="inner-1")
        second = message(msgid=8, content=b"x", logid="inner-2")
        await bus.publish(self.topic, first.SerializeToString(), "outer-1")
        await bus.publish(self.topic, second.SerializeToString(), "")
        await bus.publish(self.topic + ".other", first.SerializeToString(), "not mine")
        await done
        self.assertEqual(got[0], Envelope(self.topic, first, "outer-1"))
        self.assertEqual(got[1], Envelope(self.topic, second, "inner-2"))  # the Message's logid

    async def test_waits_for_the_handler_then_acks(self) -> None:
        held: Deferred[None] = Deferred()
        called: Deferred[Envelope] = Deferred()

        def on_envelope(envelope: Envelope) -> Deferred[None]:
            called.callback(envelope)
            return held

        consumer = self.consumer(on_envelope, queue=f"msgp-test-{uuid4().hex[:12]}")
        self.addCleanup(lambda: Deferred.fromCoroutine(self.raw.delete_queue(consumer.queue)))
        await consumer.start()
        bus = await self.started()
        await bus.publish(self.topic, message(msgid=1).SerializeToString(), "log-1")
        await called
        await consumer.stop()  # before the handler finished: not acked, back in the queue
        held.callback(None)
        got = await self.raw.get(consumer.queue)
        assert got is not None
        self.assertTrue(got.method.redelivered)

    async def test_rejects_what_is_not_an_envelope(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        got, done = self.collector(1)
        consumer = self.consumer(self.on_envelope)
        await consumer.start()
        bus = await self.started()
        await bus.publish(self.topic, b"\xff\xff\xff\xff", "log-bad")
        await bus.publish(self.topic, message(msgid=9).SerializeToString(), "log-good")
        await done
        self.assertEqual([e.logid for e in got], ["log-good"])
        self.assertIn("log-bad", [e.get("logid") for e in events if "not an envelope"
                                  in e.get("log_format", "")])

    async def test_exclusive_queue_goes_with_stop(self) -> None:
        consumer = self.consumer(lambda envelope: None)
        await consumer.start()
        self.assertTrue(consumer.queue.startswith("amq.gen-"))
        self.assertTrue(await self.raw.queue_exists(consumer.queue))
        await consumer.stop()
        self.assertFalse(await self.raw.queue_exists(consumer.queue))

    async def test_reconnects_and_a_named_queue_misses_nothing(self) -> None:
        """The network fails under a consumer of a named queue: it connects
        again (0.5 s, then 1 s ... on its clock) and gets what was published
        meanwhile."""
        broker = Broker.parse(self.url)
        proxy = Proxy(self, broker.host, broker.port)
        proxy.listen()
        clock = Clock()
        queue = f"msgp-test-q-{uuid4().hex[:8]}"
        self.addCleanup(lambda: Deferred.fromCoroutine(self.raw.delete_queue(queue)))
        got, done = self.collector(3)
        consumer = self.consumer(self.on_envelope, queue=queue, clock=clock,
                                 url=with_port(self.url, proxy.port))
        await consumer.start()
        bus = await self.started()
        await bus.publish(self.topic, message(msgid=1).SerializeToString(), "l1")
        await proxy.stop_listening()
        lost = next_event(self, consumer, "lost")
        proxy.cut()
        self.assertEqual((await lost)["delay"], BACKOFF_INITIAL_S)
        await bus.publish(self.topic, message(msgid=2).SerializeToString(), "l2")
        retry = next_event(self, consumer, "retry")
        clock.advance(BACKOFF_INITIAL_S)  # refused: the next try in twice the time
        self.assertEqual((await retry)["delay"], 2 * BACKOFF_INITIAL_S)
        proxy.listen()
        consuming = next_event(self, consumer, "consuming")
        clock.advance(2 * BACKOFF_INITIAL_S)
        await consuming
        await bus.publish(self.topic, message(msgid=3).SerializeToString(), "l3")
        await done.addTimeout(10, reactor)
        self.assertEqual(sorted(e.message.msgid for e in got), [1, 2, 3])

    async def test_stop_while_connecting(self) -> None:
        """stop() cancels a connection attempt (the first, or a reconnect) and
        leaves no socket and no timer behind."""
        silent = SilentFactory()
        _, port = listen(self, silent)
        clock = Clock()
        consumer = self.consumer(lambda e: None, url=with_port(self.url, port), clock=clock)
        started = consumer.start()
        await silent.accepted
        await consumer.stop()
        await unavailable(started)
        await silent.gone
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_broker_down(self) -> None:
        port = await closed_port(self)
        consumer = AmqpConsumer(with_port(self.url, port), self.topic, reactor, lambda e: None)
        failure = await unavailable(consumer.start())
        self.assertIn(f"amqp://guest@127.0.0.1:{port}/", str(failure))


class ConfirmBookkeepingTests(SynchronousTestCase):
    """The bus's side of publisher confirms, on pika's ``TwistedChannel`` over
    a fake pika channel: which publishes an ack or nack settles, a cancelled
    publish, a closed channel. (The real broker runs the same path above.)"""

    def setUp(self) -> None:
        self.fake = FakePikaChannel()
        self.channel = TwistedChannel(cast(Any, self.fake))
        self.channel.confirm_delivery()
        self.bus = AmqpBus("amqp://guest:guest@127.0.0.1:1/", BusConfig(amqp_exchange="x"),
                           reactor, clock=Clock())
        self.bus._channel = self.channel  # as after a successful start()

    def publish(self, n: int) -> list[Deferred[None]]:
        return [self.bus.publish("t", b"%d" % i, "log") for i in range(n)]

    def test_multiple_ack_settles_every_tag_up_to_it(self) -> None:
        ds = self.publish(5)
        self.fake.confirm(pika.spec.Basic.Ack(delivery_tag=3, multiple=True))
        for d in ds[:3]:
            self.assertIsNone(self.successResultOf(d))
        for d in ds[3:]:
            self.assertNoResult(d)
        self.fake.confirm(pika.spec.Basic.Ack(delivery_tag=5))
        self.assertNoResult(ds[3])
        self.assertIsNone(self.successResultOf(ds[4]))
        self.fake.confirm(pika.spec.Basic.Ack(delivery_tag=4))
        self.assertIsNone(self.successResultOf(ds[3]))
        self.assertEqual(self.bus.unconfirmed, 0)

    def test_nack(self) -> None:
        ds = self.publish(3)
        self.fake.confirm(pika.spec.Basic.Nack(delivery_tag=2, multiple=True))
        for d in ds[:2]:
            self.assertIn("nack", str(self.failureResultOf(d, BusUnavailable).value))
        self.assertNoResult(ds[2])

    def test_cancelled_then_confirmed(self) -> None:
        """The router's timeout cancels a publish; its late ack is ignored."""
        [d] = self.publish(1)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.bus.unconfirmed, 0)
        self.fake.confirm(pika.spec.Basic.Ack(delivery_tag=1))

    def test_channel_closed(self) -> None:
        ds = self.publish(2)
        self.fake.close(ChannelClosedByBroker(404, "NOT_FOUND - no exchange 'x'"))
        for d in ds:
            self.assertIn("NOT_FOUND", str(self.failureResultOf(d, BusUnavailable).value))


class FakePikaChannel:
    """What ``TwistedChannel`` uses of a pika ``Channel``, publishing into a list."""

    channel_number = 1

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def add_callback(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_on_cancel_callback(self, callback: Any) -> None:
        pass

    def add_on_return_callback(self, callback: Any) -> None:
        pass

    def add_on_close_callback(self, callback: Any) -> None:
        self._on_close = callback

    def confirm_delivery(self, ack_nack_callback: Any, callback: Any) -> None:
        self._ack_nack = ack_nack_callback
        callback(None)

    def basic_publish(self, **kwargs: Any) -> None:
        self.published.append(kwargs)

    def confirm(self, method: Any) -> None:
        self._ack_nack(pika.frame.Method(1, method))

    def close(self, reason: Exception) -> None:
        self._on_close(self, reason)


class UrlTests(SynchronousTestCase):
    def test_parse(self) -> None:
        broker = Broker.parse("amqps://u:p%40ss@mq.example:5999/orders%2Fc2s?heartbeat=10")
        self.assertEqual((broker.host, broker.port, broker.tls), ("mq.example", 5999, True))
        self.assertEqual(broker.parameters.virtual_host, "orders/c2s")
        self.assertEqual(broker.parameters.credentials.password, "p@ss")
        self.assertEqual(broker.parameters.heartbeat, 10)
        self.assertEqual(broker.display, "amqps://u@mq.example:5999/orders%2Fc2s")
        plain = Broker.parse("amqp://h")
        self.assertEqual((plain.port, plain.tls, plain.parameters.virtual_host), (5672, False, "/"))
        self.assertEqual(Broker.parse("amqps://h").port, 5671)
        with self.assertRaises(ValueError):
            Broker.parse("redis://h/0")

    def test_redact_url(self) -> None:
        for url, shown in [
            ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest@127.0.0.1:5672/"),
            ("amqps://u:p%40ss@h/v%2Fx?heartbeat=10", "amqps://u@h/v%2Fx"),
            ("amqp://:pw@h/", "amqp://h/"),
            ("amqp://h", "amqp://h"),
            ("amqp://u@[::1]:5673/x", "amqp://u@[::1]:5673/x"),
            ("nonsense", "<not a URL>"),
        ]:
            self.assertEqual(redact_url(url), shown)
