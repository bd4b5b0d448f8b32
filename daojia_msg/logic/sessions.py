# -*- test-case-name: tests.logic.test_service -*-
"""Sessions: login, re-login, logout, kickout, and this node's logged-in connections.

One session per ``(uid, appcode)`` across the cluster (docs/protocol.md §6.2):
a LOGIN registers its session in the session store and kicks the one it
replaces, here or on the node that holds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from daojia_msg import tracing
from daojia_msg.auth import TokenError, TokenExpired, verify_token
from daojia_msg.core.convert import check_uid
from daojia_msg.core.errors import StoreError, Unavailable
from daojia_msg.core.model import SessionRecord
from daojia_msg.logic.context import Context
from daojia_msg.logic.delivery import DeliveryWindow
from daojia_msg.logic.interfaces import (
    IClientConnection,
    ILoginThrottle,
    IMessageStore,
    ISessionStore,
)
from daojia_msg.metrics.counters import LOGIN_THROTTLE_SCOPES, LabeledCounter
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Code, KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

#: The session path: logins and logouts (only to the trace file and buffer).
trace = tracing.MESSAGES.logger("daojia_msg.logic.sessions")

#: Un-ACKed pushes held per connection; beyond it a message just stays pending.
MAX_UNACKED = 1000
#: Background retries of a kick that could not reach the other node.
KICK_RETRIES = 3


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


def _count_timeout() -> errors.Unavailable:
    """A LOGIN whose message store does not answer in time (docs/protocol.md §7.4)."""
    return errors.Unavailable("the message store did not answer in time")


class Session:
    """A logged-in connection, as logic tracks it."""

    __slots__ = ("conn", "uid", "appcode", "usersystem", "record", "window", "located")

    def __init__(
        self, conn: IClientConnection, record: SessionRecord, usersystem: str, window: DeliveryWindow
    ) -> None:
        self.conn = conn
        self.uid = record.uid
        self.appcode = record.appcode
        self.usersystem = usersystem
        self.record = record
        self.window = window
        #: It reported a position on a geo route: forget it when the session ends.
        self.located = False


class Sessions:
    """This node's sessions (:attr:`local`) and their records in the session store."""

    log = Logger()

    def __init__(self, ctx: Context, session_store: ISessionStore,
                 messages: IMessageStore, throttle: ILoginThrottle | None = None,
                 on_end: Callable[[Session], None] | None = None) -> None:
        self.ctx = ctx
        #: Called as a session that reported a position ends (it is dropped).
        self.on_end = on_end
        self.session_store = session_store
        self.messages = messages
        #: Login brute-force lockouts; None: no throttling (tests of other things).
        self.throttle = throttle
        #: LOGINs refused by a lockout, by scope, for /metrics.
        self.throttled = LabeledCounter(LOGIN_THROTTLE_SCOPES)
        #: This node's logged-in connections, by identity.
        self.local: dict[tuple[int, int], Session] = {}
        self._kick_retries: set[IDelayedCall] = set()

    def stop(self) -> None:
        """Cancel the kicks waiting to be tried again."""
        for call in self._kick_retries:
            if call.active():
                call.cancel()
        self._kick_retries.clear()

    async def login(
        self, conn: IClientConnection, appcode: int, uid: int, req: pb.LoginRequest
    ) -> tuple[Session, pb.LoginResponse]:
        """Verify the token, register the session, kick the older one of the same identity."""
        self.ctx.check_logins()
        app = self.ctx.config.app(appcode)
        if app is None:
            raise errors.UnknownAppcode(f"no app {appcode}")
        check_uid(uid, "uid")
        await self._verify(conn, app.secret, appcode, uid, req.token)
        record = SessionRecord(uid, appcode, self.ctx.node_id, new_session_id(), self.ctx.now_ms())
        window = DeliveryWindow(
            self.ctx.clock, conn, self.ctx.limits.ack_timeout_s, self.ctx.limits.max_repush, MAX_UNACKED,
            self._count_repush, self.ctx.pending_floor,
        )
        session = Session(conn, record, app.usersystem, window)
        try:
            previous = await self.session_store.register(record)
        except StoreError:
            raise errors.Unavailable("session store unavailable") from None
        # Kick what this login replaces: the older session here, and the one the
        # session store named if it is on another node (each on its own).
        self._kick_local_other(uid, appcode, conn)
        if previous is not None and previous.node_id != self.ctx.node_id:
            await self._kick_remote(previous, KickReason.LOGIN_ELSEWHERE)
        if not conn.connected:
            # It went away while we registered: leave no stale session behind.
            await self._unregister(session)
            raise errors.Unavailable("connection closed during login")
        # Another login of the same identity may have registered meanwhile (here
        # or on another node): the store names the winner; only it goes live.
        try:
            current = await self.session_store.lookup(uid, appcode)
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
            pending = await self.ctx.answers.bound(self.messages.count_pending(uid, appcode),
                                                   _count_timeout)
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
            heartbeat_s=self.ctx.limits.heartbeat_s,
            server_time_ms=self.ctx.now_ms(),
            offline_count=min(pending, 2**32 - 1),
        )

    async def relogin(self, session: Session, req: pb.LoginRequest) -> pb.LoginResponse:
        """LOGIN again on a connection already logged in as the same identity."""
        self.ctx.check_logins()
        app = self.ctx.config.app(session.appcode)
        assert app is not None
        await self._verify(session.conn, app.secret, session.appcode, session.uid, req.token)
        try:
            pending = await self.ctx.answers.bound(
                self.messages.count_pending(session.uid, session.appcode), _count_timeout)
        except StoreError:
            raise errors.Unavailable("message store unavailable") from None
        return self.login_response(session, pending)

    async def _verify(self, conn: IClientConnection, secret: str, appcode: int, uid: int,
                      token: str) -> None:
        """Check the token, unless a brute-force lockout holds for this LOGIN
        (RATE_LIMITED, the token not even looked at); count a forged or
        malformed one towards a lockout."""
        throttle = self.throttle
        host = conn.host or conn.peer
        if throttle is not None:
            try:
                scope = await throttle.locked(host, appcode, uid)
            except StoreError:
                raise errors.Unavailable("session store unavailable") from None
            if scope is not None:
                self.throttled.inc(scope)
                self.log.info("login of {uid}@{appcode} from {peer} throttled ({scope})",
                              uid=uid, appcode=appcode, peer=conn.peer, scope=scope)
                raise errors.RateLimited("too many failed logins: try again later")
        try:
            verify_token(secret, appcode, uid, token, self.ctx.clock.seconds())
        except TokenError as e:
            self.log.info("login refused for {uid}@{appcode} from {peer}: {why}",
                          uid=uid, appcode=appcode, peer=conn.peer, why=str(e))
            if throttle is not None and not isinstance(e, TokenExpired):
                try:
                    await throttle.failed(host, appcode, uid)
                except StoreError:
                    self.log.warn("could not count a failed login of {uid}@{appcode}",
                                  uid=uid, appcode=appcode)
            raise errors.Unauthorized(str(e)) from None

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
        if session.located and self.on_end is not None:
            self.on_end(session)
        key = (session.uid, session.appcode)
        if self.local.get(key) is session:
            del self.local[key]
            return True
        return False

    async def _unregister(self, session: Session) -> None:
        try:
            await self.session_store.unregister(session.record)
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
        if self.ctx.peers is None or record.node_id == self.ctx.node_id:
            return False
        text = "logged in elsewhere" if reason == KickReason.LOGIN_ELSEWHERE else \
            "kicked by an administrator"
        try:
            kicked: bool = await self.ctx.peers.kick(record, int(reason), text)
        except Unavailable as e:
            self.log.warn("could not kick {uid}@{appcode} on node {peer_node} (try {attempt}): {error}",
                          uid=record.uid, appcode=record.appcode, peer_node=record.node_id,
                          attempt=attempt + 1, error=str(e))
            if attempt < KICK_RETRIES and self.ctx.running:
                call = self.ctx.clock.callLater(2.0**attempt, self._retry_kick, record, reason,
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
            record = await self.session_store.lookup(uid, appcode)
        except StoreError:
            raise errors.Unavailable("session store unavailable") from None
        if record is not None and record.node_id != self.ctx.node_id:
            return int(await self._kick_remote(record, reason))
        return 0

    async def sessions_of(self, uid: int, appcodes: frozenset[int]) -> list[SessionRecord]:
        try:
            records = await self.session_store.lookup_uid(uid)
        except StoreError:
            raise errors.Unavailable("session store unavailable") from None
        return [r for r in records if r.appcode in appcodes]

    def kick_all(self, reason_code: KickReason, reason: str) -> int:
        """KICKOUT every local session (e.g. SHUTDOWN); returns how many."""
        sessions = list(self.local.values())
        for session in sessions:
            session.conn.kick(reason_code, reason)
        return len(sessions)

    def _count_repush(self, route: object) -> None:
        self.ctx.stats.add(route, "repushed")  # type: ignore[arg-type]
