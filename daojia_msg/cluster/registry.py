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
the lease still holds our token and our hash still exists. :meth:`NodeRegistry.available`
turns False once more than ``ttl_s / 2`` has passed since the last successful
renewal: the node then answers C2C, S2C and ACK with UNAVAILABLE, half a TTL
before another node could lease its id or the detector could purge it. If the
script finds the lease gone, taken by another token, or the hash gone, the node
was purged (a pause, a partition): it calls ``on_purged`` (KICKOUT SHUTDOWN to
every connection) once, then leases the same id again and re-registers. If
another node has meanwhile leased that id, the registry logs a critical line
and stays unavailable, trying every heartbeat to lease the id again (a restart
leases another id).

The msgid high-water mark. Snowflake ids are unique only while a node id's
clock never goes back. :attr:`NodeRegistry.ids` is made at start, already
advanced past the stored mark, so a clock stepped back across a restart (or a
takeover of the id by another process) never repeats an id. The mark is a
*reservation ahead of time*: every successful heartbeat stores
``max(stored, max(now, last id's ms) + 2 * ttl)`` (a Lua max-update, so it never
goes down). An id is issued only while :meth:`available` is True, i.e. within
``ttl / 2`` of the last successful heartbeat, hence at a millisecond below
``that heartbeat's time + 2 * ttl``, which is stored: a crash at any moment
leaves a mark above every id issued. (The generator can run ahead of the clock
only by borrowing 4,096 ids per ms, i.e. more than 4 million ids a second, so
it cannot outrun the 12 s reservation.) The price: after a restart on a clock
that was not stepped back, ids start up to ``2 * ttl`` ahead of the clock and
stay unique and increasing until the clock catches up. :meth:`NodeRegistry.stop`
stores the exact last millisecond issued as well. The node must not issue
msgids while :meth:`NodeRegistry.available` is False.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from daojia_msg.cluster.interfaces import INodeRegistry
from daojia_msg.config import MAX_NODE_ID, ClusterConfig, ConfigError
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import NodeInfo
from daojia_msg.ids import EPOCH_MS, IdGenerator
from daojia_msg.redisconn import Redis, Script

#: Take the lease ``KEYS[1]`` for token ``ARGV[1]`` for ``ARGV[2]`` ms if it is
#: free, or renew it if it is already ours. 1 = held by us, 0 = held by another.
ACQUIRE_LEASE = Script("""
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

#: Delete the lease ``KEYS[1]`` only if it holds token ``ARGV[1]``; 1 if deleted.
RELEASE_LEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
""")

#: Lease the smallest free id 0..ARGV[4] (lease keys are ``ARGV[1] .. id``),
#: preferring ids that are not still in the ``nodes`` set ``KEYS[1]`` (a dead
#: node whose sessions the detector has not purged yet). -1 when none is free.
_LEASE_ANY = Script("""
for pass = 1, 2 do
  for id = 0, tonumber(ARGV[4]) do
    if pass == 2 or redis.call('SISMEMBER', KEYS[1], id) == 0 then
      if redis.call('SET', ARGV[1] .. id, ARGV[2], 'NX', 'PX', ARGV[3]) then
        return id
      end
    end
  end
end
return -1
""")

#: Register or renew. KEYS: lease, node hash, nodes set, hwm. ARGV: token,
#: ttl_ms, id, require_hash ('1': the hash must exist), base_ms, reserve_ms,
#: include_old ('1': the reservation starts from the stored mark too), then the
#: hash's field/value pairs. Returns -1 (lease not ours), -2 (hash gone) or the
#: mark stored before this call (Unix ms, 0 when none).
_REGISTER = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
local old = tonumber(redis.call('GET', KEYS[4]) or '0')
local base = tonumber(ARGV[5])
if ARGV[7] == '1' and old > base then base = old end
local want = base + tonumber(ARGV[6])
if want > old then redis.call('SET', KEYS[4], string.format('%.0f', want)) end
return old
""")

#: Deregister. KEYS: lease, node hash, nodes set, hwm. ARGV: token, id,
#: last_ms. The mark is raised to last_ms in any case; the rest only if the
#: lease is still ours. 1 if deregistered.
_RELEASE = Script("""
local old = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[3]) > old then redis.call('SET', KEYS[4], ARGV[3]) end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
""")

#: Every registered id whose hash exists, as a flat list: id, {field, value...}.
#: (Hash keys are built from ``ARGV[1]``: fine on one Redis, not Redis Cluster,
#: which txredisapi does not support anyway.)
_LIVE_NODES = Script("""
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then
    out[#out + 1] = id
    out[#out + 1] = h
  end
end
return out
""")

_FIELDS = ("gate_host", "gate_port", "rpc_host", "rpc_port", "connections", "sessions",
           "started_ms", "heartbeat_ms")


def parse_node(node_id: int, flat: list[Any]) -> NodeInfo | None:
    """A :class:`NodeInfo` from an ``HGETALL`` reply; None when empty or malformed."""
    if not flat:
        return None
    fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    try:
        return NodeInfo(
            node_id=node_id,
            gate_host=fields["gate_host"],
            gate_port=int(fields["gate_port"]),
            rpc_host=fields["rpc_host"],
            rpc_port=int(fields["rpc_port"]),
            connections=int(fields["connections"]),
            started_ms=int(fields["started_ms"]),
            heartbeat_ms=int(fields["heartbeat_ms"]),
            sessions=int(fields.get("sessions", 0)),
        )
    except (KeyError, ValueError):
        NodeRegistry.log.warn("node {node_id} has a malformed registration: {fields}",
                              node_id=node_id, fields=fields)
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
    :attr:`ids`, only while :meth:`available` is True; ``await registry.stop()``
    at shutdown. After :meth:`start`, before listening, the node should purge
    the sessions the store still lists under its id (``purge_node(node_id)``):
    they belong to an earlier holder of the id that the detector may not have
    purged yet (a quick restart keeps the id in ``nodes``). ``connections()``
    (for dispatch) and ``sessions()`` (the logged-in sessions, for the
    operations view) are read at every heartbeat.
    ``on_purged()`` is called (and awaited if it returns an awaitable) when the
    node finds it was purged, before it registers again: it should KICKOUT
    SHUTDOWN every connection.
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
        #: The leased id, set by :meth:`start`.
        self.node_id: int | None = None
        #: The msgid generator of this node (on ``clock``), set by :meth:`start`.
        self.ids: IdGenerator | None = None
        self._token = secrets.token_hex(16)
        self._ttl_ms = int(cluster.ttl_s * 1000)
        self._started_ms = 0
        self._floor_ms = 0  # the stored mark the generator was last advanced past
        self._registered = False
        self._relet_pending = False  # purged: lease again before renewing
        self._renewed_at: float | None = None
        self._failures = 0
        self._unavailable_logged = False
        self._taken_logged = False
        self._beat: Deferred[None] | None = None
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
            node_id = int(await _LEASE_ANY(
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
        return node_id

    async def stop(self) -> None:
        """Stop the heartbeat and deregister (only if the lease is still ours).

        The high-water mark is kept (raised to the last msgid issued). A Redis
        failure is logged, not raised: the lease and hash then expire by TTL.
        """
        if self._loop.running:
            self._loop.stop()
        if self._beat is not None:
            await _follow(self._beat)
        if self.node_id is None or not self._registered:
            return
        self._registered = False
        try:
            await _RELEASE(self.redis, self._keys(), [self._token, self.node_id,
                                                      self._last_issued_ms()])
        except StoreUnavailable as e:
            self.log.warn("node {node_id} could not deregister ({error}): its lease and "
                          "registration expire in {ttl_s}s", node_id=self.node_id, error=str(e),
                          ttl_s=self.cluster.ttl_s)
            return
        self.log.info("node {node_id} deregistered", node_id=self.node_id)

    def available(self) -> bool:
        """True while this node has renewed its lease within half the TTL."""
        if not self._registered or self._relet_pending or self._renewed_at is None:
            return False
        return self.clock.seconds() - self._renewed_at <= self.cluster.ttl_s / 2

    # -- heartbeat -------------------------------------------------------------

    def _tick(self) -> Deferred[None]:
        return self.heartbeat()

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
                await self._relet()
                return
            renewed_at = self.clock.seconds()
            result = await self._register(require_hash=True, include_old=False)
            if result >= 0:
                self._renewed(renewed_at)
                return
            self._relet_pending = True
            self.log.warn("node {node_id} was purged from the cluster (its lease or registration "
                          "expired: a pause or a partition): kicking every connection and "
                          "registering again", node_id=self.node_id,
                          why="lease lost" if result == -1 else "registration gone")
            await self._call_on_purged()
            await self._relet()
        except StoreUnavailable as e:
            self._failed(e)
            await self._expire_if_cut_off()
        except Exception:
            self.log.failure("node {node_id} heartbeat failed", node_id=self.node_id)

    async def _expire_if_cut_off(self) -> None:
        """Cut off from Redis for longer than the TTL, this node counts as dead:
        the detector purges (or has purged) its sessions, so another login of
        the same user would not kick them. Kick every connection now (they
        reconnect to a live node), and lease the id again once Redis answers."""
        if self._relet_pending or self._renewed_at is None:
            return
        if self.clock.seconds() - self._renewed_at <= self.cluster.ttl_s:
            return
        self._relet_pending = True
        self.log.error("node {node_id} has been cut off from Redis for more than its {ttl_s}s "
                       "TTL: kicking every connection; it registers again once Redis answers",
                       node_id=self.node_id, ttl_s=self.cluster.ttl_s)
        await self._call_on_purged()

    async def _call_on_purged(self) -> None:
        try:
            result = self.on_purged()
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.log.failure("on_purged of node {node_id} failed", node_id=self.node_id)

    async def _relet(self) -> None:
        """Lease our id again after a purge and register; stay pending if it is taken."""
        assert self.node_id is not None
        renewed_at = self.clock.seconds()
        held = await ACQUIRE_LEASE(self.redis, [self.redis.key("lease", self.node_id)],
                                   [self._token, self._ttl_ms])
        old = await self._register(require_hash=False, include_old=True) if held else -1
        if old < 0:
            if not self._taken_logged:
                self._taken_logged = True
                self.log.critical(
                    "node id {node_id} was leased by another node while this node was cut off: "
                    "this node answers UNAVAILABLE until the id is free again (restart it to "
                    "lease another id)", node_id=self.node_id)
            return
        self._advance(old)
        self._relet_pending = False
        self._taken_logged = False
        self._renewed(renewed_at)
        self.log.info("node {node_id} registered again", node_id=self.node_id)

    def _renewed(self, at: float) -> None:
        self._renewed_at = at
        if self._failures:
            self.log.info("node {node_id} heartbeat works again after {failures} failures",
                          node_id=self.node_id, failures=self._failures)
        self._failures = 0
        self._unavailable_logged = False

    def _failed(self, error: StoreUnavailable) -> None:
        """Log a failed heartbeat once per state change, not every tick."""
        self._failures += 1
        if self._failures == 1:
            self.log.warn("node {node_id} heartbeat failed ({error}): retrying every "
                          "{heartbeat_s}s", node_id=self.node_id, error=str(error),
                          heartbeat_s=self.cluster.heartbeat_s)
        if not self.available() and not self._unavailable_logged:
            self._unavailable_logged = True
            self.log.error("node {node_id} has not renewed its lease for more than half its "
                           "{ttl_s}s TTL: answering UNAVAILABLE until it can",
                           node_id=self.node_id, ttl_s=self.cluster.ttl_s)

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
        pairs = [x for name in _FIELDS for x in (name, info[name])]
        return int(await _REGISTER(
            self.redis, self._keys(),
            [self._token, self._ttl_ms, self.node_id, "1" if require_hash else "0", base_ms,
             2 * self._ttl_ms, "1" if include_old else "0", *pairs]))

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
        flat = await _LIVE_NODES(self.redis, [self.redis.key("nodes")],
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
