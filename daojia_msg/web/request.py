# -*- test-case-name: tests.web.test_request -*-
"""The bounded request: a body over ``limits.http_max_body`` gets a 413 at once.

The refusal comes as soon as the size is known (a declared ``Content-Length``
at the headers; a chunked body once its count passes the limit), the write
side is then closed. The rest of the body is read and dropped, never
buffered, so that a client still sending reads the answer instead of a reset,
up to twice the limit (at least :data:`DRAIN_MIN`); beyond that the
connection stops reading and is closed after :data:`LINGER_S` idle seconds.
An ``Expect: 100-continue`` request over the limit gets no ``100 Continue``.
"""

from __future__ import annotations

import time
from io import BytesIO
from typing import Any

from twisted.logger import Logger
from twisted.web import server

from daojia_msg.sockets import host_port
from daojia_msg.web.parsing import dumps

#: Seconds a connection whose body was refused (413) is kept to drain it.
LINGER_S = 5.0
#: A refused body is read and dropped up to twice the limit, at least this much.
DRAIN_MIN = 1024 * 1024

log = Logger()


class ApiRequest(server.Request):
    """A :class:`server.Request` that refuses a body over ``max_body`` bytes
    with 413 without buffering it."""

    def __init__(self, channel: Any, *args: Any, max_body: int, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self.max_body = max_body
        self._received = 0
        self._refused = False
        self._dropped = 0
        self._drain_max = max(2 * max_body, DRAIN_MIN)
        self._paused = False
        #: When the whole request was read (``time.perf_counter``), for the metrics.
        self.received_at: float | None = None

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.content = BytesIO()
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            self._drop(len(data))
            return
        self._received += len(data)
        if self._received > self.max_body:  # a chunked body: no length to check up front
            if self.content is not None:
                self.content.close()
            self.content = BytesIO()
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.received_at = time.perf_counter()
        if self._refused:
            # The whole body arrived and was dropped; the 413 is already out.
            transport = self.channel.transport if self.channel is not None else None
            if transport is not None:
                transport.loseConnection()
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        # allHeadersReceived sends "100 Continue" after gotLength: not for this one.
        self.requestHeaders.removeHeader(b"expect")
        body = dumps({"error": f"request body is over {self.max_body} bytes"})
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        channel = self.channel
        transport: Any = channel.transport
        log.info("refused a request body over {max_body} bytes from {peer}",
                 max_body=self.max_body, peer=_peer_text(self.client))
        transport.write(head + body)
        channel.persistent = False
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
            channel.setTimeout(LINGER_S)
        else:
            transport.loseConnection()

    def _drop(self, n: int) -> None:
        self._dropped += n
        if self._dropped > self._drain_max and not self._paused and self.channel is not None:
            # Enough: stop reading (the 413 still goes out); the linger timeout closes.
            self._paused = True
            transport: Any = self.channel.transport
            if not transport.disconnecting:  # closing anyway: it reads no more
                transport.pauseProducing()


def _peer_text(address: Any) -> str:
    """``host:port`` of a TCP peer address (its repr for other kinds)."""
    host, port = getattr(address, "host", None), getattr(address, "port", 0)
    if host is None:
        return str(address)
    return host_port(host, port)
