"""The webhook receiver, fed by the webhook bus and by other requests."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.web.http_headers import Headers

from daojia_msg.bus.envelope import CONTENT_TYPE, Envelope
from daojia_msg.bus.webhook_consumer import WebhookReceiver
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.bus.helpers import unavailable
from tests.bus.webhook_helpers import WebhookTestCase, message


class ReceiverTests(WebhookTestCase):
    def receiver(self, handle: Any = None) -> tuple[str, list[Envelope]]:
        got: list[Envelope] = []
        url = self.serve(WebhookReceiver(handle or got.append, topic="default"), "/hook")
        return url, got

    async def test_decodes_envelopes(self) -> None:
        url, got = self.receiver()
        bus, _ = self.open_bus(url)
        await bus.publish("gps", message(5, "inner"), "log-5")
        await bus.publish("gps", message(6, "inner-6"), "")
        [first, second] = got
        self.assertEqual((first.topic, first.logid, first.message.msgid), ("gps", "log-5", 5))
        self.assertEqual(first.message.content, b"\xff\xfe\x00\x80gps")
        self.assertEqual(first.message.kind, pb.C2S)
        self.assertEqual(second.logid, "inner-6")  # no X-Logid: the Message's own

    async def test_decodes_json_by_its_content_type(self) -> None:
        url, got = self.receiver()
        bus, _ = self.open_bus(url, webhook_retries=0)
        await bus.publish("offers", b'{"offer_id":"7","state":"expired"}', "7",
                          "application/json")
        self.assertEqual(got, [Envelope("offers", pb.Message(), "7", "application/json",
                                        {"offer_id": "7", "state": "expired"})])
        error = await unavailable(self, bus.publish("offers", b"[1]", "8", "application/json"))
        self.assertIn("refused it: HTTP 400", str(error))

    async def test_bad_body_is_400_and_not_retried(self) -> None:
        url, got = self.receiver()
        bus, _ = self.open_bus(url, webhook_retries=3)
        for body in (b"\xff\xff\xff", b""):
            error = await unavailable(self, bus.publish("gps", body, "l"))
            self.assertIn("refused it: HTTP 400", str(error))
        self.assertEqual(got, [])

    async def test_other_requests(self) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        url, got = self.receiver()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        response = await client.post(url, data=message(),
                                     headers=Headers({b"Content-Type": [b"text/plain"]}))
        self.assertEqual(response.code, 415)
        await response.content()
        response = await client.get(url)
        self.assertEqual(response.code, 405)
        await response.content()
        response = await client.post(url, data=message(),
                                     headers=Headers({b"Content-Type": [CONTENT_TYPE.encode()]}))
        self.assertEqual(response.code, 204)
        self.assertEqual(got[0].topic, "default")  # no X-Topic

    async def test_handler_deferred_and_failure(self) -> None:
        """A handler's Deferred holds the answer: 204 once it fires, 500 (so
        the bus retries) when it fails."""
        handled: DeferredQueue[Deferred[None]] = DeferredQueue()

        def handle(envelope: Envelope) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            handled.put(d)
            return d

        url, _ = self.receiver(handle)
        bus, _ = self.open_bus(url, webhook_retries=0)
        published = bus.publish("gps", message(), "l")
        (await handled.get()).callback(None)
        await published
        published = bus.publish("gps", message(), "l")
        (await handled.get()).errback(ZeroDivisionError())
        error = await unavailable(self, published)
        self.assertIn("HTTP 500", str(error))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_handler_raises(self) -> None:
        def handle(envelope: Envelope) -> None:
            raise ZeroDivisionError()

        url, _ = self.receiver(handle)
        bus, _ = self.open_bus(url, webhook_retries=0)
        error = await unavailable(self, bus.publish("gps", message(), "l"))
        self.assertIn("HTTP 500", str(error))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
