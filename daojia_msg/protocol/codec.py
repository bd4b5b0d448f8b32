# -*- test-case-name: tests.protocol.test_codec -*-
"""The frame codec: pure bytes in, frames out. No transport, no reactor.

A frame is a 32-byte header (``"!HBBIIQIII"``, docs/protocol.md §2) and a body of
``bodylength`` bytes. :class:`FrameDecoder` is incremental: feed it any split or
coalescing of TCP chunks and call :meth:`FrameDecoder.next` until it returns
``None``. It rejects a bad magic as soon as the bytes show it, and checks the
version and the body size from the header *before* any body byte is buffered
as part of a frame (the first checks of docs/protocol.md §6.2), so a peer
cannot make it hold more than one header plus ``max_body`` bytes of one frame
(the caller bounds what it feeds).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from daojia_msg.protocol.codes import MAGIC, VERSION

HEADER = struct.Struct("!HBBIIQIII")
HEADER_SIZE = HEADER.size  # 32
_MAGIC_HI = MAGIC >> 8
_MAGIC_LO = MAGIC & 0xFF
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class Frame(NamedTuple):
    """One decoded frame. ``body`` is the raw protobuf bytes."""

    cmd: int
    appcode: int
    msgtype: int
    uid: int
    sequenceid: int
    body: bytes = b""
    version: int = VERSION
    reserve: int = 0


class FrameError(Exception):
    """The byte stream cannot go on; the connection is to be closed."""


class BadMagic(FrameError):
    """The first two bytes of a header are not ``0x58DA``: close, no reply."""


class HeaderError(FrameError):
    """A well-formed header the server refuses; ``header`` is echoed in the reply."""

    def __init__(self, header: Frame) -> None:
        super().__init__(header)
        self.header = header


class BadVersion(HeaderError):
    """The header's version is not 1: answer UNSUPPORTED_VERSION, then close."""


class BodyTooLarge(HeaderError):
    """``bodylength`` is over the limit: answer TOO_LARGE, then close."""


def encode(
    cmd: int, appcode: int, msgtype: int, uid: int, sequenceid: int, body: bytes = b""
) -> bytes:
    """One frame's bytes, version 1, reserve 0."""
    return _pack(MAGIC, VERSION, cmd, appcode, msgtype, uid, sequenceid, 0, len(body)) + body


def encode_frame(frame: Frame) -> bytes:
    """The bytes of ``frame`` exactly as given (version and reserve included)."""
    return (
        _pack(
            MAGIC,
            frame.version,
            frame.cmd,
            frame.appcode,
            frame.msgtype,
            frame.uid,
            frame.sequenceid,
            frame.reserve,
            len(frame.body),
        )
        + frame.body
    )


class FrameDecoder:
    """Incremental decoder of a stream of frames.

    After it raised a :class:`FrameError` the stream is broken: do not feed it again.
    """

    __slots__ = ("_buf", "_pos", "max_body")

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes; :meth:`next` takes the frames out."""
        self._buf += data

    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos

    def next(self) -> Frame | None:
        """The next whole frame, or ``None`` until more bytes arrive."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail >= 1 and buf[pos] != _MAGIC_HI or avail >= 2 and buf[pos + 1] != _MAGIC_LO:
            raise BadMagic()
        if avail >= HEADER_SIZE:
            _, version, cmd, appcode, msgtype, uid, seq, reserve, length = _unpack_from(buf, pos)
            if version != VERSION:
                raise BadVersion(Frame(cmd, appcode, msgtype, uid, seq, b"", version, reserve))
            if length > self.max_body:
                raise BodyTooLarge(Frame(cmd, appcode, msgtype, uid, seq, b"", version, reserve))
            end = pos + HEADER_SIZE + length
            if len(buf) >= end:
                self._pos = end
                body = bytes(buf[pos + HEADER_SIZE : end])
                return Frame(cmd, appcode, msgtype, uid, seq, body, version, reserve)
        if pos:
            del buf[:pos]
            self._pos = 0
        return None
