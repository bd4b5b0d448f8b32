"""Tests for daojia_msg.web.api: the HTTP API (docs/openapi.yaml).

Most tests feed raw HTTP bytes to a channel of the real :class:`Site` over a
:class:`StringTransport` (so the bounded request class, the resource tree and
the answers are all exercised, deterministically); :class:`RealSocketTests`
run a few end to end over a TCP socket on loopback with treq.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import Request, combinedLogFormatter
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel

from daojia_msg.config import Config, default_config, parse_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind
from daojia_msg.metrics.registry import make_registry
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import KickReason
from daojia_msg.web.api import (
    ACCESS_LOG_FLUSH_S,
    ACCESS_LOG_MAX_LINES,
    LINGER_S,
    Api,
    Caller,
    Keys,
    access_log_line,
    make_site,
    parse_json,
    parse_uid,
)
from tests.web.fakes import NOW, FakeNode

TWO_SYSTEMS = """
[apps.1001]
usersystem = "shop"
secret = "secret-1001"
api_key = "key-1001"

[apps.1002]
usersystem = "shop"
secret = "secret-1002"
api_key = "key-1002"

[apps.2001]
usersystem = "taxi"
secret = "secret-2001"
api_key = "key-2001"
"""

SHOP = {"Authorization": "Bearer key-1001"}
TAXI = {"Authorization": "Bearer key-2001"}


def two_systems(**limits: Any) -> Config:
    config = parse_config(TWO_SYSTEMS)
    if limits:
        config = config.replace(limits=dataclasses.replace(config.limits, **limits))
    return config


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)


def parse_response(raw: bytes, head_only: bool = False) -> Response:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", len(rest)))
    assert len(rest) >= length, f"incomplete body in {raw!r}"
    return Response(status, headers, rest[:length])


class HalfCloseableTransport(StringTransport):
    """A StringTransport that, like TCP, can close its write side alone."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Client:
    """Raw HTTP/1.1 requests to a site over a StringTransport."""

    def __init__(self, site: Site, peer: str = "127.0.0.1") -> None:
        self.site = site
        address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 50123)
        self.transport = HalfCloseableTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=address
        )
        self.channel = site.buildProtocol(address)
        self.channel.makeConnection(self.transport)

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: api.test", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None and not any(h.lower() == "transfer-encoding" for h in headers or {}):
            lines.append(f"Content-Length: {len(body)}")
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def response(self) -> Response:
        return parse_response(self.transport.value())


class ApiTestCase(TestCase):
    config: Config

    def setUp(self) -> None:
        self.config = two_systems()
        self.build()

    def build(self, config: Config | None = None,
              dispatch: Callable[[], Any] = lambda: ("gate.example.com", 7000)) -> None:
        if config is not None:
            self.config = config
        self.node = FakeNode(self.config)
        self.logic = self.node.logic
        self.store = self.node.store
        self.serving = True
        self.registry = make_registry(self.logic.stats, lambda: 12, lambda: len(self.logic.local))
        self.site = make_site(
            self.logic, self.config, serving=lambda: self.serving, dispatch=dispatch,
            registry=self.registry, reactor=self.node.clock,
        )

    def request(self, method: str, path: str, body: object = None,
                headers: dict[str, str] | None = None, peer: str = "127.0.0.1") -> Response:
        client = Client(self.site, peer)
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        client.send(method, path, raw, headers)
        return parse_response(client.transport.value(), head_only=method == "HEAD")

    def push(self, body: object, headers: dict[str, str] | None = SHOP) -> Response:
        return self.request("POST", "/v1/push", body, headers)

    def assertError(self, response: Response, status: int, contains: str = "") -> str:
        self.assertEqual(response.status, status, response.body)
        error = response.json()["error"]
        self.assertIsInstance(error, str)
        self.assertIn(contains, error)
        return error


def push_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to_uid": 42, "to_appcode": 1001, "msgtype": 5, "content": "hello"}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


