"""Tests for the endpoints other than push (daojia_msg.web.endpoints): sessions,
kickout, stats, dispatch, healthz, metrics, unknown paths and methods."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import KickReason
from daojia_msg.web.site import make_site
from tests.web.fakes import NOW
from tests.web.helpers import SHOP, TAXI, ApiTestCase, Client, push_body
from tests.web.test_openapi import load_yaml


class SessionsTests(ApiTestCase):
    def test_sessions(self) -> None:
        """Only the appcodes of the key's user system are listed."""
        self.node.login(7, 1001)
        self.node.clock.advance(2)
        self.node.login(7, 1002)
        self.node.login(7, 2001)
        self.node.login(8, 1001)
        response = self.request("GET", "/v1/sessions?uid=7", headers=SHOP)
        self.assertEqual(response.status, 200)
        now_ms = int(NOW * 1000)
        self.assertEqual(response.json(), {"sessions": [
            {"appcode": 1001, "node": 3, "since_ms": now_ms},
            {"appcode": 1002, "node": 3, "since_ms": now_ms + 2000},
        ]})
        taxi = self.request("GET", "/v1/sessions?uid=7", headers=TAXI).json()
        self.assertEqual([s["appcode"] for s in taxi["sessions"]], [2001])
        none = self.request("GET", "/v1/sessions?uid=9", headers=SHOP).json()
        self.assertEqual(none, {"sessions": []})

    def test_bad_uid(self) -> None:
        for query in ["", "?uid=", "?uid=0", "?uid=-3", "?uid=x", "?uid=1&uid=2", "?user=1"]:
            with self.subTest(query=query):
                self.assertError(self.request("GET", "/v1/sessions" + query, headers=SHOP), 400,
                                 "uid")

    def test_unauthorized(self) -> None:
        self.assertError(self.request("GET", "/v1/sessions?uid=7"), 401)

    def test_unavailable(self) -> None:
        def down(uid: int) -> Deferred[list[Any]]:
            raise StoreUnavailable("down")

        self.node.sessions.lookup_uid = down  # type: ignore[method-assign]
        self.assertError(self.request("GET", "/v1/sessions?uid=7", headers=SHOP), 503)


class KickoutTests(ApiTestCase):
    def test_kickout(self) -> None:
        """A logged-in session is kicked (reason ADMIN): 1, then 0."""
        conn = self.node.login(7, 1002)
        response = self.request("POST", "/v1/kickout", {"uid": "7", "appcode": 1002}, SHOP)
        self.assertEqual(response.json(), {"kicked": 1})
        self.assertEqual([code for code, _ in conn.kicks], [KickReason.ADMIN])
        self.assertEqual(self.logic.local, {})
        again = self.request("POST", "/v1/kickout", {"uid": 7, "appcode": 1002}, SHOP)
        self.assertEqual(again.json(), {"kicked": 0})

    def test_forbidden(self) -> None:
        conn = self.node.login(7, 2001)
        self.assertError(self.request("POST", "/v1/kickout", {"uid": 7, "appcode": 2001}, SHOP),
                         403)
        self.assertEqual(conn.kicks, [])

    def test_bad(self) -> None:
        for body, status in [({"uid": 7, "appcode": 9999}, 400), ({"uid": 0, "appcode": 1001}, 400),
                             ({"uid": 7}, 400), ({"appcode": 1001}, 400),
                             ({"uid": 7, "appcode": 1001, "reason": "x"}, 400),
                             ({"uid": 7, "appcode": "1001"}, 400)]:
            with self.subTest(body=body):
                self.assertError(self.request("POST", "/v1/kickout", body, SHOP), status)
        self.assertError(self.request("POST", "/v1/kickout", {"uid": 7, "appcode": 1001}), 401)


