# -*- test-case-name: tests.bus.test_amqp_connection,tests.bus.test_amqp,tests.bus.test_amqp_consumer -*-
"""What the RabbitMQ bus (:mod:`daojia_msg.bus.amqp`) and its consumer
(:mod:`daojia_msg.bus.amqp_consumer`) share, on pika's Twisted adapter: the
broker's URL, opening a connection and a channel, closing it, and connecting
again after a loss.

URL: ``amqp[s]://user:password@host[:port]/vhost`` (``%2F`` is vhost "/",
which is also what an empty path means; default user guest:guest). The
password is never logged nor put in an error: see :func:`redact_url`.

After a lost connection both connect again after 0.5 s, 1 s, 2 s, ... at most
30 s between attempts, declaring the exchange each time; the delay is reset by
a successful connection. A dead peer that sends no RST is noticed by AMQP
heartbeats (the broker's interval unless the URL says ``?heartbeat=N``).

pika fires its own Deferreds (``ready``, a channel call) whether or not we
still wait, so they are only ever waited on through :func:`detached`; each
step has a time limit of ours instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from pika.exceptions import ConnectionWrongStateError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.deadlines import within

T = TypeVar("T")

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


class BrokerConnection(TwistedProtocolConnection):
    """pika's protocol, plus ``lost``: a Deferred that fires (with None) once
    the TCP connection is gone, after ``on_lost(reason)`` ran. ``on_lost`` runs
    before pika's own handling, so a user learns of the loss first."""

    def __init__(self, broker: Broker, reactor: Any,
                 on_lost: Callable[[BrokerConnection, Failure], None]) -> None:
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
                else explain(reason))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self._on_lost(self, reason)
            super().connectionLost(reason)
        finally:
            self.lost.callback(None)


class BrokerRefused(Exception):
    """The broker closed the connection while it was being set up."""


def detached(d: Deferred[T]) -> Deferred[T]:
    """A Deferred with ``d``'s result whose cancellation leaves ``d`` alone
    (cancelling one of pika's Deferreds would make pika fire it twice)."""
    out: Deferred[T] = Deferred()

    def settle(result: Any) -> None:
        if not out.called:
            out.callback(result)  # a Failure takes the errback path

    d.addBoth(settle)
    return out


def explain(failure: Failure) -> str:
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


async def open_channel(broker: Broker, exchange: str, reactor: Any, timeout: float,
                       on_lost: Callable[[BrokerConnection, Failure], None],
                       confirm: bool) -> tuple[BrokerConnection, TwistedChannel]:
    """Connect, open a channel (in confirm mode if ``confirm``) and declare
    ``exchange`` as a durable topic exchange. On any failure or cancellation
    the connection is cut, and this returns only once it is gone."""
    proto = BrokerConnection(broker, reactor, on_lost)
    await connectProtocol(_endpoint(reactor, broker, timeout), proto)
    try:
        try:
            await detached(proto.ready)
        except Exception:
            if proto.broker_reason:  # e.g. ACCESS_REFUSED, vhost not found
                raise BrokerRefused(proto.broker_reason) from None
            raise
        channel: TwistedChannel = await detached(proto.channel())
        if confirm:
            await detached(channel.confirm_delivery())
        await detached(channel.exchange_declare(
            exchange=exchange, exchange_type="topic", durable=True))
        if proto.lost.called:
            raise ConnectionLost("the connection closed while it was being set up")
    except BaseException:
        if proto.transport is not None:
            proto.transport.abortConnection()
        await _gone(proto)
        raise
    return proto, channel


async def _gone(proto: BrokerConnection) -> None:
    """Returns once ``proto``'s connection is gone, even if cancelled meanwhile
    (a timeout, then stop()): the caller's clean-up must not leave a socket."""
    while True:
        try:
            await detached(proto.lost)
            return
        except CancelledError:
            continue


