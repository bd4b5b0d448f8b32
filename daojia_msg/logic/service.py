# -*- test-case-name: tests.logic.test_service -*-
"""Logic on one node: login, logout, kickout, C2S routing, C2C and S2C delivery.

The gate and the HTTP API call in; logic reaches storage, the bus and (through
:class:`~daojia_msg.logic.interfaces.IClientConnection`) connections. Every
method either returns its answer or raises a
:class:`~daojia_msg.protocol.errors.RequestError` that maps to a result code.

Delivery (docs/protocol.md §6.3): a message is made durable as pending, its push
is handed over if the recipient is online (written to a local session, or
taken by the node that holds it), then the sender is answered (see
:meth:`LogicService._c2c_stored` for why in this order); an ACK turns it
delivered. PULL and HISTORY are in :mod:`daojia_msg.logic.inbox`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg import tracing
from daojia_msg.auth import TokenError, verify_token
from daojia_msg.config import Config
from daojia_msg.core.convert import MAX_ID, check_uid, recipient_fields, sender_fields, to_pb
from daojia_msg.core.errors import BusError, StoreError, Unavailable
from daojia_msg.core.model import (
    AckedMessage,
    Kind,
    NewMessage,
    SessionRecord,
    StoredMessage,
    StoreOutcome,
)
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.delivery import DeliveryWindow
from daojia_msg.logic.interfaces import (
    IClientConnection,
    ILocalNode,
    IMessageStore,
    IPeers,
    IPublisher,
    ISessionStore,
)
from daojia_msg.metrics.delivery import Route, Stats
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Cmd, Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The message path: stored, pushed, ACKed... (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.logic.service")

#: A client-chosen logid goes into every log line: keep it short and plain.
LOGID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
#: Un-ACKed pushes held per connection; beyond it a message just stays pending.
MAX_UNACKED = 1000
DEDUP_PURGE_INTERVAL_S = 3600.0
#: Session look-ups one delivery follows when the recipient moves between nodes.
MAX_HOPS = 3
#: Background retries of a kick that could not reach the other node.
KICK_RETRIES = 3
#: Background retries of a push that could not reach the recipient's node, and
#: how many may wait at once.
DELIVERY_RETRIES = 3
MAX_DELIVERY_RETRIES = 10000


class _RandomBytes:
    """Bytes of ``os.urandom``, read 4 KiB at a time (one system call per 256
    session ids instead of one each)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf, pos = os.urandom(4096), 0
        self._pos = pos + n
        return self._buf[pos:pos + n]


_random = _RandomBytes()


def new_session_id() -> str:
    """32 random lowercase hex digits, like ``uuid4().hex`` (each byte is used once)."""
    return _random.take(16).hex()


def _store_unavailable(failure: Failure) -> NoReturn:
    failure.trap(StoreError)
    raise errors.Unavailable("message store unavailable")


def _c2c_result(outcome: StoreOutcome, msg: StoredMessage) -> pb.Result:
    return pb.Result(code=Code.OK, msgid=outcome.msgid, logid=outcome.logid,
                     server_time_ms=msg.send_time_ms)


@dataclass(frozen=True, slots=True)
class PushItem:
    """One S2C push from an app server (``POST /v1/push``), already shape-checked."""

    to_uid: int
    to_appcode: int
    msgtype: int
    content: bytes
    logid: str = ""


@dataclass(frozen=True, slots=True)
class PushOutcome:
    msgid: int
    logid: str
    online: bool


class Session:
    """A logged-in connection, as logic tracks it."""

    __slots__ = ("conn", "uid", "appcode", "usersystem", "record", "window")

    def __init__(
        self, conn: IClientConnection, record: SessionRecord, usersystem: str, window: DeliveryWindow
    ) -> None:
        self.conn = conn
        self.uid = record.uid
        self.appcode = record.appcode
        self.usersystem = usersystem
        self.record = record
        self.window = window


