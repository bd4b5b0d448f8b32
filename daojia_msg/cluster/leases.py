# -*- test-case-name: tests.cluster.test_registry -*-
"""The node registry's Lua scripts, and a registration's fields.

Keys and what they mean: :mod:`daojia_msg.cluster.registry`. Every script
takes its keys from the caller (or builds them from a prefix it is given), so
the registry, the gate detector and the tests share them.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from daojia_msg.core.model import NodeInfo
from daojia_msg.redisconn import Script

log = Logger()

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
LEASE_ANY = Script("""
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
REGISTER = Script("""
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
#: last_ms. If the lease is still ours the mark becomes last_ms (the exact
#: last millisecond issued: nothing more is) and the rest is deleted; if not,
#: the mark is only raised to last_ms. 1 if deregistered.
RELEASE = Script("""
local old = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if tonumber(ARGV[3]) > old then redis.call('SET', KEYS[4], ARGV[3]) end
  return 0
end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
""")

#: Every registered id whose hash exists, as a flat list: id, {field, value...}.
#: (Hash keys are built from ``ARGV[1]``: fine on one Redis, not Redis Cluster,
#: which txredisapi does not support anyway.)
LIVE_NODES = Script("""
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

FIELDS = ("gate_host", "gate_port", "rpc_host", "rpc_port", "connections", "sessions",
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
        log.warn("node {node_id} has a malformed registration: {fields}", node_id=node_id,
                 fields=fields)
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
