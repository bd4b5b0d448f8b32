# -*- test-case-name: tests.bus.test_webhook -*-
"""The HTTP webhook bus: :class:`WebhookBus` POSTs each C2S envelope to the
bus URL (the request: docs/operations.md §7). The app server's side is
:mod:`daojia_msg.bus.webhook_consumer`.

- A 2xx answer means accepted. A 4xx other than 408 and 429 means the receiver
  refuses the frame: :class:`BusUnavailable` at once, no retry. Anything else
  (other statuses, connection errors, no complete answer within
  ``bus.webhook_timeout_s``) is retried ``bus.webhook_retries`` times after
  :func:`backoff` delays (0.1 s, 0.2 s, 0.4 s, ... at most 2 s), then fails
  with :class:`BusUnavailable`. Redirects are not followed.
- At most ``bus.webhook_concurrency`` publishes per topic are under way (a
  ``DeferredSemaphore`` per topic, held through the retries so a sick receiver
  is not sent more); at most :data:`WAITING_FACTOR` x that many wait for a turn,
  beyond which ``publish`` fails at once (nothing queues without bound).
- Persistent connections from a pool of the bus's own, closed by :meth:`stop`
  (which also fails whatever is under way).
- ``user:password@`` in the URL becomes HTTP basic auth; logs and error
  messages show the URL without userinfo, query or fragment (they may hold
  secrets).
- :meth:`WebhookBus.start` does not contact the receiver (a POST would be a
  frame): a receiver that is down shows in the publishes.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from treq.client import HTTPClient
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from daojia_msg.bus.envelope import CONTENT_TYPE, log_fields
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.config import BusConfig, ConfigError
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.deadlines import within

#: The first retry waits this long, each next one twice as long, up to RETRY_CAP_S.
RETRY_BASE_S = 0.1
RETRY_CAP_S = 2.0
#: Publishes that may wait for a turn per topic, in multiples of the concurrency.
WAITING_FACTOR = 10
#: 4xx statuses that are worth retrying (timeout, too many requests).
RETRIED_4XX = frozenset({408, 429})
#: Bytes of an answer's body kept for the log.
BODY_KEEP = 200


def backoff(retry: int) -> float:
    """Seconds before retry number ``retry`` (0 = the first retry)."""
    return float(min(RETRY_BASE_S * 2 ** min(retry, 32), RETRY_CAP_S))


def redact(url: str) -> str:
    """``url`` without userinfo, query and fragment: safe for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class _Timeout(TimeoutError):
    """One attempt got no complete answer in time."""


def _no_answer(result: object, timeout: float) -> Failure:
    """The request was cancelled by its time limit: whatever it then failed with
    (the HTTP client wraps the cancellation), it is a :class:`_Timeout`."""
    return Failure(_Timeout())


