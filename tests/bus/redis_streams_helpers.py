"""Fixtures of the Redis Streams bus and consumer tests: a test case with a
raw connection for checks, a proxy that records the commands and can go
silent, a wire-level client, a fake connection for the batching on a Clock.

Other tests share the Redis database: each test uses streams of random names
and deletes them at cleanup; nothing here flushes a database.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast
from uuid import uuid4

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.protocols.portforward import ProxyServer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daojia_msg.bus.envelope import Envelope
from daojia_msg.bus.redis_streams import RedisStreamsBus
from daojia_msg.config import BusConfig, parse_redis_url
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.servers import TrackingProxyFactory, listen, require_redis

#: Reply timeout of the failure tests.
TIMEOUT = 0.2
#: "Quickly" on the real reactor: a few timeouts, with room for a loaded
#: machine; a hang would take txredisapi's reconnect backoff or forever.
QUICK = 2.0


def new_topic() -> str:
    return f"msgp-test-{uuid4().hex[:12]}"


def message(n: int = 1, logid: str = "log-1") -> bytes:
    """A serialized C2S Message; its bytes are not valid UTF-8."""
    payload = pb.Message(msgid=2**64 - 1 - n, from_uid=7, from_appcode=1001, msgtype=1,
                         content=b"\xff\xfe\x00\x80gps", logid=logid,
                         kind=pb.C2S).SerializeToString()
    return payload


def log_events(test: SynchronousTestCase) -> EventLoggingObserver:
    """Every log event while ``test`` runs."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    test.addCleanup(globalLogPublisher.removeObserver, events)
    return events


class Silent(Protocol):
    """A server that accepts and never answers."""


class Requests:
    """Parses the commands a Redis client sends (RESP arrays of bulk strings)."""

    def __init__(self, into: list[list[bytes]]) -> None:
        self.into = into
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while (command := self._next()) is not None:
            self.into.append(command)

    def _next(self) -> list[bytes] | None:
        buf = self.buffer
        if not buf:
            return None
        assert buf[:1] == b"*", buf[:20]
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        pos, args = end + 2, []
        for _ in range(int(buf[1:end])):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            assert buf[pos:pos + 1] == b"$", buf[pos:pos + 20]
            start = end + 2
            stop = start + int(buf[pos + 1:end])
            if len(buf) < stop + 2:
                return None
            args.append(buf[start:stop])
            pos = stop + 2
        self.buffer = buf[pos:]
        return args


class RawRedis(Protocol):
    """A bare connection to Redis: the reply bytes exactly as they come."""

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def send(self, *commands: list[bytes]) -> Deferred[bytes]:
        """Sends ``commands`` and a PING; fires with all the bytes up to its PONG."""
        out = b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a)
                                                      for a in c) for c in commands)
        assert self.transport is not None
        self.transport.write(out + b"PING\r\n")
        return self.done

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(b"+PONG\r\n") and not self.done.called:
            self.done.callback(self.received)


class FreezableProxy(ProxyServer):
    """Forwards to Redis, or swallows what the client sends while frozen;
    records the commands it forwards."""

    def connectionMade(self) -> None:
        self.requests = Requests(cast(ControlledProxyFactory, self.factory).commands)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not cast(ControlledProxyFactory, self.factory).frozen:
            self.requests.feed(data)
            super().dataReceived(data)


class ControlledProxyFactory(TrackingProxyFactory):
    """A TCP proxy to Redis that can go silent or cut every connection.

    ``commands`` holds every command the clients sent through it, in order.
    """

    protocol = FreezableProxy

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.frozen = False
        self.commands: list[list[bytes]] = []


class RedisTestCase(TestCase):
    """A raw connection for checks (``self.raw``), streams deleted at cleanup."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = require_redis()
        u = parse_redis_url(self.url)
        self.raw = await txredisapi.Connection(
            u.host, u.port, dbid=u.db, reconnect=False, charset=None, convertNumbers=False,
            password=u.password or None, connectTimeout=2, replyTimeout=2)
        self.addCleanup(self.raw.disconnect)
        self.topic = self.stream()

    def stream(self) -> str:
        """A fresh stream name, deleted at cleanup."""
        name = new_topic()
        self.addCleanup(lambda: self.raw.execute_command("DEL", name))
        return name

    async def open_bus(self, url: str | None = None, **options: Any) -> RedisStreamsBus:
        maxlen = options.pop("stream_maxlen", 1_000_000)
        config = BusConfig(url=url or self.url, stream_maxlen=maxlen)
        bus = RedisStreamsBus(url or self.url, config, reactor, **options)
        await bus.start()
        self.addCleanup(bus.stop)
        return bus

    async def entries(self, topic: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self.raw.execute_command("XRANGE", topic, "-", "+")
        return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entry_id, flat in reply]

    async def xlen(self, topic: str) -> int:
        return int(await self.raw.execute_command("XLEN", topic))

    async def logids(self, topic: str) -> list[bytes]:
        return [fields[b"logid"] for _, fields in await self.entries(topic)]

    async def proxied(self, **options: Any) -> tuple[RedisStreamsBus, ControlledProxyFactory,
                                                      IListeningPort]:
        """A bus that talks to Redis through a proxy that records its commands."""
        u = parse_redis_url(self.url)
        proxy = ControlledProxyFactory(u.host, u.port)
        listening, port = listen(self, proxy)
        bus = await self.open_bus(f"redis://127.0.0.1:{port}/{u.db}", **options)
        return bus, proxy, listening


class FakeRedis:
    """A connection that records each command; the test answers them (or not)."""

    def __init__(self, connected: bool = True) -> None:
        self._factory = SimpleNamespace(size=int(connected), pool=[], stopped=False)
        self.commands: list[tuple[Any, ...]] = []
        self.replies: list[Deferred[Any]] = []

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args)
        self.replies.append(Deferred())
        return self.replies[-1]

    def disconnect(self) -> Deferred[None]:
        return succeed(None)


def fake_bus(config: BusConfig | None = None, connected: bool = True,
             **options: Any) -> tuple[RedisStreamsBus, Clock, FakeRedis]:
    clock = Clock()
    bus = RedisStreamsBus("redis://127.0.0.1:1/15", config or BusConfig(stream_maxlen=500),
                          clock, reply_timeout_s=TIMEOUT, **options)
    bus._conn = FakeRedis(connected)
    return bus, clock, bus._conn


def xadd_args(*entries: tuple[bytes, ...], maxlen: bytes = b"500") -> tuple[Any, ...]:
    """The script's arguments for ``(topic, payload, logid[, content_type])``
    entries (no content type: the envelope's protobuf, sent as empty)."""
    args: list[Any] = [len(entries), *(entry[0] for entry in entries), maxlen]
    for _, payload, logid, *content_type in entries:
        args += [payload, logid, content_type[0] if content_type else b""]
    return tuple(args)


NOSCRIPT = txredisapi.ResponseError("NOSCRIPT No matching script. Please use EVAL.")


class Received:
    """Envelopes a consumer delivered; ``wait(n)`` fires once there are n."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        for n, d in list(self._waiting):
            if len(self.envelopes) >= n:
                self._waiting.remove((n, d))
                d.callback(None)

    def wait(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.envelopes) >= n:
            d.callback(None)
        else:
            self._waiting.append((n, d))
        d.addTimeout(QUICK * 5, reactor)
        return d
