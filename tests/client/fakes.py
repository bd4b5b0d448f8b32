"""Fakes for the client tests: a server side made of StringTransports.

What the client wrote is decoded with FrameDecoder (:func:`sent`, :func:`one`);
crafted response frames are fed to ``dataReceived`` (:func:`answer`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.protocol.codec import Frame, FrameDecoder, encode
from daojia_msg.protocol.codes import RESPONSE_BIT, Cmd
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

UID, APP = 42, 1001


def sent(transport: StringTransport) -> list[Frame]:
    """The frames the client wrote since the last call (and clear them)."""
    decoder = FrameDecoder(1 << 24)
    decoder.feed(transport.value())
    transport.clear()
    frames = []
    while (frame := decoder.next()) is not None:
        frames.append(frame)
    return frames


def one(transport: StringTransport) -> Frame:
    frames = sent(transport)
    assert len(frames) == 1, frames
    return frames[0]


def answer(proto: Any, request: Frame, body: Any = None) -> None:
    """Feed the response to ``request``: ``cmd | 0x80``, header echoed."""
    if body is None:
        body = pb.Result()
    data = body.SerializeToString()
    proto.dataReceived(
        encode(
            request.cmd | RESPONSE_BIT,
            request.appcode,
            request.msgtype,
            request.uid,
            request.sequenceid,
            data,
        )
    )


def push_frame(msgid: int, cmd: int = Cmd.C2C, seq: int = 1, **fields: Any) -> bytes:
    message = pb.Message(msgid=msgid, to_uid=UID, to_appcode=APP, content=b"hi", **fields)
    return encode(cmd, APP, message.msgtype, UID, seq, message.SerializeToString())


def acked(frames: list[Frame]) -> list[list[int]]:
    return [list(pb.Ack.FromString(f.body).msgids) for f in frames if f.cmd == Cmd.ACK]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects at once to a StringTransport, or fails with queued errors."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        self.failures: list[Exception] = []
        self.hold = False
        self.held: list[Deferred[Any]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        if self.failures:
            return fail(self.failures.pop(0))
        if self.hold:
            self.held.append(Deferred())
            return self.held[-1]
        proto: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return succeed(proto)

    def lose(self, reason: Exception | None = None) -> None:
        proto, _ = self.connections[-1]
        proto.connectionLost(Failure(reason or error.ConnectionDone()))
