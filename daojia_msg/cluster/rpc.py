# -*- test-case-name: tests.cluster.test_rpc -*-
"""The internal RPC between the nodes of a cluster (docs/architecture.md §1), over Twisted AMP.

A node that must push to a session held by another node hands the push to that
node's RPC listener (:class:`RpcPeers`, the client side, implements
:class:`~daojia_msg.cluster.interfaces.IPeers`); the listener
(:class:`RpcServerFactory`) calls the local logic's ``deliver_local`` /
``kick_local``.

Commands: :class:`Auth`, :class:`Deliver`, :class:`Kick`. A message travels as
its protobuf ``Message`` without content plus the content as a second value,
because one AMP value holds at most 65,535 bytes and content alone may take
65,000 of them.

Authentication, when the cluster has a shared secret (``cluster.rpc_secret``):
the client's first command on a connection is ``Auth(node_id, ts, mac)`` with
``mac = HMAC-SHA256(secret, f"{node_id}:{ts}")`` and ``ts`` in whole seconds;
the server accepts it when ``|now - ts| <= 60`` and the mac matches
(``hmac.compare_digest``). Any other command before that, a wrong mac or a stale
``ts`` is answered with the fatal ``UNAUTHORIZED`` error and the connection is
closed; a connection that has not authenticated within 10 s is closed too.
With an empty secret no Auth is needed (loopback-only clusters). The secret and
the macs are never logged. This keeps unauthenticated hosts from pushing or
kicking; it does not encrypt, nor stop a replay within the window by someone
who can read the traffic: keep the RPC on a private network.

Delivery is at-least-once (docs/protocol.md §6.3): every failure of a call (unknown
node, refused, timed out, lost, refused by the peer) fails with
:class:`~daojia_msg.core.errors.PeerUnavailable`, and the caller leaves the
message pending. A call that times out drops its connection (and so fails
every call on it) only when the peer has answered nothing for a whole timeout
(dead, or a half-open socket); on a peer that still answers other calls
(overloaded) it fails alone, so that a slow peer is not also made to take
reconnects and a wave of retries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg import tracing
from daojia_msg.cluster.interfaces import INodeRegistry
from daojia_msg.core.convert import message_from_wire, message_to_wire, recipient_fields
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import SessionRecord, StoredMessage
from daojia_msg.deadlines import Deadlines, within
from daojia_msg.logic.interfaces import ILocalNode, IPeers
from daojia_msg.sockets import no_delay

#: The message path (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.cluster.rpc")

log = Logger()

#: How far an Auth timestamp may be from the server's clock, in seconds.
AUTH_WINDOW_S = 60
#: A connection that has not authenticated within this many seconds is closed.
AUTH_TIMEOUT_S = 10.0
#: The most one AMP value can hold (the content of a Deliver must fit).
MAX_VALUE = amp.MAX_VALUE_LENGTH

Address = tuple[str, int]
AddressOf = Callable[[int], Awaitable[Address | None]]


# -- errors (each maps to one AMP error code) ---------------------------------


class Unauthorized(Exception):
    """The connection did not authenticate (fatal: the server closes it)."""


class BadMessage(Exception):
    """A Deliver whose message does not parse or whose content is over the limit."""


class InternalError(Exception):
    """The receiving node failed unexpectedly (it logged why and keeps serving)."""


_FATAL: dict[type[Exception], bytes] = {Unauthorized: b"UNAUTHORIZED"}


# -- commands ------------------------------------------------------------------


class Auth(amp.Command):
    """Prove the connection comes from a node that knows the cluster secret."""

    arguments = [(b"node_id", amp.Integer()), (b"ts", amp.Integer()), (b"mac", amp.String())]
    response = []  # an empty answer: authenticated
    fatalErrors = _FATAL


class Deliver(amp.Command):
    """Push a message to a local session: ``message`` is the serialized
    ``pb.Message`` without its content, which travels as ``content``."""

    arguments = [
        (b"session_id", amp.Unicode()),
        (b"message", amp.String()),
        (b"content", amp.String()),
    ]
    response = [(b"pushed", amp.Boolean())]
    errors = {BadMessage: b"BAD_MESSAGE", InternalError: b"INTERNAL"}
    fatalErrors = _FATAL


class Kick(amp.Command):
    """KICKOUT a local session."""

    arguments = [
        (b"uid", amp.Integer()),
        (b"appcode", amp.Integer()),
        (b"session_id", amp.Unicode()),
        (b"reason_code", amp.Integer()),
        (b"reason", amp.Unicode()),
    ]
    response = [(b"kicked", amp.Boolean())]
    errors = {InternalError: b"INTERNAL"}
    fatalErrors = _FATAL


# -- messages on the wire -------------------------------------------------------


# -- authentication -------------------------------------------------------------


def auth_mac(secret: str, node_id: int, ts: int) -> bytes:
    """HMAC-SHA256, keyed by the cluster secret, of ``f"{node_id}:{ts}"``."""
    return hmac.new(secret.encode(), f"{node_id}:{ts}".encode(), hashlib.sha256).digest()


def check_auth(secret: str, now: float, node_id: int, ts: int, mac: bytes) -> str | None:
    """Why an Auth is refused, or None when it is good (always, with no secret)."""
    if not secret:
        return None
    if abs(now - ts) > AUTH_WINDOW_S:
        return f"timestamp {ts} is more than {AUTH_WINDOW_S} s from this node's clock"
    if not hmac.compare_digest(auth_mac(secret, node_id, ts), mac):
        return "wrong mac"
    return None


# -- server -------------------------------------------------------------------------


class _ClosedWaiters:
    """``when_closed()``: a Deferred that fires once the connection is closed."""

    connected: bool | int
    _closed: list[Deferred[None]]

    def when_closed(self) -> Deferred[None]:
        if not self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        return d

    def _fire_closed(self) -> None:
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)


class RpcServerProtocol(_ClosedWaiters, amp.AMP):
    """One connection from another node."""

    def __init__(self, factory: RpcServerFactory, peer: str) -> None:
        super().__init__()
        self.factory = factory
        self.peer = peer
        self.authenticated = not factory.secret
        #: The node id the peer proved (None before Auth, or with no secret and no Auth).
        self.node: int | None = None
        self._auth_timer: IDelayedCall | None = None
        self._closed: list[Deferred[None]] = []
        self.connected = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True
        no_delay(self.transport)
        if not self.authenticated:
            self._auth_timer = self.factory.clock.callLater(
                self.factory.auth_timeout, self._auth_expired
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self._cancel_auth_timer()
        self.factory.forget(self)
        super().connectionLost(reason)
        self._fire_closed()

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    def _auth_expired(self) -> None:
        self._auth_timer = None
        log.warn("closing an internal RPC connection from {peer}: no Auth within {timeout:g} s",
                 peer=self.peer, timeout=self.factory.auth_timeout)
        if self.transport is not None:
            self.transport.loseConnection()

    def _require_auth(self, command: str) -> None:
        if not self.authenticated:
            log.warn("internal RPC {command} from {peer} before Auth: closing",
                     command=command, peer=self.peer)
            raise Unauthorized("authenticate first")

    @Auth.responder
    def auth(self, node_id: int, ts: int, mac: bytes) -> dict[str, Any]:
        why = check_auth(self.factory.secret, self.factory.clock.seconds(), node_id, ts, mac)
        if why is not None:
            log.warn("internal RPC Auth of node {peer_node} from {peer} refused: {why}",
                     peer_node=node_id, peer=self.peer, why=why)
            raise Unauthorized(why)
        self._cancel_auth_timer()
        self.authenticated = True
        self.node = node_id
        log.info("node {peer_node} connected to the internal RPC from {peer}",
                 peer_node=node_id, peer=self.peer)
        return {}

    @Deliver.responder
    def deliver(self, session_id: str, message: bytes, content: bytes) -> dict[str, Any]:
        self._require_auth("Deliver")
        try:
            msg = message_from_wire(message, content)
        except ValueError as e:
            log.warn("refused a delivery from node {peer_node} ({peer}): {why}",
                     peer_node=self.node, peer=self.peer, why=str(e))
            raise BadMessage(str(e)) from None
        if len(content) > self.factory.max_content:
            log.warn("refused {msgid} from node {peer_node}: content of {size} bytes is over {limit}",
                     msgid=msg.msgid, logid=msg.logid, peer_node=self.node, size=len(content),
                     limit=self.factory.max_content, **recipient_fields(msg))
            raise BadMessage(f"content is over {self.factory.max_content} bytes")
        try:
            pushed = bool(self.factory.logic.deliver_local(session_id, msg))
        except Exception:
            log.failure("delivering {msgid} for node {peer_node} failed", msgid=msg.msgid,
                        logid=msg.logid, peer_node=self.node, session_id=session_id,
                        uid=msg.to_uid, appcode=msg.to_appcode)  # (failure's keywords: no **)
            raise InternalError("the node failed to deliver; see its log") from None
        if tracing.MESSAGES.listeners:
            trace.debug("{msgid} from node {peer_node} to session {session_id}: pushed={pushed}",
                        msgid=msg.msgid, logid=msg.logid, peer_node=self.node,
                        session_id=session_id, pushed=pushed, **recipient_fields(msg))
        return {"pushed": pushed}

    @Kick.responder
    def kick(
        self, uid: int, appcode: int, session_id: str, reason_code: int, reason: str
    ) -> dict[str, Any]:
        self._require_auth("Kick")
        try:
            kicked = bool(self.factory.logic.kick_local(uid, appcode, session_id, reason_code,
                                                        reason))
        except Exception:
            log.failure("kicking {uid}@{appcode} for node {peer_node} failed", uid=uid,
                        appcode=appcode, peer_node=self.node, session_id=session_id)
            raise InternalError("the node failed to kick; see its log") from None
        return {"kicked": kicked}


class RpcServerFactory(Factory):
    """The internal RPC listener: answers other nodes by calling ``logic``.

    ``secret`` "" means no Auth is asked for (the node must then listen on
    loopback only: that check is the caller's). ``max_content`` is the content
    limit (``limits.max_content``).
    """

    protocol = RpcServerProtocol

    def __init__(
        self,
        logic: ILocalNode,
        clock: IReactorTime,
        secret: str,
        *,
        max_content: int = 65000,
        auth_timeout: float = AUTH_TIMEOUT_S,
    ) -> None:
        self.logic = logic
        self.clock = clock
        self.secret = secret
        self.max_content = max_content
        self.auth_timeout = auth_timeout
        self.connections: set[RpcServerProtocol] = set()

    def __repr__(self) -> str:
        return f"<RpcServerFactory auth={'on' if self.secret else 'off'}>"

    def buildProtocol(self, addr: IAddress | None) -> RpcServerProtocol:
        host, port = getattr(addr, "host", "?"), getattr(addr, "port", "?")
        proto = RpcServerProtocol(self, f"{host}:{port}")
        self.connections.add(proto)
        return proto

    def forget(self, proto: RpcServerProtocol) -> None:
        self.connections.discard(proto)

    def disconnect_all(self) -> Deferred[None]:
        """Close every open connection (after the port stopped listening); fires
        once all of them are closed."""
        waits = []
        for proto in list(self.connections):
            waits.append(proto.when_closed())
            if proto.transport is not None:
                proto.transport.loseConnection()
        return gatherResults(waits).addCallback(lambda _: None)


# -- client ---------------------------------------------------------------------------


class _ClientProtocol(_ClosedWaiters, amp.AMP):
    def __init__(self, on_lost: Callable[[_ClientProtocol], None]) -> None:
        super().__init__()
        self._on_lost = on_lost
        self._closed: list[Deferred[None]] = []
        self.connected = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True
        no_delay(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        super().connectionLost(reason)  # fails the calls still waiting for answers
        self._on_lost(self)
        self._fire_closed()


class _Link:
    """The one AMP connection to one peer node, or the attempt at it."""

    def __init__(self, peers: RpcPeers, node_id: int, address: Address) -> None:
        self.peers = peers
        self.node_id = node_id
        self.address = address
        self.protocol: _ClientProtocol | None = None
        self._waiters: list[Deferred[_ClientProtocol]] = []
        self._attempt: Deferred[_ClientProtocol] | None = None
        self._failure: Failure | None = None
        #: When the peer last answered a call (or the connection came up).
        self.answered_at = 0.0

    def start(self) -> None:
        attempt = Deferred.fromCoroutine(self._open())
        self._attempt = attempt
        within(attempt, self.peers.timeout, self.peers.reactor)
        attempt.addBoth(self._opened)

    async def _open(self) -> _ClientProtocol:
        proto = _ClientProtocol(self._lost)
        host, port = self.address
        try:
            await connectProtocol(self.peers.endpoint(host, port), proto)
        except ConnectingCancelledError:
            raise CancelledError() from None  # so that a timeout reads as one
        try:
            if self.peers.secret:
                ts = int(self.peers.reactor.seconds())
                mac = auth_mac(self.peers.secret, self.peers.node_id, ts)
                await proto.callRemote(Auth, node_id=self.peers.node_id, ts=ts, mac=mac)
        except BaseException:
            _abort(proto)
            raise
        return proto

    def _opened(self, result: _ClientProtocol | Failure) -> None:
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
                         peer_node=self.node_id, host=host, port=port, why=_describe(result))
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

    def ready(self) -> Deferred[_ClientProtocol]:
        """Fires with the connected, authenticated protocol."""
        if self.protocol is not None:
            return succeed(self.protocol)
        if self._failure is not None:
            return fail(self._failure)
        d: Deferred[_ClientProtocol] = Deferred()
        self._waiters.append(d)
        return d

    def _lost(self, proto: _ClientProtocol) -> None:
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
            _abort(self.protocol)

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


def _describe(failure: Failure) -> str:
    return failure.getErrorMessage() or type(failure.value).__name__


def _abort(proto: amp.AMP) -> None:
    transport: Any = proto.transport
    if transport is not None:
        transport.abortConnection()


@implementer(IPeers)
class RpcPeers:
    """The other nodes, reached over their internal RPC listeners.

    ``address_of(node_id)`` gives a node's RPC ``(host, port)``, or None when the
    node is not alive; it is asked on every call, so a node that came back at a
    new address is reconnected to (see :func:`registry_addresses`). At most one
    connection per node is kept, opened on first use. Every call, connecting
    and authenticating included, gives up after ``timeout`` seconds.
    ``secret`` "" sends no Auth. ``endpoint_for(host, port)`` overrides how
    connections are made (tests).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        address_of: AddressOf,
        *,
        node_id: int,
        secret: str,
        timeout: float,
        endpoint_for: Callable[[str, int], IStreamClientEndpoint] | None = None,
    ) -> None:
        self.reactor = reactor
        self.address_of = address_of
        self.node_id = node_id
        self.secret = secret
        self.timeout = timeout
        #: The time limit of every call, on one timer.
        self.deadlines = Deadlines(reactor, timeout, "internal RPC calls")
        self._endpoint_for = endpoint_for
        self._links: dict[int, _Link] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<RpcPeers node={self.node_id} links={sorted(self._links)}>"

    def endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        if self._endpoint_for is not None:
            return self._endpoint_for(host, port)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        if isIPAddress(host):
            return TCP4ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        return HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)

    # -- IPeers ------------------------------------------------------------------

    def deliver(self, record: SessionRecord, message: StoredMessage) -> Deferred[bool]:
        fields = {"msgid": message.msgid, "logid": message.logid, **recipient_fields(message)}
        try:
            meta, content = message_to_wire(message)
        except Exception as e:  # a field out of its protobuf range
            return self._refused(record.node_id, f"cannot serialize the message: {e}", fields)
        args: dict[str, Any] = {"session_id": record.session_id, "message": meta,
                                "content": content}
        if len(content) > MAX_VALUE:
            why = f"content of {len(content)} bytes does not fit an RPC value"
            return self._refused(record.node_id, why, fields)
        return self._run(record.node_id, Deliver, args, "pushed", fields)

    def kick(self, record: SessionRecord, reason_code: int, reason: str) -> Deferred[bool]:
        args: dict[str, Any] = {"uid": record.uid, "appcode": record.appcode,
                                "session_id": record.session_id,
                                "reason_code": int(reason_code), "reason": reason}
        return self._run(record.node_id, Kick, args, "kicked",
                         {"uid": record.uid, "appcode": record.appcode})

    def close(self) -> Deferred[None]:
        """Close every connection; fires once they are closed. Later calls fail."""
        self._closed = True
        self.deadlines.stop()
        links = list(self._links.values())
        self._links.clear()
        return gatherResults([link.close() for link in links]).addCallback(lambda _: None)

    # -- the machinery ------------------------------------------------------------

    def forget(self, link: _Link) -> None:
        if self._links.get(link.node_id) is link:
            del self._links[link.node_id]

    def _link(self, node_id: int, address: Address) -> _Link:
        link = self._links.get(node_id)
        if link is not None and link.address == address:
            return link
        if link is not None:
            log.info("node {peer_node} moved from {old} to {new}: reconnecting",
                     peer_node=node_id, old=link.address, new=address)
            link.close()
        link = _Link(self, node_id, address)
        self._links[node_id] = link
        link.start()
        return link

    def _run(self, node_id: int, command: type[amp.Command], args: dict[str, Any],
             answer: str, fields: dict[str, Any]) -> Deferred[bool]:
        d = self.deadlines.watch(Deferred.fromCoroutine(self._call(node_id, command, args)))
        return d.addCallbacks(lambda response: bool(response[answer]), self._failed,
                              errbackArgs=(node_id, command, fields))

    async def _call(self, node_id: int, command: type[amp.Command],
                    args: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise PeerUnavailable("the internal RPC client is closed")
        found = await self.address_of(node_id)
        if found is None:
            raise PeerUnavailable("not alive")
        if self._closed:
            raise PeerUnavailable("the internal RPC client is closed")
        host, port = found
        link = self._link(node_id, (host, port))
        proto = await link.ready()
        clock = self.reactor
        try:
            response: dict[str, Any] = await proto.callRemote(command, **args)
        except CancelledError:
            # It timed out. A connection that answered nothing for a whole
            # timeout is suspect (a dead peer, a half-open socket): drop it.
            # One that answers other calls is alive but slow (overloaded):
            # dropping it would fail every call on it at once, and the
            # reconnects and retries would load the slow peer further.
            if clock.seconds() - link.answered_at >= self.timeout:
                link.abort()
            raise
        link.answered_at = clock.seconds()
        return response

    def _failed(self, failure: Failure, node_id: int, command: type[amp.Command],
                fields: dict[str, Any]) -> bool:
        name = command.__name__
        if failure.check(TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        elif failure.check(Unauthorized):
            why = "it refused our Auth"
            log.warn("node {peer_node} refused {command} as unauthenticated (is cluster.rpc_secret "
                     "the same on every node?)", peer_node=node_id, command=name, **fields)
        elif failure.check(BadMessage, InternalError):
            why = f"it refused the call: {failure.getErrorMessage()}"
            log.warn("node {peer_node} refused {command}: {why}", peer_node=node_id, command=name,
                     why=failure.getErrorMessage(), **fields)
        elif failure.check(PeerUnavailable):
            why = failure.getErrorMessage()
        else:
            why = _describe(failure)
        log.debug("internal RPC {command} to node {peer_node} failed: {why}", command=name,
                  peer_node=node_id, why=why, **fields)
        raise PeerUnavailable(f"node {node_id}: {why}") from failure.value

    def _refused(self, node_id: int, why: str, fields: dict[str, Any]) -> Deferred[bool]:
        log.warn("not sent to node {peer_node}: {why}", peer_node=node_id, why=why, **fields)
        d: Deferred[bool] = Deferred()
        d.errback(PeerUnavailable(f"node {node_id}: {why}"))
        return d


def registry_addresses(registry: INodeRegistry) -> AddressOf:
    """An ``address_of`` for :class:`RpcPeers` that reads the node registry."""

    async def address_of(node_id: int) -> Address | None:
        info = await registry.node(node_id)
        if info is None:
            return None
        return (info.rpc_host, info.rpc_port)

    return address_of
