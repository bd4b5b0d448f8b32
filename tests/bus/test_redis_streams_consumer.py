"""The Redis Streams consumer on a real Redis: what it reads, from where, and
stopping it."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor

from daojia_msg.bus.redis_streams_consumer import RedisStreamsConsumer
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.bus.helpers import unavailable
from tests.bus.redis_streams_helpers import QUICK, TIMEOUT, Received, RedisTestCase, message
from tests.servers import closed_port


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

    async def test_a_json_entry_is_json_and_old_entries_protobuf(self) -> None:
        """An entry with a ``content_type`` field is decoded as it says; one
        without (as every entry before the field) is the protobuf envelope."""
        bus = await self.open_bus()
        await self.raw.execute_command("XADD", self.topic, "*", "msg", message(1), "logid", "old")
        await bus.publish(self.topic, b'{"offer_id":"7","state":"expired"}', "7",
                          "application/json")
        await bus.publish(self.topic, message(2), "new")
        received = Received()
        await self.consumer(received, start_id="0")
        await received.wait(3)
        old, offer, new = received.envelopes
        self.assertEqual((old.logid, old.content_type, old.message.msgid),
                         ("old", "application/x-protobuf", 2**64 - 2))
        self.assertEqual((offer.logid, offer.content_type, offer.data),
                         ("7", "application/json", {"offer_id": "7", "state": "expired"}))
        self.assertEqual((new.logid, new.message.msgid), ("new", 2**64 - 3))

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
