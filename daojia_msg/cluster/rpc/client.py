# -*- test-case-name: tests.cluster.test_rpc,tests.cluster.test_rpc_tls -*-
"""The internal RPC client: hands pushes and kicks to the node that holds a
session (:class:`RpcPeers` implements :class:`~daojia_msg.logic.interfaces.IPeers`),
and asks other nodes what their trace buffers hold about a logid.

Delivery is at-least-once (docs/protocol.md §6.3): every failure of a call
(unknown node, refused, timed out, lost, refused by the peer) fails with
:class:`~daojia_msg.core.errors.PeerUnavailable`, and the caller leaves the
message pending. A call that times out drops its connection (and so fails
every call on it) only when the peer has answered nothing for a whole timeout
(dead, or a half-open socket); on a peer that still answers other calls
(overloaded) it fails alone, so that a slow peer is not also made to take
reconnects and a wave of retries.

Towards a slow peer the client also backs off: once a Deliver or Kick timed
out on a connection that still answers (the peer is overloaded, not dead),
new calls to that peer fail at once for a while, doubling with each timeout
soon after a pause (:class:`~daojia_msg.cluster.rpc.links.Link`; the callers
leave the messages pending and retry later); and at most :data:`MAX_PEER_INFLIGHT`
pushes wait on one peer. Sending a peer more while it is seconds behind only
lengthens its queue. :func:`registry_addresses` keeps a node's address for
:data:`ADDRESS_TTL_S`, so a delivery to another node does not cost a Redis
look-up each.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    gatherResults,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.cluster.interfaces import INodeRegistry
from daojia_msg.cluster.rpc.commands import (
    BATCH_BYTES,
    BATCH_CONTENT,
    BATCH_ITEMS,
    MAX_VALUE,
    PUSHED,
    REFUSED,
    BadMessage,
    Deliver,
    DeliverMany,
    InternalError,
    Kick,
    PeerTrace,
    TraceEvents,
    Unauthorized,
    batch_size,
    decode_events,
)
from daojia_msg.cluster.rpc.links import (
    Address,
    Link,
    describe,
)
from daojia_msg.core.convert import message_to_wire, recipient_fields
from daojia_msg.core.errors import PeerUnavailable
from daojia_msg.core.model import SessionRecord, StoredMessage
from daojia_msg.deadlines import Deadlines
from daojia_msg.logic.interfaces import IPeers
from daojia_msg.metrics.histograms import LabeledHistogram
from daojia_msg.tls import ClientTLS

log = Logger()

#: The most a trace question (:meth:`RpcPeers.trace`) waits for its answer.
TRACE_TIMEOUT_S = 1.0
#: Pushes (and kicks) waiting on one peer at most, a DeliverMany counting
#: its messages; beyond, new calls fail at once.
MAX_PEER_INFLIGHT = 2000
#: How long :func:`registry_addresses` keeps a live node's address.
ADDRESS_TTL_S = 1.0

AddressOf = Callable[[int], Awaitable[Address | None]]



class _Batch:
    """The pushes to one peer of one reactor turn, and their callers' Deferreds."""

    __slots__ = ("items", "waiting", "fields", "size", "sent")

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.waiting: list[Deferred[bool]] = []
        self.fields: list[dict[str, Any]] = []
        self.size = 0
        self.sent = False

    def room_for(self, size: int) -> bool:
        return len(self.items) < BATCH_ITEMS and self.size + size <= BATCH_BYTES

    def add(self, args: dict[str, Any], size: int, fields: dict[str, Any]) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.items.append(args)
        self.waiting.append(d)
        self.fields.append(fields)
        self.size += size
        return d


