"""Tests for daojia_msg.web.site: the access log, and the site end to end over a
TCP socket on loopback with treq."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import Request, combinedLogFormatter
from twisted.web.test.requesthelper import DummyChannel

from daojia_msg.config import Config
from daojia_msg.metrics.registry import make_registry
from daojia_msg.web.site import ACCESS_LOG_FLUSH_S, ACCESS_LOG_MAX_LINES, access_log_line, make_site
from tests.web.fakes import FakeNode
from tests.web.helpers import (
    SHOP,
    ApiTestCase,
    RawClient,
    as_headers,
    parse_response,
    push_body,
    two_systems,
)


class AccessLogTests(ApiTestCase):
    """One combined-format line per request, logged together as one event."""

    def setUp(self) -> None:
        super().setUp()
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def access_events(self) -> list[Any]:
        return [e for e in self.events if e.get("log_namespace") == "daojia_msg.web.access"]

    def test_lines_gathered(self) -> None:
        """No event per request: the lines of a second go out in one event."""
        for _ in range(3):
            self.assertEqual(self.push(push_body()).status, 200)
        self.request("GET", "/healthz", headers={"User-Agent": 'a "quoted" \\ agent'})
        self.assertEqual(self.access_events(), [])
        self.node.clock.advance(ACCESS_LOG_FLUSH_S)
        [event] = self.access_events()
        self.assertEqual(event["requests"], 4)
        lines = formatEvent(event).split("\n")
        self.assertEqual(len(lines), 4)
        self.assertRegex(lines[0], r'^"127\.0\.0\.1" - - \[.*\] "POST /v1/push HTTP/1\.1" 200 \d+ "-" "-"$')
        self.assertTrue(lines[3].endswith(' "GET /healthz HTTP/1.1" 200 20 "-" '
                                          '"a \\"quoted\\" \\\\ agent"'), lines[3])
        self.node.clock.advance(ACCESS_LOG_FLUSH_S)
        self.assertEqual(len(self.access_events()), 1)  # nothing new: no empty event

    def test_flushed_when_full(self) -> None:
        site: Any = self.site
        request = self.fake_request()
        for _ in range(ACCESS_LOG_MAX_LINES):
            site.log(request)
        [event] = self.access_events()
        self.assertEqual(event["requests"], ACCESS_LOG_MAX_LINES)
        self.node.clock.advance(ACCESS_LOG_FLUSH_S)  # its timer was cancelled
        self.assertEqual(len(self.access_events()), 1)

    def test_flushed_at_stop(self) -> None:
        self.push(push_body())
        self.site.doStop()
        [event] = self.access_events()
        self.assertEqual(event["requests"], 1)
        self.site.doStart()  # for the cleanup's doStop

    def fake_request(self, **headers: bytes) -> Request:
        request = Request(DummyChannel())
        request.method, request.uri, request.clientproto = b"POST", b"/v1/push", b"HTTP/1.1"
        request.code, request.sentLength = 200, 71
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name.encode("ascii"), [value])
        return request

    def test_line_same_as_combined_format(self) -> None:
        """The line is the text of twisted.web's combinedLogFormatter, escapes included."""
        tricky = [b"plain", b'quote " here', b"back \\ slash", b"it's", b"both ' and \"",
                  b"\xff\xfe bytes", b"tab\tnewline\n", b"\x7f del", b""]
        for value in tricky:
            for address in (IPv4Address("TCP", "10.1.2.3", 5), IPv6Address("TCP", "::1", 5),
                            UNIXAddress(b"/tmp/s")):
                request = self.fake_request(referer=value, **{"user-agent": value})
                request.uri = b"/v1/push?x=" + value
                request.client = address
                request.sentLength = len(value)
                with self.subTest(value=value, address=address):
                    self.assertEqual(access_log_line("[ts]", request),
                                     combinedLogFormatter("[ts]", request))


