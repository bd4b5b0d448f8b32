"""The app server's escalation receiver (daojia_msg.bus.escalation_receiver)
on loopback, fed by the node's HTTP client with bodies the escalator makes,
and by requests that are not escalations."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import TestCase
from twisted.web import server

from daojia_msg.bus.escalation import HttpEscalationPoster
from daojia_msg.bus.escalation_receiver import EscalationReceiver, parse_escalation
from daojia_msg.core.escalation import SIGNATURE_HEADER, Escalated, signature, verify
from daojia_msg.core.model import Kind, StoredMessage
from daojia_msg.logic.escalation import body_of

R: Any = reactor
SECRET = "secret-of-2002"
MSG = StoredMessage(917342408876752896, 0, 0, 42, 2002, 5, Kind.S2C, b"\xffo\x00rder", 1, "o-7")


class ReceiverTests(TestCase):
    def setUp(self) -> None:
        self.got: list[Escalated] = []
        self.handle: Any = self.got.append
        site = server.Site(EscalationReceiver({2002: SECRET}, lambda e: self.handle(e),
                                              max_body=4096))
        site.noisy = False
        port = R.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/escalations"
        self.poster = HttpEscalationPoster(R, 5.0)
        self.addCleanup(self.poster.stop)

    async def post(self, body: bytes, sign_with: str | None = SECRET,
                   ctype: str = "application/json") -> int:
        headers = {"Content-Type": ctype}
        if sign_with is not None:
            headers[SIGNATURE_HEADER] = signature(sign_with, body)
        code: int = await self.poster.post(self.url, body, headers)
        return code

    async def test_a_signed_escalation_is_handed_over(self) -> None:
        self.assertEqual(await self.post(body_of(MSG)), 204)
        self.assertEqual(self.got, [Escalated(MSG.msgid, "o-7", 42, 2002, 5, b"\xffo\x00rder")])

    async def test_a_bad_or_missing_signature_is_401(self) -> None:
        body = body_of(MSG)
        self.assertEqual(await self.post(body, sign_with="another-secret"), 401)
        self.assertEqual(await self.post(body, sign_with=None), 401)
        other_app = body.replace(b'"to_appcode":2002', b'"to_appcode":2003')
        self.assertEqual(await self.post(other_app), 401)  # an app it has no secret of
        self.assertEqual(self.got, [])

    async def test_a_signature_that_is_not_ascii_is_401_not_500(self) -> None:
        body = body_of(MSG)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: "\u00e9" * 32}
        self.assertEqual(await self.poster.post(self.url, body, headers), 401)
        self.assertFalse(verify(SECRET, body, b"\xff" * 64))
        self.assertFalse(verify(SECRET, body, "\ufffd" * 64))
        self.assertTrue(verify(SECRET, body, signature(SECRET, body).encode()))
        self.assertEqual(self.got, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_what_is_not_an_escalation(self) -> None:
        good = json.loads(body_of(MSG))
        for body in (b"[", b"{}", json.dumps({**good, "to_uid": "42"}).encode(),
                     json.dumps({**good, "extra": 1}).encode(),
                     json.dumps({**good, "content_b64": "***"}).encode(),
                     json.dumps({**good, "msgid": "x1"}).encode()):
            with self.subTest(body=body):
                self.assertEqual(await self.post(body), 400)
        self.assertEqual(await self.post(body_of(MSG), ctype="text/plain"), 415)
        self.assertEqual(await self.post(b"{" + b" " * 5000 + b"}"), 413)
        self.assertEqual(self.got, [])

    async def test_a_handler_that_fails_is_500_so_the_node_retries(self) -> None:
        self.handle = lambda e: 1 / 0
        self.assertEqual(await self.post(body_of(MSG)), 500)
        self.handle = lambda e: fail(RuntimeError("app server down"))
        self.assertEqual(await self.post(body_of(MSG)), 500)
        self.flushLoggedErrors(ZeroDivisionError, RuntimeError)
        later: Deferred[None] = Deferred()
        self.handle = lambda e: later
        answered = self.post(body_of(MSG))
        R.callLater(0, later.callback, None)
        self.assertEqual(await answered, 204)

    def test_parse(self) -> None:
        self.assertEqual(parse_escalation(body_of(MSG)).content, b"\xffo\x00rder")
