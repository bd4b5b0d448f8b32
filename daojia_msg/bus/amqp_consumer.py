# -*- test-case-name: tests.bus.test_amqp_consumer -*-
"""The app server's side of the RabbitMQ bus: consume the C2S envelopes of a
topic (the envelope on the wire: docs/operations.md §7). The node's side is
:mod:`daojia_msg.bus.amqp`; the URL and reconnecting,
:mod:`daojia_msg.bus.amqp_connection`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pika.adapters.twisted_connection import (
    ClosableDeferredQueue,
    ReceivedMessage,
    TwistedChannel,
)
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.bus.amqp_connection import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    CONNECT_TIMEOUT_S,
    Broker,
    BrokerConnection,
    Reconnecting,
    detached,
    explain,
    shut,
)
from daojia_msg.bus.envelope import BadEnvelope, Envelope, decode_envelope, media_type
from daojia_msg.config import BusConfig
from daojia_msg.core.errors import BusUnavailable

DEFAULT_EXCHANGE = BusConfig().amqp_exchange

OnEnvelope = Callable[[Envelope], "Awaitable[object] | object"]


class AmqpConsumer(Reconnecting):
    """Consumes the C2S envelopes of one topic: what an app team's service does.

    ``start()`` connects, declares the exchange (as the bus does), declares a
    queue: the ``queue`` named (durable, shared by every consumer of that
    name) or, by default, a server-named exclusive auto-delete one (gone with
    the connection); binds it with routing key ``topic`` and consumes. It fires
    once the binding is in place: what is published from then on arrives.

    Each message becomes an :class:`Envelope` (the logid from the ``logid``
    header, else the ``Message``'s) and is passed to ``on_envelope``, one at a
    time; when that returns (or the Deferred/awaitable it returns fires) the
    message is acked. A message that is not an envelope, or whose handler
    raised, is rejected without requeue (dead-lettered if the queue has a
    dead-letter exchange) and logged. ``stop()`` closes the connection
    without waiting for a handler still running: its message is not acked and
    goes back to a named queue.

    A lost connection is logged and the consumer connects again with backoff
    (see :class:`~daojia_msg.bus.amqp_connection.Reconnecting`). With a named
    queue nothing published meanwhile is missed (the broker kept it); a
    server-named queue went with the connection, so what was published while
    disconnected is not seen: name the queue when every envelope matters.
    """

    log = Logger()

    def __init__(self, url: str, topic: str, reactor: Any,
                 on_envelope: OnEnvelope, *, exchange: str = DEFAULT_EXCHANGE,
                 queue: str | None = None, prefetch: int = 100,
                 clock: IReactorTime | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
        super().__init__(Broker.parse(url, f"msgplatform consumer {topic}"), exchange, reactor,
                         clock, connect_timeout_s=connect_timeout_s,
                         backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
        self.topic = topic
        self.on_envelope = on_envelope
        self.queue = queue or ""
        self._named = bool(queue)
        self.prefetch = prefetch
        self._loop: Deferred[None] | None = None
        self._started = False

    def start(self) -> Deferred[None]:
        """Fires when consuming; fails with :class:`BusUnavailable` if it cannot."""
        if self._started:
            return fail(BusUnavailable(f"the consumer of {self.topic!r} was already started"))
        self._started = True

        def failed(failure: Failure) -> None:
            raise BusUnavailable(f"cannot consume {self.topic!r} from RabbitMQ at "
                                 f"{self.broker.display}: {explain(failure)}")

        return self._connect().addErrback(failed)

    def _who(self) -> str:
        return f"consumer of {self.topic}"

    async def _attempt_connect(self) -> None:
        proto, channel = await self._open(confirm=False)
        try:
            await detached(channel.basic_qos(prefetch_count=self.prefetch))
            if self._named:
                await detached(channel.queue_declare(self.queue, durable=True))
            else:
                frame = await detached(channel.queue_declare("", exclusive=True,
                                                             auto_delete=True))
                self.queue = frame.method.queue
            await detached(channel.queue_bind(self.queue, self.exchange, self.topic))
            messages, _tag = await detached(channel.basic_consume(self.queue))
            if self._stopped:
                raise CancelledError()
        except BaseException:
            await shut(proto, self.clock)
            raise
        self._proto = proto
        self._loop = Deferred.fromCoroutine(self._consume(channel, messages))
        self.log.info("consuming topic {topic} from {broker} (queue {queue})",
                      topic=self.topic, broker=self.broker.display, queue=self.queue,
                      amqp_event="consuming")

    def _lost(self, proto: BrokerConnection, reason: Failure) -> None:
        if proto is self._proto and not self._stopped:
            self._proto = None
            delay = self._schedule_retry()
            self.log.warn("consumer of {topic} lost its connection to {broker}: {reason};"
                          " reconnecting in {delay:g} s", topic=self.topic,
                          broker=self.broker.display, reason=proto.why_lost(reason), delay=delay,
                          amqp_event="lost")

    async def _consume(self, channel: TwistedChannel, messages: ClosableDeferredQueue) -> None:
        while True:
            try:
                message = await messages.get()
            except Exception:
                return  # the channel closed: stop() or a lost connection (logged)
            await self._handle(channel, message)

    async def _handle(self, channel: TwistedChannel, message: ReceivedMessage) -> None:
        tag = message.method.delivery_tag
        topic = message.method.routing_key
        headers = message.properties.headers or {}
        logid = headers.get("logid", "")
        if isinstance(logid, bytes):
            logid = logid.decode("utf-8", "replace")
        try:
            envelope = decode_envelope(topic, message.body, str(logid),
                                       media_type(message.properties.content_type))
        except BadEnvelope as e:
            self.log.warn("rejected a message on {topic} that is not an envelope: {error}",
                          topic=topic, error=str(e), logid=logid)
            _settle_message(channel, tag, ack=False)
            return
        try:
            result = self.on_envelope(envelope)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.log.failure("consumer callback failed on {topic}", topic=topic, logid=logid)
            _settle_message(channel, tag, ack=False)
            return
        _settle_message(channel, tag, ack=True)


def _settle_message(channel: TwistedChannel, tag: int, ack: bool) -> None:
    try:
        if ack:
            channel.basic_ack(tag)
        else:
            channel.basic_reject(tag, requeue=False)
    except Exception:
        pass  # the channel closed: the broker redelivers the message