async def shut(proto: BrokerConnection, clock: IReactorTime,
               timeout: float = CLOSE_TIMEOUT_S) -> None:
    """Close ``proto`` gracefully (channels, then Connection.Close), cutting it
    if the broker does not answer within ``timeout``; returns once it is gone."""
    if proto.lost.called:
        return
    try:
        proto.close()
    except ConnectionWrongStateError:
        pass  # already closing
    try:
        await within(detached(proto.lost), timeout, clock)
    except Exception:
        if proto.transport is not None:
            proto.transport.abortConnection()
        await _gone(proto)


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


class Reconnecting:
    """A connection to ``broker`` that is made again after a loss: attempts,
    each bounded by ``connect_timeout_s`` on ``clock``, and after a failure
    the next one after 0.5 s, 1 s, 2 s, ... at most ``backoff_max_s`` later;
    the delay goes back to ``backoff_initial_s`` once connected.

    ``reactor`` connects; ``clock`` (default: ``reactor``) runs the timers:
    the backoff, the connect timeout and the close timeout, so tests can drive
    them with a :class:`twisted.internet.task.Clock`.

    A subclass provides :meth:`_attempt_connect` (one attempt: it sets
    ``_proto`` once usable) and :meth:`_who` (for log lines); it may extend
    :meth:`_connected`, :meth:`_stopping` and :meth:`_closed`. Its ``_lost``,
    given to :meth:`_open`, learns of each lost connection first.
    """

    log: Logger

    def __init__(self, broker: Broker, exchange: str, reactor: Any,
                 clock: IReactorTime | None, *, connect_timeout_s: float,
                 backoff_initial_s: float, backoff_max_s: float) -> None:
        self.broker = broker
        self.exchange = exchange
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._delay = backoff_initial_s
        self._retry: IDelayedCall | None = None
        self._attempt: Deferred[None] | None = None
        self._proto: BrokerConnection | None = None
        self._stopped = False
        #: Connections made again after the first (``/metrics``).
        self.reconnects = 0
        self._connected_once = False

    async def _attempt_connect(self) -> None:
        raise NotImplementedError

    def _who(self) -> str:
        raise NotImplementedError

    def _lost(self, proto: BrokerConnection, reason: Failure) -> None:
        raise NotImplementedError

    def _connected(self) -> None:
        """An attempt succeeded (after its timer is gone)."""

    def _stopping(self) -> None:
        """:meth:`stop` began: the connection (if any) is being closed."""

    def _closed(self) -> None:
        """:meth:`stop` closed the connection there was."""

    def _open(self, confirm: bool) -> Deferred[tuple[BrokerConnection, TwistedChannel]]:
        """:func:`open_channel` to this broker and exchange, losses going to ``_lost``."""
        return Deferred.fromCoroutine(open_channel(
            self.broker, self.exchange, self.reactor, self.connect_timeout_s, self._lost,
            confirm))

    def _connect(self) -> Deferred[None]:
        """One attempt, bounded by ``connect_timeout_s`` on the clock; stopping cancels it."""
        attempt = _bounded(Deferred.fromCoroutine(self._attempt_connect()),
                           self.connect_timeout_s, self.clock)
        self._attempt = attempt

        def done(result: object) -> object:
            if self._attempt is attempt:
                self._attempt = None
            if not isinstance(result, Failure):
                self._delay = self.backoff_initial_s
                self.reconnects += self._connected_once
                self._connected_once = True
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
                      reason=explain(failure), delay=delay, amqp_event="retry")

    def stop(self) -> Deferred[None]:
        """No more retries; the attempt under way is cancelled (its clean-up
        cuts a half-open connection) and the connection closed. Fires once
        both are gone."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        attempt = self._attempt
        if attempt is not None:
            attempt.cancel()
        proto, self._proto = self._proto, None
        self._stopping()
        if attempt is not None:
            await _settled(attempt)
        if proto is not None:
            await shut(proto, self.clock)
            self._closed()
