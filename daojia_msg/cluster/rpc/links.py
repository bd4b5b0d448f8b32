# -*- test-case-name: tests.cluster.test_rpc,tests.cluster.test_rpc_backoff -*-
"""The internal RPC client's connections: :class:`Link`, the one AMP
connection to one peer node (connecting, TLS, Auth, backing off from a slow
peer), for :class:`~daojia_msg.cluster.rpc.client.RpcPeers`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.cluster.rpc.commands import Auth, ClosedWaiters, Unauthorized, auth_mac
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.deadlines import within
from daojia_msg.sockets import no_delay
from daojia_msg.tls import ClientTLS, tls_failure

log = Logger()

#: After a call to a peer timed out while the peer answers others, calls to
#: it fail at once for this long, doubling with each timeout soon after a
#: pause, up to BACKOFF_MAX_S; with no timeout within the call timeout and
#: two pauses' length after a pause, it starts again from BACKOFF_MIN_S.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 8.0

Address = tuple[str, int]


class Peers(Protocol):
    """What a :class:`Link` needs of the client that keeps it."""

    reactor: IReactorTime
    node_id: int
    secret: str
    timeout: float
    tls: ClientTLS | None

    def endpoint(self, host: str, port: int) -> IStreamClientEndpoint: ...

    def forget(self, link: Link) -> None: ...


@implementer(IHandshakeListener)
class ClientProtocol(ClosedWaiters, amp.AMP):
    def __init__(self, on_lost: Callable[[ClientProtocol], None]) -> None:
        super().__init__()
        self._on_lost = on_lost
        self._closed: list[Deferred[None]] = []
        self.connected = False
        #: Over TLS: fires once the handshake is done, fails if the connection
        #: is lost first (a certificate refused).
        self.handshake: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True
        no_delay(self.transport)

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if not self.handshake.called and ISSLTransport.providedBy(self.transport):
            why = tls_failure(reason.value) or "connection lost during the TLS handshake"
            self.handshake.errback(PeerUnavailable(f"TLS: {why}"))
            self.handshake.addErrback(lambda _: None)  # when nobody waited for it
        super().connectionLost(reason)  # fails the calls still waiting for answers
        self._on_lost(self)
        self._fire_closed()


class Link:
    """The one AMP connection to one peer node, or the attempt at it."""

    def __init__(self, peers: Peers, node_id: int, address: Address) -> None:
        self.peers = peers
        self.node_id = node_id
        self.address = address
        self.protocol: ClientProtocol | None = None
        self._waiters: list[Deferred[ClientProtocol]] = []
        self._attempt: Deferred[ClientProtocol] | None = None
        self._failure: Failure | None = None
        #: When the peer last answered a call (or the connection came up).
        self.answered_at = 0.0
        #: Calls waiting on this peer; until when calls fail at once (a call
        #: timed out while the peer answered others), and the last such pause.
        self.inflight = 0
        self.slow_until = 0.0
        self.backoff = 0.0

    def slowed(self, now: float) -> None:
        """A call timed out while the peer answers others: back off."""
        if now < self.slow_until:
            return  # a call of the same wave: the pause is running
        if now - self.slow_until > self.peers.timeout + 2 * self.backoff:
            self.backoff = 0.0  # no call made after the last pause timed out soon
        self.backoff = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, 2 * self.backoff))
        self.slow_until = now + self.backoff
        host, port = self.address
        log.info("node {peer_node} at {host}:{port} is slow (a call got no answer within "
                 "{timeout:g} s while it answers others): calls to it fail at once for "
                 "{backoff:g} s", peer_node=self.node_id, host=host, port=port,
                 timeout=self.peers.timeout, backoff=self.backoff)

    def start(self) -> None:
        attempt = Deferred.fromCoroutine(self._open())
        self._attempt = attempt
        within(attempt, self.peers.timeout, self.peers.reactor)
        attempt.addBoth(self._opened)

    async def _open(self) -> ClientProtocol:
        proto = ClientProtocol(self._lost)
        host, port = self.address
        try:
            await connectProtocol(self.peers.endpoint(host, port), proto)
        except ConnectingCancelledError:
            raise CancelledError() from None  # so that a timeout reads as one
        try:
            if self.peers.tls is not None:
                await proto.handshake
            if self.peers.secret:
                ts = int(self.peers.reactor.seconds())
                mac = auth_mac(self.peers.secret, self.peers.node_id, ts)
                await proto.callRemote(Auth, node_id=self.peers.node_id, ts=ts, mac=mac)
        except BaseException:
            abort(proto)
            raise
        return proto

    def _opened(self, result: ClientProtocol | Failure) -> None:
        self._attempt = None
        waiters, self._waiters = self._waiters, []
        host, port = self.address
        if isinstance(result, Failure):
            if result.check(TimeoutError):
                result = Failure(PeerUnavailable(
                    f"could not connect within {self.peers.timeout:g} s"))
            self.peers.forget(self)
            if result.check(Unauthorized):
                log.error("node {peer_node} at {host}:{port} refused our internal RPC Auth "
                          "(is cluster.rpc_secret the same on every node?): {why}",
                          peer_node=self.node_id, host=host, port=port, why=result.getErrorMessage())
                result = Failure(PeerUnavailable(f"it refused our Auth: {result.getErrorMessage()}"))
            else:
                log.info("internal RPC connection to node {peer_node} at {host}:{port} failed: {why}",
                         peer_node=self.node_id, host=host, port=port, why=describe(result))
            self._failure = result
            for d in waiters:
                d.errback(result)  # ignored by the callers that already timed out
            return
        if not result.connected:  # lost during the handshake's last step
            self._failure = Failure(PeerUnavailable("connection lost"))
            self.peers.forget(self)
            for d in waiters:
                d.errback(self._failure)
            return
        self.protocol = result
        self.answered_at = self.peers.reactor.seconds()
        log.info("internal RPC connection to node {peer_node} at {host}:{port} is up",
                 peer_node=self.node_id, host=host, port=port)
        for d in waiters:
            d.callback(result)

    def ready(self) -> Deferred[ClientProtocol]:
        """Fires with the connected, authenticated protocol."""
        if self.protocol is not None:
            return succeed(self.protocol)
        if self._failure is not None:
            return fail(self._failure)
        d: Deferred[ClientProtocol] = Deferred()
        self._waiters.append(d)
        return d

    def _lost(self, proto: ClientProtocol) -> None:
        if self.protocol is proto:
            self.protocol = None
            self.peers.forget(self)
            host, port = self.address
            log.info("internal RPC connection to node {peer_node} at {host}:{port} closed",
                     peer_node=self.node_id, host=host, port=port)

    def abort(self) -> None:
        """Drop the connection at once (a call on it timed out: it is suspect)."""
        self.peers.forget(self)
        if self.protocol is not None:
            abort(self.protocol)

    def close(self) -> Deferred[None]:
        """Close politely; fires once the connection is closed."""
        self.peers.forget(self)
        if self._attempt is not None:
            self._attempt.cancel()
            return succeed(None)
        if self.protocol is not None and self.protocol.transport is not None:
            closed = self.protocol.when_closed()
            self.protocol.transport.loseConnection()
            return closed
        return succeed(None)


def describe(failure: Failure) -> str:
    return failure.getErrorMessage() or type(failure.value).__name__


def abort(proto: amp.AMP) -> None:
    transport: Any = proto.transport
    if transport is not None:
        transport.abortConnection()
