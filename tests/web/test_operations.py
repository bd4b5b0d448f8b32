"""Tests for the operations endpoints (daojia_msg.web.operations): GET /v1/nodes
and GET /v1/trace/{logid}, the trace's scope, their errors."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.web.operations import MAX_LOGID, check_logid, in_scope
from daojia_msg.web.site import make_site
from tests.web.helpers import NO_TRACE, ONE_NODE, SHOP, TAXI, ApiTestCase, Client

SHOP_CODES = frozenset({1001, 1002})


def event(ts_ms: int, text: str, msgid: str | None = "77", uid: str | None = "5",
          appcode: int | None = 1001, node: int = 1) -> dict[str, Any]:
    return {"ts_ms": ts_ms, "node": node, "event": text, "msgid": msgid, "uid": uid,
            "appcode": appcode}


class NodesTests(ApiTestCase):
    def test_nodes(self) -> None:
        response = self.request("GET", "/v1/nodes", headers=SHOP)
        self.assertEqual((response.status, response.json()), (200, {"nodes": [ONE_NODE]}))
        self.assertEqual(response.headers["cache-control"], "no-store")

    def test_deferred(self) -> None:
        """The view may answer later (a cluster asks Redis)."""
        pending: Deferred[list[dict[str, Any]]] = Deferred()
        self.nodes_answer = pending
        client = Client(self.site)
        client.send("GET", "/v1/nodes", None, TAXI)
        self.assertEqual(client.transport.value(), b"")
        pending.callback([ONE_NODE, {**ONE_NODE, "node_id": 4, "gate": None}])
        self.assertEqual([n["node_id"] for n in client.response().json()["nodes"]], [3, 4])

    def test_unauthorized(self) -> None:
        self.assertError(self.request("GET", "/v1/nodes"), 401)
        self.assertError(self.request("GET", "/v1/nodes",
                                      headers={"Authorization": "Bearer nope"}), 401)

    def test_redis_down(self) -> None:
        self.nodes_answer = fail(StoreUnavailable("redis EVALSHA: down"))
        self.assertEqual(self.request("GET", "/v1/nodes", headers=SHOP).json(),
                         {"error": "a backend is unavailable"})
        self.nodes_answer = StoreUnavailable("redis EVALSHA: down")
        self.assertError(self.request("GET", "/v1/nodes", headers=SHOP), 503)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_head_and_methods(self) -> None:
        head = self.request("HEAD", "/v1/nodes", headers=SHOP)
        self.assertEqual((head.status, head.body), (200, b""))
        response = self.request("POST", "/v1/nodes", b"{}", SHOP)
        self.assertError(response, 405)
        self.assertEqual(response.headers["allow"], "GET")

    def test_not_wired(self) -> None:
        """A site without the views answers 503 (nothing to say), not 500."""
        self.site = make_site(self.logic, self.config, serving=lambda: True,
                              dispatch=lambda: ("g", 1), registry=self.registry,
                              reactor=self.node.clock)
        self.assertError(self.request("GET", "/v1/nodes", headers=SHOP), 503)
        self.assertError(self.request("GET", "/v1/trace/x", headers=SHOP), 503)


class TraceTests(ApiTestCase):
    def test_trace(self) -> None:
        events = [event(1, "C2C 77 stored"), event(2, "77 pushed", uid="6", node=2)]
        self.trace_answer = succeed({"events": events, "missing_nodes": [4],
                                     "untraced_nodes": [2], "truncated": True})
        response = self.request("GET", "/v1/trace/order-7", headers=SHOP)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertEqual(response.json(), {"events": events, "missing_nodes": [4],
                                           "untraced_nodes": [2], "truncated": True})
        self.assertEqual(self.traced, ["order-7"])

    def test_scoped(self) -> None:
        """Another user system's key sees none of shop's events."""
        self.trace_answer = {**NO_TRACE, "events": [event(1, "C2C 77 stored")]}
        self.assertEqual(self.request("GET", "/v1/trace/x", headers=TAXI).json()["events"], [])
        self.assertEqual(len(self.request("GET", "/v1/trace/x", headers=SHOP).json()["events"]),
                         1)

    def test_percent_decoded(self) -> None:
        """The segment is the logid, percent-decoded (a / in it too)."""
        for path, logid in [("a%2Fb", "a/b"), ("a%20b", "a b"), ("%7E", "~"), ("..x", "..x"),
                            ("x" * MAX_LOGID, "x" * MAX_LOGID)]:
            with self.subTest(path=path):
                self.assertEqual(self.request("GET", "/v1/trace/" + path, headers=SHOP).status,
                                 200)
                self.assertEqual(self.traced[-1], logid)

    def test_bad_logid(self) -> None:
        for path in ["", "x" * (MAX_LOGID + 1), "a%00b", "a%0Ab", "%C3%A9", "%7F", "%FF"]:
            with self.subTest(path=path):
                self.assertError(self.request("GET", "/v1/trace/" + path, headers=SHOP), 400,
                                 "logid")
        self.assertEqual(self.traced, [])

    def test_key_before_logid(self) -> None:
        self.assertError(self.request("GET", "/v1/trace/%00"), 401)

    def test_not_found(self) -> None:
        for path in ["/v1/trace", "/v1/trace/a/b", "/v1/trace/a/"]:
            with self.subTest(path=path):
                self.assertError(self.request("GET", path, headers=SHOP), 404)

    def test_redis_down(self) -> None:
        self.trace_answer = StoreUnavailable("redis EVALSHA: down")
        self.assertError(self.request("GET", "/v1/trace/x", headers=SHOP), 503)

    def test_head_and_methods(self) -> None:
        head = self.request("HEAD", "/v1/trace/x", headers=SHOP)
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertError(self.request("DELETE", "/v1/trace/x", headers=SHOP), 405)


class CheckLogidTests(SynchronousTestCase):
    def test_printable_ascii(self) -> None:
        self.assertEqual(check_logid(b" ~"), " ~")
        self.assertEqual(check_logid(b"order-7"), "order-7")


class ScopeTests(SynchronousTestCase):
    def test_by_appcode(self) -> None:
        """A message across user systems: each key sees its own side."""
        sent = event(1, "C2C 77 stored for 9@2001", appcode=1001)
        pushed = event(2, "77 pushed to 9@2001", uid="9", appcode=2001)
        self.assertEqual(in_scope([sent, pushed], SHOP_CODES), [sent])
        self.assertEqual(in_scope([sent, pushed], frozenset({2001})), [pushed])

    def test_without_appcode_follows_its_message(self) -> None:
        """An event without an appcode is kept when its whole message is in scope."""
        stored = event(1, "stored", appcode=1002)
        hop = event(2, "77 handed to node 2", uid=None, appcode=None)
        self.assertEqual(in_scope([stored, hop], SHOP_CODES), [stored, hop])
        self.assertEqual(in_scope([stored, hop], frozenset({2001})), [])
        # The message also touched another user system: not the key's alone.
        other = event(3, "77 pushed", appcode=2001)
        self.assertEqual(in_scope([stored, hop, other], SHOP_CODES), [stored])
        # Nothing says whose a message is.
        self.assertEqual(in_scope([hop], SHOP_CODES), [])

    def test_neither_appcode_nor_msgid(self) -> None:
        """Nothing says whose it is: dropped (a logid may be two systems')."""
        bus = event(1, "bus subscriber failed", msgid=None, uid=None, appcode=None)
        self.assertEqual(in_scope([event(0, "stored"), bus], SHOP_CODES),
                         [event(0, "stored")])

    def test_a_logid_shared_by_two_systems(self) -> None:
        mine = event(1, "C2C 77 stored", msgid="77", appcode=1001)
        theirs = event(2, "C2C 78 stored", msgid="78", appcode=2001)
        theirs_hop = event(3, "78 retried", msgid="78", appcode=None)
        self.assertEqual(in_scope([mine, theirs, theirs_hop], SHOP_CODES), [mine])
        self.assertEqual(in_scope([mine, theirs, theirs_hop], frozenset({2001})),
                         [theirs, theirs_hop])
