"""Tests for daojia_msg.cluster.ops: the nodes and the traces of the cluster,
as GET /v1/nodes and GET /v1/trace/{logid} answer them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.cluster.ops import MAX_EVENT_TEXT, OpsView, gate_text, trace_event
from daojia_msg.cluster.rpc.commands import MAX_TRACE_EVENTS, PeerTrace
from daojia_msg.core.errors import PeerUnavailable, StoreUnavailable
from daojia_msg.core.model import NodeInfo
from daojia_msg.tracing import NodeRef, TraceBuffer

STARTED_MS = 1_795_700_000_000


def info(node_id: int, host: str = "10.0.0.1", port: int = 7000, connections: int = 0,
         sessions: int = 0) -> NodeInfo:
    return NodeInfo(node_id, host, port, host, 7100, connections, STARTED_MS + node_id, 0,
                    sessions)


def ev(ts_ms: int, text: str, appcode: int | None = 1001) -> dict[str, Any]:
    return {"ts_ms": ts_ms, "event": text, "msgid": "77", "uid": "5", "appcode": appcode}


class FakeRegistry:
    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes
        self.down = False

    def live_nodes(self) -> Deferred[list[NodeInfo]]:
        if self.down:
            return fail(StoreUnavailable("redis EVALSHA: down (test)"))
        return succeed(self.nodes)

    def node(self, node_id: int) -> Deferred[NodeInfo | None]:
        return succeed(next((n for n in self.nodes if n.node_id == node_id), None))


class FakePeers:
    """Answers by node id: a PeerTrace, an exception, or a pending Deferred."""

    def __init__(self, answers: dict[int, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[int, str]] = []

    def trace(self, node_id: int, logid: str) -> Deferred[PeerTrace]:
        self.asked.append((node_id, logid))
        answer = self.answers[node_id]
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def view(registry: FakeRegistry | None = None, peers: Any = None,
         records: Any = None) -> OpsView:
    return OpsView(node_id=1, gate=lambda: ("192.0.2.1", 7000), connections=lambda: 4,
                   sessions=lambda: 3, started_ms=STARTED_MS, registry=registry,
                   peers=lambda: peers, records=records)


class NodesTests(SynchronousTestCase):
    def test_one_node(self) -> None:
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(view().nodes())), [
            {"node_id": 1, "gate": "192.0.2.1:7000", "connections": 4, "sessions": 3,
             "since_ms": STARTED_MS}])

    def test_cluster(self) -> None:
        registry = FakeRegistry([info(1, connections=5, sessions=2), info(2, "::1", 7001, 9, 8),
                                 info(3, "", 0)])
        nodes = self.successResultOf(Deferred.fromCoroutine(view(registry).nodes()))
        self.assertEqual(nodes, [
            {"node_id": 1, "gate": "10.0.0.1:7000", "connections": 5, "sessions": 2,
             "since_ms": STARTED_MS + 1},
            {"node_id": 2, "gate": "[::1]:7001", "connections": 9, "sessions": 8,
             "since_ms": STARTED_MS + 2},
            {"node_id": 3, "gate": None, "connections": 0, "sessions": 0,
             "since_ms": STARTED_MS + 3}])

    def test_redis_down(self) -> None:
        registry = FakeRegistry([])
        registry.down = True
        self.failureResultOf(Deferred.fromCoroutine(view(registry).nodes()), StoreUnavailable)

    def test_gate_text(self) -> None:
        self.assertEqual(gate_text("gate.example.com", 7000), "gate.example.com:7000")
        self.assertEqual(gate_text("2001:db8::1", 7000), "[2001:db8::1]:7000")
        self.assertIsNone(gate_text("", 0))
        self.assertIsNone(gate_text("10.0.0.1", 0))


class TraceEventTests(SynchronousTestCase):
    def test_from_the_buffer(self) -> None:
        """A logged event as the buffer keeps it, as a trace event."""
        buffer = TraceBuffer(node=NodeRef(1))
        buffer({"log_format": "C2C {msgid} stored for {to_uid}@{to_appcode}", "msgid": 2**63 - 1,
                "logid": "x", "uid": 2**64 - 1, "appcode": 1001, "to_uid": 9, "to_appcode": 1002,
                "log_time": 1795700000.1234})
        [record] = buffer.find("x")
        self.assertEqual(trace_event(record), {
            "ts_ms": 1795700000123, "event": f"C2C {2**63 - 1} stored for 9@1002",
            "msgid": str(2**63 - 1), "uid": str(2**64 - 1), "appcode": 1001})

    def test_odd_fields(self) -> None:
        """Fields of another shape (a failure logged with text fields) are left out."""
        self.assertEqual(trace_event({"text": "x" * 5000, "time": None, "msgid": "abc",
                                      "uid": True, "appcode": -1}),
                         {"ts_ms": 0, "event": "x" * MAX_EVENT_TEXT, "msgid": None, "uid": None,
                          "appcode": None})
        self.assertEqual(trace_event({"text": "y", "time": 2, "msgid": "12", "appcode": 2**32})
                         ["msgid"], "12")


class TraceTests(SynchronousTestCase):
    def trace(self, ops: OpsView, logid: str = "x") -> dict[str, Any]:
        return self.successResultOf(Deferred.fromCoroutine(ops.trace(logid)))

    def test_one_node(self) -> None:
        records = [{"time": 2.0, "text": "stored", "msgid": 77, "uid": 5, "appcode": 1001}]
        asked: list[str] = []
        ops = view(records=lambda logid: asked.append(logid) or records)
        self.assertEqual(self.trace(ops, "order-7"), {
            "events": [{"ts_ms": 2000, "event": "stored", "msgid": "77", "uid": "5",
                        "appcode": 1001, "node": 1}],
            "missing_nodes": [], "untraced_nodes": [], "truncated": False})
        self.assertEqual(asked, ["order-7"])

    def test_no_buffer(self) -> None:
        self.assertEqual(self.trace(view()), {"events": [], "missing_nodes": [],
                                              "untraced_nodes": [1], "truncated": False})

    def test_gathered_in_time_order(self) -> None:
        """This node's and the peers' events, merged by time (each node's own
        order kept), each named by the node that answered."""
        local = [{"time": 0.001, "text": "stored", "appcode": 1001},
                 {"time": 0.005, "text": "acked", "appcode": 1002}]
        peers = FakePeers({2: PeerTrace([ev(3, "pushed"), ev(3, "delivered")], True, False),
                           3: PeerTrace([], False, False)})
        ops = view(FakeRegistry([info(1), info(2), info(3)]), peers, lambda logid: local)
        found = self.trace(ops, "order-7")
        self.assertEqual([(e["node"], e["event"]) for e in found["events"]],
                         [(1, "stored"), (2, "pushed"), (2, "delivered"), (1, "acked")])
        self.assertEqual((found["missing_nodes"], found["untraced_nodes"], found["truncated"]),
                         ([], [3], False))
        self.assertEqual(peers.asked, [(2, "order-7"), (3, "order-7")])

    def test_missing_nodes(self) -> None:
        """A peer that fails (timed out, unreachable) is named, the rest answer."""
        peers = FakePeers({2: PeerUnavailable("node 2: no answer within 1 s"),
                           3: PeerTrace([ev(1, "pushed")], True, False)})
        found = self.trace(view(FakeRegistry([info(1), info(2), info(3)]), peers,
                                lambda logid: []))
        self.assertEqual([e["node"] for e in found["events"]], [3])
        self.assertEqual(found["missing_nodes"], [2])

    def test_waits_for_every_peer(self) -> None:
        pending: Deferred[PeerTrace] = Deferred()
        peers = FakePeers({2: pending})
        d = Deferred.fromCoroutine(view(FakeRegistry([info(1), info(2)]), peers,
                                        lambda logid: []).trace("x"))
        self.assertNoResult(d)
        pending.callback(PeerTrace([ev(1, "pushed")], True, False))
        self.assertEqual(len(self.successResultOf(d)["events"]), 1)

    def test_no_rpc_yet(self) -> None:
        """Before the RPC client exists every other node is missing."""
        found = self.trace(view(FakeRegistry([info(1), info(2)]), None, lambda logid: []))
        self.assertEqual(found["missing_nodes"], [2])

    def test_truncated(self) -> None:
        many = [{"time": i / 1000, "text": str(i)} for i in range(MAX_TRACE_EVENTS + 1)]
        found = self.trace(view(records=lambda logid: many))
        self.assertEqual(len(found["events"]), MAX_TRACE_EVENTS)
        self.assertEqual(found["events"][-1]["event"], str(MAX_TRACE_EVENTS - 1))
        self.assertTrue(found["truncated"])
        peers = FakePeers({2: PeerTrace([ev(1, "a")], True, True)})
        self.assertTrue(self.trace(view(FakeRegistry([info(2)]), peers,
                                        lambda logid: []))["truncated"])

    def test_redis_down(self) -> None:
        registry = FakeRegistry([])
        registry.down = True
        self.failureResultOf(Deferred.fromCoroutine(view(registry).trace("x")), StoreUnavailable)