@implementer(IPeers)
class RpcPeers:
    """The other nodes, reached over their internal RPC listeners.

    ``address_of(node_id)`` gives a node's RPC ``(host, port)``, or None when the
    node is not alive; it is asked on every call, so a node that came back at a
    new address is reconnected to (see :func:`registry_addresses`). At most one
    connection per node is kept, opened on first use. Every call, connecting
    and authenticating included, gives up after ``timeout`` seconds.
    A trace question (:meth:`trace`) waits at most ``trace_timeout`` (at most
    ``timeout``). ``secret`` "" sends no Auth. With ``tls`` the connections are mutual TLS:
    this node presents its certificate and verifies the peer's against the CA
    and the peer's address. ``endpoint_for(host, port)`` overrides how
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
        tls: ClientTLS | None = None,
        endpoint_for: Callable[[str, int], IStreamClientEndpoint] | None = None,
        trace_timeout: float = TRACE_TIMEOUT_S,
    ) -> None:
        self.reactor = reactor
        self.address_of = address_of
        self.node_id = node_id
        self.secret = secret
        self.timeout = timeout
        self.tls = tls
        #: The time limit of every call, on one timer.
        self.deadlines = Deadlines(reactor, timeout, "internal RPC calls")
        #: Calls by (peer node id, result) and the answered ones' time per
        #: peer (``time.perf_counter`` seconds), for the metrics.
        self.calls: dict[tuple[str, str], int] = {}
        self.latency = LabeledHistogram(RPC_SECONDS)
        self.trace_deadlines = Deadlines(reactor, min(timeout, trace_timeout),
                                         "internal RPC trace questions")
        self._endpoint_for = endpoint_for
        self._links: dict[int, Link] = {}
        self._closed = False
        #: The pushes of this reactor turn by peer, and the peers that do not
        #: take DeliverMany (an earlier version: until this node restarts).
        self._batches: dict[int, _Batch] = {}
        self._one_by_one: set[int] = set()

    def __repr__(self) -> str:
        return f"<RpcPeers node={self.node_id} links={sorted(self._links)}>"

    def endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint
        if self._endpoint_for is not None:
            endpoint = self._endpoint_for(host, port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        elif isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if self.tls is not None:
            return wrapClientTLS(self.tls.options_for(host), endpoint)
        return endpoint

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
        node_id = record.node_id
        if len(content) > BATCH_CONTENT or node_id in self._one_by_one:
            return self._run(node_id, Deliver, args, "pushed", fields)
        return self._batched(node_id, args, fields)

    def _batched(self, node_id: int, args: dict[str, Any], fields: dict[str, Any]) -> Deferred[bool]:
        """A push that goes with the others to the same peer of this reactor
        turn, as one DeliverMany (or alone, as a Deliver, when it is the only
        one). A batch that has no room for it goes at once."""
        size = batch_size(args)
        batch = self._batches.get(node_id)
        if batch is not None and batch.room_for(size):
            return batch.add(args, size, fields)
        full = batch
        batch = self._batches[node_id] = _Batch()
        self.reactor.callLater(0, self._send_batch, node_id, batch)
        d = batch.add(args, size, fields)
        if full is not None:
            # Sent once the next batch is in place: when it fails at once (a
            # slow peer), a caller that pushes again from its errback joins
            # the next batch.
            self._send_batch(node_id, full)
        return d

    def _send_batch(self, node_id: int, batch: _Batch) -> None:
        if batch.sent:
            return  # sent already, when it was full
        batch.sent = True
        if self._batches.get(node_id) is batch:
            del self._batches[node_id]
        if len(batch.items) == 1 or node_id in self._one_by_one:
            self._each_alone(node_id, batch)
            return
        started = time.perf_counter()
        call = self.deadlines.watch(Deferred.fromCoroutine(
            self._call(node_id, DeliverMany, {"items": batch.items}, pushes=len(batch.items))))
        call.addCallbacks(self._batch_answered, self._batch_failed,
                          callbackArgs=(node_id, batch, started), errbackArgs=(node_id, batch))

    def _each_alone(self, node_id: int, batch: _Batch) -> None:
        """The batch's pushes as one Deliver each."""
        for args, d, fields in zip(batch.items, batch.waiting, batch.fields, strict=True):
            self._run(node_id, Deliver, args, "pushed", fields).chainDeferred(d)

    def _batch_answered(self, response: dict[str, Any], node_id: int, batch: _Batch,
                        started: float) -> None:
        answers: list[int] = response["pushed"]
        if len(answers) != len(batch.items):
            why = f"it answered {len(answers)} for {len(batch.items)} messages"
            self._batch_failed(Failure(InternalError(why)), node_id, batch)
            return
        self._succeeded(node_id, started)
        for answer, d, fields in zip(answers, batch.waiting, batch.fields, strict=True):
            if answer == REFUSED:
                log.warn("node {peer_node} refused a message of a DeliverMany (its log says why)",
                         peer_node=node_id, **fields)
                d.errback(PeerUnavailable(f"node {node_id}: it refused the message"))
            else:
                d.callback(answer == PUSHED)

    def _batch_failed(self, failure: Failure, node_id: int, batch: _Batch) -> None:
        if failure.check(amp.UnhandledCommand):
            # A node of an earlier version (a rolling upgrade): one by one.
            self._count(node_id, "refused")
            if node_id not in self._one_by_one:  # (batches already sent answer the same)
                log.info("node {peer_node} does not take DeliverMany (an earlier version): "
                         "pushes to it go one by one", peer_node=node_id)
                self._one_by_one.add(node_id)
            self._each_alone(node_id, batch)
            return
        try:
            self._failed(failure, node_id, DeliverMany,
                         {"messages": len(batch.items), **batch.fields[0]})
        except PeerUnavailable as e:
            for d in batch.waiting:
                d.errback(e)

    def kick(self, record: SessionRecord, reason_code: int, reason: str) -> Deferred[bool]:
        args: dict[str, Any] = {"uid": record.uid, "appcode": record.appcode,
                                "session_id": record.session_id,
                                "reason_code": int(reason_code), "reason": reason}
        return self._run(record.node_id, Kick, args, "kicked",
                         {"uid": record.uid, "appcode": record.appcode})

    def trace(self, node_id: int, logid: str) -> Deferred[PeerTrace]:
        """What node ``node_id``'s trace buffer holds about ``logid``; fails with
        :class:`PeerUnavailable` when the node does not answer in time (a slow
        answer does not drop the connection: it is only a question), refuses,
        or answers what is not a trace."""
        d = self.trace_deadlines.watch(Deferred.fromCoroutine(self._trace(node_id, logid)))
        return d.addErrback(self._trace_failed, node_id)

    async def _trace(self, node_id: int, logid: str) -> PeerTrace:
        response = await self._call(node_id, TraceEvents, {"logid": logid}, drop_if_silent=False)
        return PeerTrace(decode_events(response["events"]), bool(response["traced"]),
                         bool(response["truncated"]))

    def _trace_failed(self, failure: Failure, node_id: int) -> PeerTrace:
        if failure.check(TimeoutError):
            why = f"no answer within {self.trace_deadlines.timeout:g} s"
        elif failure.check(ValueError):
            why = f"not a trace answer: {failure.getErrorMessage()}"
        else:
            why = describe(failure)
        log.debug("internal RPC TraceEvents to node {peer_node} failed: {why}",
                  peer_node=node_id, why=why)
        raise PeerUnavailable(f"node {node_id}: {why}") from failure.value

    def close(self) -> Deferred[None]:
        """Close every connection; fires once they are closed. Later calls fail."""
        self._closed = True
        self.deadlines.stop()
        self.trace_deadlines.stop()
        links = list(self._links.values())
        self._links.clear()
        return gatherResults([link.close() for link in links]).addCallback(lambda _: None)

    # -- the machinery ------------------------------------------------------------

    def forget(self, link: Link) -> None:
        if self._links.get(link.node_id) is link:
            del self._links[link.node_id]

    def _link(self, node_id: int, address: Address) -> Link:
        link = self._links.get(node_id)
        if link is not None and link.address == address:
            return link
        if link is not None:
            log.info("node {peer_node} moved from {old} to {new}: reconnecting",
                     peer_node=node_id, old=link.address, new=address)
            link.close()
        link = Link(self, node_id, address)
        self._links[node_id] = link
        link.start()
        return link

    def _run(self, node_id: int, command: type[amp.Command], args: dict[str, Any],
             answer: str, fields: dict[str, Any]) -> Deferred[bool]:
        d = self.deadlines.watch(Deferred.fromCoroutine(self._call(node_id, command, args)))
        return d.addCallbacks(self._answered, self._failed,
                              callbackArgs=(node_id, answer, time.perf_counter()),
                              errbackArgs=(node_id, command, fields))

    def _count(self, node_id: int, result: str) -> None:
        key = (str(node_id), result)
        self.calls[key] = self.calls.get(key, 0) + 1

    def _answered(self, response: dict[str, Any], node_id: int, answer: str,
                  started: float) -> bool:
        self._succeeded(node_id, started)
        return bool(response[answer])

    def _succeeded(self, node_id: int, started: float) -> None:
        """A call answered: counted, and its time (``time.perf_counter``) observed."""
        self._count(node_id, "ok")
        self.latency.observe(str(node_id), time.perf_counter() - started)

    async def _call(self, node_id: int, command: type[amp.Command], args: dict[str, Any],
                    drop_if_silent: bool = True, pushes: int = 1) -> dict[str, Any]:
        if self._closed:
            raise PeerUnavailable("the internal RPC client is closed")
        found = await self.address_of(node_id)
        if found is None:
            raise PeerUnavailable("not alive")
        if self._closed:
            raise PeerUnavailable("the internal RPC client is closed")
        host, port = found
        link = self._link(node_id, (host, port))
        clock = self.reactor
        if drop_if_silent:  # a delivery or a kick, not a trace question
            now = clock.seconds()
            if now < link.slow_until:
                raise PeerUnavailable(f"slow: backing off for {link.slow_until - now:.1f} s more")
            if link.inflight >= MAX_PEER_INFLIGHT:
                raise PeerUnavailable(f"{MAX_PEER_INFLIGHT} pushes already wait on it")
        link.inflight += pushes
        try:
            proto = await link.ready()
            response: dict[str, Any] = await proto.callRemote(command, **args)
        except CancelledError:
            # It timed out. A connection that answered nothing for a whole
            # timeout is suspect (a dead peer, a half-open socket): drop it.
            # One that answers other calls is alive but slow (overloaded):
            # dropping it would fail every call on it at once, and the
            # reconnects and retries would load the slow peer further; new
            # calls to it fail at once for a while instead.
            if drop_if_silent:
                now = clock.seconds()
                if now - link.answered_at >= self.timeout:
                    link.abort()
                else:
                    link.slowed(now)
            raise
        finally:
            link.inflight -= pushes
        link.answered_at = clock.seconds()
        return response

    def _failed(self, failure: Failure, node_id: int, command: type[amp.Command],
                fields: dict[str, Any]) -> bool:
        name = command.__name__
        self._count(node_id, "timeout" if failure.check(TimeoutError)
                    else "refused" if failure.check(Unauthorized, BadMessage, InternalError)
                    else "unavailable" if failure.check(PeerUnavailable) else "error")
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
            why = describe(failure)
        log.debug("internal RPC {command} to node {peer_node} failed: {why}", command=name,
                  peer_node=node_id, why=why, **fields)
        raise PeerUnavailable(f"node {node_id}: {why}") from failure.value

    def _refused(self, node_id: int, why: str, fields: dict[str, Any]) -> Deferred[bool]:
        log.warn("not sent to node {peer_node}: {why}", peer_node=node_id, why=why, **fields)
        d: Deferred[bool] = Deferred()
        d.errback(PeerUnavailable(f"node {node_id}: {why}"))
        return d


#: Upper bounds of the RPC latency buckets, seconds.
RPC_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def registry_addresses(registry: INodeRegistry, clock: IReactorTime | None = None,
                       ttl: float = ADDRESS_TTL_S) -> AddressOf:
    """An ``address_of`` for :class:`RpcPeers` that reads the node registry.

    A live node's address is kept ``ttl`` seconds on ``clock`` (default: the
    registry's ``clock``, if it has one; none: no cache), so deliveries to
    another node do not each cost a Redis look-up; a node that is not alive
    is asked about every time."""
    if clock is None:
        clock = getattr(registry, "clock", None)
    known: dict[int, tuple[float, Address]] = {}

    async def address_of(node_id: int) -> Address | None:
        if clock is not None:
            hit = known.get(node_id)
            if hit is not None and clock.seconds() < hit[0]:
                return hit[1]
        info = await registry.node(node_id)
        if info is None:
            known.pop(node_id, None)
            return None
        address = (info.rpc_host, info.rpc_port)
        if clock is not None:
            known[node_id] = (clock.seconds() + ttl, address)
        return address

    return address_of
