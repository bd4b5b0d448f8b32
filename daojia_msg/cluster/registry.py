# -*- test-case-name: tests.cluster.test_registry -*-
"""The node registry in Redis: node id leases, heartbeats, the live node list.

Keys (all under the Redis ``key_prefix``, e.g. ``msgp:``):

``lease:<id>``
    string, a random token of the node that holds snowflake node id ``<id>``;
    ``PX`` = the TTL. Two live nodes never share an id: a lease is taken with
    ``SET NX`` and renewed or deleted only by the holder of its token.
``node:<id>``
    hash ``gate_host gate_port rpc_host rpc_port connections sessions
    started_ms heartbeat_ms``; ``PEXPIRE`` = the TTL, refreshed by every
    heartbeat. A node is *live* while this hash exists. (``sessions``, the
    logged-in sessions, may be missing: a node of an older version.)
``nodes``
    set of the ids that registered; the gate detector removes a dead id once
    its sessions are purged (:mod:`daojia_msg.cluster.detector`).
``hwm:<id>``
    string, Unix ms: the msgid high-water mark of id ``<id>``; never expires.
``detector``
    the gate detector's lock (see the detector module).

Liveness. Every ``heartbeat_s`` (2 s) the node renews its lease and refreshes
its hash and their TTL (``ttl_s``, 6 s) in one script, which succeeds only while
the lease still holds our token and our hash still exists.
:meth:`NodeRegistry.available` (a live member: LOGIN, ``/healthz``, the gate
detector) turns False at the first failed heartbeat, or once more than
``ttl_s / 2`` has passed since the last renewal (half a TTL before another
node could lease its id or the detector could purge it).

Redis outages (docs/operations.md §3). While heartbeats fail the node keeps
its connections and :meth:`NodeRegistry.serving` stays True (C2C, S2C, ACK
and C2S go on, between its own sessions; LOGIN is UNAVAILABLE) for up to
``redis_outage_grace_s`` (30 s) after the last renewal; a failed heartbeat is
tried again every :data:`OUTAGE_POLL_S`. Once Redis answers, the node renews
its lease, or, if it expired (a Redis restart, an outage past the TTL, a long
pause), takes it again with ``SET NX`` under the same token, and then calls
``on_rejoin`` (the node re-registers its live sessions, a newer login
elsewhere winning, and pushes what became pending) before it is available
again. Past the grace, or when another node holds the id, it calls
``on_purged`` (KICKOUT SHUTDOWN to every connection) once, and leases the id
again every heartbeat (a restart leases another id); if another node holds
it, a critical line is logged and the node stays unavailable.

The detector never purges what a node re-registered: the node re-registers
its sessions only after its hash exists again (the script checks our lease
token), and every purge batch first checks, in the same atomic script, that
the hash does not exist (:mod:`daojia_msg.cluster.detector`). So a purge
batch either runs before the re-registration, which writes the sessions
again, or finds the node alive and does nothing: the hash's existence is the
lease's epoch.

The msgid high-water mark. Snowflake ids are unique only while a node id's
clock never goes back. :attr:`NodeRegistry.ids` is made at start, already
advanced past the stored mark, so a clock stepped back across a restart (or a
takeover of the id by another process) never repeats an id. The mark is a
*reservation ahead of time*: every successful heartbeat stores
``max(stored, max(now, last id's ms) + reservation)`` (a Lua max-update, so it
only goes down at a clean stop). An id is issued only while :meth:`serving` is True, i.e. within
``ttl / 2`` (or, while Redis is unreachable, ``redis_outage_grace_s``) of the
last successful heartbeat, hence at a millisecond below that heartbeat's time
plus the reservation, which is stored: a crash at any moment leaves a mark
above every id issued. (The generator can run ahead of the clock
only by borrowing 4,096 ids per ms, i.e. more than 4 million ids a second, so
it cannot outrun the reservation.) During a Redis outage the node goes on
issuing ids for up to ``redis_outage_grace_s`` after its last heartbeat, so
the reservation is ``2 * ttl + redis_outage_grace_s`` (42 s with the
defaults): another node that leases the id once ours expired starts past it.
The price: after a crash, a restart on a clock that was not stepped back
issues ids up to that far ahead of the clock (unique and increasing until
the clock catches up). :meth:`NodeRegistry.stop` stores the exact last
millisecond issued instead (lowering the reservation: nothing is issued under
the id after that), so a clean restart starts at the clock. The node must not
issue msgids while :meth:`NodeRegistry.serving` is False.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from daojia_msg.cluster.interfaces import INodeRegistry
from daojia_msg.cluster.leases import (
    ACQUIRE_LEASE,
    FIELDS,
    LEASE_ANY,
    LIVE_NODES,
    REGISTER,
    RELEASE,
    RELEASE_LEASE,
    parse_node,
)
from daojia_msg.config import MAX_NODE_ID, ClusterConfig, ConfigError
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import NodeInfo
from daojia_msg.ids import EPOCH_MS, IdGenerator
from daojia_msg.redisconn import Redis

#: Seconds between tries while Redis does not answer (at most ``heartbeat_s``):
#: with the pool's reconnect delay (:mod:`daojia_msg.redisconn`) the node
#: notices Redis answering again within about a second.
OUTAGE_POLL_S = 0.5

def _follow(d: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` does, leaving ``d``'s chain alone."""
    follower: Deferred[None] = Deferred()

    def fire(result: None) -> None:
        follower.callback(None)
        return result

    d.addCallback(fire)
    return follower


