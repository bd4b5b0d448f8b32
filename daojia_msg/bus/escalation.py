# -*- test-case-name: tests.bus.test_escalation -*-
"""The HTTP client of offline escalation (logic's
:class:`~daojia_msg.logic.interfaces.IEscalationPoster`): one POST per
call to an app's ``escalation_url``, through the webhook bus's
:func:`~daojia_msg.bus.webhook.post_once` (its answer read to the end,
redirects not followed, a time limit per attempt), on persistent
connections of a pool of its own. Retries, backoff and concurrency are the
escalator's (:mod:`daojia_msg.logic.escalation`); ``user:password@`` in
the URL becomes HTTP basic auth, as for the webhook bus.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from daojia_msg.bus.webhook import post_once
from daojia_msg.logic.interfaces import IEscalationPoster

#: Persistent connections kept per receiver.
POOL_PER_HOST = 8


def _target(url: str) -> tuple[str, bytes | None]:
    """``url`` without its userinfo, and the basic auth it made (or None)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return (urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
            b"Basic " + base64.b64encode(userinfo.encode()))


@implementer(IEscalationPoster)
class HttpEscalationPoster:
    """POSTs with a time limit of ``timeout`` seconds per attempt
    (``clock`` times it; default the reactor)."""

    def __init__(self, reactor: Any, timeout: float, *,
                 clock: IReactorTime | None = None) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = POOL_PER_HOST
        self._pool.retryAutomatically = False  # every attempt is the escalator's to count
        self._client: HTTPClient | None = HTTPClient(
            Agent(reactor, connectTimeout=timeout, pool=self._pool))
        self._active: set[Deferred[int]] = set()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        d = Deferred.fromCoroutine(self._post(url, body, headers))
        self._active.add(d)
        d.addBoth(self._done, d)
        return d

    def _done(self, result: object, d: Deferred[int]) -> object:
        self._active.discard(d)
        return result

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        if self._client is None:
            raise CancelledError()
        target, authorization = _target(url)
        raw = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        if authorization is not None:
            raw.setRawHeaders(b"Authorization", [authorization])
        code, _ = await post_once(self._client, target, body, raw, self.timeout, self.clock)
        return code

    def stop(self) -> Deferred[None]:
        self._client = None
        for d in list(self._active):
            d.cancel()
        return self._pool.closeCachedConnections() or succeed(None)