class PushTests(ApiTestCase):
    def test_push(self) -> None:
        """A push is answered 200 once stored, with the msgid as a decimal string."""
        response = self.push(push_body(logid="order-7"))
        self.assertEqual(response.status, 200)
        answer = response.json()
        self.assertEqual(set(answer), {"msgid", "logid", "online"})
        self.assertIsInstance(answer["msgid"], str)
        self.assertEqual(answer["logid"], "order-7")
        self.assertIs(answer["online"], False)
        [batch] = self.store.batches
        [new] = batch
        msg = new.message
        self.assertEqual(str(msg.msgid), answer["msgid"])
        self.assertEqual((msg.to_uid, msg.to_appcode, msg.msgtype, msg.kind, msg.content),
                         (42, 1001, 5, Kind.S2C, b"hello"))
        self.assertEqual((msg.from_uid, msg.from_appcode), (0, 0))
        self.assertEqual(new.to_system, "shop")

    def test_push_utf8_and_b64(self) -> None:
        """``content`` is UTF-8 encoded; ``content_b64`` is decoded."""
        self.assertEqual(self.push(push_body(content="订单 ✓")).status, 200)
        raw = bytes(range(256))
        body = push_body(content=..., content_b64=base64.b64encode(raw).decode())
        self.assertEqual(self.push(body).status, 200)
        self.assertEqual([n.message.content for n in self.store.stored],
                         ["订单 ✓".encode(), raw])

    def test_push_uid_as_string_and_server_logid(self) -> None:
        """A uid may be a decimal string, up to 2**63-1 (signed 64-bit everywhere);
        without a logid the server makes one."""
        answer = self.push(push_body(to_uid=str(2**63 - 1))).json()
        self.assertEqual(self.store.stored[0].message.to_uid, 2**63 - 1)
        self.assertEqual(answer["logid"], format(int(answer["msgid"]), "x"))
        self.assertEqual(self.push(push_body(to_uid=str(2**63))).status, 400)
        self.assertEqual(len(self.store.stored), 1)

    def test_push_other_app_same_system(self) -> None:
        """The key of 1001 pushes to 1002: same user system."""
        self.assertEqual(self.push(push_body(to_appcode=1002)).status, 200)

    def test_push_online(self) -> None:
        """``online`` is true and the push goes out when the recipient has a session."""
        conn = self.node.login(42, 1001)
        answer = self.push(push_body()).json()
        self.assertIs(answer["online"], True)
        self.assertEqual(len(conn.pushes), 1)

    def test_max_content(self) -> None:
        """Content of exactly ``max_content`` bytes is accepted."""
        n = self.config.limits.max_content
        self.assertEqual(self.push(push_body(content="x" * n)).status, 200)
        body = push_body(content=..., content_b64=base64.b64encode(b"\xff" * n).decode())
        self.assertEqual(self.push(body).status, 200)

    def test_demo_config(self) -> None:
        """The default config's demo key works."""
        self.build(default_config())
        response = self.push(push_body(), {"Authorization": "Bearer demo-key-1002"})
        self.assertEqual(response.status, 200)

    def test_malformed(self) -> None:
        """Every malformed push is a 400 with a reason, and nothing is stored."""
        over = self.config.limits.max_content + 1
        cases: list[tuple[str, object, str]] = [
            ("bad JSON", b'{"to_uid": 42,', "JSON"),
            ("not UTF-8", b'{"content": "\xff"}', "UTF-8"),
            ("empty body", b"", "JSON"),
            ("not an object", [push_body()], "object"),
            ("NaN", b'{"to_uid": NaN}', "JSON"),
            ("duplicate key", b'{"to_uid": 1, "to_uid": 2, "to_appcode": 1001, "msgtype": 1,'
                              b' "content": "x"}', "duplicate"),
            ("no to_uid", push_body(to_uid=...), "to_uid"),
            ("null to_uid", push_body(to_uid=None), "to_uid"),
            ("no to_appcode", push_body(to_appcode=...), "to_appcode"),
            ("no msgtype", push_body(msgtype=...), "msgtype"),
            ("no content", push_body(content=...), "exactly one"),
            ("both contents", push_body(content_b64="aGk="), "exactly one"),
            ("bad base64", push_body(content=..., content_b64="a$b="), "base64"),
            ("unpadded base64", push_body(content=..., content_b64="aGk"), "base64"),
            ("base64 with newline", push_body(content=..., content_b64="aGk=\n"), "base64"),
            ("content not text", push_body(content=5), "content"),
            ("uid 0", push_body(to_uid=0), "to_uid"),
            ("uid '0'", push_body(to_uid="0"), "to_uid"),
            ("negative uid", push_body(to_uid=-1), "to_uid"),
            ("negative uid string", push_body(to_uid="-1"), "to_uid"),
            ("bool uid", push_body(to_uid=True), "to_uid"),
            ("float uid", push_body(to_uid=42.0), "to_uid"),
            ("uid over 2**64-1", push_body(to_uid=2**64), "to_uid"),
            ("uid string over 2**64-1", push_body(to_uid=str(2**64)), "to_uid"),
            ("uid not decimal", push_body(to_uid="4e2"), "to_uid"),
            ("uid unicode digits", push_body(to_uid="٤٢"), "to_uid"),
            ("appcode as string", push_body(to_appcode="1001"), "to_appcode"),
            ("appcode bool", push_body(to_appcode=True), "to_appcode"),
            ("msgtype over uint32", push_body(msgtype=2**32), "msgtype"),
            ("msgtype negative", push_body(msgtype=-1), "msgtype"),
            ("oversized content", push_body(content="x" * over), "content"),
            ("oversized UTF-8 content", push_body(content="é" * (over // 2 + 1)), "content"),
            ("oversized b64", push_body(content=..., content_b64=base64.b64encode(b"x" * over)
                                        .decode()), "content"),
            ("unknown to_appcode", push_body(to_appcode=9999), "9999"),
            ("unknown field", push_body(logId="x"), "logId"),
            ("logid not a string", push_body(logid=7), "logid"),
            ("bad logid", push_body(logid="has space"), "logid"),
            ("lone surrogate", b'{"to_uid": 1, "to_appcode": 1001, "msgtype": 1,'
                               b' "content": "\\ud800"}', "content"),
        ]
        for name, body, contains in cases:
            with self.subTest(name):
                self.assertError(self.push(body), 400, contains)
        self.assertEqual(self.store.batches, [])
        self.assertEqual(self.logic.stats.totals()["accepted"], 0)

    def test_unauthorized(self) -> None:
        """A missing, malformed or wrong key is a 401 before the body is looked at."""
        for headers in [{}, {"Authorization": "key-1001"}, {"Authorization": "Bearer"},
                        {"Authorization": "Basic a2V5LTEwMDE="},
                        {"Authorization": "Bearer key-100"},
                        {"Authorization": "Bearer key-1001x"},
                        {"Authorization": "Bearer secret-1001"}]:
            with self.subTest(headers=headers):
                response = self.push(b"not even JSON", headers)
                self.assertError(response, 401)
                self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="msgplatform"')
        self.assertEqual(self.store.batches, [])

    def test_bearer_case_insensitive(self) -> None:
        self.assertEqual(self.push(push_body(), {"Authorization": "bearer  key-1001"}).status, 200)

    def test_forbidden(self) -> None:
        """A key of another user system is a 403, and nothing is stored."""
        self.assertError(self.push(push_body(to_appcode=2001)), 403, "2001")
        self.assertError(self.push(push_body(to_appcode=1001), TAXI), 403, "1001")
        self.assertEqual(self.store.batches, [])
        self.assertEqual(self.push(push_body(to_appcode=2001), TAXI).status, 200)

    def test_store_unavailable(self) -> None:
        """A store failure is a 503: nothing accepted."""
        self.store.error = StoreUnavailable("down")
        self.assertError(self.push(push_body()), 503)
        self.assertEqual(self.store.batches, [])
        self.assertEqual(self.logic.stats.totals()["accepted"], 0)

    def test_unexpected_exception(self) -> None:
        """An unexpected exception is a 500 ``internal``, logged; the site keeps serving."""
        self.store.error = RuntimeError("boom")
        response = self.push(push_body())
        self.assertEqual((response.status, response.json()), (500, {"error": "internal"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.store.error = None
        self.assertEqual(self.push(push_body()).status, 200)

    def test_keys_never_logged(self) -> None:
        """Neither a good nor a wrong key shows up in any log event, even on a 500."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.store.error = RuntimeError("boom")
        self.push(push_body())
        self.push(push_body(), {"Authorization": "Bearer wrong-key-123"})
        self.flushLoggedErrors(RuntimeError)
        self.assertTrue(len(events) > 0)
        for event in events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn("key-1001", text)
            self.assertNotIn("wrong-key-123", text)

    def test_client_gone(self) -> None:
        """A client that disconnects before the answer: the push completes, nothing raises."""
        self.store.hold = True
        client = Client(self.site)
        client.send("POST", "/v1/push", json.dumps(push_body()).encode(), SHOP)
        self.assertEqual(client.transport.value(), b"")
        client.channel.connectionLost(Failure(ConnectionDone()))
        self.store.release()
        self.assertEqual(len(self.store.stored), 1)
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_answer_after_durable(self) -> None:
        """The answer is written only once the store has made the message durable."""
        self.store.hold = True
        client = Client(self.site)
        client.send("POST", "/v1/push", json.dumps(push_body()).encode(), SHOP)
        self.assertEqual(client.transport.value(), b"")
        self.store.release()
        self.assertEqual(client.response().status, 200)


class BatchTests(ApiTestCase):
    def test_mixed(self) -> None:
        """Each item is checked alone; the valid ones are stored in one call, results in order."""
        messages = [
            push_body(to_uid=1),
            push_body(to_uid=0),
            push_body(to_uid="2", content=..., content_b64="AAE="),
            push_body(to_appcode=2001),
            push_body(to_appcode=9999),
            "not an object",
            push_body(to_uid=3, logid="bad logid"),
            push_body(to_uid=4, to_appcode=1002, logid="x-4"),
        ]
        response = self.request("POST", "/v1/push/batch", {"messages": messages}, SHOP)
        self.assertEqual(response.status, 200)
        results = response.json()["results"]
        self.assertEqual(len(results), len(messages))
        for i in (1, 3, 4, 5, 6):
            self.assertEqual(set(results[i]), {"error"}, results[i])
        self.assertIn("to_uid", results[1]["error"])
        self.assertIn("2001", results[3]["error"])
        self.assertIn("9999", results[4]["error"])
        self.assertIn("logid", results[6]["error"])
        [batch] = self.store.batches
        self.assertEqual([(n.message.to_uid, n.message.to_appcode) for n in batch],
                         [(1, 1001), (2, 1001), (4, 1002)])
        for i, new in zip((0, 2, 7), batch, strict=True):
            self.assertEqual(results[i], {"msgid": str(new.message.msgid),
                                          "logid": new.message.logid, "online": False})
        self.assertEqual(batch[1].message.content, b"\x00\x01")
        self.assertEqual(results[7]["logid"], "x-4")
        msgids = [int(results[i]["msgid"]) for i in (0, 2, 7)]
        self.assertEqual(msgids, sorted(set(msgids)))

    def test_all_invalid(self) -> None:
        """Nothing valid: no store call at all."""
        response = self.request("POST", "/v1/push/batch",
                                {"messages": [push_body(to_uid=0)]}, SHOP)
        self.assertEqual(response.json(), {"results": [{"error": response.json()["results"][0]
                                                        ["error"]}]})
        self.assertEqual(self.store.batches, [])

    def test_empty(self) -> None:
        response = self.request("POST", "/v1/push/batch", {"messages": []}, SHOP)
        self.assertEqual(response.json(), {"results": []})

    def test_limit(self) -> None:
        """``push_batch_max`` items are accepted; one more is a 400, nothing stored."""
        limit = self.config.limits.push_batch_max
        self.assertEqual(limit, 1000)
        over = {"messages": [push_body(to_uid=i + 1) for i in range(limit + 1)]}
        self.assertError(self.request("POST", "/v1/push/batch", over, SHOP), 400, "1000")
        self.assertEqual(self.store.batches, [])
        response = self.request("POST", "/v1/push/batch", {"messages": over["messages"][:limit]},
                                SHOP)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(self.store.batches), 1)
        self.assertEqual(len(self.store.stored), limit)

    def test_malformed_batch(self) -> None:
        for body, contains in [({}, "messages"), ({"messages": {}}, "messages"),
                               ({"messages": [], "extra": 1}, "extra"), (b"[", "JSON"),
                               ([], "object")]:
            with self.subTest(body=body):
                self.assertError(self.request("POST", "/v1/push/batch", body, SHOP), 400, contains)

    def test_batch_store_unavailable(self) -> None:
        self.store.error = StoreUnavailable("down")
        response = self.request("POST", "/v1/push/batch",
                                {"messages": [push_body(), push_body(to_uid=0)]}, SHOP)
        self.assertError(response, 503)

    def test_batch_unauthorized(self) -> None:
        response = self.request("POST", "/v1/push/batch", {"messages": []}, {})
        self.assertError(response, 401)


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
                                          "stored": 1, "pulled": 0})
        self.assertEqual(shop["delivery_rate"], 0.0)
        taxi = self.request("GET", "/v1/stats", headers=TAXI).json()
        self.assertEqual([r["appcode"] for r in taxi["by_route"]], [2001])
        self.assertEqual(taxi["totals"]["accepted"], 1)

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


class BodyLimitTests(ApiTestCase):
    def setUp(self) -> None:
        self.config = two_systems(http_max_body=1024)
        self.build()

    def test_at_limit(self) -> None:
        """A body of exactly the limit is read."""
        body = json.dumps(push_body()).encode()
        body += b" " * (1024 - len(body))
        self.assertEqual(self.push(body).status, 200)

    def test_declared_over_limit(self) -> None:
        """A Content-Length over the limit is refused at the headers, before any body."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Content-Length": "1025"})
        self.assertError(client.response(), 413)
        self.assertEqual(client.response().headers["connection"], "close")
        self.assertTrue(client.transport.write_closed)
        self.assertEqual(client.channel.timeOut, LINGER_S)
        # The rest of the body is dropped, not buffered, not processed.
        client.channel.dataReceived(json.dumps(push_body()).encode().ljust(1025))
        self.assertEqual(len(client.transport.value().split(b"HTTP/1.1")), 2)
        self.assertEqual(self.store.batches, [])

    def test_refusal_logged(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        Client(self.site, "10.1.2.3").send("POST", "/v1/push", None, {"Content-Length": "2000"})
        [event] = [e for e in events if e.get("max_body") == 1024]
        self.assertIn("10.1.2.3", formatEvent(event))

    def test_chunked_over_limit(self) -> None:
        """A chunked body is counted as it comes: 413 once it passes the limit."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Transfer-Encoding": "chunked"})
        chunk = b"200\r\n" + b" " * 512 + b"\r\n"
        client.channel.dataReceived(chunk * 2)
        self.assertEqual(client.transport.value(), b"")
        client.channel.dataReceived(chunk)
        self.assertError(client.response(), 413)
        client.channel.dataReceived(chunk * 3 + b"0\r\n\r\n")
        self.assertEqual(self.store.batches, [])

    def test_chunked_within_limit(self) -> None:
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Transfer-Encoding": "chunked"})
        body = json.dumps(push_body()).encode()
        client.channel.dataReceived(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(client.response().status, 200)

    def test_expect_continue(self) -> None:
        """No ``100 Continue`` for a body that is refused anyway."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None,
                    {**SHOP, "Content-Length": "5000", "Expect": "100-continue"})
        self.assertTrue(client.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", client.transport.value())

    def test_drain_bounded(self) -> None:
        """Past twice the limit (at least 1 MiB) the connection stops reading."""
        client = Client(self.site)
        client.send("POST", "/v1/push", None, {**SHOP, "Content-Length": "100000000"})
        client.channel.dataReceived(b"x" * (1024 * 1024))
        self.assertEqual(client.transport.producerState, "producing")
        client.channel.dataReceived(b"x")
        self.assertEqual(client.transport.producerState, "paused")


class KeysTests(TestCase):
    def test_find(self) -> None:
        config = two_systems()
        keys = Keys(config.apps.values())
        caller = keys.find(b"key-1002")
        assert caller is not None
        self.assertEqual((caller.app.appcode, caller.appcodes), (1002, frozenset({1001, 1002})))
        self.assertIsNone(keys.find(b""))
        self.assertIsNone(keys.find(b"key-1002 "))

    def test_no_key_configured(self) -> None:
        """An app without an api_key cannot be used with an empty key."""
        config = parse_config('[apps.5]\nusersystem = "x"\nsecret = "12345678"\n')
        self.assertIsNone(Keys(config.apps.values()).find(b""))

    def test_parse_uid(self) -> None:
        self.assertEqual(parse_uid("00042", "uid"), 42)
        self.assertRaises(errors.BadRequest, parse_uid, "", "uid")
        self.assertRaises(errors.BadRequest, parse_uid, " 42", "uid")
        self.assertRaises(errors.BadRequest, parse_uid, None, "uid")


def as_headers(headers: dict[str, str]) -> Headers:
    return Headers({name: [value] for name, value in headers.items()})


class RawClient(Protocol):
    """Sends bytes, collects everything until the connection closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.done.callback(self.received)


class AccessLogTests(ApiTestCase):
    """One combined-format line per request, logged together as one event."""

    def setUp(self) -> None:
        super().setUp()
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def access_events(self) -> list[Any]:
        return [e for e in self.events if e.get("log_namespace") == "daojia_msg.web.access"]

    def test_lines_gathered(self) -> None:
        """No event per request: the lines of a second go out in one event."""
        for _ in range(3):
            self.assertEqual(self.push(push_body()).status, 200)
        self.request("GET", "/healthz", headers={"User-Agent": 'a "quoted" \\ agent'})
        self.assertEqual(self.access_events(), [])
        self.node.clock.advance(ACCESS_LOG_FLUSH_S)
        [event] = self.access_events()
        self.assertEqual(event["requests"], 4)
        lines = formatEvent(event).split("\n")
        self.assertEqual(len(lines), 4)
        self.assertRegex(lines[0], r'^"127\.0\.0\.1" - - \[.*\] "POST /v1/push HTTP/1\.1" 200 \d+ "-" "-"$')
        self.assertTrue(lines[3].endswith(' "GET /healthz HTTP/1.1" 200 20 "-" '
                                          '"a \\"quoted\\" \\\\ agent"'), lines[3])
        self.node.clock.advance(ACCESS_LOG_FLUSH_S)
        self.assertEqual(len(self.access_events()), 1)  # nothing new: no empty event

    def test_flushed_when_full(self) -> None:
        site: Any = self.site
        request = self.fake_request()
        for _ in range(ACCESS_LOG_MAX_LINES):
            site.log(request)
        [event] = self.access_events()
        self.assertEqual(event["requests"], ACCESS_LOG_MAX_LINES)
        self.node.clock.advance(ACCESS_LOG_FLUSH_S)  # its timer was cancelled
        self.assertEqual(len(self.access_events()), 1)

    def test_flushed_at_stop(self) -> None:
        self.push(push_body())
        self.site.doStop()
        [event] = self.access_events()
        self.assertEqual(event["requests"], 1)
        self.site.doStart()  # for the cleanup's doStop

    def fake_request(self, **headers: bytes) -> Request:
        request = Request(DummyChannel())
        request.method, request.uri, request.clientproto = b"POST", b"/v1/push", b"HTTP/1.1"
        request.code, request.sentLength = 200, 71
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name.encode("ascii"), [value])
        return request

    def test_line_same_as_combined_format(self) -> None:
        """The line is the text of twisted.web's combinedLogFormatter, escapes included."""
        tricky = [b"plain", b'quote " here', b"back \\ slash", b"it's", b"both ' and \"",
                  b"\xff\xfe bytes", b"tab\tnewline\n", b"\x7f del", b""]
        for value in tricky:
            for address in (IPv4Address("TCP", "10.1.2.3", 5), IPv6Address("TCP", "::1", 5),
                            UNIXAddress(b"/tmp/s")):
                request = self.fake_request(referer=value, **{"user-agent": value})
                request.uri = b"/v1/push?x=" + value
                request.client = address
                request.sentLength = len(value)
                with self.subTest(value=value, address=address):
                    self.assertEqual(access_log_line("[ts]", request),
                                     combinedLogFormatter("[ts]", request))


class FastPathTests(ApiTestCase):
    """Api.push_item's one-pass check agrees with the field-by-field one."""

    def test_same_as_checked(self) -> None:
        api = Api(self.logic, self.config, lambda: True, lambda: ("h", 1), self.registry)
        caller = api.keys.find(b"key-1001")
        assert caller is not None
        over = self.config.limits.max_content
        bodies: list[Any] = [
            push_body(), push_body(logid="abc"), push_body(logid=None), push_body(content=""),
            push_body(to_uid=2**64 - 1), push_body(to_uid="42"), push_body(msgtype=2**32 - 1),
            push_body(msgtype=0), push_body(to_appcode=1002), push_body(to_appcode=2001),
            push_body(to_appcode=9999), push_body(to_appcode=True), push_body(to_uid=True),
            push_body(to_uid=0), push_body(to_uid=2**64), push_body(to_uid=1.0),
            push_body(msgtype=-1), push_body(msgtype=2**32), push_body(msgtype=None),
            push_body(content="x" * over), push_body(content="x" * (over + 1)),
            push_body(content="é" * (over // 2)), push_body(content="é" * (over // 2 + 1)),
            push_body(content="\ud800"), push_body(content=None, content_b64="aGk="),
            push_body(content_b64="aGk="), push_body(content_b64=None), push_body(logid=7),
            push_body(extra=1), push_body(to_uid=...), [], "x", None,
        ]
        for body in bodies:
            with self.subTest(body=body):
                got = want = None
                try:
                    got = api.push_item(body, caller)
                except errors.RequestError as e:
                    got = (type(e), e.reason)  # type: ignore[assignment]
                try:
                    want = api._push_item_checked(body, caller)
                except errors.RequestError as e:
                    want = (type(e), e.reason)  # type: ignore[assignment]
                self.assertEqual(got, want)

    def test_caller_type(self) -> None:
        self.assertIsInstance(Keys(self.config.apps.values()).find(b"key-1001"), Caller)


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


class JsonTests(TestCase):
    def test_bom(self) -> None:
        """A UTF-8 BOM is refused, with json.loads' own reason."""
        with self.assertRaises(errors.BadRequest) as e:
            parse_json(b'\xef\xbb\xbf{"a": 1}')
        self.assertIn("Unexpected UTF-8 BOM", e.exception.reason)

    def test_strict(self) -> None:
        self.assertEqual(parse_json(b'{"a": [1, {"b": null}]}'), {"a": [1, {"b": None}]})
        for raw in (b'{"a": 1, "a": 2}', b'[{"x": 1, "y": {"z": 1, "z": 1}}]', b"Infinity",
                    b"[-Infinity]", b"NaN", b'{"a": 1} x'):
            with self.subTest(raw=raw), self.assertRaises(errors.BadRequest):
                parse_json(raw)


class RealSocketTests(TestCase):
    """End to end over a TCP socket on loopback, with treq, on the real reactor."""

    async def serve(self, config: Config) -> FakeNode:
        node = FakeNode(config)
        site = make_site(
            node.logic, config, serving=lambda: True, dispatch=lambda: ("127.0.0.1", 7000),
            registry=make_registry(node.logic.stats, lambda: 0, lambda: len(node.logic.local)),
            reactor=reactor,
        )
        open_channels: set[object] = set()
        waiters: list[Deferred[None]] = []
        build = site.buildProtocol

        def track(addr: object) -> Any:
            channel = build(addr)
            open_channels.add(channel)
            lost = channel.connectionLost

            def connectionLost(reason: Failure) -> None:
                lost(reason)
                open_channels.discard(channel)
                if not open_channels:
                    for d in waiters:
                        d.callback(None)
                    waiters.clear()

            channel.connectionLost = connectionLost
            return channel

        site.buildProtocol = track  # type: ignore[method-assign]

        def all_closed() -> Deferred[None]:
            if not open_channels:
                return succeed(None)
            d: Deferred[None] = Deferred()
            waiters.append(d)
            return d

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.addCleanup(all_closed)  # cleanups run last-in first-out: after the pool's
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.port = port.getHost().port
        self.base = f"http://127.0.0.1:{self.port}"
        return node

    async def test_push(self) -> None:
        node = await self.serve(two_systems())
        response = await treq.post(f"{self.base}/v1/push", json=push_body(to_uid="77"),
                                   headers=as_headers(SHOP), pool=self.pool)
        self.assertEqual(response.code, 200)
        answer = await response.json()
        [new] = node.store.stored
        self.assertEqual(answer["msgid"], str(new.message.msgid))
        self.assertEqual(new.message.to_uid, 77)

    async def test_errors_and_open_endpoints(self) -> None:
        await self.serve(two_systems())
        response = await treq.post(f"{self.base}/v1/push", data=b"{", headers=as_headers(SHOP), pool=self.pool)
        self.assertEqual(response.code, 400)
        self.assertIn("error", await response.json())
        response = await treq.post(f"{self.base}/v1/push", json=push_body(), pool=self.pool)
        self.assertEqual(response.code, 401)
        await response.content()
        response = await treq.get(f"{self.base}/healthz", pool=self.pool)
        self.assertEqual(await response.json(), {"status": "serving"})
        response = await treq.get(f"{self.base}/metrics", pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertIn(b"msgplatform_sessions 0.0", await response.content())

    async def test_declared_too_large(self) -> None:
        """Content-Length over the default 8 MiB: 413 at the headers, nothing stored."""
        config = two_systems()
        node = await self.serve(config)
        limit = config.limits.http_max_body
        self.assertEqual(limit, 8 * 1024 * 1024)
        head = (f"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-1001\r\n"
                f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n")
        client = RawClient(head.encode() + b'{"to_uid": 1')
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        response = parse_response(await client.done)
        self.assertEqual(response.status, 413)
        self.assertIn(str(limit), response.json()["error"])
        self.assertEqual(node.store.batches, [])

    async def test_sent_too_large(self) -> None:
        """A client sending a body over the limit gets the 413 and nothing is stored."""
        node = await self.serve(two_systems(http_max_body=4096))
        body = json.dumps(push_body(content="x" * 60000)).encode()
        response = await treq.post(f"{self.base}/v1/push", data=body, headers=as_headers(SHOP),
                                   pool=self.pool)
        self.assertEqual(response.code, 413)
        self.assertIn("4096", (await response.json())["error"])
        self.assertEqual(node.store.batches, [])

    async def test_sent_too_large_default(self) -> None:
        """The same at the default limit, 8 MiB + 1 byte."""
        config = two_systems()
        node = await self.serve(config)
        body = b" " * (config.limits.http_max_body + 1)
        response = await treq.post(f"{self.base}/v1/push/batch", data=body, headers=as_headers(SHOP),
                                   pool=self.pool)
        self.assertEqual(response.code, 413)
        await response.content()
        self.assertEqual(node.store.batches, [])
