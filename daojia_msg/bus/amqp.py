# -*- test-case-name: tests.bus.test_amqp -*-
"""The RabbitMQ bus (docs/operations.md §7), on pika's Twisted adapter.

Each C2S frame is published to the durable topic exchange ``bus.amqp_exchange``
(``msgplatform.c2s`` by default) with routing key = the route's topic, body =
the serialized ``Message``, ``delivery_mode`` 2 (persistent), ``content_type``
``application/x-protobuf`` and the logid in the ``logid`` header.
``message_id`` and ``correlation_id`` stay unset: a logid traces a request, it
does not name a message (the msgid is inside the ``Message``).

The channel is in publisher-confirm mode: :meth:`AmqpBus.publish` fires only
when the broker acks the publish. pika's ``TwistedChannel`` numbers the
publishes of a channel and settles every delivery tag up to the acked one when
an ack has ``multiple`` set; a nack fails that publish with
:class:`BusUnavailable`. Publishes are not ``mandatory``: a topic no queue is
bound to is accepted by the broker and dropped, as AMQP does.

Nothing is queued while disconnected: :meth:`AmqpBus.publish` fails at once.
When the connection (or the channel) is lost every unconfirmed publish fails
with :class:`BusUnavailable`, whatever pika does with its own Deferreds, and
the bus reconnects by itself after 0.5 s, 1 s, 2 s, ... at most 30 s between
attempts, re-declaring the exchange each time; the delay is reset by a
successful connection. A dead peer that sends no RST is noticed by AMQP
heartbeats (the broker's interval unless the URL says ``?heartbeat=N``).

URL: ``amqp[s]://user:password@host[:port]/vhost`` (``%2F`` is vhost "/",
which is also what an empty path means; default user guest:guest). The
password is never logged nor put in an error: see :func:`redact_url`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
from pika.adapters.twisted_connection import (
    ClosableDeferredQueue,
    ReceivedMessage,
    TwistedChannel,
    TwistedProtocolConnection,
)
from pika.exceptions import ConnectionWrongStateError, NackError
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bus.envelope import BadEnvelope, Envelope, decode_envelope
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.config import BusConfig
from daojia_msg.core.errors import BusUnavailable
from daojia_msg.deadlines import within

T = TypeVar("T")

CONTENT_TYPE = "application/x-protobuf"
PERSISTENT = 2
DEFAULT_EXCHANGE = BusConfig().amqp_exchange
#: Reconnect backoff: the first delay, doubled after each failed attempt up to the cap.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
#: One connection attempt (TCP, AMQP handshake, channel, declarations) must finish in this.
CONNECT_TIMEOUT_S = 10.0
#: A graceful close the broker does not answer in this long is cut.
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Broker:
    """An ``amqp[s]://`` URL, parsed; ``display`` is the URL without the password."""

    host: str
    port: int
    tls: bool
    parameters: pika.connection.Parameters
    display: str

    @classmethod
    def parse(cls, url: str, name: str = "msgplatform") -> Broker:
        """Raises ValueError (naming the URL without its password)."""
        display = redact_url(url)
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"expected an amqp:// or amqps:// URL, got {display!r}")
        try:
            parameters = pika.URLParameters(url)
        except Exception as e:
            raise ValueError(f"bad AMQP URL {display!r}: {e}") from None
        # Shown by the broker (rabbitmqctl list_connections client_properties).
        parameters.client_properties = {"connection_name": name}
        return cls(parameters.host, parameters.port, url.startswith("amqps:"), parameters,
                   display)


def redact_url(url: str) -> str:
    """``url`` with its password left out: what logs and errors may show."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    # The query may carry TLS options (key files, their passwords): left out.
    return f"{scheme}://{netloc}{slash}{path.partition('?')[0]}"


class _Connection(TwistedProtocolConnection):
    """pika's protocol, plus ``lost``: a Deferred that fires (with None) once
    the TCP connection is gone, after ``on_lost(reason)`` ran. ``on_lost`` runs
    before pika's own handling, so a user learns of the loss first."""

    def __init__(self, broker: Broker, reactor: Any,
                 on_lost: Callable[[_Connection, Failure], None]) -> None:
        super().__init__(broker.parameters, custom_reactor=reactor)
        self.lost: Deferred[None] = Deferred()
        self._on_lost = on_lost
        #: The broker's reason when it closed the connection (Connection.Close,
        #: e.g. "403 ACCESS_REFUSED - ..."): pika's Twisted adapter replaces it
        #: with the TCP close ("closed cleanly") before it reports it.
        self.broker_reason: str | None = None
        self._impl.callbacks.add(0, pika.spec.Connection.Close, self._closed_by_broker)

    def _closed_by_broker(self, frame: Any) -> None:
        self.broker_reason = f"{frame.method.reply_code} {frame.method.reply_text}"

    def why_lost(self, reason: Failure) -> str:
        return (f"closed by the broker: {self.broker_reason}" if self.broker_reason
                else _reason(reason))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self._on_lost(self, reason)
            super().connectionLost(reason)
        finally:
            self.lost.callback(None)


