"""Tests for daojia_msg.web.request: the body limit (413) of the bounded request."""

from __future__ import annotations

import json

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from daojia_msg.web.request import LINGER_S
from tests.web.helpers import SHOP, ApiTestCase, Client, push_body, two_systems


class BodyLimitTests(ApiTestCase):
    def setUp(self) -> None:
        self.config = two_systems(http_max_body=1024)
        self.build()

    def test_at_limit(self) -> None:
        """A body of exactly the limit is read."""
        body = json.dumps(push_body()).encode()
        body += b" " * (1024 - len(body))
        self.assertEqual(self.push(body).status, 200)

    def test_declared_over_limit(self) -> None:
        """A Content-Length over the limit is refused at the headers, before any body."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Content-Length": "1025"})
        self.assertError(client.response(), 413)
        self.assertEqual(client.response().headers["connection"], "close")
        self.assertTrue(client.transport.write_closed)
        self.assertEqual(client.channel.timeOut, LINGER_S)
        # The rest of the body is dropped, not buffered, not processed.
        client.channel.dataReceived(json.dumps(push_body()).encode().ljust(1025))
        self.assertEqual(len(client.transport.value().split(b"HTTP/1.1")), 2)
        self.assertEqual(self.store.batches, [])

    def test_refusal_logged(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        Client(self.site, "10.1.2.3").send("POST", "/v1/push", None, {"Content-Length": "2000"})
        [event] = [e for e in events if e.get("max_body") == 1024]
        self.assertIn("from 10.1.2.3:50123", formatEvent(event))
        Client(self.site, "fd00::7").send("POST", "/v1/push", None, {"Content-Length": "2000"})
        [_, event] = [e for e in events if e.get("max_body") == 1024]
        self.assertIn("from [fd00::7]:50123", formatEvent(event))

    def test_chunked_over_limit(self) -> None:
        """A chunked body is counted as it comes: 413 once it passes the limit."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Transfer-Encoding": "chunked"})
        chunk = b"200\r\n" + b" " * 512 + b"\r\n"
        client.channel.dataReceived(chunk * 2)
        self.assertEqual(client.transport.value(), b"")
        client.channel.dataReceived(chunk)
        self.assertError(client.response(), 413)
        client.channel.dataReceived(chunk * 3 + b"0\r\n\r\n")
        self.assertEqual(self.store.batches, [])

    def test_chunked_within_limit(self) -> None:
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Transfer-Encoding": "chunked"})
        body = json.dumps(push_body()).encode()
        client.channel.dataReceived(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(client.response().status, 200)

    def test_expect_continue(self) -> None:
        """No ``100 Continue`` for a body that is refused anyway."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None,
                    {**SHOP, "Content-Length": "5000", "Expect": "100-continue"})
        self.assertTrue(client.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", client.transport.value())

    def test_drain_bounded(self) -> None:
        """Past twice the limit (at least 1 MiB) the connection stops reading."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Content-Length": "100000000"})
        client.channel.dataReceived(b"x" * (1024 * 1024))
        self.assertEqual(client.transport.producerState, "producing")
        client.channel.dataReceived(b"x")
        self.assertEqual(client.transport.producerState, "paused")
