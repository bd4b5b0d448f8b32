# -*- test-case-name: tests.cluster.test_detector -*-
"""The gate detector: notices dead nodes and purges their sessions.

One node at a time is the detector: every ``heartbeat_s`` each node tries to
take (or renew, if it is ours) the lock ``detector`` (``SET NX PX ttl``, value
``<node id>:<random token>``). The holder lists the ids of the ``nodes`` set
whose ``node:<id>`` hash no longer exists (its TTL expired: the node stopped
heartbeating), asks the session store to purge each one's sessions
(``purge_node``), so deliveries fall back to offline storage at once, and then
removes the id from ``nodes``. A node that comes back registers itself again
(its registry re-adds its id). A node that cannot renew its own lease
(:meth:`NodeRegistry.available` False) does not act as the detector.

Worst-case latency, with the defaults (heartbeat 2 s, TTL 6 s): a node that
dies just after a heartbeat disappears from the live list (and from
``/v1/dispatch``) when its hash expires, ``ttl`` = 6 s later; the detector
checks every ``heartbeat`` = 2 s, so its sessions are purged and its id leaves
``nodes`` within ``ttl + heartbeat`` = 8 s of its death (plus Redis round
trips). If the dead node was the detector, its lock expires ``ttl`` after its
last renewal and another node takes it at its next check, within the same
8 s. Both are within the 15 s that docs/operations.md §3 promises.

A node that re-registers in the instant between the detector's check and
the purge keeps its sessions: the purge script
(:meth:`~daojia_msg.store.redis.RedisSessionStore.purge_dead_node`) checks, in
the same atomic call, that the node's registration is still gone. This is
what orders a purge and a node that comes back from a Redis outage or a
pause (:mod:`daojia_msg.cluster.rejoin`): the node re-registers its sessions
only once its lease and registration exist again (its script checks the
lease's token), so each purge batch either ran before that and is undone by
it, or finds the registration and removes nothing. The registration's
existence is the lease's epoch: no counter is needed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from daojia_msg.cluster.leases import ACQUIRE_LEASE, RELEASE_LEASE
from daojia_msg.cluster.registry import NodeRegistry
from daojia_msg.config import ClusterConfig
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.redisconn import Redis, Script

#: The ids of the set ``KEYS[1]`` whose hash ``ARGV[1] .. id`` does not exist.
_DEAD_NODES = Script("""
local dead = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then dead[#dead + 1] = id end
end
return dead
""")

#: Remove ``ARGV[1]`` from the set ``KEYS[1]`` unless its hash ``KEYS[2]`` is
#: back (the node registered again meanwhile). 1 if removed.
_FORGET = Script("""
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('SREM', KEYS[1], ARGV[1])
""")


class GateDetector:
    """Run on every node of a cluster; only the holder of the lock acts.

    ``purge_node(node_id)`` removes that node's sessions and fires with how
    many (:meth:`ISessionStore.purge_node`). :meth:`start` / :meth:`stop`
    run the loop; :meth:`check_once` is one round (tests call it directly).
    """

    log = Logger()

    def __init__(
        self,
        redis: Redis,
        registry: NodeRegistry,
        purge_node: Callable[[int], Deferred[int]],
        clock: IReactorTime,
        cluster: ClusterConfig,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.purge_node = purge_node
        self.clock = clock
        self.cluster = cluster
        #: True while this node holds the detector lock (as of the last check).
        self.holding = False
        self._nonce = secrets.token_hex(8)
        self._ttl_ms = int(cluster.ttl_s * 1000)
        self._failing = False
        self._check: Deferred[None] | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        """Check every ``heartbeat_s``, the first one ``heartbeat_s`` from now."""
        self._loop.start(self.cluster.heartbeat_s, now=False)

    async def stop(self) -> None:
        """Stop checking and give the lock up (if ours) so another node takes over."""
        if self._loop.running:
            self._loop.stop()
        if self._check is not None:
            await self._check
        if not self.holding:
            return
        self.holding = False
        try:
            await RELEASE_LEASE(self.redis, [self.redis.key("detector")], [self._token()])
        except StoreUnavailable as e:
            self.log.warn("could not release the detector lock ({error}): it expires in "
                          "{ttl_s}s", error=str(e), ttl_s=self.cluster.ttl_s)

    def _token(self) -> str:
        return f"{self.registry.node_id}:{self._nonce}"

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._guarded_check())
        if d.called:
            return d
        self._check = d

        def done(result: None) -> None:
            self._check = None
            return result

        return d.addCallback(done)

    async def _guarded_check(self) -> None:
        try:
            await self.check_once()
        except StoreUnavailable as e:
            if not self._failing:
                self._failing = True
                self.log.warn("gate detector check failed ({error}): retrying every "
                              "{heartbeat_s}s", error=str(e),
                              heartbeat_s=self.cluster.heartbeat_s)
            return
        except Exception:
            self.log.failure("gate detector check failed")
            return
        if self._failing:
            self._failing = False
            self.log.info("gate detector checks work again")

    async def check_once(self) -> list[int]:
        """Take or renew the lock; if held, purge every dead node. Returns the
        ids purged. Raises :class:`StoreUnavailable` when Redis fails."""
        if not self.registry.available():
            self._set_holding(False)
            return []
        held = await ACQUIRE_LEASE(self.redis, [self.redis.key("detector")],
                                   [self._token(), self._ttl_ms])
        self._set_holding(bool(held))
        if not held:
            return []
        dead = await _DEAD_NODES(self.redis, [self.redis.key("nodes")],
                                 [self.redis.key("node", "")])
        purged = []
        for raw in dead:
            try:
                node_id = int(raw)
            except ValueError:
                self.log.warn("the nodes set holds a bad id {raw!r}", raw=raw)
                continue
            if node_id == self.registry.node_id:
                continue  # our own heartbeat notices and re-registers
            try:
                count = await self.purge_node(node_id)
            except Exception as e:
                self.log.warn("could not purge the sessions of dead node {node_id} ({error}): "
                              "retrying in {heartbeat_s}s", node_id=node_id, error=str(e),
                              heartbeat_s=self.cluster.heartbeat_s)
                continue
            await _FORGET(self.redis, [self.redis.key("nodes"), self.redis.key("node", node_id)],
                          [node_id])
            self.log.info("node {node_id} is dead: purged {count} sessions", node_id=node_id,
                          count=count)
            purged.append(node_id)
        return purged

    def _set_holding(self, held: bool) -> None:
        if held != self.holding:
            self.log.info("node {node_id} {change} the gate detector", node_id=self.registry.node_id,
                          change="is now" if held else "is no longer")
        self.holding = held
