"""Fixtures of the RabbitMQ bus and consumer tests: the test broker, a
plain pika connection to look at it (:class:`Raw`), a proxy that can cut the
network (:class:`Proxy`), a server that never answers, and a fake pika
channel for the confirm bookkeeping.

Others may share the broker: each test publishes to its own random exchange,
binds its own exclusive queues (gone with the test's connection) and deletes
the exchange at cleanup.
"""

from __future__ import annotations

import os
from typing import Any, cast
from uuid import uuid4

import pika
from pika.adapters.twisted_connection import (
    ReceivedMessage,
    TwistedChannel,
    TwistedProtocolConnection,
)
from pika.exceptions import ChannelClosedByBroker
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyClient, ProxyClientFactory, ProxyFactory, ProxyServer
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from daojia_msg.bus.amqp import AmqpBus
from daojia_msg.bus.amqp_connection import Broker
from daojia_msg.config import BusConfig
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.servers import _reachable, missing

AMQP_URL = os.environ.get("MSGP_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
#: Bytes that are not UTF-8 (and not a protobuf ``Message`` either).
RAW = b"\x00\xff\xfe\x80 not utf-8 \xc3\x28"


def require_rabbitmq() -> str:
    """The test broker's URL (guest on vhost "/" unless MSGP_TEST_AMQP says otherwise)."""
    broker = Broker.parse(AMQP_URL)
    if not _reachable(broker.host, broker.port):
        missing(f"RabbitMQ is not running at {broker.host}:{broker.port} (set MSGP_TEST_AMQP)")
    return AMQP_URL


def with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port`` (same credentials and vhost)."""
    broker = Broker.parse(url)
    p = broker.parameters
    return (f"amqp://{p.credentials.username}:{p.credentials.password}@127.0.0.1:{port}/"
            f"{'%2F' if p.virtual_host == '/' else p.virtual_host}")


def message(**fields: Any) -> pb.Message:
    fields.setdefault("kind", pb.C2S)
    return pb.Message(**fields)


def next_event(test: TestCase, source: object, amqp_event: str) -> Deferred[LogEvent]:
    """Fires with the next log event of ``source`` whose ``amqp_event`` field is
    ``amqp_event`` ("lost", "retry"): how a test waits for the bus without polling."""
    d: Deferred[LogEvent] = Deferred()

    def on_event(event: LogEvent) -> None:
        if (event.get("log_source") is source and event.get("amqp_event") == amqp_event
                and not d.called):
            globalLogPublisher.removeObserver(observe)
            d.callback(event)

    observe = cast(ILogObserver, on_event)
    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return d


class Raw:
    """A plain pika connection of the test's own, to look at the broker."""

    def __init__(self, proto: TwistedProtocolConnection, channel: TwistedChannel) -> None:
        self.proto = proto
        self.channel = channel

    @classmethod
    async def open(cls, test: TestCase, url: str) -> Raw:
        broker = Broker.parse(url, "msgplatform test")
        proto = TwistedProtocolConnection(broker.parameters, custom_reactor=reactor)
        await connectProtocol(TCP4ClientEndpoint(reactor, broker.host, broker.port), proto)
        await cast(Deferred[Any], proto.ready)
        raw = cls(proto, await proto.channel())
        test.addCleanup(raw.close)
        return raw

    async def close(self) -> None:
        closed = self.proto.close()
        if closed is not None:
            await closed

    async def bind(self, exchange: str, topic: str, **arguments: Any) -> str:
        """A new exclusive queue (gone with this connection) bound to ``topic``."""
        frame = await self.channel.queue_declare("", exclusive=True, arguments=arguments or None)
        queue = cast(str, frame.method.queue)
        await self.channel.queue_bind(queue, exchange, topic)
        return queue

    async def get(self, queue: str) -> ReceivedMessage | None:
        return cast("ReceivedMessage | None", await self.channel.basic_get(queue, auto_ack=True))

    async def declare_exchange(self, exchange: str, **kw: Any) -> None:
        """Declare (or check, with ``passive=True``) on a channel of its own:
        a mismatch closes that channel and fails with ChannelClosedByBroker."""
        channel = await self.proto.channel()
        try:
            await channel.exchange_declare(exchange, **kw)
        finally:
            if channel.is_open:
                channel.close()

    async def queue_exists(self, queue: str) -> bool:
        channel = await self.proto.channel()
        try:
            await channel.queue_declare(queue, passive=True)
        except ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            if e.reply_code == 405:  # RESOURCE_LOCKED: exclusive to another connection
                return True
            raise
        channel.close()
        return True

    async def delete_exchange(self, exchange: str) -> None:
        await self.channel.exchange_delete(exchange)

    async def delete_queue(self, queue: str) -> None:
        await self.channel.queue_delete(queue)


class Proxy:
    """A TCP proxy to the broker that the test can cut and switch off: "the
    network failed". It remembers its port, so it can listen there again."""

    def __init__(self, test: TestCase, host: str, port: int) -> None:
        self.test = test
        self.factory = _ProxyFactory(self, host, port)
        self.live: dict[Protocol, Deferred[None]] = {}
        self.servers: list[ProxyServer] = []
        self.listening: IListeningPort | None = None
        self.port = 0
        test.addCleanup(self.shut)

    def listen(self) -> None:
        self.listening = reactor.listenTCP(self.port, cast(Any, self.factory), interface="127.0.0.1")
        self.port = cast(IPv4Address, self.listening.getHost()).port

    async def stop_listening(self) -> None:
        if self.listening is not None:
            listening, self.listening = self.listening, None
            await cast(Deferred[None], listening.stopListening())

    def cut(self) -> None:
        """Drop every connection at once (no AMQP close, no FIN to wait for)."""
        for server in self.servers:
            if server.transport is not None:
                cast(Any, server.transport).abortConnection()
        self.servers = []

    async def shut(self) -> None:
        await self.stop_listening()
        self.cut()
        await gatherResults(list(self.live.values()))


class _ProxyServer(ProxyServer):
    factory: _ProxyFactory

    def connectionMade(self) -> None:
        self.tracker = self.factory.proxy
        self.tracker.live[self] = Deferred()
        self.tracker.servers.append(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.tracker.live.pop(self).callback(None)


class _ProxyClient(ProxyClient):
    def connectionMade(self) -> None:
        assert isinstance(self.peer, _ProxyServer)
        self.tracker = self.peer.tracker
        self.tracker.live[self] = Deferred()
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.tracker.live.pop(self).callback(None)


class _ProxyClientFactory(ProxyClientFactory):
    protocol = _ProxyClient


_ProxyServer.clientProtocolFactory = _ProxyClientFactory


class _ProxyFactory(ProxyFactory):
    protocol = _ProxyServer

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        super().__init__(host, port)
        self.proxy = proxy


class Silent(Protocol):
    """A server that accepts and never answers; ``factory.accepted`` fires on connect,
    ``factory.gone`` when the client went."""

    factory: SilentFactory

    def connectionMade(self) -> None:
        self.factory.accepted.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.gone.callback(None)


class SilentFactory(Factory):
    def __init__(self) -> None:
        self.accepted: Deferred[None] = Deferred()
        self.gone: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Silent()
        protocol.factory = self
        return protocol


class AmqpTestCase(TestCase):
    """A test of its own on a shared broker: a random exchange (deleted at
    cleanup) and topic, and ``raw``, a plain connection to look at the broker
    with (its exclusive queues go with it)."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = require_rabbitmq()
        self.exchange = f"msgp-test-{uuid4().hex[:12]}"
        self.topic = f"topic.{uuid4().hex[:8]}"
        self.raw = await Raw.open(self, self.url)
        # Declared as the bus declares it, so queues can be bound before a bus starts.
        await self.raw.declare_exchange(self.exchange, exchange_type="topic", durable=True)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.raw.delete_exchange(self.exchange)))

    def bus(self, url: str | None = None, **kw: Any) -> AmqpBus:
        """A bus on this test's exchange, stopped at cleanup."""
        bus = AmqpBus(url or self.url, BusConfig(amqp_exchange=self.exchange), reactor, **kw)
        self.addCleanup(bus.stop)
        return bus

    async def started(self, url: str | None = None, **kw: Any) -> AmqpBus:
        bus = self.bus(url, **kw)
        await bus.start()
        return bus


class FakePikaChannel:
    """What ``TwistedChannel`` uses of a pika ``Channel``, publishing into a list."""

    channel_number = 1

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def add_callback(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_on_cancel_callback(self, callback: Any) -> None:
        pass

    def add_on_return_callback(self, callback: Any) -> None:
        pass

    def add_on_close_callback(self, callback: Any) -> None:
        self._on_close = callback

    def confirm_delivery(self, ack_nack_callback: Any, callback: Any) -> None:
        self._ack_nack = ack_nack_callback
        callback(None)

    def basic_publish(self, **kwargs: Any) -> None:
        self.published.append(kwargs)

    def confirm(self, method: Any) -> None:
        self._ack_nack(pika.frame.Method(1, method))

    def close(self, reason: Exception) -> None:
        self._on_close(self, reason)
