"""The escalation's HTTP client (daojia_msg.bus.escalation) against a real
twisted.web receiver on loopback: the body and headers arrive as given, the
status comes back, a receiver that never answers fails the attempt at its
time limit (on a fake clock), basic auth from the URL's userinfo."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from daojia_msg.bus.escalation import HttpEscalationPoster
from daojia_msg.logic.interfaces import IEscalationPoster
from tests.escalations import Receiver
from tests.servers import closed_port

R: Any = reactor


class PosterTests(TestCase):
    def setUp(self) -> None:
        self.receiver = Receiver()
        self.url = self.receiver.listen(self)

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
        await self.receiver.wait(1)
        clock.advance(5.0)
        with self.assertRaises(TimeoutError):
            await d

    async def test_nothing_listening_fails(self) -> None:
        port = await closed_port(self)
        with self.assertRaises(Exception):  # noqa: B017 (whatever the client raises)
            await self.poster().post(f"http://127.0.0.1:{port}/esc", b"{}", {})
