"""The escalation's HTTP client (daojia_msg.bus.escalation) against a real
twisted.web receiver on loopback: the body and headers arrive as given, the
status comes back, a receiver that never answers fails the attempt at its
time limit (on a fake clock), basic auth from the URL's userinfo."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from daojia_msg.bus.escalation import HttpEscalationPoster
from daojia_msg.logic.interfaces import IEscalationPoster

R: Any = reactor


class Receiver(Resource):
    """Records each POST; answers ``status``, or never when ``hang``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, dict[bytes, list[bytes]]]] = []
        self.status = 204
        self.hang = False
        self.arrived: Deferred[None] = Deferred()
        self.held: list[server.Request] = []

    def render_POST(self, request: server.Request) -> Any:
        assert request.content is not None
        self.requests.append((request.content.read(),
                              dict(request.requestHeaders.getAllRawHeaders())))
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.hang:
            self.held.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        return b"ok"


class PosterTests(TestCase):
    def setUp(self) -> None:
        self.receiver = Receiver()
        site = server.Site(self.receiver)
        site.noisy = False
        self.port = R.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/esc"

    def poster(self, clock: Any = None) -> HttpEscalationPoster:
        poster = HttpEscalationPoster(R, 5.0, clock=clock)
        self.addCleanup(poster.stop)
        return poster

    async def test_posts_and_answers_the_status(self) -> None:
        poster = self.poster()
        self.assertTrue(verifyObject(IEscalationPoster, poster))
        code = await poster.post(self.url, b'{"msgid":"1"}', {
            "Content-Type": "application/json", "X-Msgplatform-Signature": "ab" * 32})
        self.assertEqual(code, 204)
        [(body, headers)] = self.receiver.requests
        self.assertEqual(body, b'{"msgid":"1"}')
        self.assertEqual(headers[b"X-Msgplatform-Signature"], [b"ab" * 32])
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.receiver.status = 503
        self.assertEqual(await poster.post(self.url, b"{}", {}), 503)

    async def test_basic_auth_from_the_url(self) -> None:
        url = self.url.replace("http://", "http://ops:s%40cret@")
        self.assertEqual(await self.poster().post(url, b"{}", {}), 204)
        [(_, headers)] = self.receiver.requests
        self.assertEqual(headers[b"Authorization"],
                         [b"Basic " + base64.b64encode(b"ops:s@cret")])

    async def test_no_answer_in_time_fails_the_attempt(self) -> None:
        self.receiver.hang = True
        clock = Clock()
        d = self.poster(clock).post(self.url, b"{}", {})
        await self.receiver.arrived
        clock.advance(5.0)
        with self.assertRaises(TimeoutError):
            await d
        for request in self.receiver.held:
            request.finish()  # type: ignore[no-untyped-call]

    async def test_nothing_listening_fails(self) -> None:
        port = self.port.getHost().port
        await self.port.stopListening()
        with self.assertRaises(Exception):  # noqa: B017 (whatever the client raises)
            await self.poster().post(f"http://127.0.0.1:{port}/esc", b"{}", {})
