# -*- test-case-name: tests.cluster.test_rejoin -*-
"""A node rejoins the cluster after a Redis outage (docs/operations.md §3).

While Redis was unreachable the node kept its connections; meanwhile Redis
may have lost its sessions (a restart), the gate detector may have purged
them (an outage past the TTL), the same user may have logged in on another
node, and other nodes stored what they sent to its users as pending (they
found no session). Once the registry holds the lease again it calls
:meth:`Rejoin.__call__`, which

1. re-registers the live sessions under the lease
   (:meth:`~daojia_msg.store.redis.RedisSessionStore.reregister`): a newer
   login of the same ``(uid, appcode)`` on another node wins, and the session
   here gets KICKOUT LOGIN_ELSEWHERE; an older one there is kicked on its node;
   the node's sessions that closed meanwhile are pruned;
2. then, in the background, pushes to each session it kept the messages
   pending for it, as a PULL would find them (pages of :data:`PAGE`, until the
   session's window of un-ACKed pushes is full): what became pending during
   the outage reaches the phone without it asking.

It reaches logic only through its ports: :class:`ILocalNode` (push to a
session here, kick one) and :class:`IMessageStore` (the pending messages).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from daojia_msg.core.errors import StoreError, Unavailable
from daojia_msg.core.model import SessionRecord
from daojia_msg.logic.interfaces import ILocalNode, IMessageStore, IPeers
from daojia_msg.protocol.codes import KickReason

#: Pending messages read per page when pushing them after a rejoin.
PAGE = 100
#: Sessions whose pending messages are read at once.
PARALLEL = 4


class Reregistered(Protocol):
    """What re-registering did (:class:`daojia_msg.store.redis.Reregistered`)."""

    @property
    def kept(self) -> list[SessionRecord]: ...
    @property
    def newer_elsewhere(self) -> list[SessionRecord]: ...
    @property
    def replaced(self) -> list[SessionRecord]: ...
    @property
    def pruned(self) -> int: ...


class SessionRegistrar(Protocol):
    """The session store's re-registration
    (:meth:`daojia_msg.store.redis.RedisSessionStore.reregister`; the cluster
    layer does not import the store, which imports logic's ports)."""

    def reregister(self, node_id: int, records: list[SessionRecord],
                   lease: tuple[str, str]) -> Awaitable[Reregistered]: ...


class Rejoin:
    """``live()`` lists the sessions this node holds and serves (connected);
    ``lease()`` is the registry's lease guard (key, token); ``peers()`` the
    other nodes (None: none yet)."""

    log = Logger()

    def __init__(
        self,
        node_id: Callable[[], int],
        sessions: SessionRegistrar,
        messages: IMessageStore,
        local: ILocalNode,
        live: Callable[[], list[SessionRecord]],
        lease: Callable[[], tuple[str, str]],
        peers: Callable[[], IPeers | None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self.sessions = sessions
        self.messages = messages
        self.local = local
        self.live = live
        self.lease = lease
        self.peers = peers
        #: The background pushes of the last rejoin (tests wait on it).
        self.pushing: Deferred[None] = Deferred.fromCoroutine(_nothing())
        self._stopped = False

    async def __call__(self) -> None:
        """Re-register, kick what lost, start pushing what is pending. Fails
        with :class:`StoreUnavailable` (nothing to undo: call it again)."""
        node_id = self.node_id()
        done = await self.sessions.reregister(node_id, self.live(), self.lease())
        for record in done.newer_elsewhere:
            self.local.kick_local(record.uid, record.appcode, record.session_id,
                                  int(KickReason.LOGIN_ELSEWHERE), "logged in elsewhere")
        for record in done.replaced:
            Deferred.fromCoroutine(self._kick_remote(record))
        self.log.info("node {node_id} re-registered {kept} sessions ({newer} replaced by a newer "
                      "login elsewhere and kicked, {older} older ones elsewhere replaced, "
                      "{pruned} closed ones pruned)", node_id=node_id, kept=len(done.kept),
                      newer=len(done.newer_elsewhere), older=len(done.replaced),
                      pruned=done.pruned)
        self.pushing = Deferred.fromCoroutine(self._push_all(done.kept))

    async def stop(self) -> None:
        """Stop pushing (the node stops); fires once the pushes in flight are done."""
        self._stopped = True
        await self.pushing

    async def _kick_remote(self, record: SessionRecord) -> None:
        peers = self.peers()
        if peers is None:
            return
        try:
            await peers.kick(record, int(KickReason.LOGIN_ELSEWHERE), "logged in elsewhere")
        except Unavailable as e:
            self.log.warn("could not kick the older session of {uid}@{appcode} on node "
                          "{peer_node}: {error}", uid=record.uid, appcode=record.appcode,
                          peer_node=record.node_id, error=str(e))

    async def _push_all(self, records: list[SessionRecord]) -> None:
        queue = list(reversed(records))
        counts = [0]

        async def worker() -> None:
            while queue and not self._stopped:
                pushed = await self._push_pending(queue.pop())
                counts[0] += pushed  # not `+= await`: it would read the count before waiting

        await DeferredList([Deferred.fromCoroutine(worker()) for _ in range(PARALLEL)])
        if counts[0]:
            self.log.info("node {node_id} pushed {count} pending messages to the sessions it "
                          "kept", node_id=self.node_id(), count=counts[0])

    async def _push_pending(self, record: SessionRecord) -> int:
        """Push what is pending for ``record`` while it is here and takes it."""
        after, pushed = 0, 0
        while not self._stopped:
            try:
                page = await self.messages.pull(record.uid, record.appcode, after, PAGE)
            except StoreError as e:
                self.log.warn("pending messages of {uid}@{appcode} not pushed after the rejoin "
                              "({error}): they wait for its PULL", uid=record.uid,
                              appcode=record.appcode, error=str(e))
                break
            for msg in page.messages:
                if not self.local.deliver_local(record.session_id, msg):
                    return pushed  # gone, or its window is full: the rest waits for PULL
                pushed += 1
            if not page.has_more or not page.messages:
                break
            after = page.messages[-1].msgid
        return pushed


async def _nothing() -> None:
    return None
