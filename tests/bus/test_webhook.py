"""The webhook bus against a real twisted.web server on loopback: the request,
retries, timeouts (on a Clock the test advances), the concurrency per topic,
secrets kept out of logs."""

from __future__ import annotations

import base64
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus import webhook
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.webhook import WebhookBus, backoff, redact
from daojia_msg.config import BusConfig, ConfigError
from daojia_msg.core.errors import BusUnavailable
from tests.bus.helpers import unavailable
from tests.bus.webhook_helpers import (
    ATTEMPT_S,
    HOLD,
    HOLD_BODY,
    WAIT_S,
    Scripted,
    WebhookTestCase,
    message,
    soon,
)
from tests.servers import listen


class PublishTests(WebhookTestCase):
    async def test_provides_interface(self) -> None:
        bus, _ = self.open_bus(self.serve(Scripted()))
        self.assertTrue(verifyObject(IMessageBus, bus))

    async def test_headers_and_body_exact(self) -> None:
        receiver = Scripted()
        url = self.serve(receiver).replace("http://", "http://alice:s%40cr3t@")
        bus, _ = self.open_bus(url)
        payload = message()
        with self.assertRaises(UnicodeDecodeError):
            payload.decode()
        await bus.publish("gps", payload, "log-1")
        [request] = receiver.requests
        self.assertEqual(request.uri, b"/c2s?token=tok3n")
        self.assertEqual(request.body, payload)
        self.assertEqual(request.header(b"content-type"), [b"application/x-protobuf"])
        self.assertEqual(request.header(b"x-logid"), [b"log-1"])
        self.assertEqual(request.header(b"x-topic"), [b"gps"])
        self.assertEqual(request.header(b"content-length"), [str(len(payload)).encode()])
        self.assertEqual(request.header(b"authorization"),
                         [b"Basic " + base64.b64encode(b"alice:s@cr3t")])

    async def test_the_media_type_is_the_content_type(self) -> None:
        receiver = Scripted()
        bus, _ = self.open_bus(self.serve(receiver))
        await bus.publish("offers", b'{"offer_id":"1"}', "1", "application/json")
        [request] = receiver.requests
        self.assertEqual((request.body, request.header(b"content-type")),
                         (b'{"offer_id":"1"}', [b"application/json"]))

    async def test_no_userinfo_no_authorization(self) -> None:
        receiver = Scripted()
        bus, _ = self.open_bus(self.serve(receiver))
        await bus.publish("gps", b"", "")
        self.assertIsNone(receiver.requests[0].header(b"authorization"))
        self.assertEqual(receiver.requests[0].body, b"")

    async def test_retry_then_success(self) -> None:
        receiver = Scripted(500, 502)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=3)
        d = bus.publish("gps", message(), "log-1")
        await clock.scheduled(0.1)
        self.assertEqual(len(receiver.requests), 1)
        clock.advance(0.1)
        await clock.scheduled(0.2)
        self.assertEqual(len(receiver.requests), 2)
        clock.advance(0.2)
        await d
        self.assertEqual(len(receiver.requests), 3)
        self.assertEqual({r.body for r in receiver.requests}, {message()})
        self.assertEqual({r.header(b"x-logid")[0] for r in receiver.requests  # type: ignore[index]
                          }, {b"log-1"})

    async def test_all_attempts_fail(self) -> None:
        receiver = Scripted(500, 500, 500, 503)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=3)
        d = bus.publish("gps", message(), "log-1")
        for delay in (0.1, 0.2, 0.4):
            await clock.scheduled(delay)
            clock.advance(delay)
        error = await unavailable(self, d)
        self.assertEqual(len(receiver.requests), 4)
        self.assertIn("failed 4 attempts, the last: HTTP 503", str(error))
        self.assertNotIn("tok3n", str(error))

    async def test_408_and_429_are_retried(self) -> None:
        receiver = Scripted(429, 408)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=2)
        d = bus.publish("gps", message(), "log-1")
        for delay in (0.1, 0.2):
            await clock.scheduled(delay)
            clock.advance(delay)
        await d
        self.assertEqual(len(receiver.requests), 3)

    async def test_refusal_is_not_retried(self) -> None:
        for status in (400, 404, 413):
            receiver = Scripted(status)
            bus, clock = self.open_bus(self.serve(receiver), webhook_retries=3)
            error = await unavailable(self, bus.publish("gps", message(), "log-1"))
            self.assertIn(f"refused it: HTTP {status}", str(error))
            self.assertEqual(len(receiver.requests), 1)
            self.assertEqual(clock.getDelayedCalls(), [])

    async def test_timeout_then_retry(self) -> None:
        receiver = Scripted(HOLD)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=1)
        d = bus.publish("gps", message(), "log-1")
        await receiver.arrived(1)
        clock.advance(ATTEMPT_S)  # the attempt gives up (and drops its connection)
        await clock.scheduled(0.1)
        clock.advance(0.1)
        await d
        self.assertEqual(len(receiver.requests), 2)

    async def test_a_stall_of_the_node_is_not_a_timeout(self) -> None:
        """The attempt's timer runs late (the node was busy): the answer read
        after it counts; a second timeout without one does not."""
        receiver = Scripted(HOLD, HOLD)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=0)
        first = bus.publish("gps", message(), "log-1")
        second = bus.publish("orders", message(), "log-2")
        await receiver.arrived(2)
        clock.advance(3 * ATTEMPT_S)  # 10 s late: one more 5 s for both
        self.assertNoResult(first)
        receiver.answer_topic(b"gps")
        await first
        clock.advance(ATTEMPT_S)
        error = await unavailable(self, second)
        self.assertIn("no complete answer within 5 s", str(error))
        self.assertEqual(len(receiver.requests), 2)

    async def test_timeout_of_every_attempt(self) -> None:
        receiver = Scripted(HOLD)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=0)
        d = bus.publish("gps", message(), "log-1")
        await receiver.arrived(1)
        clock.advance(ATTEMPT_S)
        error = await unavailable(self, d)
        self.assertIn("no complete answer within 5 s", str(error))

    async def test_timeout_while_reading_the_body(self) -> None:
        """The attempt timeout covers the body too: a receiver that answers
        200 but never ends its body is a failed attempt."""
        reading: Deferred[None] = Deferred()
        drain = webhook._drain

        def spy(response: Any) -> Deferred[tuple[int, bytes]]:
            if response.code == 200:  # the first attempt's
                soon(reading, None)
            return drain(response)

        self.patch(webhook, "_drain", spy)
        receiver = Scripted(HOLD_BODY)
        bus, clock = self.open_bus(self.serve(receiver), webhook_retries=1)
        d = bus.publish("gps", message(), "log-1")
        await reading.addTimeout(WAIT_S, reactor)
        clock.advance(ATTEMPT_S)
        await clock.scheduled(0.1)
        clock.advance(0.1)
        await d
        self.assertEqual(len(receiver.requests), 2)

    async def test_connection_refused(self) -> None:
        listening, port = listen(self, ServerFactory())
        await cast(Deferred[None], listening.stopListening())  # nothing answers there now
        bus, clock = self.open_bus(f"http://127.0.0.1:{port}/", webhook_retries=1)
        d = bus.publish("gps", message(), "log-1")
        await clock.scheduled(0.1)
        clock.advance(0.1)
        error = await unavailable(self, d)
        self.assertIn("failed 2 attempts", str(error))
        self.assertIn("ConnectionRefused", str(error))

    async def test_caller_cancel_stays_a_cancel(self) -> None:
        """The router's publish timeout cancels: that is not BusUnavailable."""
        receiver = Scripted(HOLD)
        bus, _ = self.open_bus(self.serve(receiver))
        d = bus.publish("gps", message(), "log-1")
        await receiver.arrived(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    async def test_not_started_or_stopped(self) -> None:
        url = self.serve(Scripted())
        bus = WebhookBus(url, BusConfig(url=url), reactor)
        self.failureResultOf(bus.publish("gps", b"", ""), BusUnavailable)
        bus, _ = self.open_bus(url)
        await bus.stop()
        self.failureResultOf(bus.publish("gps", b"", ""), BusUnavailable)


class ConcurrencyTests(WebhookTestCase):
    async def test_at_most_concurrency_per_topic(self) -> None:
        receiver = Scripted(*[HOLD] * 8)
        bus, _ = self.open_bus(self.serve(receiver), webhook_concurrency=2)
        gps = [bus.publish("gps", message(n), f"g{n}") for n in range(5)]
        other = bus.publish("orders", message(), "o")
        # Two gps requests and the other topic's: that one is not held up by gps.
        await receiver.arrived(3)
        self.assertEqual(sorted(r.topic for r in receiver.requests), [b"gps", b"gps", b"orders"])
        for arrived in range(4, 7):
            receiver.answer_topic(b"gps")
            await receiver.arrived(arrived)
        while receiver.held:
            receiver.answer()
        await gatherResults([*gps, other])
        # Sent in the order published; the first two went at once, over two
        # connections, so they may arrive in either order: each later one was
        # sent only after an answer, so it arrived after them.
        logids = [r.header(b"x-logid")[0] for r in receiver.requests if r.topic == b"gps"]
        self.assertEqual(sorted(logids[:2]), [b"g0", b"g1"])
        self.assertEqual(logids[2:], [b"g2", b"g3", b"g4"])
        self.assertEqual(receiver.most_in_flight, {b"gps": 2, b"orders": 1})
        self.assertEqual(bus._semaphores, {})  # idle topics are forgotten

    async def test_waiting_line_is_bounded_and_stop_fails_everything(self) -> None:
        receiver = Scripted(*[HOLD] * 20)
        bus, _ = self.open_bus(self.serve(receiver), webhook_concurrency=1)
        accepted = [bus.publish("gps", message(n), f"g{n}") for n in range(1 + 10)]
        refused = bus.publish("gps", message(), "late")
        error = self.failureResultOf(refused, BusUnavailable).value
        self.assertIn("10 C2S frames of topic gps already wait", str(error))
        await receiver.arrived(1)
        await bus.stop()
        for d in accepted:
            self.assertIn("stopped", str(self.failureResultOf(d, BusUnavailable).value))
        self.assertEqual(len(receiver.requests), 1)


class SecretsTests(WebhookTestCase):
    async def test_url_secrets_never_logged(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        receiver = Scripted(500, 400)
        url = self.serve(receiver).replace("http://", "http://alice:s3cr3t@")
        bus, clock = self.open_bus(url, webhook_retries=1)
        d = bus.publish("gps", message(), "log-1")
        await clock.scheduled(0.1)
        clock.advance(0.1)
        error = await unavailable(self, d)
        ours = [e for e in events if e["log_namespace"].startswith("daojia_msg")]
        self.assertTrue(ours)
        text = str(error) + "".join(f"{formatEvent(e)} {e!r}" for e in ours)
        self.assertIn("127.0.0.1", text)
        for secret in ("s3cr3t", "tok3n", "alice"):
            self.assertNotIn(secret, text)
        self.assertNotIn("s3cr3t", repr(bus))


class UnitTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        self.assertEqual([backoff(n) for n in range(8)],
                         [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
        self.assertEqual(backoff(10_000), 2.0)

    def test_redact(self) -> None:
        self.assertEqual(redact("https://u:p@h.example:8443/x/y?token=s#f"),
                         "https://h.example:8443/x/y")
        self.assertEqual(redact("http://[::1]:80/"), "http://[::1]:80/")
        self.assertEqual(redact("http://h/p"), "http://h/p")

    def test_bad_url_names_the_key(self) -> None:
        for url in ("ftp://h/", "http:///nohost", "http://h:99999/"):
            with self.assertRaises(ConfigError) as caught:
                WebhookBus(url, BusConfig(), Clock())
            self.assertEqual(caught.exception.path, ("bus", "url"))

    def test_target_drops_userinfo_keeps_query(self) -> None:
        bus = WebhookBus("https://a:b@h.example/in?k=v", BusConfig(), Clock())
        self.assertEqual(bus.target, "https://h.example/in?k=v")
        self.assertEqual(bus.safe_url, "https://h.example/in")
