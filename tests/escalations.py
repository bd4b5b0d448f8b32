"""A receiver of escalation POSTs for the tests: a real twisted.web site on
loopback that records each request and answers what the test says."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.resource import Resource

from daojia_msg.core.escalation import SIGNATURE_HEADER, verify

R: Any = reactor


class Receiver(Resource):
    """Records each POST (body, headers); answers ``status``, or never while
    ``hang`` (the requests are then in ``held``). :meth:`wait` fires once
    ``n`` requests arrived."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, dict[bytes, list[bytes]]]] = []
        self.status = 204
        self.hang = False
        self.held: list[server.Request] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self.url = ""

    def render_POST(self, request: server.Request) -> Any:
        assert request.content is not None
        headers = {name: list(values) for name, values in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.content.read(), headers))
        status, hang = self.status, self.hang  # as they were when it arrived
        for n, d in list(self._waiters):
            if len(self.requests) >= n:
                self._waiters.remove((n, d))
                d.callback(None)
        if hang:
            self.held.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(status)
        return b"ok"

    def wait(self, n: int, timeout: float = 15.0) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.requests) >= n:
            d.callback(None)
        else:
            self._waiters.append((n, d))
        return d.addTimeout(timeout, R)

    def bodies(self, secret: str) -> list[dict[str, Any]]:
        """The bodies received, each checked against its signature."""
        out = []
        for body, headers in self.requests:
            [given] = headers[SIGNATURE_HEADER.encode()]
            assert verify(secret, body, given.decode()), (body, given)
            out.append(json.loads(body))
        return out

    def listen(self, test: TestCase, path: str = "/esc") -> str:
        """Listen on a loopback port until ``test`` ends; the URL to POST to."""
        site = server.Site(self)
        site.noisy = False
        port = R.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}{path}"
        return self.url
