"""The RabbitMQ bus on a real RabbitMQ: the envelope on the wire, publisher
confirms, failures (no broker, a silent one, refused credentials, a nack), a
connection cut mid-way and the reconnect backoff, a channel closed by the
broker, stop(); and the confirm bookkeeping on a fake channel."""

from __future__ import annotations

import os
import shutil
from typing import Any, cast
from uuid import uuid4

import pika
from pika.adapters.twisted_connection import TwistedChannel
from pika.exceptions import ChannelClosedByBroker
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus.amqp import AmqpBus
from daojia_msg.bus.amqp_connection import BACKOFF_INITIAL_S, CONNECT_TIMEOUT_S, Broker
from daojia_msg.bus.envelope import CONTENT_TYPE
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.router import make_bus
from daojia_msg.config import BusConfig
from daojia_msg.core.errors import BusTimeout, BusUnavailable
from tests.bus.amqp_helpers import (
    RAW,
    AmqpTestCase,
    FakePikaChannel,
    Proxy,
    SilentFactory,
    next_event,
    with_port,
)
from tests.bus.helpers import unavailable
from tests.servers import closed_port, listen


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

    async def test_the_media_type_is_the_content_type(self) -> None:
        bus = await self.started()
        queue = await self.raw.bind(self.exchange, self.topic)
        await bus.publish(self.topic, b'{"offer_id":"1"}', "1", "application/json")
        got = await self.raw.get(queue)
        assert got is not None
        self.assertEqual((got.body, got.properties.content_type),
                         (b'{"offer_id":"1"}', "application/json"))

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
        failure = await unavailable(self, bus.publish(self.topic, b"2", "log-2"))
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
        failure = await unavailable(self, bus.start())
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
        failure = await unavailable(self, started)
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
        failure = await unavailable(self, bus.start())
        self.assertIn("ACCESS_REFUSED", str(failure))
        self.assertIn(f"amqp://{broker.parameters.credentials.username}@", str(failure))
        self.assertNotIn("wrong-s3cret-pw", str(failure))
        for event in events:
            self.assertNotIn("wrong-s3cret-pw", formatEvent(event))
            self.assertNotIn("wrong-s3cret-pw", repr(event))

    async def test_unknown_vhost(self) -> None:
        bus = self.bus(self.url.rstrip("/") + "/no-such-vhost-" + uuid4().hex[:6])
        failure = await unavailable(self, bus.start())
        self.assertIn("NOT_ALLOWED", str(failure))

    async def test_exchange_declared_otherwise(self) -> None:
        """The exchange exists with another type: start() says so."""
        other = f"msgp-test-{uuid4().hex[:12]}"
        await self.raw.declare_exchange(other, exchange_type="direct", durable=True)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.raw.delete_exchange(other)))
        bus = AmqpBus(self.url, BusConfig(amqp_exchange=other), reactor)
        self.addCleanup(bus.stop)
        failure = await unavailable(self, bus.start())
        self.assertIn("PRECONDITION_FAILED", str(failure))
        self.assertIn("inequivalent arg 'type'", str(failure))

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
            # Sent and not confirmed: the broker may have it (TIMEOUT, not UNAVAILABLE).
            self.assertIn("lost the connection", str(self.failureResultOf(d, BusTimeout).value))
        self.assertFalse(bus.connected)
        self.assertEqual(bus.unconfirmed, 0)
        failure = self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable)
        self.assertIn("not connected", str(failure.value))
        when = bus.when_connected()

        # The broker stays unreachable: 0.5 s, then 1 s, 2 s, 2 s ... between
        # attempts (a node's bus comes back within 2 s of its broker).
        for delay in (0.5, 1.0, 2.0, 2.0):
            self.assertEqual(self.delays(), [delay])  # and nothing else
            retry = next_event(self, bus, "retry")
            self.clock.advance(delay)
            self.assertEqual(self.delays(), [CONNECT_TIMEOUT_S])  # attempting
            event = await retry
            self.assertIn("refused", event["reason"])
        self.assertEqual(self.delays(), [2.0])
        self.assertNoResult(when)

        # Back: the next attempt connects and the delay starts over.
        self.assertEqual(bus.reconnects, 0)  # failed attempts are not reconnections
        self.proxy.listen()
        self.clock.advance(8.0)
        await when
        self.assertTrue(bus.connected)
        self.assertEqual(self.delays(), [])
        self.assertEqual(bus.reconnects, 1)  # msgplatform_bus_reconnects_total
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
        failure = await self.assertFailure(bus.publish(self.topic, b"x", "log-1"), BusTimeout)
        self.assertIn("NOT_FOUND", str(failure))
        # Refused at once (no channel), or failed by the closing one: never a success.
        self.failureResultOf(bus.publish(self.topic, b"x", "log-1"), BusUnavailable, BusTimeout)
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
        failure = self.failureResultOf(in_flight, BusTimeout)
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
        failure = await unavailable(self, started)
        self.assertIn("stopped", str(failure))
        await silent.gone
        self.assertEqual(clock.getDelayedCalls(), [])


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
            self.assertIn("NOT_FOUND", str(self.failureResultOf(d, BusTimeout).value))
