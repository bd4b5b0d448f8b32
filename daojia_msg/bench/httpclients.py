# -*- test-case-name: tests.bench.test_httpclients -*-
"""The generator's HTTP clients: :class:`Http` (treq, for seeding) and :class:`RawHttp`
(pre-built requests over keep-alive connections, for the push scenario)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure


class Http:
    """A persistent HTTP pool and a JSON POST (treq)."""

    def __init__(self, reactor: Any, spec: dict[str, Any]) -> None:
        import treq
        from twisted.web.client import HTTPConnectionPool

        self.treq = treq
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max(2, spec.get("concurrency", 16))
        self.base = spec["http_url"].rstrip("/")
        self.headers: Any = {"Authorization": [f"Bearer {spec['api_key']}"],
                        "Content-Type": ["application/json"]}

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        response = await self.treq.post(self.base + path, data=json.dumps(body).encode(),
                                         headers=self.headers, pool=self.pool)
        content = await self.treq.content(response)
        return response.code, json.loads(content) if content else None

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


class HttpResponseError(Exception):
    """An HTTP answer the raw client cannot read (no Content-Length, bad status line)."""


class HttpConnection(Protocol):
    """One keep-alive HTTP/1.1 client connection, one request at a time, for
    the push generator: it writes pre-built request bytes and reads answers
    that carry a ``Content-Length`` (as the node's API always does). Much
    cheaper per request than treq, so the generator is not what limits a
    single-push run."""

    def __init__(self) -> None:
        self.closed = False
        self._buffer = b""
        self._waiting: Deferred[tuple[int, bytes]] | None = None
        self._status = 0
        self._length = -1  # of the body being read; -1 while reading a head
        self._close_after = False

    def request(self, data: bytes) -> Deferred[tuple[int, bytes]]:
        """Send a whole request; fires with the answer's ``(status, body)``."""
        assert self._waiting is None and not self.closed, "one request at a time"
        d: Deferred[tuple[int, bytes]] = Deferred(self._cancel)
        self._waiting = d
        self.transport.write(data)  # type: ignore[union-attr]
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._waiting is not None:
            if self._length < 0:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buffer[:end].lower()
                self._buffer = self._buffer[end + 4:]
                try:
                    self._status, self._length, self._close_after = parse_response_head(head)
                except HttpResponseError as e:
                    self._fail(Failure(e))
                    return
            if len(self._buffer) < self._length:
                return
            body, self._buffer = self._buffer[:self._length], self._buffer[self._length:]
            self._length = -1
            d, self._waiting = self._waiting, None
            if self._close_after:
                self._close()
            d.callback((self._status, body))

    def _cancel(self, d: Deferred[tuple[int, bytes]]) -> None:
        # A timeout: this connection's answer is lost, drop the connection.
        self._waiting = None
        self._close()

    def _fail(self, reason: Failure) -> None:
        d, self._waiting = self._waiting, None
        self._close()
        if d is not None:
            d.errback(reason)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.errback(reason)


def parse_response_head(head: bytes) -> tuple[int, int, bool]:
    """``(status, content length, close after)`` of a lowercased response head."""
    if not head.startswith(b"http/1.") or len(head) < 12 or not head[9:12].isdigit():
        raise HttpResponseError(f"bad status line {head[:40]!r}")
    status = int(head[9:12])
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        raise HttpResponseError("an answer without Content-Length")
    end = head.find(b"\r\n", start + 2)
    value = head[start + 17:end if end >= 0 else len(head)].strip()
    if not value.isdigit():
        raise HttpResponseError(f"bad Content-Length {value!r}")
    close = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
    return status, int(value), close


class RawHttp:
    """JSON POSTs over a pool of :class:`HttpConnection`: an idle connection
    is reused, else a new one is opened (the callers bound how many requests
    are in flight, hence how many connections there are). Each request is
    bounded by ``timeout`` seconds (its connection is then dropped)."""

    def __init__(self, reactor: Any, spec: dict[str, Any], timeout: float = 30.0) -> None:
        url = urlsplit(spec["http_url"])
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"the push generator speaks plain http://, not {spec['http_url']}")
        self.reactor = reactor
        self.host = url.hostname
        self.port = url.port or 80
        self.base = url.path.rstrip("/").encode("ascii")
        self.timeout = timeout
        self.idle: list[HttpConnection] = []
        self.connections: set[HttpConnection] = set()
        self._head = (b"Host: %s\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " % (
                          url.netloc.encode("ascii"), spec["api_key"].encode("ascii")))

    def build(self, path: str, body: bytes) -> bytes:
        """The bytes of one POST of ``body`` (JSON) to ``path``."""
        return (b"POST %s%s HTTP/1.1\r\n" % (self.base, path.encode("ascii")) + self._head
                + b"%d\r\n\r\n" % len(body) + body)

    async def _connection(self) -> HttpConnection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=10)
        connection = await connectProtocol(endpoint, HttpConnection())
        self.connections.add(connection)
        return connection

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send pre-built ``request`` bytes (:meth:`build`): ``(status, body)``."""
        connection = await self._connection()
        d = connection.request(request)
        d.addTimeout(self.timeout, self.reactor)
        try:
            return await d
        finally:
            if connection.closed:
                self.connections.discard(connection)
            else:
                self.idle.append(connection)

    async def close(self) -> None:
        self.idle = []
        for connection in list(self.connections):
            connection._close()
        self.connections.clear()
