# -*- test-case-name: tests.bus.test_amqp -*-
"""The RabbitMQ bus: each C2S envelope is published to the durable topic
exchange ``bus.amqp_exchange`` with the topic as routing key (the envelope on
the wire: docs/operations.md §7).

The channel is in publisher-confirm mode: :meth:`AmqpBus.publish` fires only
when the broker acks the publish. pika's ``TwistedChannel`` numbers the
publishes of a channel and settles every delivery tag up to the acked one when
an ack has ``multiple`` set; a nack fails that publish with
:class:`BusUnavailable`. Publishes are not ``mandatory``: a topic no queue is
bound to is accepted by the broker and dropped, as AMQP does.

Nothing is queued while disconnected: :meth:`AmqpBus.publish` fails at once.
When the connection (or the channel) is lost every unconfirmed publish fails
with :class:`BusTimeout` (the broker may have stored it: the sender is told
TIMEOUT, not UNAVAILABLE), whatever pika does with its own Deferreds, and
the bus reconnects by itself (:mod:`daojia_msg.bus.amqp_connection`: the URL,
the backoff). The app server's side is :mod:`daojia_msg.bus.amqp_consumer`.
"""

from __future__ import annotations

from typing import Any

import pika
from pika.adapters.twisted_connection import TwistedChannel
from pika.exceptions import NackError
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bus.amqp_connection import (
    BACKOFF_INITIAL_S,
    CONNECT_TIMEOUT_S,
    Broker,
    BrokerConnection,
    Reconnecting,
    explain,
    shut,
)
from daojia_msg.bus.envelope import CONTENT_TYPE
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.config import BusConfig
from daojia_msg.core.errors import BusTimeout, BusUnavailable

PERSISTENT = 2
#: The node's bus tries to reconnect at most this long apart: while it is
#: disconnected every C2S of its routes is refused, so it comes back within
#: this of the broker (a consumer, which only waits, backs off further).
PUBLISH_BACKOFF_MAX_S = 2.0