class BrokerRefused(Exception):
    """The broker closed the connection while it was being set up."""


def _detached(d: Deferred[T]) -> Deferred[T]:
    """A Deferred with ``d``'s result whose cancellation leaves ``d`` alone.

    pika fires its own Deferreds (``ready``, a channel call) later, whether or
    not we still wait; cancelling one of them would make pika fire it twice.
    """
    out: Deferred[T] = Deferred()

    def settle(result: Any) -> None:
        if not out.called:
            out.callback(result)  # a Failure takes the errback path

    d.addBoth(settle)
    return out


def _reason(failure: Failure) -> str:
    """A short, password-free account of why a connection failed."""
    value = failure.value
    if isinstance(value, CancelledError):
        return "cancelled"
    text = str(value) or type(value).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _endpoint(reactor: Any, broker: Broker, timeout: float) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, broker.host, broker.port, timeout=timeout)
    if broker.tls:
        endpoint = wrapClientTLS(optionsForClientTLS(broker.host), endpoint)
    return endpoint


async def _open_channel(broker: Broker, exchange: str, reactor: Any, timeout: float,
                        on_lost: Callable[[_Connection, Failure], None],
                        confirm: bool) -> tuple[_Connection, TwistedChannel]:
    """Connect, open a channel (in confirm mode if ``confirm``) and declare
    ``exchange`` as a durable topic exchange. On any failure or cancellation
    the connection is cut, and this returns only once it is gone."""
    proto = _Connection(broker, reactor, on_lost)
    await connectProtocol(_endpoint(reactor, broker, timeout), proto)
    try:
        try:
            await _detached(proto.ready)
        except Exception:
            if proto.broker_reason:  # e.g. ACCESS_REFUSED, vhost not found
                raise BrokerRefused(proto.broker_reason) from None
            raise
        channel: TwistedChannel = await _detached(proto.channel())
        if confirm:
            await _detached(channel.confirm_delivery())
        await _detached(channel.exchange_declare(
            exchange=exchange, exchange_type="topic", durable=True))
        if proto.lost.called:
            raise ConnectionLost("the connection closed while it was being set up")
    except BaseException:
        if proto.transport is not None:
            proto.transport.abortConnection()
        await _gone(proto)
        raise
    return proto, channel


async def _gone(proto: _Connection) -> None:
    """Returns once ``proto``'s connection is gone, even if cancelled meanwhile
    (a timeout, then stop()): the caller's clean-up must not leave a socket."""
    while True:
        try:
            await _detached(proto.lost)
            return
        except CancelledError:
            continue


async def _shut(proto: _Connection, clock: IReactorTime, timeout: float) -> None:
    """Close ``proto`` gracefully (channels, then Connection.Close), cutting it
    if the broker does not answer within ``timeout``; returns once it is gone."""
    if proto.lost.called:
        return
    try:
        proto.close()
    except ConnectionWrongStateError:
        pass  # already closing
    try:
        await within(_detached(proto.lost), timeout, clock)
    except Exception:
        if proto.transport is not None:
            proto.transport.abortConnection()
        await _gone(proto)