class _Drain(Protocol):
    """Reads an answer's body to its end (so the connection can be reused),
    keeping its first :data:`BODY_KEEP` bytes."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.kept = bytearray()
        self.cancelled = False
        self.done: Deferred[tuple[int, bytes]] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if len(self.kept) < BODY_KEEP:
            self.kept += data[:BODY_KEEP - len(self.kept)]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.cancelled or self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((self.code, bytes(self.kept)))
        else:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[tuple[int, bytes]]) -> None:
        self.cancelled = True
        transport: Any = self.transport  # the response's IPushProducer
        if transport is not None:
            transport.stopProducing()


def _cancelled(error: BaseException) -> bool:
    """Whether ``error`` is a cancellation, maybe wrapped by the HTTP client
    (``ResponseNeverReceived([CancelledError])`` and the like)."""
    if isinstance(error, CancelledError):
        return True
    return any(isinstance(r, Failure) and r.check(CancelledError)
               for r in getattr(error, "reasons", ()))


def _drain(response: Any) -> Deferred[tuple[int, bytes]]:
    protocol = _Drain(response.code)
    response.deliverBody(protocol)
    return protocol.done


@implementer(IMessageBus)
class WebhookBus:
    """C2S frames POSTed to an HTTP(S) URL (see the module docstring).

    ``reactor`` makes the connections; ``clock`` (default: the reactor) times
    the attempts and the delays between them (tests pass a ``task.Clock``).
    """

    log = Logger()

    def __init__(self, url: str, config: BusConfig, reactor: Any, *,
                 clock: IReactorTime | None = None) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ConfigError(f"not an http(s):// URL: {e}", ("bus", "url")) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("expected http(s)://host[:port]/path", ("bus", "url"))
        host = parts.hostname
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{port}" if port else "")
        #: Where the POSTs go: the URL without its userinfo (sent as basic auth).
        self.target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.safe_url = redact(url)
        self.authorization: bytes | None = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = b"Basic " + base64.b64encode(userinfo.encode())
        self.config = config
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.timeout = config.webhook_timeout_s
        self.retries = config.webhook_retries
        self.concurrency = config.webhook_concurrency
        self.max_waiting = WAITING_FACTOR * config.webhook_concurrency
        self._pool: HTTPConnectionPool | None = None
        self._client: HTTPClient | None = None
        self._semaphores: dict[str, DeferredSemaphore] = {}
        self._active: set[Deferred[None]] = set()
        self._stopped = False

    # -- IMessageBus ----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = self.concurrency
        pool.retryAutomatically = False  # every attempt is counted here
        self._pool = pool
        self._client = HTTPClient(Agent(self.reactor, connectTimeout=self.timeout, pool=pool))
        self._stopped = False
        self.log.info("C2S bus: webhook {url}, {concurrency} at once per topic",
                      url=self.safe_url, concurrency=self.concurrency)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Fails what is under way or waiting, and closes the connections."""
        self._stopped = True
        for d in list(self._active):
            d.cancel()
        pool, self._pool, self._client = self._pool, None, None
        if pool is None:
            return succeed(None)
        return pool.closeCachedConnections()

    def publish(self, topic: str, payload: bytes, logid: str,
                content_type: str = CONTENT_TYPE) -> Deferred[None]:
        if self._stopped or self._client is None:
            return fail(BusUnavailable(f"the webhook bus {self.safe_url} is not running"))
        semaphore = self._semaphores.get(topic)
        if semaphore is None:
            semaphore = self._semaphores[topic] = DeferredSemaphore(self.concurrency)
        elif semaphore.tokens == 0 and len(semaphore.waiting) >= self.max_waiting:
            return fail(BusUnavailable(
                f"{len(semaphore.waiting)} C2S frames of topic {topic} already wait for "
                f"the webhook {self.safe_url}"))
        d = Deferred.fromCoroutine(self._publish(semaphore, topic, bytes(payload), logid,
                                                 content_type))
        self._active.add(d)

        def done(result: object) -> object:
            self._active.discard(d)
            return result

        return d.addBoth(done)

    # -- delivery -------------------------------------------------------------------

    async def _publish(self, semaphore: DeferredSemaphore, topic: str, payload: bytes,
                       logid: str, content_type: str) -> None:
        try:
            await semaphore.acquire()
        except CancelledError:
            self._cancelled()
            raise
        try:
            if self._stopped:
                self._cancelled()
            await self._deliver(topic, payload, logid, content_type)
        except CancelledError:
            self._cancelled()
            raise
        finally:
            semaphore.release()
            idle = semaphore.tokens == semaphore.limit and not semaphore.waiting
            if idle and self._semaphores.get(topic) is semaphore:
                del self._semaphores[topic]

    def _cancelled(self) -> None:
        """A publish was cancelled: by :meth:`stop` it is BusUnavailable, by its
        caller (e.g. the router's timeout) it stays a cancellation."""
        if self._stopped:
            raise BusUnavailable(f"the webhook bus {self.safe_url} stopped")

    async def _deliver(self, topic: str, payload: bytes, logid: str, content_type: str) -> None:
        headers = Headers({
            b"Content-Type": [content_type.encode("latin-1")],
            b"X-Logid": [logid.encode()],
            b"X-Topic": [topic.encode()],
        })
        if self.authorization is not None:
            headers.setRawHeaders(b"Authorization", [self.authorization])
        attempts = 1 + self.retries
        why = ""
        for attempt in range(attempts):
            if attempt:
                await deferLater(self.clock, backoff(attempt - 1))
            try:
                code, body = await self._attempt(payload, headers)
            except CancelledError:
                raise
            except _Timeout:
                why = f"no complete answer within {self.timeout:g} s"
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
            else:
                if 200 <= code < 300:
                    return
                why = f"HTTP {code}"
                if 400 <= code < 500 and code not in RETRIED_4XX:
                    self.log.warn("C2S webhook {url} refused a frame of {topic}: HTTP {code} "
                                  "{body!r}", url=self.safe_url, topic=topic, code=code,
                                  body=body, **log_fields(payload, logid))
                    raise BusUnavailable(f"the webhook {self.safe_url} refused it: {why}")
            self.log.debug("C2S webhook {url} attempt {attempt} of {attempts} failed: {why}",
                           url=self.safe_url, attempt=attempt + 1, attempts=attempts, why=why,
                           **log_fields(payload, logid))
        self.log.warn("C2S webhook {url} failed {attempts} attempts for {topic}: {why}",
                      url=self.safe_url, attempts=attempts, topic=topic, why=why,
                      **log_fields(payload, logid))
        raise BusUnavailable(
            f"the webhook {self.safe_url} failed {attempts} attempts, the last: {why}")

    async def _attempt(self, payload: bytes, headers: Headers) -> tuple[int, bytes]:
        """One POST, its answer read to the end: ``(status, first body bytes)``."""
        if self._client is None:
            raise CancelledError()
        return await post_once(self._client, self.target, payload, headers, self.timeout,
                               self.clock)


async def post_once(client: HTTPClient, url: str, body: bytes, headers: Headers,
                    timeout: float, clock: IReactorTime) -> tuple[int, bytes]:
    """One POST of ``body`` to ``url`` (no redirects followed), its answer
    read to the end within ``timeout`` seconds: ``(status, first body bytes)``.
    Fails with :class:`TimeoutError` past the time limit,
    :class:`CancelledError` when cancelled, else with what the client raised."""
    d: Deferred[Any] = client.post(url, data=body, headers=headers.copy(),
                                   allow_redirects=False, unbuffered=True)
    d.addCallback(_drain)
    try:
        result: tuple[int, bytes] = await within(d, timeout, clock, _no_answer)
        return result
    except Exception as e:
        if _cancelled(e):
            raise CancelledError() from None
        raise
