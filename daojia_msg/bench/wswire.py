# -*- test-case-name: tests.bench.test_wswire -*-
"""The bench clients over WebSocket (docs/protocol.md §7.3): the same frames,
one per binary message.

A :class:`~daojia_msg.bench.wire.BenchClient` does not know which transport
carries it: over WebSocket, a :class:`BenchWebSocket` (autobahn's Twisted
client) opens ``ws://HOST:PORT/v1/ws`` with the subprotocol
``msgplatform.v1`` and no Origin (a native client), then hands the client a
:class:`MessageTransport`, on which each ``write`` (one encoded frame) is one
binary message; each binary message that comes in is fed to the client's
``dataReceived``. Requests, answers, pushes and ACKs are the TCP path's code.

:func:`dialer` makes a function with :func:`~daojia_msg.bench.wire.connect`'s
signature whose Deferred fires once the WebSocket is open (over TLS: ``wss``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bench.wire import MAX_BODY, BenchClient, TLSRefused
from daojia_msg.protocol.codec import HEADER_SIZE
from daojia_msg.sockets import no_delay
from daojia_msg.tls import client_endpoint, tls_failure

#: The WebSocket gate's path and subprotocol (docs/protocol.md §7.3).
PATH = "/v1/ws"
SUBPROTOCOL = "msgplatform.v1"
#: A normal close (RFC 6455 §7.4.1).
NORMAL = 1000

#: :func:`~daojia_msg.bench.wire.connect`'s signature.
Dial = Callable[..., "Deferred[BenchClient]"]


class WSRefused(Exception):
    """The WebSocket did not open (the upgrade was refused, or the connection
    closed first): autobahn's reason."""


class MessageTransport:
    """What a :class:`BenchClient` writes to over WebSocket."""

    def __init__(self, ws: BenchWebSocket) -> None:
        self.ws = ws

    def write(self, frame: bytes) -> None:
        self.ws.sendMessage(frame, isBinary=True)

    def writeSequence(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            self.write(frame)

    def loseConnection(self) -> None:
        self.ws.sendClose(NORMAL)

    @property
    def _tcp(self) -> Any:
        return self.ws.transport

    def abortConnection(self) -> None:
        """The TCP connection reset, no closing handshake (the bench's end of a run)."""
        if self._tcp is not None:
            self._tcp.abortConnection()

    def getPeer(self) -> IAddress:
        peer: IAddress = self._tcp.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self._tcp.getHost()
        return host


@implementer(IHandshakeListener)
class BenchWebSocket(WebSocketClientProtocol):
    """One WebSocket carrying one :class:`BenchClient`. ``opened`` fires with
    the client once the WebSocket is open, or fails with :class:`WSRefused`
    (:class:`TLSRefused` when the TLS handshake failed)."""

    def __init__(self, client: BenchClient) -> None:
        super().__init__()
        self.client = client
        self.opened: Deferred[BenchClient] = Deferred()
        self._lost: Failure | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # autobahn asks for TCP_NODELAY before it has copied the option from
        # its factory, and the failed attempt is silent: Nagle stayed on, and
        # a frame written while the last one was not ACKed waited for the ACK.
        no_delay(self.transport)

    def handshakeCompleted(self) -> None:
        self.client.handshakeCompleted()  # the TLS handshake (wss)

    def onOpen(self) -> None:
        self.client.makeConnection(MessageTransport(self))
        self.opened.callback(self.client)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:  # the node sends nothing else (§7.3)
            self.client.dataReceived(payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason  # autobahn's onClose gets a code and a text, not the Failure
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        lost = self._lost
        if not self.opened.called:
            why = tls_failure(lost.value if lost is not None else None)
            self.opened.errback(TLSRefused(why) if why else
                                WSRefused(reason or f"closed with code {code}"))
        self.client.connectionLost(lost)


def client_factory(reactor: Any, host: str, port: int, *, secure: bool = False,
                   timeout: float = 30) -> WebSocketClientFactory:
    """The options every bench WebSocket shares: ``ws(s)://host:port/v1/ws``,
    the subprotocol, no Origin, no pings, frames up to the bench's body limit;
    ``timeout`` s for the upgrade (0: no timer)."""
    scheme = "wss" if secure else "ws"
    factory = WebSocketClientFactory(f"{scheme}://{host}:{port}{PATH}", protocols=[SUBPROTOCOL],
                                     reactor=reactor)
    factory.setProtocolOptions(
        openHandshakeTimeout=timeout, closeHandshakeTimeout=1, autoPingInterval=0,
        maxMessagePayloadSize=HEADER_SIZE + MAX_BODY, maxFramePayloadSize=HEADER_SIZE + MAX_BODY)
    factory.noisy = False
    return factory


def open_websocket(factory: WebSocketClientFactory, endpoint: Any,
                   client: BenchClient) -> Deferred[BenchClient]:
    """Connect ``client`` over a WebSocket of ``factory`` through ``endpoint``;
    fires once the WebSocket is open."""
    ws = BenchWebSocket(client)
    ws.factory = factory
    d = connectProtocol(endpoint, ws)
    return d.addCallback(lambda _: ws.opened)


def dialer(reactor: Any, host: str, port: int, *, secure: bool = False,
           timeout: float = 30) -> Dial:
    """A :func:`~daojia_msg.bench.wire.connect` for the WebSocket gate at
    ``host:port`` (one factory for all of a worker's connections)."""
    factory = client_factory(reactor, host, port, secure=secure, timeout=timeout)

    def connect(reactor: Any, host: str, port: int, client: BenchClient,
                source: str | None = None, timeout: float = 30,
                tls: IOpenSSLClientConnectionCreator | None = None) -> Deferred[BenchClient]:
        bind = (source, 0) if source else None
        endpoint = client_endpoint(reactor, host, port, tls=tls, timeout=timeout, bind=bind)
        return open_websocket(factory, endpoint, client)

    return connect