class StatsTests(ApiTestCase):
    def test_scoped(self) -> None:
        """``/v1/stats`` shows the routes of the key's user system only."""
        self.node.login(5, 1001)
        self.assertEqual(self.push(push_body(to_uid=5, msgtype=9)).status, 200)
        self.assertEqual(self.push(push_body(to_uid=6, to_appcode=1002)).status, 200)
        self.assertEqual(self.push(push_body(to_appcode=2001), TAXI).status, 200)
        shop = self.request("GET", "/v1/stats", headers=SHOP).json()
        self.assertEqual([(r["appcode"], r["msgtype"], r["kind"]) for r in shop["by_route"]],
                         [(1001, 9, "S2C"), (1002, 5, "S2C")])
        self.assertEqual(shop["by_route"][0]["accepted"], 1)
        self.assertEqual(shop["by_route"][0]["pushed"], 1)
        self.assertEqual(shop["by_route"][1]["stored"], 1)
        self.assertEqual(shop["totals"], {"accepted": 2, "pushed": 1, "acked": 0, "repushed": 0,
                                          "stored": 1, "pulled": 0, "expired": 0,
                                          "escalated": 0})
        self.assertEqual(shop["delivery_rate"], 0.0)
        taxi = self.request("GET", "/v1/stats", headers=TAXI).json()
        self.assertEqual([r["appcode"] for r in taxi["by_route"]], [2001])
        self.assertEqual(taxi["totals"]["accepted"], 1)

    def test_store_figures_as_documented(self) -> None:
        """``store``: the message store's figures, and the whole answer as
        docs/openapi.yaml says (types, required and only known fields)."""
        self.node.login(5, 1001)
        self.assertEqual(self.push(push_body(to_uid=5, msgtype=9)).status, 200)
        answer = self.request("GET", "/v1/stats", headers=SHOP).json()
        self.assertEqual(answer["store"]["bytes"], {"pending": 0, "history": 0, "dedup": 0})
        self.assertEqual((answer["store"]["oldest_pending_age_s"], answer["store"]["last_purge"]),
                         (None, None))
        schemas = load_yaml()["components"]["schemas"]
        check_schema(self, answer, schemas["Stats"], schemas)

    def test_empty(self) -> None:
        answer = self.request("GET", "/v1/stats", headers=SHOP).json()
        self.assertEqual(answer["by_route"], [])
        self.assertIsNone(answer["delivery_rate"])

    def test_unauthorized(self) -> None:
        self.assertError(self.request("GET", "/v1/stats"), 401)

    def test_backend_down_is_503(self) -> None:
        """Cluster-wide stats come from Redis: Redis down is 503, not a 500."""
        self.site = make_site(
            self.logic, self.config, serving=lambda: True, dispatch=lambda: ("g", 1),
            registry=self.registry, reactor=self.node.clock,
            stats=lambda appcodes: fail(StoreUnavailable("redis HGETALL: no reply within 2 s")),
        )
        response = self.request("GET", "/v1/stats", headers=SHOP)
        self.assertEqual((response.status, response.json()),
                         (503, {"error": "a backend is unavailable"}))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_scoped_snapshot(self) -> None:
        """Scoping the whole system's appcodes gives the node-wide snapshot back."""
        self.logic.stats.add((1001, 1, Kind.C2C), "accepted", 4)
        self.logic.stats.add((1001, 1, Kind.C2C), "acked", 3)
        self.logic.stats.add((1002, 2, Kind.C2S), "accepted", 5)
        stats = self.logic.stats
        self.assertEqual(stats.snapshot(frozenset({1001, 1002})), stats.snapshot())
        self.assertEqual(stats.snapshot(frozenset({1002}))["delivery_rate"], None)
        self.assertEqual(stats.snapshot(frozenset({1002}))["totals"]["accepted"], 5)
        self.assertEqual(stats.snapshot(frozenset({1001}))["delivery_rate"], 0.75)


