"""Fixtures of the webhook bus and receiver tests: a scripted receiver on a
real twisted.web server on loopback, a site whose connections are closed and
waited for at cleanup, and a Clock that says when something is scheduled.

The HTTP runs on the reactor; the bus's attempt timeouts and retry delays run on
a :class:`ScheduleClock` the tests advance, so no test sleeps or polls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from daojia_msg.bus.webhook import WebhookBus
from daojia_msg.config import BusConfig
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

    def answer_topic(self, topic: bytes, status: int = 204) -> Recorded:
        """Answer the first request of ``topic`` still held. Requests sent at
        once go over connections of their own and arrive in any order."""
        return self.answer([r.topic for r, _ in self.held].index(topic), status)


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
