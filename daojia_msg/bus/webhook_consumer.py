# -*- test-case-name: tests.bus.test_webhook_consumer -*-
"""The app server's side of the webhook bus: a ``twisted.web`` resource that
receives its POSTs (the request: docs/operations.md §7) and hands over
:class:`~daojia_msg.bus.envelope.Envelope` objects; served by an app server,
``msgctl tail`` or a test. The node's side is :mod:`daojia_msg.bus.webhook`.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from daojia_msg.bus.envelope import (
    CONTENT_TYPES,
    BadEnvelope,
    Envelope,
    decode_envelope,
    media_type,
)


class WebhookReceiver(Resource):
    """Receives the webhook bus's POSTs and calls ``on_envelope(Envelope)``.

    Answers 204 once ``on_envelope`` returned (or, when it returns a Deferred,
    once that fired; 500 when it raised or failed, so the bus retries); 400 for
    a body that is not a serialized ``Message`` (or empty); 413 beyond
    ``max_body`` bytes; 415 for another Content-Type. The topic is the
    ``X-Topic`` header, else ``topic``. It serves every path below where it is
    put. Use::

        site = Site(WebhookReceiver(handle))
        endpoints.serverFromString(reactor, "tcp:8080").listen(site)
    """

    isLeaf = True
    log = Logger()

    def __init__(self, on_envelope: Callable[[Envelope], object], *, topic: str = "",
                 max_body: int = 1 << 20) -> None:
        super().__init__()
        self.on_envelope = on_envelope
        self.topic = topic
        self.max_body = max_body

    def render_POST(self, request: Request) -> bytes | int:
        header = request.getHeader(b"content-type")
        ctype = media_type(header) if header else ""
        if ctype not in CONTENT_TYPES:
            return answer(request, 415, b"expected Content-Type: application/x-protobuf "
                                        b"or application/json")
        assert request.content is not None
        body = request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            return answer(request, 413, b"body too large")
        topic_header = request.getHeader(b"x-topic")
        topic = topic_header.decode("utf-8", "replace") if topic_header else self.topic
        logid = (request.getHeader(b"x-logid") or b"").decode("utf-8", "replace")
        if not body:
            return answer(request, 400, b"empty body")
        try:
            envelope = decode_envelope(topic, body, logid, ctype)
        except BadEnvelope as e:
            return answer(request, 400, str(e).encode())

        def failed(failure: Failure | None = None) -> None:
            self.log.failure("on_envelope failed on {topic}", failure, topic=topic,
                             logid=envelope.logid)

        return handed_over(request, lambda: self.on_envelope(envelope), failed)


def handed_over(request: Request, handle: Callable[[], object],
                failed: Callable[[Failure | None], None]) -> bytes | int:
    """Answer ``request`` once ``handle()`` returned, or once the Deferred it
    returned fired: 204, or 500 (so the sender retries) when it raised or
    failed, after ``failed(failure)`` (None: the exception being handled)."""
    try:
        result = handle()
    except Exception:
        failed(None)
        return answer(request, 500, b"")
    if not isinstance(result, Deferred):
        return answer(request, 204, b"")
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def finished(outcome: object) -> None:
        if isinstance(outcome, Failure):
            failed(outcome)
        if not gone:
            request.write(answer(request, 500 if isinstance(outcome, Failure) else 204, b""))
            request.finish()

    result.addBoth(finished)
    return NOT_DONE_YET


def answer(request: Request, code: int, body: bytes) -> bytes:
    """Set ``code`` (and a text Content-Type for a body); the body to render."""
    request.setResponseCode(code)
    if body:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return body
