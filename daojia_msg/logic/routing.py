# -*- test-case-name: tests.logic.test_service,tests.logic.test_cluster,tests.logic.test_routes -*-
"""Routing a durable message to its recipient's session: pushed here, handed
to the node that holds the session, or left pending for PULL.

A push that cannot reach the recipient's node is tried again in the
background while the message is still pending, so an online recipient does
not wait for its next login.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from daojia_msg import tracing
from daojia_msg.core.convert import recipient_fields, to_pb
from daojia_msg.core.errors import StoreError, Unavailable
from daojia_msg.core.model import Kind, SessionRecord, StoredMessage
from daojia_msg.logic.context import Context
from daojia_msg.logic.interfaces import IMessageStore, ISessionStore
from daojia_msg.logic.sessions import Session, Sessions
from daojia_msg.metrics.counters import LabeledCounter
from daojia_msg.metrics.delivery import Route
from daojia_msg.protocol.codes import Cmd

#: The message path: pushed, stored offline... (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.logic.routing")

#: Session look-ups one delivery follows when the recipient moves between nodes.
MAX_HOPS = 3
#: Background retries of a push that could not reach the recipient's node, and
#: how many may wait at once.
DELIVERY_RETRIES = 3
MAX_DELIVERY_RETRIES = 10000
#: At most one warning a peer this often (s) for the pushes that could not
#: reach it; each such push is an event of the message trace.
UNREACHABLE_WARN_EVERY_S = 10.0
#: At most this many recipients' routes are kept (:class:`Routes`).
MAX_ROUTES = 100_000
#: What became of the pushes tried on a kept route (``msgplatform_route_pushes_total``):
#: taken there, or "not held" / unreachable (the session looked up again).
ROUTE_RESULTS = ("hit", "stale")


class Routes:
    """Where recipients on other nodes were found lately, so that a run of
    messages to the same recipient (a chat, a driver's order updates) costs one
    session look-up per ``cluster.route_ttl_s`` (1 s) instead of one each.

    Only records of sessions on *other* nodes are kept, for ``ttl_s`` from the
    look-up that found them. A record is kept as soon as it is found, before
    its node has answered the push: under load that answer takes a few
    reactor turns, and the messages to the same recipient meanwhile go there
    without a look-up of their own. The node a record names checks the session
    id on every push, so a record gone stale (the session closed, or replaced
    by a newer login) is answered "not held" there, dropped here, and the
    session looked up again (:meth:`Routing.deliver`); a node that cannot be
    reached drops it too. Nothing is kept of a recipient who was not found: a
    login must be seen at once. The price: for up to ``ttl_s`` after a newer
    login on a third node, pushes may still go to the old session while its
    node holds it (its kick in flight, or failed); each such message stays
    pending until ACKed. ``ttl_s`` 0 keeps nothing. At most
    :data:`MAX_ROUTES` records; expired ones go first, then the oldest.
    """

    def __init__(self, clock: IReactorTime, ttl_s: float,
                 max_routes: int = MAX_ROUTES) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_routes = max_routes
        #: (uid, appcode) -> (expires at, record), in the order they expire:
        #: the TTL is the same for all, so insertion order is expiry order.
        self._records: OrderedDict[tuple[int, int], tuple[float, SessionRecord]] = OrderedDict()
        #: Pushes tried on a kept route, by :data:`ROUTE_RESULTS`.
        self.results = LabeledCounter(ROUTE_RESULTS)

    def get(self, uid: int, appcode: int) -> SessionRecord | None:
        kept = self._records.get((uid, appcode))
        if kept is None:
            return None
        if self.clock.seconds() >= kept[0]:
            del self._records[(uid, appcode)]
            return None
        return kept[1]

    def keep(self, record: SessionRecord, found_at: float) -> None:
        """Keep ``record``, found by a look-up at ``found_at``, until
        ``found_at + ttl_s``."""
        if self.ttl_s <= 0:
            return
        now = self.clock.seconds()
        records = self._records
        records.pop((record.uid, record.appcode), None)
        while records and (next(iter(records.values()))[0] <= now
                           or len(records) >= self.max_routes):
            records.popitem(last=False)
        if found_at + self.ttl_s > now:
            records[(record.uid, record.appcode)] = (found_at + self.ttl_s, record)

    def drop(self, uid: int, appcode: int, session_id: str) -> None:
        """Forget the route to ``(uid, appcode)`` if it still names ``session_id``
        (a push there was refused or failed; a newer record found meanwhile stays)."""
        kept = self._records.get((uid, appcode))
        if kept is not None and kept[1].session_id == session_id:
            del self._records[(uid, appcode)]

    def __len__(self) -> int:
        return len(self._records)


class Routing:
    log = Logger()

    def __init__(self, ctx: Context, sessions: Sessions, session_store: ISessionStore,
                 messages: IMessageStore) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.session_store = session_store
        self.messages = messages
        self._delivery_retries: set[IDelayedCall] = set()
        #: Per peer node: when it was last warned of, and pushes since.
        self._unreachable: dict[int, tuple[float, int]] = {}
        self.routes = Routes(ctx.clock, ctx.config.cluster.route_ttl_s)

    def stop(self) -> None:
        """Cancel the deliveries waiting to be tried again."""
        for call in self._delivery_retries:
            if call.active():
                call.cancel()
        self._delivery_retries.clear()

    async def deliver(self, msg: StoredMessage, retry_attempt: int = 0) -> bool:
        """Push a durable message to its recipient's session if one is online.

        True when a session was registered and the push was handed to its node;
        otherwise the message simply stays pending for PULL.

        The recipient may reconnect elsewhere while we store: when the node we
        hand the push to no longer holds the session (or cannot be reached),
        the session is looked up again and followed if it moved, at most
        :data:`MAX_HOPS` times. A session registered after our last look-up
        drains the message with PULL (it was durable before that look-up).

        A record found in the last ``cluster.route_ttl_s`` (:class:`Routes`) is tried
        first, without a look-up; when its node no longer holds the session,
        or cannot be reached, the session is looked up as above, and the same
        record found again is not tried twice.
        """
        if self.push_if_local(msg):
            return True
        tried: set[str] = set()
        unreachable = False
        known = self.routes.get(msg.to_uid, msg.to_appcode)
        if known is not None:
            pushed = await self._deliver_remote(known, msg)
            self.routes.results.inc("hit" if pushed else "stale")
            if pushed:
                return True
            self.routes.drop(msg.to_uid, msg.to_appcode, known.session_id)
            tried.add(known.session_id)
            unreachable = pushed is None
        for _ in range(MAX_HOPS):
            found_at = self.ctx.clock.seconds()
            try:
                record = await self.session_store.lookup(msg.to_uid, msg.to_appcode)
            except StoreError:
                break
            if record is None or record.session_id in tried:
                break
            tried.add(record.session_id)
            if record.node_id == self.ctx.node_id:
                session = self.sessions.local.get((msg.to_uid, msg.to_appcode))
                if session is not None and session.record.session_id == record.session_id:
                    self._push(session, msg)
                    return True
                break  # a stale record of ours (e.g. from before a restart)
            self.routes.keep(record, found_at)  # for the messages while this push is in flight
            pushed = await self._deliver_remote(record, msg)
            if pushed:
                return True
            self.routes.drop(msg.to_uid, msg.to_appcode, record.session_id)
            unreachable = pushed is None
        if unreachable:
            self._retry_delivery(msg, retry_attempt)
        self.stored_offline(msg)
        return False

    def push_if_local(self, msg: StoredMessage) -> bool:
        """Push ``msg`` if its recipient's session is on this node; whether it is."""
        session = self.sessions.local.get((msg.to_uid, msg.to_appcode))
        if session is None:
            return False
        self._push(session, msg)
        return True

    def retries_waiting(self) -> int:
        """Deliveries to an unreachable node waiting for their next try."""
        return sum(1 for call in self._delivery_retries if call.active())

    def stored_offline(self, msg: StoredMessage) -> None:
        self.ctx.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "stored")
        if tracing.MESSAGES.listeners:
            trace.debug("{msgid} stored offline for {to_uid}@{to_appcode}", msgid=msg.msgid,
                        logid=msg.logid, to_uid=msg.to_uid, to_appcode=msg.to_appcode,
                        **recipient_fields(msg))

    def _retry_delivery(self, msg: StoredMessage, attempt: int = 0) -> None:
        """The node holding the recipient's session could not be reached (slow,
        a blip): try again later, :data:`DELIVERY_RETRIES` times, while the
        message is still pending, so an online recipient does not wait for its
        next login. At most :data:`MAX_DELIVERY_RETRIES` wait at once; beyond
        that a message simply stays pending for PULL."""
        self._delivery_retries = {c for c in self._delivery_retries if c.active()}
        if (attempt >= DELIVERY_RETRIES or not self.ctx.running
                or len(self._delivery_retries) >= MAX_DELIVERY_RETRIES):
            return
        call = self.ctx.clock.callLater(2.0 ** (attempt + 1), self._delivery_retry, msg, attempt + 1)
        self._delivery_retries.add(call)

    def _delivery_retry(self, msg: StoredMessage, attempt: int) -> None:
        async def retry() -> None:
            try:
                pending = await self.messages.pending_message(msg.to_uid, msg.msgid)
            except StoreError:
                pending = None
            if pending is None:
                return  # delivered (ACKed) meanwhile, or the store is down
            if tracing.MESSAGES.listeners:
                trace.info("{msgid} delivery retried (try {attempt})", msgid=msg.msgid,
                           logid=msg.logid, attempt=attempt, **recipient_fields(msg))
            await self.deliver(pending, retry_attempt=attempt)

        Deferred.fromCoroutine(retry())

    async def _deliver_remote(self, record: SessionRecord, msg: StoredMessage) -> bool | None:
        """Hand a push to the node holding ``record`` (there is none on one node).

        True when pushed there, False when that node does not hold the session,
        None when it could not be reached in time.
        """
        if self.ctx.peers is None:
            return False
        try:
            pushed: bool = await self.ctx.peers.deliver(record, msg)
        except Unavailable as e:
            self._warn_unreachable(record.node_id, str(e))
            if tracing.MESSAGES.listeners:
                trace.warn("{msgid} left pending: node {peer_node} unreachable: {error}",
                           msgid=msg.msgid, logid=msg.logid, peer_node=record.node_id,
                           error=str(e), **recipient_fields(msg))
            return None
        return pushed

    def _warn_unreachable(self, peer: int, error: str) -> None:
        """One warning per peer per :data:`UNREACHABLE_WARN_EVERY_S` with the
        count of pushes that failed since the last one: under overload a slow
        peer fails thousands a second, and a line each would flood the log and
        cost the node the CPU it is short of (each is in the message trace)."""
        now = self.ctx.clock.seconds()
        warned_at, since = self._unreachable.get(peer, (-UNREACHABLE_WARN_EVERY_S, 0))
        if now - warned_at < UNREACHABLE_WARN_EVERY_S:
            self._unreachable[peer] = (warned_at, since + 1)
            return
        self._unreachable[peer] = (now, 0)
        self.log.warn("pushes left pending: node {peer_node} unreachable: {error}"
                      " ({count} more since the last warning)",
                      peer_node=peer, error=error, count=since)

    def deliver_local(self, session_id: str, msg: StoredMessage) -> bool:
        """Another node asks: push ``msg`` to our session ``session_id`` of its
        recipient. True when it was pushed (or is already waiting for its ACK)."""
        session = self.sessions.local.get((msg.to_uid, msg.to_appcode))
        if session is None or session.record.session_id != session_id:
            return False
        return self._push(session, msg)

    def _push(self, session: Session, msg: StoredMessage) -> bool:
        """Push to a local session; False when its window of un-ACKed pushes is
        full (the message then simply stays pending for the next PULL)."""
        route: Route = (msg.to_appcode, msg.msgtype, msg.kind)
        cmd = Cmd.C2C if msg.kind == Kind.C2C else Cmd.S2C
        if msg.msgid in session.window:
            return True
        if session.window.push(msg.msgid, cmd, msg.msgtype, to_pb(msg).SerializeToString(), route,
                               msg.logid):
            self.ctx.stats.add(route, "pushed")
            if tracing.MESSAGES.listeners:
                trace.debug("{msgid} pushed to {to_uid}@{to_appcode}", msgid=msg.msgid,
                            logid=msg.logid, to_uid=msg.to_uid, to_appcode=msg.to_appcode,
                            **recipient_fields(msg))
            return True
        self.log.info("{msgid} left pending: {to_uid}@{to_appcode} takes no pushes now "
                      "(too many un-ACKed, or not reading)",
                      msgid=msg.msgid, logid=msg.logid, to_uid=msg.to_uid,
                      to_appcode=msg.to_appcode, **recipient_fields(msg))
        return False

    async def offline(self, messages: list[StoredMessage]) -> set[int]:
        """The msgids of ``messages`` whose recipient has no session anywhere:
        the sessions of all the recipients not on this node, in one look-up
        (a push batch's recipients are mostly offline). Empty when the
        session store cannot answer (each message then tries on its own)."""
        remote = [m for m in messages if (m.to_uid, m.to_appcode) not in self.sessions.local]
        if len(remote) < 2:
            return set()
        try:
            records = await self.session_store.lookup_many([(m.to_uid, m.to_appcode) for m in remote])
        except StoreError:
            return set()
        return {m.msgid for m, record in zip(remote, records, strict=True) if record is None}
