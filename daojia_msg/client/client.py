# -*- test-case-name: tests.client.test_client,tests.client.test_tls -*-
"""The client library's public face: :class:`MsgClient`, a reconnecting client
that logs in on every connection and drains offline messages, and (re-exported)
:class:`MsgClientProtocol`, one connection.

::

    endpoint = gate_endpoint(reactor, host, port, tls=True, ca="ca.pem")  # or tls=False
    client = MsgClient(reactor, endpoint, uid, appcode, token_factory=mint, on_message=show)
    client.startService()
    result = await client.c2c(to_uid, to_appcode, msgtype, b"hello")

(:func:`~daojia_msg.client.endpoint.gate_endpoint` builds the endpoint, TLS or not.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from daojia_msg.client.backoff import SendBackoff
from daojia_msg.client.errors import (
    ConnectionLost,
    KickedOut,
    NotConnected,
    RequestTimeout,
    ResultError,
    TLSFailed,
    kick_reason_name,
    may_resend,
    resend_delay,
)
from daojia_msg.client.protocol import (
    PAGE_CAP,
    MsgClientProtocol,
    OnKickout,
    OnMessage,
    RecentIds,
)
from daojia_msg.protocol.codes import Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

__all__ = ["MsgClient", "MsgClientProtocol", "RecentIds"]

#: Kickouts after which reconnecting would fight another device or an operator.
NO_RECONNECT = frozenset({KickReason.LOGIN_ELSEWHERE, KickReason.ADMIN})
#: Login failures worth retrying on a new connection; any other code stops the client.
TRANSIENT_LOGIN_CODES = frozenset({Code.RATE_LIMITED, Code.UNAVAILABLE, Code.INTERNAL})

TokenFactory = Callable[[], "str | Deferred[str]"]


class _ServiceProtocol(MsgClientProtocol):
    """A connection that tells its :class:`MsgClient` when it opens and closes."""

    client: MsgClient

    def connectionMade(self) -> None:
        super().connectionMade()
        self.client._connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client._disconnected(self)  # first: failed requests may retry at once
        super().connectionLost(reason)


class _Factory(Factory):
    def __init__(self, client: MsgClient) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> _ServiceProtocol:
        return self.client._build_protocol()


class MsgClient(Service):
    """A client that stays connected: reconnects with exponential backoff, logs in
    on each connection with a fresh ``token_factory()`` token (a string or a
    Deferred of one), then drains offline messages with PULL (the server pushes
    nothing at login).

    The request methods wait for a logged-in connection (without a time limit:
    add ``Deferred.addTimeout`` where that matters). ``c2c`` resends with the same
    ``client_msg_id`` after a lost connection or a timeout, up to ``send_retries``
    times, which the server's de-duplication makes safe; after the server's
    TIMEOUT (or a result code this version does not know) it waits
    ``resend_delay(n)`` seconds first (0.5, 1, 2, then 4: docs/protocol.md §7.4).

    A C2C or C2S answered RATE_LIMITED starts a pause (``send_backoff``, a
    :class:`~daojia_msg.client.backoff.SendBackoff` by default; ``False``: none)
    during which ``c2c`` and ``c2s`` fail at once with RATE_LIMITED, unsent.

    A KICKOUT for LOGIN_ELSEWHERE or ADMIN stops the client (reconnecting would
    fight the other device); SHUTDOWN and ABUSE reconnect after the backoff. A
    login refused with a code outside :data:`TRANSIENT_LOGIN_CODES` (e.g.
    UNAUTHORIZED) stops it too, and so does a TLS handshake that fails (a
    certificate that does not verify will not verify on the next try); waiting
    requests then fail with the :class:`ResultError`, :class:`KickedOut` or
    :class:`TLSFailed`.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        uid: int,
        appcode: int,
        token_factory: TokenFactory,
        *,
        on_message: OnMessage | None = None,
        on_kickout: OnKickout | None = None,
        on_login: Callable[[pb.LoginResponse], object] | None = None,
        on_disconnect: Callable[[], object] | None = None,
        device_id: str = "",
        client_version: str = "",
        heartbeat_s: float | None = None,
        request_timeout: float = 10.0,
        backoff: Callable[[int], float] | None = None,
        dedup_size: int = 10_000,
        send_retries: int = 2,
        resend_delay: Callable[[int], float] = resend_delay,
        drain_on_login: bool = True,
        send_backoff: SendBackoff | None | bool = True,
    ) -> None:
        self.reactor = reactor
        self.uid = uid
        self.appcode = appcode
        self.token_factory = token_factory
        self.on_message = on_message
        self.on_kickout = on_kickout
        self.on_login = on_login
        #: Called when a logged-in connection is lost (the client reconnects
        #: unless it was stopped or kicked for good).
        self.on_disconnect = on_disconnect
        self.device_id = device_id
        self.client_version = client_version
        self.heartbeat_s = heartbeat_s
        self.request_timeout = request_timeout
        self.send_retries = send_retries
        self.resend_delay = resend_delay
        self.drain_on_login = drain_on_login
        if send_backoff is True:
            send_backoff = SendBackoff(reactor)
        #: The pause after RATE_LIMITED (:class:`SendBackoff`), or ``None``.
        self.send_backoff: SendBackoff | None = send_backoff or None
        self.recent = RecentIds(dedup_size)
        #: ``(reason_code, reason)`` of the last KICKOUT, if any.
        self.last_kickout: tuple[int, str] | None = None
        self._ready: MsgClientProtocol | None = None
        self._waiters: list[Deferred[MsgClientProtocol]] = []
        self._drain_waiters: list[Deferred[int]] = []
        self._service = ClientService(
            endpoint,
            _Factory(self),
            retryPolicy=backoff if backoff is not None else backoffPolicy(),
            clock=reactor,
        )

    # -- service

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """Close the connection and stop reconnecting; waiting requests fail with NotConnected."""
        super().stopService()
        self._fail_waiters(NotConnected("the client is stopped"))
        return self._service.stopService()

    def when_drained(self) -> Deferred[int]:
        """Fires with the number of offline messages drained after the next
        login (0 with ``drain_on_login=False``); call it before that login
        completes, e.g. right after :meth:`startService`. Messages a PULL
        drained went to ``on_message`` and were ACKed, so they are no longer
        pending on the server."""
        d: Deferred[int] = Deferred(lambda d: self._drain_waiters.remove(d))
        self._drain_waiters.append(d)
        return d

    @property
    def logged_in(self) -> bool:
        return self._ready is not None

    def when_ready(self, fail_after_failures: int | None = None) -> Deferred[MsgClientProtocol]:
        """The logged-in connection, now or once there is one.

        With ``fail_after_failures=n`` it fails (e.g. ConnectionRefusedError) after
        ``n`` connection attempts in a row failed.
        """
        if self._ready is not None:
            return succeed(self._ready)
        if not self.running:
            return fail(NotConnected("the client is stopped"))
        d: Deferred[MsgClientProtocol] = Deferred(self._forget_waiter)
        self._waiters.append(d)
        if fail_after_failures is not None:
            connected = self._service.whenConnected(failAfterFailures=fail_after_failures)
            connected.addErrback(self._attempts_failed, d)
        return d

    def _forget_waiter(self, waiter: Deferred[MsgClientProtocol]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _attempts_failed(self, failure: Failure, waiter: Deferred[MsgClientProtocol]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            # Not from inside ClientService's state machine: a caller that reacts
            # with stopService() would re-enter it (automat refuses that).
            self.reactor.callLater(0, waiter.errback, failure)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error)
        drains, self._drain_waiters = self._drain_waiters, []
        for drain in drains:
            drain.errback(error)

    # -- connections

    def _build_protocol(self) -> _ServiceProtocol:
        proto = _ServiceProtocol(
            self.reactor,
            self.uid,
            self.appcode,
            on_message=self.on_message,
            on_kickout=self._kicked,
            request_timeout=self.request_timeout,
            heartbeat_s=self.heartbeat_s,
            recent=self.recent,
        )
        proto.client = self
        return proto

    def _connected(self, proto: MsgClientProtocol) -> None:
        Deferred.fromCoroutine(self._login(proto)).addErrback(
            lambda f: self.log.failure("login flow failed", f)
        )

    async def _login(self, proto: MsgClientProtocol) -> None:
        try:
            token = cast(str, await maybeDeferred(self.token_factory))
            response = await proto.login(token, self.device_id, self.client_version)
        except ResultError as e:
            if e.code in TRANSIENT_LOGIN_CODES:
                self.log.warn("login refused for now ({error}); will reconnect", error=str(e))
                self._drop(proto)
                return
            self.log.error(
                "login refused ({error}); stopping",
                error=str(e),
                uid=self.uid,
                appcode=self.appcode,
            )
            self._fail_waiters(e)
            self.stopService()
            return
        except TLSFailed as e:
            self.log.error("TLS handshake failed ({why}); stopping", why=e.why, uid=self.uid,
                           appcode=self.appcode)
            self._fail_waiters(e)
            self.stopService()
            return
        except (ConnectionLost, NotConnected):
            return  # the service reconnects
        except Exception:
            self.log.failure("login failed; will reconnect")
            self._drop(proto)
            return
        if not proto.connected_ok:
            return
        self._ready = proto
        if self.on_login is not None:
            self.on_login(response)
        if self.drain_on_login:  # first, so offline messages come before new requests' answers
            proto.drain().addCallbacks(self._drained, self._drain_failed)
        else:
            self._drained(None)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(proto)

    def _drop(self, proto: MsgClientProtocol) -> None:
        if proto.transport is not None:
            proto.transport.loseConnection()

    def _drained(self, count: int | None) -> None:
        if count is not None:
            self.log.info("drained {count} offline messages", count=count)
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(count or 0)

    def _drain_failed(self, failure: Failure) -> None:
        self.log.warn("offline drain failed: {error}", error=failure.getErrorMessage())
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.errback(failure)

    def _disconnected(self, proto: MsgClientProtocol) -> None:
        if self._ready is proto:
            self._ready = None
            if self.on_disconnect is not None:
                self.on_disconnect()

    def _kicked(self, reason_code: int, reason: str) -> None:
        self.last_kickout = (reason_code, reason)
        if self.on_kickout is not None:
            self.on_kickout(reason_code, reason)
        if reason_code in NO_RECONNECT:
            self.log.warn(
                "kicked out ({reason_name}); not reconnecting",
                reason_name=kick_reason_name(reason_code),
                reason=reason,
            )
            self._fail_waiters(KickedOut(reason_code, reason))
            self.stopService()

    # -- requests: the same as MsgClientProtocol's, on the logged-in connection

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        return self.when_ready().addCallback(lambda proto: getattr(proto, method)(*args))

    def keepalive(self) -> Deferred[pb.Result]:
        return self._call("keepalive")

    def c2s(self, msgtype: int, content: bytes, logid: str = "") -> Deferred[pb.Result]:
        return Deferred.fromCoroutine(self._send("c2s", (msgtype, content, logid)))

    async def _send(self, method: str, args: tuple[Any, ...], first: bool = True) -> pb.Result:
        """One C2C or C2S under :attr:`send_backoff`: refused at once during a
        pause after RATE_LIMITED (only a ``first`` attempt: a resend after
        TIMEOUT may concern a stored message, and goes); a RATE_LIMITED answer
        starts a pause, an OK ends the row of refusals."""
        backoff = self.send_backoff
        if first and backoff is not None and backoff.paused():
            raise ResultError(
                Code.RATE_LIMITED,
                f"held back: the client pauses its sends ({backoff.remaining():.2f} s left)")
        proto = await self.when_ready()
        sent_at = self.reactor.seconds()
        try:
            result: pb.Result = await getattr(proto, method)(*args)
        except ResultError as e:
            if backoff is not None and e.code == Code.RATE_LIMITED:
                backoff.refused(sent_at)
            raise
        if backoff is not None:
            backoff.accepted(sent_at)
        return result

    def c2c(
        self,
        to_uid: int,
        to_appcode: int,
        msgtype: int,
        content: bytes,
        client_msg_id: str | None = None,
        logid: str = "",
    ) -> Deferred[pb.Result]:
        args = (to_uid, to_appcode, msgtype, content, client_msg_id or uuid.uuid4().hex, logid)
        return Deferred.fromCoroutine(self._c2c(args))

    async def _c2c(self, args: tuple[Any, ...]) -> pb.Result:
        attempt = 0
        while True:
            try:
                return await self._send("c2c", args, first=attempt == 0)
            except KickedOut:
                raise
            except (ConnectionLost, RequestTimeout, NotConnected, ResultError) as e:
                if attempt >= self.send_retries or (
                        isinstance(e, ResultError) and not may_resend(e)):
                    raise
                attempt += 1
                self.log.info(
                    "resending C2C {client_msg_id} after: {error}",
                    client_msg_id=args[4],
                    error=str(e),
                )
                if isinstance(e, ResultError):  # the server is slow: give it a moment
                    await deferLater(self.reactor, self.resend_delay(attempt), lambda: None)

    def ack(self, msgids: Iterable[int]) -> Deferred[pb.Result]:
        return self._call("ack", list(msgids))

    def pull(self, after_msgid: int = 0, limit: int = 0) -> Deferred[pb.PullResponse]:
        return self._call("pull", after_msgid, limit)

    def history(
        self, peer_uid: int = 0, before_msgid: int = 0, limit: int = 0
    ) -> Deferred[pb.HistoryResponse]:
        return self._call("history", peer_uid, before_msgid, limit)

    def drain(self, ack: bool = True, limit: int = PAGE_CAP) -> Deferred[int]:
        return self._call("drain", ack, limit)

    def logout(self) -> Deferred[None]:
        """LOGOUT (when logged in), then stop: no more reconnects."""
        return Deferred.fromCoroutine(self._logout())

    async def _logout(self) -> None:
        if self._ready is not None:
            try:
                await self._ready.logout()
            except Exception as e:
                self.log.info("logout: {error}", error=str(e))
        if self.running:
            await self.stopService()