class _Reconnecting:
    """Connection attempts, and connecting again after 0.5 s, 1 s, 2 s, ... at
    most ``backoff_max_s`` between attempts (the bus's and the consumer's
    way); ``_delay`` goes back to ``backoff_initial_s`` once connected.

    A subclass provides :meth:`_attempt_connect` (one attempt, bounded here by
    ``connect_timeout_s``), :meth:`_who` (for log lines) and sets ``_stopped``
    when it stops, then calls :meth:`_abandon`."""

    log: Logger
    broker: Broker
    clock: IReactorTime
    connect_timeout_s: float
    backoff_max_s: float
    _delay: float
    _retry: IDelayedCall | None
    _attempt: Deferred[None] | None
    _stopped: bool

    async def _attempt_connect(self) -> None:
        raise NotImplementedError

    def _who(self) -> str:
        raise NotImplementedError

    def _connected(self) -> None:
        """An attempt succeeded (after its timer is gone)."""

    def _connect(self) -> Deferred[None]:
        """One attempt, bounded by ``connect_timeout_s`` on the clock; stopping cancels it."""
        attempt = _bounded(Deferred.fromCoroutine(self._attempt_connect()),
                           self.connect_timeout_s, self.clock)
        self._attempt = attempt

        def done(result: object) -> object:
            if self._attempt is attempt:
                self._attempt = None
            if not isinstance(result, Failure):
                self._connected()
            return result

        return attempt.addBoth(done)

    def _schedule_retry(self) -> float:
        delay = self._delay
        self._delay = min(delay * 2, self.backoff_max_s)
        self._retry = self.clock.callLater(delay, self._reconnect)
        return delay

    def _reconnect(self) -> None:
        self._retry = None
        if not self._stopped:
            self._connect().addErrback(self._reconnect_failed)

    def _reconnect_failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        delay = self._schedule_retry()
        self.log.warn("{who} could not reconnect to {broker}: {reason}; next attempt in "
                      "{delay:g} s", who=self._who(), broker=self.broker.display,
                      reason=_reason(failure), delay=delay, amqp_event="retry")

    def _abandon(self) -> Deferred[None] | None:
        """Stopping: no more retries, and the attempt in flight (returned) is
        cancelled; its clean-up cuts a half-open connection."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        attempt = self._attempt
        if attempt is not None:
            attempt.cancel()
        return attempt


@implementer(IMessageBus)
class AmqpBus(_Reconnecting):
    """Publishes C2S envelopes to a RabbitMQ topic exchange, with publisher confirms.

    ``reactor`` connects; ``clock`` (default: ``reactor``) runs the bus's own
    timers: the reconnect backoff, the connect timeout and the close timeout,
    so tests can drive them with a :class:`twisted.internet.task.Clock`.

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
                 backoff_max_s: float = BACKOFF_MAX_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 name: str = "msgplatform bus") -> None:
        self.broker = Broker.parse(url, name)
        self.exchange = config.amqp_exchange
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self._proto: _Connection | None = None
        self._channel: TwistedChannel | None = None
        self._outstanding: set[Deferred[None]] = set()
        self._waiters: list[Deferred[None]] = []
        self._attempt: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._delay = backoff_initial_s
        self._running = False
        self._stopped = False

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

    # -- IMessageBus

    def start(self) -> Deferred[None]:
        if self._running or self._stopped:
            return fail(BusUnavailable(f"{self!r} was already started"))
        self._running = True

        def failed(failure: Failure) -> None:
            self._running = False
            why = "the bus was stopped" if self._stopped else _reason(failure)
            error = BusUnavailable(f"cannot connect to RabbitMQ at {self.broker.display}: {why}")
            self._release_waiters(error)
            raise error

        return self._connect().addErrback(failed)

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    def publish(self, topic: str, payload: bytes, logid: str) -> Deferred[None]:
        channel = self._channel
        if channel is None:
            return fail(BusUnavailable(f"not connected to RabbitMQ at {self.broker.display}"))
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE, delivery_mode=PERSISTENT, headers={"logid": logid})
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
            d.errback(BusUnavailable(f"RabbitMQ channel closed before confirming: "
                                     f"{_reason(failure)}"))

    def _fail_outstanding(self, why: str) -> int:
        outstanding, self._outstanding = self._outstanding, set()
        for d in outstanding:
            d.errback(BusUnavailable(why))
        return len(outstanding)

    # -- connecting

    def _connected(self) -> None:
        self._release_waiters(None)  # now that the attempt's timer is gone too

    def _who(self) -> str:
        return "AMQP bus"

    async def _attempt_connect(self) -> None:
        proto, channel = await _open_channel(self.broker, self.exchange, self.reactor,
                                             self.connect_timeout_s, self._lost, confirm=True)
        if self._stopped:  # stop() came while the last step was answered
            await _shut(proto, self.clock, CLOSE_TIMEOUT_S)
            raise CancelledError()
        self._proto, self._channel = proto, channel
        self._delay = self.backoff_initial_s
        channel.on_closed.addCallback(self._channel_closed, proto, channel)
        self.log.info("AMQP bus connected to {broker}, exchange {exchange}",
                      broker=self.broker.display, exchange=self.exchange)

    def _lost(self, proto: _Connection, reason: Failure) -> None:
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

    def _channel_closed(self, reason: object, proto: _Connection,
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
        Deferred.fromCoroutine(_shut(proto, self.clock, CLOSE_TIMEOUT_S))

    async def _stop(self) -> None:
        self._stopped = True
        attempt = self._abandon()
        error = BusUnavailable(f"{self!r} is stopped")
        self._release_waiters(error)
        proto, self._proto, self._channel = self._proto, None, None
        self._fail_outstanding(str(error))
        if attempt is not None:
            await _settled(attempt)
        if proto is not None:
            await _shut(proto, self.clock, CLOSE_TIMEOUT_S)
            self.log.info("AMQP bus disconnected from {broker}", broker=self.broker.display)


def _bounded(d: Deferred[T], timeout: float, clock: IReactorTime) -> Deferred[T]:
    """``d``, cancelled after ``timeout`` seconds: then it fails with
    ``TimeoutError("no answer within N s")``, whatever the cancelled step
    failed with (a cancelled TCP connect fails with ConnectingCancelledError)."""

    def timed_out(result: Any, timeout: float) -> Any:
        if isinstance(result, Failure):
            return Failure(TimeoutError(f"no answer within {timeout:g} s"))
        return result

    return within(d, timeout, clock, timed_out)


def _settled(d: Deferred[Any]) -> Deferred[None]:
    """Fires (with None) once ``d`` has a result, whatever it is; ``d`` keeps its own."""
    out: Deferred[None] = Deferred()

    def settle(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(settle)
    return out


OnEnvelope = Callable[[Envelope], "Awaitable[object] | object"]


class AmqpConsumer(_Reconnecting):
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

    A lost connection is logged and the consumer connects again after 0.5 s,
    1 s, 2 s, ... at most ``backoff_max_s`` between attempts (reset once
    consuming again). With a named queue nothing published meanwhile is
    missed (the broker kept it); a server-named queue went with the
    connection, so what was published while disconnected is not seen: name
    the queue when every envelope matters.
    """

    log = Logger()

    def __init__(self, url: str, topic: str, reactor: Any,
                 on_envelope: OnEnvelope, *, exchange: str = DEFAULT_EXCHANGE,
                 queue: str | None = None, prefetch: int = 100,
                 clock: IReactorTime | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.broker = Broker.parse(url, f"msgplatform consumer {topic}")
        self.topic = topic
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.on_envelope = on_envelope
        self.exchange = exchange
        self.queue = queue or ""
        self._named = bool(queue)
        self.prefetch = prefetch
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._delay = backoff_initial_s
        self._retry: IDelayedCall | None = None
        self._attempt: Deferred[None] | None = None
        self._proto: _Connection | None = None
        self._loop: Deferred[None] | None = None
        self._started = self._stopped = False

    def start(self) -> Deferred[None]:
        """Fires when consuming; fails with :class:`BusUnavailable` if it cannot."""
        if self._started:
            return fail(BusUnavailable(f"the consumer of {self.topic!r} was already started"))
        self._started = True

        def failed(failure: Failure) -> None:
            raise BusUnavailable(f"cannot consume {self.topic!r} from RabbitMQ at "
                                 f"{self.broker.display}: {_reason(failure)}")

        return self._connect().addErrback(failed)

    def _who(self) -> str:
        return f"consumer of {self.topic}"

    async def _attempt_connect(self) -> None:
        proto, channel = await _open_channel(self.broker, self.exchange, self.reactor,
                                             self.connect_timeout_s, self._lost, confirm=False)
        try:
            await _detached(channel.basic_qos(prefetch_count=self.prefetch))
            if self._named:
                await _detached(channel.queue_declare(self.queue, durable=True))
            else:
                frame = await _detached(channel.queue_declare("", exclusive=True,
                                                              auto_delete=True))
                self.queue = frame.method.queue
            await _detached(channel.queue_bind(self.queue, self.exchange, self.topic))
            messages, _tag = await _detached(channel.basic_consume(self.queue))
            if self._stopped:
                raise CancelledError()
        except BaseException:
            await _shut(proto, self.clock, CLOSE_TIMEOUT_S)
            raise
        self._proto = proto
        self._delay = self.backoff_initial_s
        self._loop = Deferred.fromCoroutine(self._consume(channel, messages))
        self.log.info("consuming topic {topic} from {broker} (queue {queue})",
                      topic=self.topic, broker=self.broker.display, queue=self.queue,
                      amqp_event="consuming")

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopped = True
        attempt = self._abandon()
        if attempt is not None:
            await _settled(attempt)
        proto, self._proto = self._proto, None
        if proto is not None:
            await _shut(proto, self.clock, CLOSE_TIMEOUT_S)

    def _lost(self, proto: _Connection, reason: Failure) -> None:
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
            envelope = decode_envelope(topic, message.body, str(logid))
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
