# -*- test-case-name: tests.bench.test_bench,tests.bench.test_tls -*-
"""A lean load-generator connection: raw frames with the pure codec.

Not the full :class:`daojia_msg.client.client.MsgClient` (no reconnects, no
automatic ACKs, no Deferred per request): a request is one ``encode`` and one
``transport.write``; its answer goes to a plain callback matched by
``sequenceid``. Pushes (S2C, C2C deliveries) go to ``on_push``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.protocol.codec import Frame, FrameDecoder, encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.sockets import no_delay
from daojia_msg.tls import client_endpoint, tls_failure

#: Bodies bigger than this are a broken stream for the generator.
MAX_BODY = 8 * 1024 * 1024
MAX_SEQ = 0xFFFFFFFF

Callback = Callable[[Frame], None]


class TLSRefused(Exception):
    """The TLS handshake failed (OpenSSL's reason)."""


@implementer(IHandshakeListener)
class BenchClient(Protocol):
    """One connection of one identity ``(uid, appcode)``."""

    def __init__(self, uid: int, appcode: int,
                 on_push: Callable[[BenchClient, Frame], None] | None = None) -> None:
        self.uid = uid
        self.appcode = appcode
        self.on_push = on_push
        self.decoder = FrameDecoder(MAX_BODY)
        self.seq = 0
        self.waiting: dict[int, Callback] = {}
        self.kicked: int | None = None
        self.connected = False
        self.lost: Deferred[None] = Deferred()
        #: Called after each read's frames were handled (to batch ACKs).
        self.after_read: Callable[[BenchClient], None] | None = None
        #: msgids of pushes not ACKed yet (for ``after_read`` batching).
        self.pending_acks: list[int] = []
        #: Over TLS: fires once the handshake is done; fails with TLSRefused.
        self.handshake: Deferred[None] = Deferred()

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        no_delay(self.transport)

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.handshake.called:
            why = tls_failure(reason.value if reason is not None else None)
            self.handshake.errback(TLSRefused(why or "the connection closed during the handshake"))
            self.handshake.addErrback(lambda _: None)  # when nobody waits for it
        self.connected = False
        waiting, self.waiting = self.waiting, {}
        if not self.lost.called:
            self.lost.callback(None)
        del waiting  # answers that never came are counted by the scenario

    # -- requests -------------------------------------------------------------

    def request(self, cmd: int, body: bytes = b"", callback: Callback | None = None,
                msgtype: int = 0) -> int:
        """Write one request; ``callback(frame)`` gets its response frame."""
        seq = self.seq = self.seq % MAX_SEQ + 1
        if callback is not None:
            self.waiting[seq] = callback
        self.transport.write(  # type: ignore[union-attr]
            encode(cmd, self.appcode, msgtype, self.uid, seq, body))
        return seq

    def login(self, token: str) -> Deferred[pb.LoginResponse]:
        """LOGIN; fires with the parsed ``LoginResponse`` (any code)."""
        d: Deferred[pb.LoginResponse] = Deferred()

        def answered(frame: Frame) -> None:
            response = pb.LoginResponse()
            response.ParseFromString(frame.body)
            d.callback(response)

        self.request(Cmd.LOGIN, pb.LoginRequest(token=token).SerializeToString(), answered)
        return d

    def call(self, cmd: int, body: bytes = b"", response: type[Any] = pb.Result,
             msgtype: int = 0) -> Deferred[Any]:
        """A request whose answer comes back parsed, as a Deferred (slow path)."""
        d: Deferred[Any] = Deferred()

        def answered(frame: Frame) -> None:
            msg = response()
            msg.ParseFromString(frame.body)
            d.callback(msg)

        self.request(cmd, body, answered, msgtype)
        return d

    def ack(self, msgids: list[int], callback: Callback | None = None) -> int:
        return self.request(Cmd.ACK, pb.Ack(msgids=msgids).SerializeToString(), callback)

    # -- frames in --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        decoder = self.decoder
        decoder.feed(data)
        while (frame := decoder.next()) is not None:
            if frame.cmd & RESPONSE_BIT:
                callback = self.waiting.pop(frame.sequenceid, None)
                if callback is not None:
                    callback(frame)
            elif frame.cmd == Cmd.KICKOUT:
                kick = pb.Kickout()
                kick.ParseFromString(frame.body)
                self.kicked = kick.reason_code
            elif self.on_push is not None:
                self.on_push(self, frame)
        if self.after_read is not None:
            self.after_read(self)


def result_code(frame: Frame) -> int:
    """The ``code`` of a ``Result`` body (0 is OK)."""
    result = pb.Result()
    result.ParseFromString(frame.body)
    return result.code


def connect(reactor: Any, host: str, port: int, client: BenchClient,
            source: str | None = None, timeout: float = 30,
            tls: IOpenSSLClientConnectionCreator | None = None) -> Deferred[BenchClient]:
    """Connect ``client`` to ``host:port``, from ``source`` (an address of
    this machine) when given; over TLS with ``tls``."""
    bind = (source, 0) if source else None
    endpoint = client_endpoint(reactor, host, port, tls=tls, timeout=timeout, bind=bind)
    return connectProtocol(endpoint, client)


def source_address(index: int, per_address: int, first: str = "127.0.0.2") -> str:
    """The source address of the ``index``-th connection of a run: ``per_address``
    connections from each of ``first``, ``first + 1``, ... (the node counts
    connections per peer address, and loopback has ~28,000 ports per source)."""
    a, b, c, d = (int(x) for x in first.split("."))
    d += index // per_address
    if d > 254:
        raise ValueError(f"too many connections for the source addresses from {first}")
    return f"{a}.{b}.{c}.{d}"