class OpenEndpointTests(ApiTestCase):
    def test_healthz(self) -> None:
        """200 while serving, 503 while draining; no key needed."""
        response = self.request("GET", "/healthz")
        self.assertEqual((response.status, response.json()), (200, {"status": "serving"}))
        self.serving = False
        response = self.request("GET", "/healthz")
        self.assertEqual((response.status, response.json()), (503, {"status": "draining"}))

    def test_head(self) -> None:
        response = self.request("HEAD", "/healthz")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"")

    def test_dispatch(self) -> None:
        response = self.request("GET", "/v1/dispatch")
        self.assertEqual(response.json(), {"host": "gate.example.com", "port": 7000})

    def test_dispatch_async(self) -> None:
        """``dispatch`` may answer with a Deferred, or refuse with Unavailable."""
        self.build(dispatch=lambda: succeed(("10.0.0.9", 7001)))
        self.assertEqual(self.request("GET", "/v1/dispatch").json(),
                         {"host": "10.0.0.9", "port": 7001})

        def none() -> tuple[str, int]:
            raise errors.Unavailable("no live node")

        self.build(dispatch=none)
        self.assertError(self.request("GET", "/v1/dispatch"), 503, "no live node")

    def test_metrics(self) -> None:
        """Prometheus text from a loopback client, with the counters after a push."""
        self.assertEqual(self.push(push_body()).status, 200)
        for peer in ("127.0.0.1", "127.5.5.5", "::1", "::ffff:127.0.0.1"):
            with self.subTest(peer=peer):
                response = self.request("GET", "/metrics", peer=peer)
                self.assertEqual(response.status, 200)
                self.assertTrue(response.headers["content-type"].startswith("text/plain"))
                text = response.body.decode()
                self.assertIn('msgplatform_messages_accepted_total{appcode="1001",kind="S2C",'
                              'msgtype="5"} 1.0', text)
                self.assertIn('msgplatform_messages_stored_total{appcode="1001",kind="S2C",'
                              'msgtype="5"} 1.0', text)
                self.assertIn("msgplatform_connections 12.0", text)

    def test_metrics_not_loopback(self) -> None:
        """Other clients are refused with 403."""
        for peer in ("10.0.0.1", "192.168.1.20", "::ffff:10.0.0.1", "2001:db8::1"):
            with self.subTest(peer=peer):
                self.assertError(self.request("GET", "/metrics", peer=peer), 403, "loopback")

    def test_not_found(self) -> None:
        for path in ["/", "/v1", "/v1/nope", "/v1/push/", "/v1/push/batch/x", "/healthz/x"]:
            with self.subTest(path=path):
                self.assertError(self.request("GET", path), 404)

    def test_method_not_allowed(self) -> None:
        response = self.request("GET", "/v1/push", headers=SHOP)
        self.assertError(response, 405)
        self.assertEqual(response.headers["allow"], "POST")
        self.assertError(self.request("POST", "/healthz", b"{}"), 405)


class ClientGoneTests(ApiTestCase):
    def test_client_gone_logged(self) -> None:
        """A client gone before the answer: nothing written, one info event says so."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.store.hold = True
        client = Client(self.site)
        client.send("POST", "/v1/push", json.dumps(push_body()).encode(), SHOP)
        client.channel.connectionLost(Failure(ConnectionDone()))
        self.store.release()
        self.assertEqual(client.transport.value(), b"")
        gone = [e for e in events if "went away" in formatEvent(e)]
        self.assertEqual(len(gone), 1)
        self.assertIn("(200)", formatEvent(gone[0]))


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool,
                          "integer": int, "number": (int, float), "null": type(None)}


def check_schema(test: Any, value: Any, schema: dict[str, Any], schemas: dict[str, Any],
                 where: str = "$") -> None:
    """``value`` against the subset of JSON Schema docs/openapi.yaml uses for
    answers: ``$ref``, ``type``, ``required``, ``additionalProperties: false``,
    ``properties``, ``items``, ``minimum``."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types:
        test.assertTrue(any(isinstance(value, _TYPES[t]) and not (
            t in ("integer", "number") and isinstance(value, bool)) for t in types),
            f"{where}: {value!r} is not {types}")
    if isinstance(value, dict):
        test.assertLessEqual(set(schema.get("required", [])), set(value), where)
        if schema.get("additionalProperties") is False:
            test.assertLessEqual(set(value), set(schema.get("properties", {})), where)
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check_schema(test, value[key], sub, schemas, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check_schema(test, item, schema["items"], schemas, f"{where}[{i}]")
    if isinstance(value, int | float) and "minimum" in schema:
        test.assertGreaterEqual(value, schema["minimum"], where)