@implementer(ILocalNode)
class LogicService(Service):
    log = Logger()

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        sessions: ISessionStore,
        store: IMessageStore,
        bus: IPublisher,
        ids: IdGenerator,
        stats: Stats | None = None,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.clock = clock
        self.sessions = sessions
        self.store = store
        self.bus = bus
        self.ids = ids
        self.node_id = ids.node_id
        self.stats = stats if stats is not None else Stats(
            now=clock.seconds, window_s=config.stats.window_s)
        #: This node's logged-in connections, by identity.
        self.local: dict[tuple[int, int], Session] = {}
        #: The other nodes (a cluster) or None (one node).
        self.peers: IPeers | None = None
        #: False while this node cannot prove it is a live cluster member (its
        #: lease is not renewed): C2C, S2C and ACK are then UNAVAILABLE.
        self.available: Callable[[], bool] = lambda: True
        self._purge = LoopingCall(self._purge_dedup)
        self._purge.clock = clock
        self._kick_retries: set[IDelayedCall] = set()
        self._delivery_retries: set[IDelayedCall] = set()

    # -- service life ------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._purge.start(DEDUP_PURGE_INTERVAL_S, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._purge.running:
            self._purge.stop()
        for call in (*self._kick_retries, *self._delivery_retries):
            if call.active():
                call.cancel()
        self._kick_retries.clear()
        self._delivery_retries.clear()

    def kick_all(self, reason_code: KickReason, reason: str) -> int:
        """KICKOUT every local session (e.g. SHUTDOWN); returns how many."""
        sessions = list(self.local.values())
        for session in sessions:
            session.conn.kick(reason_code, reason)
        return len(sessions)

    async def _purge_dedup(self) -> None:
        before = int(self.clock.seconds() * 1000 - self.config.store.dedup_days * 86400000)
        try:
            n = await self.store.purge_dedup(before)
        except Exception:  # keep the LoopingCall alive whatever happened
            self.log.failure("purging old de-duplication keys failed")
        else:
            self.log.info("purged {count} de-duplication keys", count=n)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    # -- sessions ------------------------------------------------------------

    async def login(
        self, conn: IClientConnection, appcode: int, uid: int, req: pb.LoginRequest
    ) -> tuple[Session, pb.LoginResponse]:
        """Verify the token, register the session, kick the older one of the same identity."""
        self._check_available()
        app = self.config.app(appcode)
        if app is None:
            raise errors.UnknownAppcode(f"no app {appcode}")
        check_uid(uid, "uid")
        try:
            verify_token(app.secret, appcode, uid, req.token, self.clock.seconds())
        except TokenError as e:
            self.log.info("login refused for {uid}@{appcode} from {peer}: {why}",
                          uid=uid, appcode=appcode, peer=conn.peer, why=str(e))
            raise errors.Unauthorized(str(e)) from None
        record = SessionRecord(uid, appcode, self.node_id, new_session_id(), self.now_ms())
        window = DeliveryWindow(
            self.clock, conn, self.limits.ack_timeout_s, self.limits.max_repush, MAX_UNACKED,
            self._count_repush,
        )
        session = Session(conn, record, app.usersystem, window)
        try:
            previous = await self.sessions.register(record)
        except StoreError:
            raise errors.Unavailable("session store unavailable") from None
        # Kick what this login replaces: the older session here, and the one the
        # session store named if it is on another node (each on its own).
        self._kick_local_other(uid, appcode, conn)
        if previous is not None and previous.node_id != self.node_id:
            await self._kick_remote(previous, KickReason.LOGIN_ELSEWHERE)
        if not conn.connected:
            # It went away while we registered: leave no stale session behind.
            await self._unregister(session)
            raise errors.Unavailable("connection closed during login")
        # Another login of the same identity may have registered meanwhile (here
        # or on another node): the store names the winner; only it goes live.
        try:
            current = await self.sessions.lookup(uid, appcode)
        except StoreError:
            await self._unregister(session)
            raise errors.Unavailable("session store unavailable") from None
        if current is None or current.session_id != record.session_id:
            self.log.info("login {uid}@{appcode} lost a race with another login",
                          uid=uid, appcode=appcode, peer=conn.peer)
            raise errors.Unavailable("logged in again elsewhere meanwhile")
        self._kick_local_other(uid, appcode, conn)
        # From here pushes reach this connection (it holds them until the
        # LOGIN answer is out), so nothing stored from now on is missed.
        self.local[(uid, appcode)] = session
        conn.attach(session)
        try:
            pending = await self.store.count_pending(uid, appcode)
        except BaseException as e:
            self._drop(session)
            conn.detach()
            await self._unregister(session)
            if isinstance(e, StoreError):
                raise errors.Unavailable("message store unavailable") from None
            raise
        if tracing.MESSAGES.listeners:  # the session path: see daojia_msg.tracing
            trace.info("login {uid}@{appcode} session {session_id} from {peer}, {pending} pending",
                       uid=uid, appcode=appcode, session_id=record.session_id, peer=conn.peer,
                       pending=pending, device_id=req.device_id[:64])
        return session, self.login_response(session, pending)

    def login_response(self, session: Session, pending: int) -> pb.LoginResponse:
        return pb.LoginResponse(
            code=Code.OK,
            session_id=session.record.session_id,
            heartbeat_s=self.limits.heartbeat_s,
            server_time_ms=self.now_ms(),
            offline_count=min(pending, 2**32 - 1),
        )

    async def relogin(self, session: Session, req: pb.LoginRequest) -> pb.LoginResponse:
        """LOGIN again on a connection already logged in as the same identity."""
        self._check_available()
        app = self.config.app(session.appcode)
        assert app is not None
        try:
            verify_token(app.secret, session.appcode, session.uid, req.token, self.clock.seconds())
        except TokenError as e:
            raise errors.Unauthorized(str(e)) from None
        try:
            pending = await self.store.count_pending(session.uid, session.appcode)
        except StoreError:
            raise errors.Unavailable("message store unavailable") from None
        return self.login_response(session, pending)

    async def logout(self, session: Session) -> None:
        if tracing.MESSAGES.listeners:
            trace.info("logout {uid}@{appcode} session {session_id}", uid=session.uid,
                       appcode=session.appcode, session_id=session.record.session_id)
        self._drop(session)
        await self._unregister(session)

    def connection_lost(self, session: Session) -> None:
        """The session's connection closed; its un-ACKed pushes stay pending."""
        if self._drop(session):
            Deferred.fromCoroutine(self._unregister(session))

    def _drop(self, session: Session) -> bool:
        session.window.close()
        key = (session.uid, session.appcode)
        if self.local.get(key) is session:
            del self.local[key]
            return True
        return False

    async def _unregister(self, session: Session) -> None:
        try:
            await self.sessions.unregister(session.record)
        except StoreError:
            self.log.failure("could not unregister session {session_id}",
                             session_id=session.record.session_id)

    def _kick_local_other(self, uid: int, appcode: int, conn: IClientConnection) -> None:
        old = self.local.get((uid, appcode))
        if old is not None and old.conn is not conn:
            self._drop(old)
            old.conn.kick(KickReason.LOGIN_ELSEWHERE, "logged in elsewhere")

    async def _kick_remote(self, record: SessionRecord, reason: KickReason,
                           attempt: int = 0) -> bool:
        """Kick a session held by another node (there is none on one node).

        A kick that fails (the node is slow or unreachable) is tried again in the
        background, :data:`KICK_RETRIES` times with growing delays, so an old
        session does not stay live next to the new one. (A node that is really
        gone has lost its sessions anyway; the detector purges their records.)
        """
        if self.peers is None or record.node_id == self.node_id:
            return False
        text = "logged in elsewhere" if reason == KickReason.LOGIN_ELSEWHERE else \
            "kicked by an administrator"
        try:
            kicked: bool = await self.peers.kick(record, int(reason), text)
        except Unavailable as e:
            self.log.warn("could not kick {uid}@{appcode} on node {peer_node} (try {attempt}): {error}",
                          uid=record.uid, appcode=record.appcode, peer_node=record.node_id,
                          attempt=attempt + 1, error=str(e))
            if attempt < KICK_RETRIES and self.running:
                call = self.clock.callLater(2.0**attempt, self._retry_kick, record, reason,
                                            attempt + 1)
                self._kick_retries.add(call)
            return False
        return kicked

    def _retry_kick(self, record: SessionRecord, reason: KickReason, attempt: int) -> None:
        self._kick_retries = {c for c in self._kick_retries if c.active()}
        Deferred.fromCoroutine(self._kick_remote(record, reason, attempt))

    def kick_local(self, uid: int, appcode: int, session_id: str, reason_code: int,
                   reason: str) -> bool:
        """Another node asks: KICKOUT our session ``session_id`` of ``(uid, appcode)``."""
        session = self.local.get((uid, appcode))
        if session is None or session.record.session_id != session_id:
            return False
        self._drop(session)
        session.conn.kick(reason_code, reason)
        # Compare-and-delete: a newer login's record is left alone.
        Deferred.fromCoroutine(self._unregister(session))
        self.log.info("kicked {uid}@{appcode} for another node", uid=uid, appcode=appcode,
                      reason_code=reason_code)
        return True

    async def kickout(self, uid: int, appcode: int, reason: KickReason = KickReason.ADMIN) -> int:
        """KICKOUT ``(uid, appcode)`` wherever it is online; returns how many were kicked."""
        session = self.local.get((uid, appcode))
        if session is not None:
            self._drop(session)
            session.conn.kick(reason, "kicked by an administrator")
            await self._unregister(session)
            self.log.info("kicked {uid}@{appcode}", uid=uid, appcode=appcode, reason=reason.name)
            return 1
        try:
            record = await self.sessions.lookup(uid, appcode)
        except StoreError:
            raise errors.Unavailable("session store unavailable") from None
        if record is not None and record.node_id != self.node_id:
            return int(await self._kick_remote(record, reason))
        return 0

    async def sessions_of(self, uid: int, appcodes: frozenset[int]) -> list[SessionRecord]:
        try:
            records = await self.sessions.lookup_uid(uid)
        except StoreError:
            raise errors.Unavailable("session store unavailable") from None
        return [r for r in records if r.appcode in appcodes]

    # -- messages ------------------------------------------------------------

    def _check_available(self) -> None:
        if not self.available():
            raise errors.Unavailable("this node is not a live cluster member right now")

    def _check_content(self, content: bytes) -> None:
        if len(content) > self.limits.max_content:
            raise errors.BadRequest(f"content is over {self.limits.max_content} bytes")

    def _logid(self, given: str, msgid: int) -> str:
        if not given:
            return format(msgid, "x")
        if not LOGID_RE.fullmatch(given):
            raise errors.BadRequest("logid must be 1 to 64 of A-Z a-z 0-9 . _ : -")
        return given

    def c2s(self, session: Session, msgtype: int, req: pb.C2SRequest) -> Deferred[pb.Result]:
        """Publish to the topic of ``(appcode, msgtype)``; answer once the bus accepted it.

        (C2S, C2C and ACK run per message: they are plain callbacks on one
        Deferred, not coroutines, which cost a sixth of the node's CPU.)"""
        try:
            self._check_available()  # it takes a msgid
            self._check_content(req.content)
            route = self.config.route_for(session.appcode, msgtype)
            if route is None:
                raise errors.NoRoute(f"no topic for appcode {session.appcode} msgtype {msgtype}")
            msgid = self.ids.next_id()
            logid = self._logid(req.logid, msgid)
            now = self.now_ms()
            envelope = pb.Message(
                msgid=msgid, from_uid=session.uid, from_appcode=session.appcode, msgtype=msgtype,
                content=req.content, send_time_ms=now, logid=logid, kind=pb.C2S,
            ).SerializeToString()
            d = self.bus.publish(route, envelope, logid)
        except Exception:
            return fail()
        return d.addCallbacks(self._c2s_published, self._c2s_refused,
                              callbackArgs=(session, msgtype, msgid, logid, route.topic, now),
                              errbackArgs=(session, msgid, logid, route.topic))

    def _c2s_published(self, _: object, session: Session, msgtype: int, msgid: int, logid: str,
                       topic: str, now: int) -> pb.Result:
        self.stats.add((session.appcode, msgtype, Kind.C2S), "accepted")
        if tracing.MESSAGES.listeners:
            trace.debug("c2s {msgid} published to {topic}", msgid=msgid, topic=topic, logid=logid,
                        uid=session.uid, appcode=session.appcode)
        return pb.Result(code=Code.OK, msgid=msgid, logid=logid, server_time_ms=now)

    def _c2s_refused(self, failure: Failure, session: Session, msgid: int, logid: str,
                     topic: str) -> NoReturn:
        failure.trap(BusError)
        self.log.warn("c2s {msgid} to {topic} refused by the bus: {error}", msgid=msgid,
                      topic=topic, logid=logid, uid=session.uid, appcode=session.appcode,
                      error=str(failure.value))
        raise errors.Unavailable("message bus unavailable")

    def c2c(self, session: Session, msgtype: int, req: pb.C2CRequest) -> Deferred[pb.Result]:
        """Store durably (de-duplicated by client_msg_id), push, then answer."""
        try:
            self._check_available()
            to_app = self.config.app(req.to_appcode)
            if to_app is None:
                raise errors.UnknownAppcode(f"no app {req.to_appcode}")
            check_uid(req.to_uid, "to_uid")
            if (req.to_uid, req.to_appcode) == (session.uid, session.appcode):
                raise errors.BadRequest("cannot send to oneself")
            self._check_content(req.content)
            if len(req.client_msg_id) > self.limits.max_id_len:
                raise errors.BadRequest(
                    f"client_msg_id is over {self.limits.max_id_len} characters")
            msgid = self.ids.next_id()
            msg = StoredMessage(
                msgid, session.uid, session.appcode, req.to_uid, req.to_appcode, msgtype,
                Kind.C2C, req.content, self.now_ms(), self._logid(req.logid, msgid),
            )
            new = NewMessage(msg, to_app.usersystem, session.usersystem, req.client_msg_id)
            d = self._store([new])
        except Exception:
            return fail()
        return d.addCallback(self._c2c_stored, session, req, msg)

    def _c2c_stored(self, outcomes: list[StoreOutcome], session: Session, req: pb.C2CRequest,
                    msg: StoredMessage) -> pb.Result | Deferred[pb.Result]:
        """Durable: hand the push over, then answer the sender.

        The sender's Result waits until the push is written to the local
        session, or accepted by the node that holds it (or found impossible:
        offline, unreachable). So a node that dies between storing a message
        and handing its push over has not answered either: the sender resends
        (same ``client_msg_id``), and the resend, answered from the de-dup key
        by any node, pushes the message again (:meth:`_redeliver`). Answering
        first would leave such a message pending until its recipient's next
        login, though the recipient is online."""
        [outcome] = outcomes
        if not outcome.duplicate and self._push_if_local(msg):  # the common case, at once
            return _c2c_result(outcome, msg)
        return Deferred.fromCoroutine(self._c2c_deliver(session, req, msg, outcome))

    async def _c2c_deliver(self, session: Session, req: pb.C2CRequest, msg: StoredMessage,
                           outcome: StoreOutcome) -> pb.Result:
        if outcome.duplicate:
            self.log.info("c2c resend of {client_msg_id} answered with {msgid}",
                          client_msg_id=req.client_msg_id, msgid=outcome.msgid, logid=outcome.logid,
                          uid=session.uid, appcode=session.appcode)
            await self._redeliver(req.to_uid, req.to_appcode, outcome.msgid, outcome.logid)
        else:
            await self._deliver(msg)
        return _c2c_result(outcome, msg)

    async def _redeliver(self, to_uid: int, to_appcode: int, msgid: int, logid: str) -> None:
        """A resend means the sender never saw its answer: the node that stored
        the first send may have died before pushing it. If it is still pending,
        push it now, so an online recipient does not wait for its next login."""
        try:
            msg = await self.store.pending_message(to_uid, msgid)
        except StoreError as e:
            self.log.info("{msgid} not re-delivered on its resend: {error}", msgid=msgid,
                          logid=logid, uid=to_uid, appcode=to_appcode, error=str(e))
            return  # it stays pending for PULL
        if msg is not None:
            await self._deliver(msg)

    async def push_s2c(self, items: Sequence[PushItem]) -> list[PushOutcome | errors.RequestError]:
        """App-server pushes, in order: stored as one batch, then pushed.

        Each item gets its outcome, or the error that refused it alone. A store
        failure refuses the whole batch (raises Unavailable): nothing was stored.
        """
        self._check_available()
        results: list[PushOutcome | errors.RequestError | None] = []
        accepted: list[tuple[int, StoredMessage, NewMessage]] = []
        now = self.now_ms()
        for i, item in enumerate(items):
            try:
                to_app = self.config.app(item.to_appcode)
                if to_app is None:
                    raise errors.UnknownAppcode(f"no app {item.to_appcode}")
                check_uid(item.to_uid, "to_uid")
                self._check_content(item.content)
                msgid = self.ids.next_id()
                msg = StoredMessage(msgid, 0, 0, item.to_uid, item.to_appcode, item.msgtype,
                                    Kind.S2C, item.content, now, self._logid(item.logid, msgid))
            except errors.RequestError as e:
                results.append(e)
                continue
            results.append(None)  # filled in once the batch is durable
            accepted.append((i, msg, NewMessage(msg, to_app.usersystem)))
        if accepted:
            await self._store([new for _, _, new in accepted])
            offline = await self._offline([msg for _, msg, _ in accepted])
            for i, msg, _ in accepted:
                if msg.msgid in offline:  # as _deliver would find, without asking again
                    self._stored_offline(msg)
                    pushed = False
                else:
                    pushed = await self._deliver(msg)
                results[i] = PushOutcome(msg.msgid, msg.logid, pushed)
        return [r for r in results if r is not None]

    async def _offline(self, messages: list[StoredMessage]) -> set[int]:
        """The msgids of ``messages`` whose recipient has no session anywhere:
        the sessions of all the recipients not on this node, in one look-up
        (a push batch's recipients are mostly offline). Empty when the
        session store cannot answer (each message then tries on its own)."""
        remote = [m for m in messages if (m.to_uid, m.to_appcode) not in self.local]
        if len(remote) < 2:
            return set()
        try:
            records = await self.sessions.lookup_many([(m.to_uid, m.to_appcode) for m in remote])
        except StoreError:
            return set()
        return {m.msgid for m, record in zip(remote, records, strict=True) if record is None}

    def _store(self, batch: list[NewMessage]) -> Deferred[list[StoreOutcome]]:
        return self.store.store(batch).addCallbacks(
            self._stored, self._not_stored, callbackArgs=(batch,), errbackArgs=(batch,))

    def _stored(self, outcomes: list[StoreOutcome], batch: list[NewMessage]) -> list[StoreOutcome]:
        for new, outcome in zip(batch, outcomes, strict=True):
            if not outcome.duplicate:
                msg = new.message
                self.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "accepted")
                if tracing.MESSAGES.listeners:
                    trace.debug("{kind} {msgid} stored for {to_uid}@{to_appcode}",
                                kind=msg.kind.name, msgid=msg.msgid, logid=msg.logid,
                                to_uid=msg.to_uid, to_appcode=msg.to_appcode, **sender_fields(msg))
        return outcomes

    def _not_stored(self, failure: Failure, batch: list[NewMessage]) -> NoReturn:
        failure.trap(StoreError)
        for new in batch:
            self.log.warn("message {msgid} not stored: store unavailable",
                          msgid=new.message.msgid, logid=new.message.logid,
                          to_uid=new.message.to_uid, to_appcode=new.message.to_appcode,
                          **sender_fields(new.message))
        raise errors.Unavailable("message store unavailable")

    async def _deliver(self, msg: StoredMessage, retry_attempt: int = 0) -> bool:
        """Push a durable message to its recipient's session if one is online.

        True when a session was registered and the push was handed to its node;
        otherwise the message simply stays pending for PULL.

        The recipient may reconnect elsewhere while we store: when the node we
        hand the push to no longer holds the session (or cannot be reached),
        the session is looked up again and followed if it moved, at most
        :data:`MAX_HOPS` times. A session registered after our last look-up
        drains the message with PULL (it was durable before that look-up).
        """
        if self._push_if_local(msg):
            return True
        tried: set[str] = set()
        unreachable = False
        for _ in range(MAX_HOPS):
            try:
                record = await self.sessions.lookup(msg.to_uid, msg.to_appcode)
            except StoreError:
                break
            if record is None or record.session_id in tried:
                break
            tried.add(record.session_id)
            if record.node_id == self.node_id:
                session = self.local.get((msg.to_uid, msg.to_appcode))
                if session is not None and session.record.session_id == record.session_id:
                    self._push(session, msg)
                    return True
                break  # a stale record of ours (e.g. from before a restart)
            pushed = await self._deliver_remote(record, msg)
            if pushed:
                return True
            unreachable = pushed is None
        if unreachable:
            self._retry_delivery(msg, retry_attempt)
        self._stored_offline(msg)
        return False

    def _push_if_local(self, msg: StoredMessage) -> bool:
        """Push ``msg`` if its recipient's session is on this node; whether it is."""
        session = self.local.get((msg.to_uid, msg.to_appcode))
        if session is None:
            return False
        self._push(session, msg)
        return True

    def _stored_offline(self, msg: StoredMessage) -> None:
        self.stats.add((msg.to_appcode, msg.msgtype, msg.kind), "stored")
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
        if (attempt >= DELIVERY_RETRIES or not self.running
                or len(self._delivery_retries) >= MAX_DELIVERY_RETRIES):
            return
        call = self.clock.callLater(2.0 ** (attempt + 1), self._delivery_retry, msg, attempt + 1)
        self._delivery_retries.add(call)

    def _delivery_retry(self, msg: StoredMessage, attempt: int) -> None:
        async def retry() -> None:
            try:
                pending = await self.store.pending_message(msg.to_uid, msg.msgid)
            except StoreError:
                pending = None
            if pending is None:
                return  # delivered (ACKed) meanwhile, or the store is down
            self.log.info("{msgid} delivery retried (try {attempt})", msgid=msg.msgid,
                          logid=msg.logid, attempt=attempt, **recipient_fields(msg))
            await self._deliver(pending, retry_attempt=attempt)

        Deferred.fromCoroutine(retry())

    async def _deliver_remote(self, record: SessionRecord, msg: StoredMessage) -> bool | None:
        """Hand a push to the node holding ``record`` (there is none on one node).

        True when pushed there, False when that node does not hold the session,
        None when it could not be reached in time.
        """
        if self.peers is None:
            return False
        try:
            pushed: bool = await self.peers.deliver(record, msg)
        except Unavailable as e:
            self.log.warn("{msgid} left pending: node {peer_node} unreachable: {error}",
                          msgid=msg.msgid, logid=msg.logid, peer_node=record.node_id,
                          error=str(e), **recipient_fields(msg))
            return None
        return pushed

    def deliver_local(self, session_id: str, msg: StoredMessage) -> bool:
        """Another node asks: push ``msg`` to our session ``session_id`` of its
        recipient. True when it was pushed (or is already waiting for its ACK)."""
        session = self.local.get((msg.to_uid, msg.to_appcode))
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
            self.stats.add(route, "pushed")
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

    def _count_repush(self, route: object) -> None:
        self.stats.add(route, "repushed")  # type: ignore[arg-type]

    def ack(self, session: Session, msgids: Sequence[int]) -> Deferred[pb.Result]:
        """Mark pushed messages delivered; answered once that is durable."""
        try:
            self._check_available()
            if len(msgids) > self.limits.max_ack_ids:
                raise errors.BadRequest(f"at most {self.limits.max_ack_ids} msgids per ACK")
            known = [m for m in msgids if m <= MAX_ID]  # larger ids name no message
            d = self.store.ack(session.uid, session.appcode, known)
        except Exception:
            return fail()
        return d.addCallbacks(self._acked, _store_unavailable, callbackArgs=(session, msgids))

    def _acked(self, acked: list[AckedMessage], session: Session,
               msgids: Sequence[int]) -> pb.Result:
        session.window.acked(msgids)
        now = self.now_ms()
        for a in acked:
            route = (session.appcode, a.msgtype, a.kind)
            self.stats.add(route, "acked")
            self.stats.observe_ack_latency(route, (now - a.send_time_ms) / 1000.0)
            if tracing.MESSAGES.listeners:
                trace.debug("{msgid} acked by {uid}@{appcode}", msgid=a.msgid, logid=a.logid,
                            uid=session.uid, appcode=session.appcode)
        return pb.Result(code=Code.OK, server_time_ms=now)