@implementer(INodeRegistry)
class NodeRegistry:
    """This node's lease and registration, and the list of live nodes.

    Use: ``node_id = await registry.start()`` (raises :class:`ConfigError`
    naming ``node.id`` when the id is taken), then issue msgids only from
    :attr:`ids`, only while :meth:`serving` is True; take LOGINs only while
    :meth:`available` is True; ``await registry.stop()`` at shutdown. After
    :meth:`start`, before listening, the node should purge the sessions the
    store still lists under its id (``purge_node(node_id)``): they belong to
    an earlier holder of the id that the detector may not have purged yet (a
    quick restart keeps the id in ``nodes``). ``connections()`` (for dispatch)
    and ``sessions()`` (the logged-in sessions, for the operations view) are
    read at every heartbeat.
    ``on_purged()`` is called (and awaited if it returns an awaitable) when the
    node must give its connections up (cut off past the grace, or its id taken),
    before it leases the id again: it should KICKOUT SHUTDOWN every connection.
    ``on_rejoin()`` is awaited after a failed heartbeat or a lost lease, once
    the lease is ours again and before :meth:`available` turns True: it should
    re-register the live sessions (under :meth:`lease_guard`) and push them
    what became pending. If it fails with :class:`StoreUnavailable` it is
    called again at the next try.
    """

    log = Logger()

    def __init__(
        self,
        redis: Redis,
        cluster: ClusterConfig,
        clock: IReactorTime,
        *,
        wanted_id: int | None,
        gate: tuple[str, int],
        rpc: tuple[str, int],
        connections: Callable[[], int],
        on_purged: Callable[[], Awaitable[None] | None],
        sessions: Callable[[], int] = lambda: 0,
        on_rejoin: Callable[[], Awaitable[None] | None] = lambda: None,
    ) -> None:
        self.redis = redis
        self.cluster = cluster
        self.clock = clock
        self.wanted_id = wanted_id
        self.gate = gate
        self.rpc = rpc
        self.connections = connections
        self.sessions = sessions
        self.on_purged = on_purged
        self.on_rejoin = on_rejoin
        #: The leased id, set by :meth:`start`.
        self.node_id: int | None = None
        #: The msgid generator of this node (on ``clock``), set by :meth:`start`.
        self.ids: IdGenerator | None = None
        self._token = secrets.token_hex(16)
        self._ttl_ms = int(cluster.ttl_s * 1000)
        self._grace = cluster.redis_outage_grace_s
        self._reserve_ms = 2 * self._ttl_ms + int(self._grace * 1000)
        self._started_ms = 0
        self._floor_ms = 0  # the stored mark the generator was last advanced past
        self._registered = False
        self._relet_pending = False  # connections given up: lease again before renewing
        self._rejoin_pending = False  # the lease is ours again: on_rejoin before available
        self._renewed_at: float | None = None
        self._failures = 0
        self._cut_off_at: float | None = None  # the first failed heartbeat of an outage
        self._taken_logged = False
        self._retry: IDelayedCall | None = None
        self._beat: Deferred[None] | None = None
        #: Heartbeats by result, and the live nodes seen at the last one (``/metrics``).
        self.renewals = {"ok": 0, "failed": 0}
        self.live_seen: int | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    # -- life ----------------------------------------------------------------

    async def start(self) -> int:
        """Lease a node id, register, start the heartbeat; returns the id."""
        if self.node_id is not None:
            raise RuntimeError("the node registry is already started")
        wanted = self.wanted_id
        if wanted is not None:
            if not 0 <= wanted <= MAX_NODE_ID:
                raise ConfigError(f"expected an integer from 0 to {MAX_NODE_ID}, got {wanted}",
                                  ("node", "id"))
            if not await ACQUIRE_LEASE(self.redis, [self.redis.key("lease", wanted)],
                                       [self._token, self._ttl_ms]):
                raise ConfigError(f"node id {wanted} is held by a live node", ("node", "id"))
            node_id = wanted
        else:
            node_id = int(await LEASE_ANY(
                self.redis, [self.redis.key("nodes")],
                [self.redis.key("lease", ""), self._token, self._ttl_ms, MAX_NODE_ID]))
            if node_id < 0:
                raise ConfigError(f"no free node id: all {MAX_NODE_ID + 1} are held by live "
                                  "nodes", ("node", "id"))
        self.node_id = node_id
        self.ids = IdGenerator(node_id, self.clock.seconds)
        self._started_ms = self._now_ms()
        renewed_at = self.clock.seconds()
        try:
            old = await self._register(require_hash=False, include_old=True)
            if old < 0:
                raise StoreUnavailable(f"the lease of node id {node_id} expired while registering")
        except BaseException:
            await self._release_quietly()
            self.node_id = self.ids = None
            raise
        self._advance(old)
        self._registered = True
        self._renewed(renewed_at)
        self._loop.start(self.cluster.heartbeat_s, now=False)
        self.log.info("node {node_id} registered (heartbeat {heartbeat_s}s, ttl {ttl_s}s)",
                      node_id=node_id, heartbeat_s=self.cluster.heartbeat_s,
                      ttl_s=self.cluster.ttl_s)
        await self.count_live_nodes()
        return node_id

    async def stop(self) -> None:
        """Stop the heartbeat and deregister (only if the lease is still ours).

        The high-water mark is kept (set to the last msgid issued). A Redis
        failure is logged, not raised: the lease and hash then expire by TTL.
        """
        if self._loop.running:
            self._loop.stop()
        self._cancel_retry()
        if self._beat is not None:
            await _follow(self._beat)
        if self.node_id is None or not self._registered:
            return
        self._registered = False
        try:
            await RELEASE(self.redis, self._keys(), [self._token, self.node_id,
                                                      self._last_issued_ms()])
        except StoreUnavailable as e:
            self.log.warn("node {node_id} could not deregister ({error}): its lease and "
                          "registration expire in {ttl_s}s", node_id=self.node_id, error=str(e),
                          ttl_s=self.cluster.ttl_s)
            return
        self.log.info("node {node_id} deregistered", node_id=self.node_id)

    def available(self) -> bool:
        """True while this node is a live member that reaches Redis: its last
        heartbeat worked, within half the TTL, and its sessions are registered
        (LOGIN, ``/healthz``, the gate detector)."""
        if self._failures or self._rejoin_pending or not self.serving():
            return False
        assert self._renewed_at is not None
        return self.clock.seconds() - self._renewed_at <= self.cluster.ttl_s / 2

    def lease_age(self) -> float | None:
        """Seconds since the lease was last renewed (None before the first)."""
        if self._renewed_at is None:
            return None
        return self.clock.seconds() - self._renewed_at

    def serving(self) -> bool:
        """True while this node may serve its connections and issue msgids:
        :meth:`available`, or cut off from Redis (or paused) for no longer than
        ``redis_outage_grace_s`` since its last renewal (which reserved the
        msgids of that time), and its id not taken meanwhile."""
        if not self._registered or self._relet_pending or self._renewed_at is None:
            return False
        since = self.clock.seconds() - self._renewed_at
        return since <= max(self._grace, self.cluster.ttl_s / 2)

    def lease_guard(self) -> tuple[str, str]:
        """The key of this node's lease and its token: a script that writes
        for this node checks the lease still holds the token."""
        return self.redis.key("lease", self.node_id), self._token

    # -- heartbeat -------------------------------------------------------------

    def _tick(self) -> Deferred[None] | None:
        if self._retry is not None and self._retry.active():
            return None  # cut off: the next try is due sooner
        return self.heartbeat().addCallback(
            lambda _: Deferred.fromCoroutine(self.count_live_nodes()))

    async def count_live_nodes(self) -> None:
        """After a heartbeat: count the live nodes (one round trip); a
        failure keeps the last count."""
        if self.available():
            try:
                self.live_seen = len(await self._live_nodes())
            except StoreUnavailable:
                pass

    def heartbeat(self) -> Deferred[None]:
        """One heartbeat (the loop calls it every ``heartbeat_s``); never fails.

        Fires once it is done; while one is in flight, a second call waits for
        it instead of starting another.
        """
        if self._beat is not None:
            return _follow(self._beat)
        d = Deferred.fromCoroutine(self._heartbeat())
        if d.called:
            return d
        self._beat = d

        def done(result: None) -> None:
            self._beat = None
            return result

        d.addCallback(done)
        return _follow(d)

    async def _heartbeat(self) -> None:
        if not self._registered:
            return
        try:
            if self._relet_pending:
                if not await self._lease_again():
                    return
            else:
                renewed_at = self.clock.seconds()
                result = await self._register(require_hash=True, include_old=False)
                if result >= 0:
                    if self._failures:
                        self._rejoin_pending = True
                    self._renewed(renewed_at)
                elif not await self._lost(result, renewed_at):
                    return
            if self._rejoin_pending:
                await self._rejoin()
        except StoreUnavailable as e:
            self._failed(e)
            await self._expire_if_cut_off()
        except Exception:
            self.log.failure("node {node_id} heartbeat failed", node_id=self.node_id)

    async def _lost(self, result: int, at: float) -> bool:
        """The lease or the registration is gone (Redis restarted or lost
        them, an outage or a pause past the TTL). Within the grace: lease the
        id again and keep the connections; past it, give them up first. True
        when the lease is ours again."""
        assert self._renewed_at is not None
        why = "lease lost" if result == -1 else "registration gone"
        if at - self._renewed_at > self._grace:
            self._relet_pending = True
            self.log.warn("node {node_id} was purged from the cluster ({why}) {since:.1f}s after "
                          "its last heartbeat, past its {grace}s grace: kicking every connection "
                          "and registering again", node_id=self.node_id, why=why,
                          since=at - self._renewed_at, grace=self._grace)
            await self._call_on_purged()
            return await self._lease_again()
        self.log.warn("node {node_id} lost its lease ({why}): leasing it again, keeping its "
                      "connections", node_id=self.node_id, why=why)
        if await self._lease_again():
            return True
        await self._call_on_purged()  # taken by another node: we are not node_id any more
        return False

    async def _expire_if_cut_off(self) -> None:
        """Cut off from Redis for longer than the grace, this node gives its
        connections up: the detector purges (or has purged) its sessions, so
        another login of the same user would not kick them, and what is sent
        to them from other nodes only waits for PULL. Kick every connection now
        (they reconnect to a live node), and lease the id again once Redis
        answers."""
        if self._relet_pending or self._renewed_at is None:
            return
        if self.clock.seconds() - self._renewed_at <= self._grace:
            return
        self._relet_pending = True
        self._rejoin_pending = False
        self.log.error("node {node_id} has been cut off from Redis for more than its {grace}s "
                       "grace: kicking every connection; it registers again once Redis answers",
                       node_id=self.node_id, grace=self._grace)
        await self._call_on_purged()

    async def _call_on_purged(self) -> None:
        await self._call("on_purged", self.on_purged)

    async def _call(self, name: str, hook: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``hook``; a failure other than Redis's is logged, not raised."""
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except StoreUnavailable:
            raise
        except Exception:
            self.log.failure("{hook} of node {node_id} failed", hook=name, node_id=self.node_id)

    async def _lease_again(self) -> bool:
        """Lease our id again (``SET NX``, or renew it if still ours) and
        register; True when it is ours, False (logged once) when another node
        holds it: then this node stays unavailable and tries again every
        heartbeat."""
        assert self.node_id is not None
        renewed_at = self.clock.seconds()
        held = await ACQUIRE_LEASE(self.redis, [self.redis.key("lease", self.node_id)],
                                   [self._token, self._ttl_ms])
        old = await self._register(require_hash=False, include_old=True) if held else -1
        if old < 0:
            self._relet_pending = True
            self._rejoin_pending = False
            if not self._taken_logged:
                self._taken_logged = True
                self.log.critical(
                    "node id {node_id} was leased by another node while this node was cut off: "
                    "this node answers UNAVAILABLE until the id is free again (restart it to "
                    "lease another id)", node_id=self.node_id)
            return False
        self._advance(old)
        self._relet_pending = False
        self._taken_logged = False
        self._rejoin_pending = True
        self._renewed(renewed_at)
        self.log.info("node {node_id} leased its id again", node_id=self.node_id)
        return True

    async def _rejoin(self) -> None:
        """The lease is ours again after an outage: re-register the sessions
        (``on_rejoin``), then take LOGINs again."""
        await self._call("on_rejoin", self.on_rejoin)
        self._rejoin_pending = False
        self.log.info("node {node_id} rejoined the cluster", node_id=self.node_id)

    def _renewed(self, at: float) -> None:
        self._renewed_at = at
        self.renewals["ok"] += 1
        if self._failures:
            assert self._cut_off_at is not None
            self.log.info("node {node_id} reaches Redis again after {failures} failed "
                          "heartbeats ({seconds:.1f}s)", node_id=self.node_id,
                          failures=self._failures, seconds=at - self._cut_off_at)
        self._failures = 0
        self._cut_off_at = None
        self._cancel_retry()

    def _failed(self, error: StoreUnavailable) -> None:
        """A heartbeat failed: log it once per outage, try again soon."""
        self._failures += 1
        self.renewals["failed"] += 1
        if self._failures == 1:
            self._cut_off_at = self.clock.seconds()
            self.log.warn("node {node_id} cannot reach Redis ({error}): it keeps its {count} "
                          "connections for up to {grace}s (LOGIN answers UNAVAILABLE), trying "
                          "every {poll}s", node_id=self.node_id, error=str(error),
                          count=self.connections(), grace=self._grace, poll=self._poll_s())
        if self._registered and (self._retry is None or not self._retry.active()):
            self._retry = self.clock.callLater(self._poll_s(), self._retry_now)

    def _poll_s(self) -> float:
        return min(OUTAGE_POLL_S, self.cluster.heartbeat_s)

    def _retry_now(self) -> None:
        self._retry = None
        self.heartbeat()

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- Redis -----------------------------------------------------------------

    def _keys(self) -> list[str]:
        k = self.redis.key
        return [k("lease", self.node_id), k("node", self.node_id), k("nodes"),
                k("hwm", self.node_id)]

    async def _register(self, *, require_hash: bool, include_old: bool) -> int:
        now_ms = self._now_ms()
        base_ms = max(now_ms, self._floor_ms, self._last_issued_ms())
        info = {
            "gate_host": self.gate[0], "gate_port": self.gate[1],
            "rpc_host": self.rpc[0], "rpc_port": self.rpc[1],
            "connections": int(self.connections()), "sessions": int(self.sessions()),
            "started_ms": self._started_ms, "heartbeat_ms": now_ms,
        }
        pairs = [x for name in FIELDS for x in (name, info[name])]
        return int(await REGISTER(
            self.redis, self._keys(),
            [self._token, self._ttl_ms, self.node_id, "1" if require_hash else "0", base_ms,
             self._reserve_ms, "1" if include_old else "0", *pairs]))

    def _advance(self, stored_ms: int) -> None:
        """Never issue an id at or below the stored mark ``stored_ms``."""
        assert self.ids is not None
        self._floor_ms = max(self._floor_ms, stored_ms)
        self.ids.advance_past(IdGenerator.floor_for(stored_ms))

    def _last_issued_ms(self) -> int:
        # IdGenerator keeps its last millisecond (since EPOCH_MS) in _last_ms;
        # it is ahead of the clock after advance_past or when borrowing.
        last = getattr(self.ids, "_last_ms", 0)
        return int(last) + EPOCH_MS if last else 0

    async def _release_quietly(self) -> None:
        try:
            await RELEASE_LEASE(self.redis, [self.redis.key("lease", self.node_id)],
                                [self._token])
        except StoreUnavailable:
            pass

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    # -- INodeRegistry -----------------------------------------------------------

    def live_nodes(self) -> Deferred[list[NodeInfo]]:
        """Fires with the live nodes (their hash exists), by id; one round trip."""
        return Deferred.fromCoroutine(self._live_nodes())

    async def _live_nodes(self) -> list[NodeInfo]:
        flat = await LIVE_NODES(self.redis, [self.redis.key("nodes")],
                                 [self.redis.key("node", "")])
        nodes = []
        for i in range(0, len(flat) - 1, 2):
            try:
                node_id = int(flat[i])
            except ValueError:
                continue
            info = parse_node(node_id, flat[i + 1])
            if info is not None:
                nodes.append(info)
        return sorted(nodes, key=lambda n: n.node_id)

    def node(self, node_id: int) -> Deferred[NodeInfo | None]:
        """Fires with the :class:`NodeInfo` of ``node_id``, or None when it is not live."""
        return Deferred.fromCoroutine(self._node(node_id))

    async def _node(self, node_id: int) -> NodeInfo | None:
        return parse_node(node_id, await self.redis.call("HGETALL", self.redis.key("node", node_id)))

    def least_loaded(self) -> Deferred[NodeInfo | None]:
        """Fires with the live node that takes phones (it has published a gate
        address: not still starting, not draining) with the fewest connections
        (ties: the smallest id), or None when there is none: the answer of
        ``/v1/dispatch``."""
        return Deferred.fromCoroutine(self._least_loaded())

    async def _least_loaded(self) -> NodeInfo | None:
        nodes = [n for n in await self._live_nodes() if n.gate_port]
        return min(nodes, key=lambda n: (n.connections, n.node_id)) if nodes else None

    def withdraw_gate(self) -> Deferred[None]:
        """Leave ``/v1/dispatch`` now (a draining node): the registration is
        published again without a gate address, after any heartbeat in flight
        (which carries the old one). The RPC address stays."""
        self.gate = ("", 0)
        return Deferred.fromCoroutine(self._withdraw_gate())

    async def _withdraw_gate(self) -> None:
        if self._beat is not None:
            await _follow(self._beat)
        await self.heartbeat()
