"""The RabbitMQ consumer on a real RabbitMQ: envelopes in, acks after the
handler, rejects, its queues, reconnecting without missing anything, stop()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from daojia_msg.bus.amqp_connection import BACKOFF_INITIAL_S, Broker
from daojia_msg.bus.amqp_consumer import AmqpConsumer
from daojia_msg.bus.envelope import Envelope
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.bus.amqp_helpers import (
    AmqpTestCase,
    Proxy,
    SilentFactory,
    message,
    next_event,
    with_port,
)
from tests.bus.helpers import unavailable
from tests.servers import closed_port, listen


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

    async def test_a_json_message_is_json(self) -> None:
        got, done = self.collector(2)
        consumer = self.consumer(self.on_envelope)
        await consumer.start()
        bus = await self.started()
        await bus.publish(self.topic, b'{"offer_id":"7","state":"expired"}', "7",
                          "application/json")
        await bus.publish(self.topic, message(msgid=8).SerializeToString(), "8")
        await done
        self.assertEqual(got[0], Envelope(self.topic, pb.Message(), "7", "application/json",
                                          {"offer_id": "7", "state": "expired"}))
        self.assertEqual((got[1].content_type, got[1].message.msgid),
                         ("application/x-protobuf", 8))

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
        await unavailable(self, started)
        await silent.gone
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_broker_down(self) -> None:
        port = await closed_port(self)
        consumer = AmqpConsumer(with_port(self.url, port), self.topic, reactor, lambda e: None)
        failure = await unavailable(self, consumer.start())
        self.assertIn(f"amqp://guest@127.0.0.1:{port}/", str(failure))