@implementer(IMessageBus)
class AmqpBus(Reconnecting):
    """Publishes C2S envelopes to a RabbitMQ topic exchange, with publisher confirms.

    ``reactor`` connects; ``clock`` (default: ``reactor``) runs the bus's own
    timers (see :class:`~daojia_msg.bus.amqp_connection.Reconnecting`).

    :meth:`start` fails with :class:`BusUnavailable` (naming the broker and
    why, never the password) when the first connection cannot be made: the
    broker is unreachable, refuses the credentials or the vhost, does not
    answer within ``connect_timeout_s``, or refuses the exchange declaration
    (e.g. it exists with another type). Only after a successful start does the
    bus reconnect by itself.
    """

    log = Logger()

    def __init__(self, url: str, config: BusConfig, reactor: Any, *,
                 clock: IReactorTime | None = None,
                 backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = PUBLISH_BACKOFF_MAX_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 name: str = "msgplatform bus") -> None:
        super().__init__(Broker.parse(url, name), config.amqp_exchange, reactor, clock,
                         connect_timeout_s=connect_timeout_s,
                         backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
        self._channel: TwistedChannel | None = None
        self._outstanding: set[Deferred[None]] = set()
        self._waiters: list[Deferred[None]] = []
        self._running = False

    def __repr__(self) -> str:
        return f"<AmqpBus {self.broker.display} exchange={self.exchange!r}>"

    @property
    def connected(self) -> bool:
        """True while publishes can be sent (connected, channel open)."""
        return self._channel is not None

    @property
    def unconfirmed(self) -> int:
        """Publishes sent and not yet confirmed."""
        return len(self._outstanding)

    # -- IMessageBus (and stop(), from Reconnecting)

    def start(self) -> Deferred[None]:
        if self._running or self._stopped:
            return fail(BusUnavailable(f"{self!r} was already started"))
        self._running = True

        def failed(failure: Failure) -> None:
            self._running = False
            why = "the bus was stopped" if self._stopped else explain(failure)
            error = BusUnavailable(f"cannot connect to RabbitMQ at {self.broker.display}: {why}")
            self._release_waiters(error)
            raise error

        return self._connect().addErrback(failed)

    def publish(self, topic: str, payload: bytes, logid: str,
                content_type: str = CONTENT_TYPE) -> Deferred[None]:
        """Persistent, the logid in the ``logid`` header, the media type in
        ``content_type``; ``message_id`` stays unset: a logid traces a
        request, it does not name a message."""
        channel = self._channel
        if channel is None:
            return fail(BusUnavailable(f"not connected to RabbitMQ at {self.broker.display}"))
        properties = pika.BasicProperties(
            content_type=content_type, delivery_mode=PERSISTENT, headers={"logid": logid})
        try:
            confirmed = channel.basic_publish(self.exchange, topic, payload, properties)
        except Exception as e:  # e.g. a routing key over 255 bytes; nothing was sent
            return fail(BusUnavailable(f"cannot publish to topic {topic!r}: {e}"))
        d: Deferred[None] = Deferred(self._outstanding.discard)
        self._outstanding.add(d)
        confirmed.addCallbacks(self._confirmed, self._refused,
                               callbackArgs=(d,), errbackArgs=(d, topic))
        return d

    # -- waiting for the connection

    def when_connected(self) -> Deferred[None]:
        """Fires once the bus is connected (at once if it is); fails with
        :class:`BusUnavailable` if it is stopped or its start fails first."""
        if self._channel is not None:
            return succeed(None)
        if self._stopped:
            return fail(BusUnavailable(f"{self!r} is stopped"))
        d: Deferred[None] = Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def _release_waiters(self, error: Exception | None) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    # -- confirms

    def _confirmed(self, _frame: object, d: Deferred[None]) -> None:
        if d in self._outstanding:
            self._outstanding.discard(d)
            d.callback(None)

    def _refused(self, failure: Failure, d: Deferred[None], topic: str) -> None:
        if d not in self._outstanding:
            return  # already failed (connection lost, stop, cancelled)
        self._outstanding.discard(d)
        if failure.check(NackError):
            d.errback(BusUnavailable(f"RabbitMQ refused (nack) the publish to topic {topic!r}"))
        else:
            d.errback(BusTimeout(f"RabbitMQ channel closed before confirming: "
                                 f"{explain(failure)}: the broker may have it"))

    def _fail_outstanding(self, why: str) -> int:
        """Fail the publishes sent and not confirmed: the broker may have
        stored them before it went (a TIMEOUT for the sender, "may or may
        not", never UNAVAILABLE, which would invite a resend of a message the
        broker kept: a double)."""
        outstanding, self._outstanding = self._outstanding, set()
        for d in outstanding:
            d.errback(BusTimeout(f"{why}: the broker may have it"))
        return len(outstanding)

    # -- the connection

    def _connected(self) -> None:
        self._release_waiters(None)  # now that the attempt's timer is gone too

    def _who(self) -> str:
        return "AMQP bus"

    async def _attempt_connect(self) -> None:
        proto, channel = await self._open(confirm=True)
        if self._stopped:  # stop() came while the last step was answered
            await shut(proto, self.clock)
            raise CancelledError()
        self._proto, self._channel = proto, channel
        channel.on_closed.addCallback(self._channel_closed, proto, channel)
        self.log.info("AMQP bus connected to {broker}, exchange {exchange}",
                      broker=self.broker.display, exchange=self.exchange)

    def _lost(self, proto: BrokerConnection, reason: Failure) -> None:
        if proto is not self._proto:
            return  # a connection still being set up: its attempt fails by itself
        self._proto = self._channel = None
        why = proto.why_lost(reason)
        failed = self._fail_outstanding(f"lost the connection to RabbitMQ: {why}")
        if self._stopped:
            return
        delay = self._schedule_retry()
        self.log.warn("AMQP bus lost its connection to {broker}: {reason}; {failed} unconfirmed "
                      "publishes failed; reconnecting in {delay:g} s",
                      broker=self.broker.display, reason=why, failed=failed, delay=delay,
                      amqp_event="lost")

    def _channel_closed(self, reason: object, proto: BrokerConnection,
                        channel: TwistedChannel) -> None:
        """The broker closed the channel (e.g. the exchange was deleted): drop
        the connection too; its loss schedules the reconnect."""
        if self._channel is not channel:
            return  # the connection went first, or stop()
        self._channel = None
        failed = self._fail_outstanding(f"RabbitMQ closed the channel: {reason}")
        self.log.warn("AMQP bus channel closed by {broker}: {reason}; {failed} unconfirmed "
                      "publishes failed; reconnecting", broker=self.broker.display,
                      reason=str(reason), failed=failed)
        Deferred.fromCoroutine(shut(proto, self.clock))

    def _stopping(self) -> None:
        error = BusUnavailable(f"{self!r} is stopped")
        self._release_waiters(error)
        self._channel = None
        self._fail_outstanding(str(error))

    def _closed(self) -> None:
        self.log.info("AMQP bus disconnected from {broker}", broker=self.broker.display)
