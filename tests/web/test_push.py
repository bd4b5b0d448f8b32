"""Tests for POST /v1/push and POST /v1/push/batch (daojia_msg.web.endpoints),
through the real site over a :class:`StringTransport`."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from daojia_msg.config import default_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.model import Kind
from daojia_msg.protocol import errors
from daojia_msg.web.endpoints import Api
from tests.web.helpers import SHOP, TAXI, ApiTestCase, Client, push_body


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

    def test_each_refusal_says_what_is_wrong(self) -> None:
        """No header, a header without the Bearer scheme, an unknown key: three
        different reasons, none of which repeats the header (it may be a key)."""
        self.assertError(self.push(push_body(), {}), 401, "missing API key")
        for header in ("key-1001", "Basic a2V5LTEwMDE=", "Bearer", "Token key-1001"):
            with self.subTest(header=header):
                error = self.assertError(self.push(push_body(), {"Authorization": header}), 401,
                                         "must be 'Bearer <api key>'")
                self.assertNotIn("key-1001", error)
        self.assertError(self.push(push_body(), {"Authorization": "Bearer key-100"}), 401,
                         "unknown API key")

    def test_bearer_case_insensitive(self) -> None:
        self.assertEqual(self.push(push_body(), {"Authorization": "bearer  key-1001"}).status, 200)

    def test_rich_content_refused_with_its_reason_and_nothing_stored(self) -> None:
        body = push_body(to_appcode=1002, msgtype=10, content='<img url="javascript:x" />')
        self.assertError(self.push(body), 400, "rich content: an <img /> url must be an absolute")
        self.assertEqual(self.store.batches, [])
        good = push_body(to_appcode=1002, msgtype=10, content='<font color="red">hi</font>')
        self.assertEqual(self.push(good).status, 200)

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
            self.assertEqual(set(results[i]), {"error", "code"}, results[i])
        # Each with the result code of its refusal (docs/protocol.md §4).
        self.assertEqual([results[i]["code"] for i in (1, 3, 4, 5, 6)], [1, 2, 9, 1, 1])
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
                                                        ["error"], "code": 1}]})
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
        """A store that refused: each item it hit is UNAVAILABLE (code 11) in
        the 200 answer, beside the items refused on their own."""
        self.store.error = StoreUnavailable("down")
        response = self.request("POST", "/v1/push/batch",
                                {"messages": [push_body(), push_body(to_uid=0)]}, SHOP)
        self.assertEqual(response.status, 200)
        stored, refused = response.json()["results"]
        self.assertEqual(stored, {"error": "message store unavailable", "code": 11})
        self.assertEqual(refused["code"], 1)
        self.assertEqual(self.store.batches, [])

    def test_batch_unauthorized(self) -> None:
        response = self.request("POST", "/v1/push/batch", {"messages": []}, {})
        self.assertError(response, 401)


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
