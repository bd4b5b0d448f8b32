"""The webhook bus against a real twisted.web server on loopback, and the
webhook receiver.

The HTTP runs on the reactor; the bus's attempt timeouts and retry delays run on
a :class:`ScheduleClock` the tests advance, so no test sleeps or polls. Every
server connection is closed and waited for at cleanup.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredQueue,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from daojia_msg.bus import webhook
from daojia_msg.bus.envelope import Envelope
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.webhook import CONTENT_TYPE, WebhookBus, WebhookReceiver, backoff, redact
from daojia_msg.config import BusConfig, ConfigError
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.servers import listen

#: A scripted answer: keep the request open until the test answers it.
HOLD = 0
#: A scripted answer: 200 and the start of a body that never ends.
HOLD_BODY = 1
#: The bus's per-attempt timeout (on the ScheduleClock: it fires only when advanced).
ATTEMPT_S = 5.0
#: How long a test waits for something the reactor must do (a safety net, not a delay).
WAIT_S = 10.0


def message(n: int = 1, logid: str = "log-1") -> bytes:
    """A serialized C2S Message; its bytes are not valid UTF-8."""
    return pb.Message(msgid=n, from_uid=7, from_appcode=1001, msgtype=1,
                      content=b"\xff\xfe\x00\x80gps", logid=logid,
                      kind=pb.C2S).SerializeToString()


def soon(d: Deferred[Any], value: object) -> None:
    """Fire ``d`` on the next reactor turn (never inside the caller's stack)."""
    reactor.callLater(0, d.callback, value)


class ScheduleClock(Clock):
    """A Clock that tells when something is scheduled ``delay`` seconds ahead."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[float, Deferred[IDelayedCall]]] = []

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> IDelayedCall:
        call = super().callLater(delay, callable, *args, **kw)
        for want, d in list(self._waiters):
            if abs(want - delay) < 1e-9:
                self._waiters.remove((want, d))
                soon(d, call)
        return call

    def scheduled(self, delay: float) -> Deferred[IDelayedCall]:
        """Fires with the call once one is pending ``delay`` seconds from now."""
        for call in self.getDelayedCalls():
            if call.active() and abs(call.getTime() - self.seconds() - delay) < 1e-9:
                return succeed(call)
        d: Deferred[IDelayedCall] = Deferred()
        self._waiters.append((delay, d))
        return d.addTimeout(WAIT_S, reactor)


@dataclass
class Recorded:
    uri: bytes
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> list[bytes] | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else list(values)

    @property
    def topic(self) -> bytes:
        return (self.header(b"x-topic") or [b""])[0]


class Scripted(Resource):
    """Records each POST and answers with the next scripted status (then 204);
    :data:`HOLD` keeps the request open until :meth:`answer`."""

    isLeaf = True

    def __init__(self, *script: int) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[Recorded] = []
        self.held: list[tuple[Recorded, Request]] = []
        self.in_flight: dict[bytes, int] = {}
        self.most_in_flight: dict[bytes, int] = {}
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        recorded = Recorded(request.uri, request.requestHeaders.copy(), request.content.read())
        self.requests.append(recorded)
        for n, d in list(self._waiters):
            if len(self.requests) >= n:
                self._waiters.remove((n, d))
                soon(d, None)
        status = self.script.pop(0) if self.script else 204
        if status == HOLD_BODY:
            request.setResponseCode(200)
            request.write(b"partial")
            return NOT_DONE_YET
        if status != HOLD:
            request.setResponseCode(status)
            return b"nope" if status >= 300 else b""
        topic = recorded.topic
        self.in_flight[topic] = self.in_flight.get(topic, 0) + 1
        self.most_in_flight[topic] = max(self.most_in_flight.get(topic, 0),
                                         self.in_flight[topic])
        self.held.append((recorded, request))

        def gone(_: object) -> None:
            self.in_flight[topic] -= 1
            self.held[:] = [(r, q) for r, q in self.held if q is not request]

        request.notifyFinish().addBoth(gone)
        return NOT_DONE_YET

    def arrived(self, n: int) -> Deferred[None]:
        """Fires once ``n`` requests have arrived in all."""
        d: Deferred[None] = Deferred()
        if len(self.requests) >= n:
            soon(d, None)
        else:
            self._waiters.append((n, d))
        return d.addTimeout(WAIT_S, reactor)

    def answer(self, index: int = 0, status: int = 204) -> Recorded:
        """Answer the ``index``-th request still held."""
        recorded, request = self.held[index]
        request.setResponseCode(status)
        request.finish()
        return recorded


class TrackingSite(Site):
    """A Site that can close its connections and wait until they are gone."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.noisy = False
        self.open: dict[Any, Deferred[None]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
        connection_lost = protocol.connectionLost
        make_connection = protocol.makeConnection

        def makeConnection(transport: Any) -> None:
            self.open[transport] = lost
            make_connection(transport)

        def connectionLost(reason: Failure) -> None:
            try:
                connection_lost(reason)
            finally:
                for transport, d in list(self.open.items()):
                    if d is lost:
                        del self.open[transport]
                lost.callback(None)

        protocol.makeConnection = makeConnection
        protocol.connectionLost = connectionLost
        return protocol

    async def close(self) -> None:
        waiting = list(self.open.values())
        for transport in list(self.open):
            transport.abortConnection()
        await gatherResults(waiting)




async def unavailable(test: TestCase, d: Deferred[Any]) -> BusUnavailable:
    error: BusUnavailable = await test.assertFailure(d, BusUnavailable)
    return error


class WebhookTestCase(TestCase):
    def serve(self, resource: Resource, path: str = "/c2s?token=tok3n") -> str:
        """Serve ``resource`` on loopback until cleanup; its URL."""
        site = TrackingSite(resource)
        self.addCleanup(lambda: Deferred.fromCoroutine(site.close()))
        _, port = listen(self, site)
        return f"http://127.0.0.1:{port}{path}"

    def open_bus(self, url: str, **config: Any) -> tuple[WebhookBus, ScheduleClock]:
        """A started bus on a ScheduleClock, stopped at cleanup."""
        clock = ScheduleClock()
        config.setdefault("webhook_timeout_s", ATTEMPT_S)
        bus = WebhookBus(url, BusConfig(url=url, **config), reactor, clock=clock)
        self.successResultOf(bus.start())
        self.addCleanup(bus.stop)
        return bus, clock


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
        receiver.answer(0)
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
            receiver.answer([r.topic for r, _ in receiver.held].index(b"gps"))
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
                                     headers=Headers({b"Content-Type": [CONTENT_TYPE]}))
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
