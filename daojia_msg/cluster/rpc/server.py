# -*- test-case-name: tests.cluster.test_rpc,tests.cluster.test_rpc_tls -*-
"""The internal RPC listener: answers other nodes by calling this node's logic
(:class:`~daojia_msg.logic.interfaces.ILocalNode`), and their questions about a
logid from its trace buffer (:class:`~daojia_msg.cluster.rpc.commands.TraceEvents`).
With mutual TLS the node
wraps it in Twisted's TLS layer, which refuses peers without a certificate
from the cluster's CA before any command is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import (
    Deferred,
    gatherResults,
)
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from daojia_msg import tracing
from daojia_msg.cluster.rpc.commands import (
    AUTH_TIMEOUT_S,
    NOT_HELD,
    PUSHED,
    REFUSED,
    Auth,
    BadMessage,
    ClosedWaiters,
    Deliver,
    DeliverMany,
    InternalError,
    Kick,
    TraceEvents,
    Unauthorized,
    check_auth,
    encode_events,
)
from daojia_msg.core.convert import message_from_wire, recipient_fields
from daojia_msg.logic.interfaces import ILocalNode
from daojia_msg.sockets import no_delay
from daojia_msg.tls import tls_failure

#: The message path (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.cluster.rpc")

log = Logger()


class RpcServerProtocol(ClosedWaiters, amp.AMP):
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
        why = tls_failure(reason.value)
        if why is not None:  # mutual TLS: e.g. no certificate, or not from the CA
            log.warn("internal RPC connection from {peer} closed: TLS: {why}", peer=self.peer,
                     why=why)
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
        return {"pushed": self._push(session_id, message, content)}

    @DeliverMany.responder
    def deliver_many(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Each item as a Deliver; one refused (logged) does not stop the others."""
        self._require_auth("DeliverMany")
        answers = []
        for item in items:
            try:
                answers.append(PUSHED if self._push(**item) else NOT_HELD)
            except (BadMessage, InternalError):
                answers.append(REFUSED)
        return {"pushed": answers}

    def _push(self, session_id: str, message: bytes, content: bytes) -> bool:
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
        return pushed

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

    @TraceEvents.responder
    def trace_events(self, logid: str) -> dict[str, Any]:
        self._require_auth("TraceEvents")
        trace = self.factory.trace
        if trace is None:
            return {"events": b"[]", "traced": False, "truncated": False}
        try:
            events = trace(logid)
            if events is None:
                return {"events": b"[]", "traced": False, "truncated": False}
            data, truncated = encode_events(events)
        except Exception:
            log.failure("answering node {peer_node}'s trace question failed", peer_node=self.node)
            raise InternalError("the node failed to read its trace; see its log") from None
        return {"events": data, "traced": True, "truncated": truncated}


class RpcServerFactory(Factory):
    """The internal RPC listener: answers other nodes by calling ``logic``.

    ``secret`` "" means no Auth is asked for (the node must then listen on
    loopback only: that check is the caller's). ``max_content`` is the content
    limit (``limits.max_content``). ``trace(logid)`` gives the events of this
    node's trace buffer about ``logid`` (dicts of
    :data:`~daojia_msg.cluster.rpc.commands.TRACE_FIELDS`), or None when it
    keeps none; without it, TraceEvents answers that none is kept.
    """

    protocol: type[RpcServerProtocol] = RpcServerProtocol

    def __init__(
        self,
        logic: ILocalNode,
        clock: IReactorTime,
        secret: str,
        *,
        max_content: int = 65000,
        auth_timeout: float = AUTH_TIMEOUT_S,
        trace: Callable[[str], Sequence[dict[str, Any]] | None] | None = None,
    ) -> None:
        self.logic = logic
        self.trace = trace
        self.clock = clock
        self.secret = secret
        self.max_content = max_content
        self.auth_timeout = auth_timeout
        self.connections: set[RpcServerProtocol] = set()

    def __repr__(self) -> str:
        return f"<RpcServerFactory auth={'on' if self.secret else 'off'}>"

    def buildProtocol(self, addr: IAddress | None) -> RpcServerProtocol:
        host, port = getattr(addr, "host", "?"), getattr(addr, "port", "?")
        proto = self.protocol(self, f"{host}:{port}")
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


