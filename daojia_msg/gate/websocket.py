# -*- test-case-name: tests.gate.test_websocket -*-
"""The gate over WebSocket (docs/protocol.md §7.3): one frame per binary message.

A :class:`GateWebSocket` checks the handshake (path ``/v1/ws``, subprotocol
``msgplatform.v1``, Origin) and the framing of each message, then hands the
frame to a :class:`~daojia_msg.gate.protocol.GateProtocol` through a
:class:`FrameTransport`: everything above the framing (sessions, limits, check
order, kickout, back-pressure, per-IP caps) is the TCP gate's own code.
The WebSocket listener's site (:mod:`daojia_msg.webedge`) serves it at ``/v1/ws``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.gate.factory import GateFactory
from daojia_msg.gate.protocol import GateProtocol
from daojia_msg.protocol.codec import HEADER_SIZE
from daojia_msg.protocol.codes import MAGIC

PATH = "/v1/ws"
SUBPROTOCOL = "msgplatform.v1"

#: Close codes (RFC 6455 §7.4.1).
NORMAL = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
TOO_BIG = 1009

#: What autobahn keeps of the opening handshake for the connection's life and
#: reads only during it (autobahn.websocket.protocol, processHandshake).
HANDSHAKE_LEFTOVERS = ("http_request_data", "http_headers", "http_status_line",
                       "http_request_uri", "http_request_params", "http_response_data")

_MAGIC = MAGIC.to_bytes(2, "big")
_BODYLENGTH = slice(HEADER_SIZE - 4, HEADER_SIZE)


def frame_error(payload: bytes) -> str | None:
    """Why a binary message is not exactly one frame (closed with 1002), or None."""
    if len(payload) < HEADER_SIZE:
        return "shorter than a header"
    if payload[:2] != _MAGIC:
        return "bad magic"
    if len(payload) != HEADER_SIZE + int.from_bytes(payload[_BODYLENGTH], "big"):
        return "length is not 32 + bodylength"
    return None


def origin_allowed(origin: str, own: str, allowed: Iterable[str]) -> bool:
    """Whether a handshake's Origin may connect: none at all (a native
    client), the endpoint's own origin, or one of ``[ws] allowed_origins``."""
    if not origin:
        return True
    origin = origin.rstrip("/").lower()
    return origin == own.lower() or origin in (a.rstrip("/").lower() for a in allowed)


class FrameTransport:
    """What a :class:`GateProtocol` writes to: one ``write`` is one binary
    message; ``loseConnection`` closes with 1000 after the messages written."""

    #: What the gate's counters call this transport (``transport_name``).
    websocket = True

    def __init__(self, ws: GateWebSocket) -> None:
        self.ws = ws

    @property
    def _tcp(self) -> Any:
        return self.ws.transport

    def write(self, frame: bytes) -> None:
        self.ws.sendMessage(frame, isBinary=True)

    def writeSequence(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            self.write(frame)

    def loseConnection(self) -> None:
        self.unregisterProducer()  # a TLS transport closes only without one
        self.ws.sendClose(NORMAL)

    def abortConnection(self) -> None:
        tcp = self._tcp
        if tcp is not None:
            tcp.abortConnection()

    def getPeer(self) -> IAddress:
        return self._tcp.getPeer()

    def getHost(self) -> IAddress:
        return self._tcp.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        set_option = getattr(self._tcp, "setTcpNoDelay", None)
        if set_option is not None:
            set_option(enabled)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._tcp is not None:
            self._tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self._tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self._tcp.resumeProducing()


class GateWebSocket(WebSocketServerProtocol):
    # Not ``log``: that is autobahn's own (txaio) logger, which drops its
    # per-frame debug events; a twisted Logger there would write them all.
    _log = Logger()
    factory: GateWebSocketFactory

    gate: GateProtocol | None = None

    def onConnect(self, request: ConnectionRequest) -> str:
        if request.path != PATH:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no WebSocket at {request.path}")
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 f"the subprotocol {SUBPROTOCOL} is required")
        scheme = "https" if ISSLTransport.providedBy(self.transport) else "http"
        own = f"{scheme}://{request.headers.get('host', '')}"
        if not origin_allowed(request.origin, own, self.factory.allowed_origins):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, f"origin {request.origin} not allowed")
        return SUBPROTOCOL

    def onOpen(self) -> None:
        # The handshake is done: what autobahn kept of it (the request's bytes,
        # its parsed headers, the 101 answer: ~1.3 KiB) is not read again.
        for name in HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        self.gate = GateProtocol(self.factory.gate)
        self.gate.makeConnection(FrameTransport(self))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        gate = self.gate
        if gate is None:
            return
        if not isBinary:
            self._refuse(UNSUPPORTED_DATA, "a text message")
            return
        why = frame_error(payload)
        if why is not None:
            self._refuse(PROTOCOL_ERROR, why)
            return
        gate.dataReceived(payload)

    def _refuse(self, code: int, why: str) -> None:
        gate = self.gate
        assert gate is not None
        self._log.info("closing {peer}: {why}", peer=gate.peer, why=why)
        # sendClose takes only 1000 and 3000-4999 from applications.
        self.sendCloseFrame(code=code, reasonUtf8=why.encode(), isReply=False)
        gate.close()  # reads no more; aborts if the peer lingers past close_grace_s

    def _closeConnection(self, abort: bool = False) -> None:
        # autobahn closes the TCP (or TLS) transport itself once the closing
        # handshake is done; a TLS transport closes only without a producer.
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()
        super()._closeConnection(abort)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            error = ConnectionDone() if wasClean else ConnectionLost()
            gate.connectionLost(Failure(error))


class GateWebSocketFactory(WebSocketServerFactory):
    """Serves the gate's clients over WebSocket; ``gate`` is the TCP gate's
    factory (one table of connections, one per-IP cap, one pressure switch)."""

    protocol = GateWebSocket  # type: ignore[assignment]  # autobahn has no type hints
    noisy = False

    def __init__(self, gate: GateFactory, allowed_origins: Sequence[str] = ()) -> None:
        super().__init__(protocols=[SUBPROTOCOL])
        self.gate = gate
        self.allowed_origins = tuple(allowed_origins)
        limits = gate.limits
        self.setProtocolOptions(
            maxMessagePayloadSize=HEADER_SIZE + limits.max_body,
            maxFramePayloadSize=HEADER_SIZE + limits.max_body,
            openHandshakeTimeout=limits.login_timeout_s,
            # The gate aborts a peer that lingers (close_grace_s): autobahn's
            # own timer would outlive the connection in its timer buckets.
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            failByDrop=False,  # a violation (1002, 1009) is said with a close frame
            # A GET without Upgrade is 426, not autobahn's status page (which
            # names its version and redirects to any ?redirect= URL).
            webStatus=False,
        )