class RealSocketTests(TestCase):
    """End to end over a TCP socket on loopback, with treq, on the real reactor."""

    async def serve(self, config: Config) -> FakeNode:
        node = FakeNode(config)
        site = make_site(
            node.logic, config, serving=lambda: True, dispatch=lambda: ("127.0.0.1", 7000),
            registry=make_registry(node.logic.stats, lambda: 0, lambda: len(node.logic.local)),
            reactor=reactor,
        )
        open_channels: set[object] = set()
        waiters: list[Deferred[None]] = []
        build = site.buildProtocol

        def track(addr: object) -> Any:
            channel = build(addr)
            open_channels.add(channel)
            lost = channel.connectionLost

            def connectionLost(reason: Failure) -> None:
                lost(reason)
                open_channels.discard(channel)
                if not open_channels:
                    for d in waiters:
                        d.callback(None)
                    waiters.clear()

            channel.connectionLost = connectionLost
            return channel

        site.buildProtocol = track  # type: ignore[method-assign]

        def all_closed() -> Deferred[None]:
            if not open_channels:
                return succeed(None)
            d: Deferred[None] = Deferred()
            waiters.append(d)
            return d

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.addCleanup(all_closed)  # cleanups run last-in first-out: after the pool's
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.port = port.getHost().port
        self.base = f"http://127.0.0.1:{self.port}"
        return node

    async def test_push(self) -> None:
        node = await self.serve(two_systems())
        response = await treq.post(f"{self.base}/v1/push", json=push_body(to_uid="77"),
                                   headers=as_headers(SHOP), pool=self.pool)
        self.assertEqual(response.code, 200)
        answer = await response.json()
        [new] = node.store.stored
        self.assertEqual(answer["msgid"], str(new.message.msgid))
        self.assertEqual(new.message.to_uid, 77)

    async def test_errors_and_open_endpoints(self) -> None:
        await self.serve(two_systems())
        response = await treq.post(f"{self.base}/v1/push", data=b"{", headers=as_headers(SHOP), pool=self.pool)
        self.assertEqual(response.code, 400)
        self.assertIn("error", await response.json())
        response = await treq.post(f"{self.base}/v1/push", json=push_body(), pool=self.pool)
        self.assertEqual(response.code, 401)
        await response.content()
        response = await treq.get(f"{self.base}/healthz", pool=self.pool)
        self.assertEqual(await response.json(), {"status": "serving"})
        response = await treq.get(f"{self.base}/metrics", pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertIn(b"msgplatform_sessions 0.0", await response.content())

    async def test_declared_too_large(self) -> None:
        """Content-Length over the default 8 MiB: 413 at the headers, nothing stored."""
        config = two_systems()
        node = await self.serve(config)
        limit = config.limits.http_max_body
        self.assertEqual(limit, 8 * 1024 * 1024)
        head = (f"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-1001\r\n"
                f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n")
        client = RawClient(head.encode() + b'{"to_uid": 1')
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        response = parse_response(await client.done)
        self.assertEqual(response.status, 413)
        self.assertIn(str(limit), response.json()["error"])
        self.assertEqual(node.store.batches, [])

    async def test_sent_too_large(self) -> None:
        """A client sending a body over the limit gets the 413 and nothing is stored."""
        node = await self.serve(two_systems(http_max_body=4096))
        body = json.dumps(push_body(content="x" * 60000)).encode()
        response = await treq.post(f"{self.base}/v1/push", data=body, headers=as_headers(SHOP),
                                   pool=self.pool)
        self.assertEqual(response.code, 413)
        self.assertIn("4096", (await response.json())["error"])
        self.assertEqual(node.store.batches, [])

    async def test_sent_too_large_default(self) -> None:
        """The same at the default limit, 8 MiB + 1 byte."""
        config = two_systems()
        node = await self.serve(config)
        body = b" " * (config.limits.http_max_body + 1)
        response = await treq.post(f"{self.base}/v1/push/batch", data=body, headers=as_headers(SHOP),
                                   pool=self.pool)
        self.assertEqual(response.code, 413)
        await response.content()
        self.assertEqual(node.store.batches, [])
