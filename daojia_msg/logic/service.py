# -*- test-case-name: tests.logic.test_service -*-
"""Logic on one node, behind one service: sessions, sending, routing.

The gate, the HTTP API and the RPC listener call in here; logic reaches the
stores, the bus, the other nodes and (through
:class:`~daojia_msg.logic.interfaces.IClientConnection`) the connections only
through its ports (:mod:`daojia_msg.logic.interfaces`). Every request either
returns its answer or raises a :class:`~daojia_msg.protocol.errors.RequestError`
that maps to a result code. The work is done by
:class:`~daojia_msg.logic.sessions.Sessions` (login, logout, kickout),
:class:`~daojia_msg.logic.sending.Sending` (C2S, C2C, S2C, ACK) and
:class:`~daojia_msg.logic.routing.Routing` (a durable message to its
recipient's session); PULL and HISTORY are in :mod:`daojia_msg.logic.inbox`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from daojia_msg.config import Config
from daojia_msg.core.geo import Located
from daojia_msg.core.model import SessionRecord, StoredMessage
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.answers import Answers
from daojia_msg.logic.context import Context
from daojia_msg.logic.interfaces import (
    IClientConnection,
    ILocalNode,
    ILoginThrottle,
    IMessageStore,
    IOfferStore,
    IPeers,
    IPositions,
    IPublisher,
    ISessionStore,
)
from daojia_msg.logic.lifecycle import Lifecycle
from daojia_msg.logic.offers import Offers
from daojia_msg.logic.positions import Positions
from daojia_msg.logic.routing import Routing
from daojia_msg.logic.sending import PushItem, PushOutcome, Sending
from daojia_msg.logic.sessions import Session, Sessions, new_session_id
from daojia_msg.metrics.delivery import Stats
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import KickReason
from daojia_msg.protocol.pb import msgplatform_pb2 as pb

__all__ = ["LogicService", "PushItem", "PushOutcome", "Session", "new_session_id"]


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
        throttle: ILoginThrottle | None = None,
        positions: IPositions | None = None,
        offers: IOfferStore | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.ctx = Context(config, clock, ids, stats if stats is not None else Stats(
            now=clock.seconds, window_s=config.stats.window_s))
        #: Live positions of geo routes (None: checked, not kept).
        self.positions = Positions(self.ctx, positions, sessions)
        self.sessions = Sessions(self.ctx, sessions, store, throttle, self.positions.left)
        self.routing = Routing(self.ctx, self.sessions, sessions, store)
        self.sending = Sending(self.ctx, store, bus, self.routing, self.positions)
        #: This node's logged-in connections, by identity.
        self.local = self.sessions.local
        #: Nearby order offers (off without a store); their accepts come in as C2S.
        self.offers = Offers(self.ctx, offers, self.positions, self.sending, bus)
        # The per-message paths, without a call in between.
        self.c2s = self.offers.wrap_c2s(self.sending.c2s)
        self.c2c = self.sending.c2c
        self.c2c_frames = self.sending.c2c_frames
        self.ack = self.sending.ack
        self.ack_frames = self.sending.ack_frames
        #: The purge loop (expired, delivered, old history, de-dup keys) and
        #: the storage figures.
        self.lifecycle = Lifecycle(self.ctx, store)

    @property
    def stats(self) -> Stats:
        return self.ctx.stats

    @property
    def answers(self) -> Answers:
        """The time limit of answers that wait on a backend (the Inbox takes it too)."""
        return self.ctx.answers

    @property
    def peers(self) -> IPeers | None:
        """The other nodes (a cluster) or None (one node)."""
        return self.ctx.peers

    @peers.setter
    def peers(self, peers: IPeers | None) -> None:
        self.ctx.peers = peers

    @property
    def available(self) -> Callable[[], bool]:
        """False while this node cannot prove it is a live cluster member."""
        return self.ctx.available

    @available.setter
    def available(self, available: Callable[[], bool]) -> None:
        self.ctx.available = available

    # -- service life ------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.ctx.running = True
        self.lifecycle.start()
        self.positions.start()
        self.offers.start()

    def stopService(self) -> None:
        super().stopService()
        self.ctx.running = False
        self.lifecycle.stop()
        self.positions.stop()
        self.offers.stop()
        self.sessions.stop()
        self.routing.stop()
        self.ctx.answers.stop()

    def now_ms(self) -> int:
        return self.ctx.now_ms()

    # -- sessions ------------------------------------------------------------

    async def login(self, conn: IClientConnection, appcode: int, uid: int,
                    req: pb.LoginRequest) -> tuple[Session, pb.LoginResponse]:
        """Verify the token, register the session, kick the older one of the same identity."""
        return await self.sessions.login(conn, appcode, uid, req)

    async def relogin(self, session: Session, req: pb.LoginRequest) -> pb.LoginResponse:
        """LOGIN again on a connection already logged in as the same identity."""
        return await self.sessions.relogin(session, req)

    async def logout(self, session: Session) -> None:
        await self.sessions.logout(session)

    def connection_lost(self, session: Session) -> None:
        """The session's connection closed; its un-ACKed pushes stay pending."""
        self.sessions.connection_lost(session)

    async def kickout(self, uid: int, appcode: int, reason: KickReason = KickReason.ADMIN) -> int:
        """KICKOUT ``(uid, appcode)`` wherever it is online; returns how many were kicked."""
        return await self.sessions.kickout(uid, appcode, reason)

    def kick_all(self, reason_code: KickReason, reason: str) -> int:
        """KICKOUT every local session (e.g. SHUTDOWN); returns how many."""
        return self.sessions.kick_all(reason_code, reason)

    async def sessions_of(self, uid: int, appcodes: frozenset[int]) -> list[SessionRecord]:
        """The sessions of ``uid`` under ``appcodes``, wherever they are."""
        return await self.sessions.sessions_of(uid, appcodes)

    # -- app-server pushes ---------------------------------------------------

    async def push_s2c(self, items: Sequence[PushItem], pusher: int = 0,
                       started: float | None = None) -> list[PushOutcome | errors.RequestError]:
        """App-server pushes, in order: stored as one batch, then pushed
        (:meth:`Sending.push_s2c <daojia_msg.logic.sending.Sending.push_s2c>`)."""
        return await self.sending.push_s2c(items, pusher, started)

    # -- live positions --------------------------------------------------------

    async def nearby(self, appcode: int, lat: float, lon: float, radius_m: float,
                     limit: int) -> list[Located]:
        """Online uids of ``appcode`` near ``(lat, lon)``, nearest first
        (:meth:`Positions.nearby <daojia_msg.logic.positions.Positions.nearby>`)."""
        return await self.positions.nearby(appcode, lat, lon, radius_m, limit)

    # -- ILocalNode: what another node asks of this one ----------------------

    def deliver_local(self, session_id: str, msg: StoredMessage) -> bool:
        return self.routing.deliver_local(session_id, msg)

    def unacked_by_kind(self) -> dict[str, int]:
        """Pushes awaiting their ACK on this node's sessions, by kind (C2C,
        S2C), and deliveries waiting to retry a peer (``retry``): the metrics'
        messages in flight."""
        counts = {"C2C": 0, "S2C": 0}
        for session in list(self.sessions.local.values()):
            for route in session.window.routes():
                kind = route[2].name  # type: ignore[index]
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    def kick_local(self, uid: int, appcode: int, session_id: str, reason_code: int,
                   reason: str) -> bool:
        return self.sessions.kick_local(uid, appcode, session_id, reason_code, reason)


