# -*- test-case-name: tests.cluster.test_ops -*-
"""The operations view of the cluster, for the HTTP API's ``GET /v1/nodes`` and
``GET /v1/trace/{logid}`` (and the dashboard that reads them).

- :meth:`OpsView.nodes`: every live node of the registry in Redis, with its
  public gate, open gate connections, logged-in sessions and start time (a
  node without Redis: itself). The figures are those of each node's last
  heartbeat (``cluster.heartbeat_s``).
- :meth:`OpsView.trace`: the events about one logid from this node's trace
  buffer and, over the internal RPC (:class:`~daojia_msg.cluster.rpc.TraceEvents`),
  from every other live node's, in time order. A node that does not answer
  within :data:`~daojia_msg.cluster.rpc.client.TRACE_TIMEOUT_S` is named in
  ``missing_nodes``; one that keeps no trace buffer (``[log] trace_buffer``
  off and no manhole) in ``untraced_nodes``. Each node gives at most
  :data:`~daojia_msg.cluster.rpc.commands.MAX_TRACE_EVENTS` events (the
  oldest; ``truncated`` says so).
  Events are not scoped here: the HTTP API keeps those of the caller's
  user system.

Times come from each node's clock: across nodes, the order is as good as
their clocks agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList

from daojia_msg.cluster.interfaces import INodeRegistry
from daojia_msg.cluster.rpc.commands import MAX_TRACE_EVENTS, PeerTrace
from daojia_msg.sockets import host_port

#: An event's text is cut to this many characters.
MAX_EVENT_TEXT = 1000
_MAX_U32 = 2**32 - 1


class TracePeers(Protocol):
    """What :class:`OpsView` asks of the internal RPC client (``RpcPeers``)."""

    def trace(self, node_id: int, logid: str) -> Deferred[PeerTrace]: ...


def gate_text(host: str, port: int) -> str | None:
    """``host:port`` (``[host]:port`` for IPv6), or None for no gate (a node
    starting or draining publishes none)."""
    if not host or not port:
        return None
    return host_port(host, port)


def _decimal(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return value
    return None


def trace_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """A :class:`~daojia_msg.tracing.TraceBuffer` record as a trace event:
    ``ts_ms`` (Unix ms), ``event`` (its text), ``msgid`` and ``uid`` (decimal
    strings or None), ``appcode`` (or None)."""
    when = record.get("time")
    ts_ms = (int(when * 1000) if isinstance(when, int | float) and not isinstance(when, bool)
             else 0)
    appcode = record.get("appcode")
    if not (isinstance(appcode, int) and not isinstance(appcode, bool)
            and 0 <= appcode <= _MAX_U32):
        appcode = None
    return {"ts_ms": ts_ms, "event": str(record.get("text", ""))[:MAX_EVENT_TEXT],
            "msgid": _decimal(record.get("msgid")), "uid": _decimal(record.get("uid")),
            "appcode": appcode}


class OpsView:
    """The nodes and the traces of the cluster, as plain dicts.

    ``node_id`` is this node's id; ``gate()`` its public gate ``(host, port)``;
    ``connections()`` and ``sessions()`` its open gate connections and
    logged-in sessions; ``started_ms`` when it started (Unix ms). In a cluster
    ``registry`` lists the live nodes and ``peers()`` gives the internal RPC
    client (None until it exists). ``records(logid)`` gives this node's trace
    buffer records about ``logid``, or None when it keeps no buffer.
    """

    def __init__(
        self,
        *,
        node_id: int,
        gate: Callable[[], tuple[str, int]],
        connections: Callable[[], int],
        sessions: Callable[[], int],
        started_ms: int,
        registry: INodeRegistry | None = None,
        peers: Callable[[], TracePeers | None] = lambda: None,
        records: Callable[[str], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.gate = gate
        self.connections = connections
        self.sessions = sessions
        self.started_ms = started_ms
        self.registry = registry
        self.peers = peers
        self.records = records

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node, by id: ``node_id``, ``gate``, ``connections``,
        ``sessions``, ``since_ms``. Raises StoreUnavailable when Redis is down."""
        if self.registry is None:
            return [{"node_id": self.node_id, "gate": gate_text(*self.gate()),
                     "connections": self.connections(), "sessions": self.sessions(),
                     "since_ms": self.started_ms}]
        return [{"node_id": n.node_id, "gate": gate_text(n.gate_host, n.gate_port),
                 "connections": n.connections, "sessions": n.sessions, "since_ms": n.started_ms}
                for n in await self.registry.live_nodes()]

    def local_events(self, logid: str) -> list[dict[str, Any]] | None:
        """This node's trace events about ``logid`` (all it holds), or None
        when it keeps no trace buffer: what it answers to TraceEvents."""
        if self.records is None:
            return None
        return [trace_event(record) for record in self.records(logid)]

    async def trace(self, logid: str) -> dict[str, Any]:
        """``{"events", "missing_nodes", "untraced_nodes", "truncated"}`` about
        ``logid`` from every live node (events: oldest first, each with its
        ``node``). Raises StoreUnavailable when Redis cannot list the nodes."""
        gathered: list[dict[str, Any]] = []
        missing: list[int] = []
        untraced: list[int] = []
        truncated = False
        others: list[int] = []
        if self.registry is not None:
            others = [n.node_id for n in await self.registry.live_nodes()
                      if n.node_id != self.node_id]
        local = self.local_events(logid)
        if local is None:
            untraced.append(self.node_id)
        else:
            truncated = len(local) > MAX_TRACE_EVENTS
            gathered += [{**e, "node": self.node_id} for e in local[:MAX_TRACE_EVENTS]]
        peers = self.peers()
        if others and peers is None:
            missing += others
        elif others and peers is not None:
            answers = await DeferredList([peers.trace(node, logid) for node in others],
                                         consumeErrors=True)
            for node, (ok, answer) in zip(others, answers, strict=True):
                if not ok:
                    missing.append(node)
                    continue
                if not answer.traced:
                    untraced.append(node)
                truncated = (truncated or answer.truncated
                             or len(answer.events) > MAX_TRACE_EVENTS)
                gathered += [{**e, "node": node} for e in answer.events[:MAX_TRACE_EVENTS]]
        gathered.sort(key=lambda e: e["ts_ms"])  # stable: each node's own order is kept
        return {"events": gathered, "missing_nodes": sorted(missing),
                "untraced_nodes": sorted(untraced), "truncated": truncated}
