"""Fakes for the web tests: a message store, a client connection, a logic node.

The fake store implements what :class:`LogicService` calls of
:class:`IMessageStore`; it records each ``store()`` batch so tests can prove
what was (or was not) made durable, de-duplicates by ``client_msg_id`` as the
real stores do, and can fail or hold its answer (and fail or succeed late).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.auth import mint_token
from daojia_msg.bus.memory import MemoryBus
from daojia_msg.bus.router import BusRouter
from daojia_msg.config import Config
from daojia_msg.core.model import AckedMessage, NewMessage, Page, StoredMessage, StoreOutcome
from daojia_msg.ids import IdGenerator
from daojia_msg.logic.interfaces import IClientConnection, IMessageStore
from daojia_msg.logic.service import LogicService
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from daojia_msg.store.lifecycle import PurgeCounts, PurgeCutoffs, StorageFigures
from daojia_msg.store.memory import MemorySessionStore
from daojia_msg.store.offers import MemoryOffers
from daojia_msg.store.positions import MemoryPositions

#: 2023-11-14T22:13:20Z: a realistic "now" for ids and tokens.
NOW = 1_700_000_000.0


@implementer(IMessageStore)
class FakeMessageStore:
    def __init__(self) -> None:
        #: Each successful ``store()`` call's batch, in order.
        self.batches: list[list[NewMessage]] = []
        #: Raised (as a failed Deferred) by ``store()`` when set.
        self.error: Exception | None = None
        #: When true, ``store()`` answers with an unfired Deferred kept in ``held``.
        self.hold = False
        self.held: list[tuple[Deferred[list[StoreOutcome]], list[NewMessage]]] = []
        #: ``(from_uid, from_appcode, client_msg_id)`` -> the first send's outcome.
        self.keys: dict[tuple[int, int, str], StoreOutcome] = {}

    @property
    def stored(self) -> list[NewMessage]:
        return [new for batch in self.batches for new in batch]

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def _durable(self, batch: Sequence[NewMessage]) -> list[StoreOutcome]:
        """Record ``batch`` (without its resends); each message's outcome."""
        outcomes, fresh = [], []
        for n in batch:
            m = n.message
            key = (m.from_uid, m.from_appcode, n.client_msg_id)
            first = self.keys.get(key) if n.client_msg_id else None
            if first is not None:
                outcomes.append(StoreOutcome(first.msgid, first.logid, duplicate=True))
                continue
            outcome = StoreOutcome(m.msgid, m.logid)
            if n.client_msg_id:
                self.keys[key] = outcome
            outcomes.append(outcome)
            fresh.append(n)
        if fresh:
            self.batches.append(fresh)
        return outcomes

    def store(self, messages: list[NewMessage]) -> Deferred[list[StoreOutcome]]:
        if self.error is not None:
            return fail(self.error)
        if self.hold:
            d: Deferred[list[StoreOutcome]] = Deferred()
            self.held.append((d, list(messages)))
            return d
        return succeed(self._durable(messages))

    def release(self, error: Exception | None = None) -> None:
        """Make the held batches durable and answer them (or fail them with
        ``error``: nothing stored); stop holding."""
        held, self.held = self.held, []
        self.hold = False
        for d, batch in held:
            if error is not None:
                d.errback(error)
            else:
                d.callback(self._durable(batch))

    def ack(self, uid: int, appcode: int, msgids: list[int]) -> Deferred[list[AckedMessage]]:
        return succeed([])

    def pull(self, uid: int, appcode: int, after_msgid: int, limit: int) -> Deferred[Page]:
        return succeed(Page([], False))

    def pending_message(self, to_uid: int, msgid: int) -> Deferred[StoredMessage | None]:
        return succeed(None)

    def count_pending(self, uid: int, appcode: int) -> Deferred[int]:
        return succeed(0)

    def history(self, usersystem: str, uid: int, before_msgid: int, limit: int,
                peer_uid: int) -> Deferred[Page]:
        return succeed(Page([], False))

    def max_msgid(self) -> Deferred[int]:
        return succeed(0)

    def purge_dedup(self, before_ms: int) -> Deferred[int]:
        return succeed(0)

    def purge(self, cutoffs: PurgeCutoffs) -> Deferred[PurgeCounts]:
        return succeed(PurgeCounts())

    def storage(self) -> Deferred[StorageFigures]:
        kinds = ("pending", "history", "dedup")
        return succeed(StorageFigures(dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0), 0, False))


@implementer(IClientConnection)
class FakeConnection:
    def __init__(self, peer: str = "127.0.0.1:50000") -> None:
        self.peer = peer
        self.host = peer.rpartition(":")[0]
        self.connected = True
        self.pushes: list[tuple[int, int, bytes]] = []
        self.kicks: list[tuple[int, str]] = []
        self.session: object = None

    def attach(self, session: object) -> None:
        self.session = session

    def detach(self) -> None:
        self.session = None

    def push(self, cmd: int, msgtype: int, body: bytes) -> int:
        self.pushes.append((cmd, msgtype, body))
        return len(self.pushes)

    def kick(self, reason_code: int, reason: str) -> None:
        self.kicks.append((int(reason_code), reason))
        self.connected = False


class FakeNode:
    """A LogicService on fakes and in-memory backends, on a :class:`Clock`."""

    def __init__(self, config: Config, node_id: int = 3) -> None:
        self.config = config
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = FakeMessageStore()
        self.sessions = MemorySessionStore()
        self.bus = MemoryBus()
        self.positions = MemoryPositions()
        self.offers = MemoryOffers()
        self.logic = LogicService(
            config, self.clock, self.sessions, self.store,
            BusRouter(config, self.clock, buses={"": self.bus}),
            IdGenerator(node_id, self.clock.seconds), positions=self.positions,
            offers=self.offers,
        )

    def login(self, uid: int, appcode: int) -> FakeConnection:
        app = self.config.app(appcode)
        assert app is not None
        token = mint_token(app.secret, appcode, uid, int(NOW) + 3600)
        conn = FakeConnection()
        d = Deferred.fromCoroutine(self.logic.login(conn, appcode, uid, pb.LoginRequest(token=token)))
        results: list[Any] = []
        d.addBoth(results.append)
        assert results and not isinstance(results[0], Failure), results
        return conn

