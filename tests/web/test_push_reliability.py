"""Pushes when the store stalls (504, per-item TIMEOUT) and idempotent pushes
(``Idempotency-Key``, ``idempotency_key``): docs/openapi.yaml, docs/protocol.md §7.4."""

from __future__ import annotations

import json
from typing import Any

from daojia_msg.core.errors import StoreUnavailable, StoreUncertain
from tests.web.helpers import SHOP, TAXI, ApiTestCase, Client, Response, parse_response, push_body


class PushTimeoutTests(ApiTestCase):
    """A push whose store does not confirm within ``store.answer_timeout_s``
    (3 s) is a 504; the store goes on, and a resend with the same key finds
    what it stored."""

    def send(self, path: str, body: object, headers: dict[str, str]) -> Client:
        client = Client(self.site)
        client.send("POST", path, json.dumps(body).encode(), headers)
        return client

    def answer(self, client: Client) -> Response:
        return parse_response(client.transport.value())

    def test_504_then_late_success_and_resend(self) -> None:
        self.store.hold = True
        keyed = {**SHOP, "Idempotency-Key": "order-7-paid"}
        client = self.send("/v1/push", push_body(), keyed)
        self.node.clock.advance(2.9)
        self.assertEqual(client.transport.value(), b"")
        self.node.clock.advance(0.1)
        response = self.answer(client)
        self.assertError(response, 504, "may or may not")
        self.assertEqual(self.store.batches, [])
        # The store completes late: the message is stored (and counted) all the same.
        self.store.release()
        [new] = self.store.stored
        self.assertEqual(self.logic.stats.totals()["accepted"], 1)
        # A resend with the same key: the first msgid, not stored again.
        again = self.push(push_body(content="ignored"), keyed)
        self.assertEqual(again.status, 200)
        self.assertEqual(again.json(), {"msgid": str(new.message.msgid),
                                        "logid": new.message.logid, "online": False})
        self.assertEqual(len(self.store.stored), 1)

    def test_a_late_failure_stores_nothing(self) -> None:
        self.store.hold = True
        client = self.send("/v1/push", push_body(), SHOP)
        self.node.clock.advance(3)
        self.assertError(self.answer(client), 504)
        self.store.release(StoreUnavailable("gone"))
        self.assertEqual(self.store.stored, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_in_time_is_200(self) -> None:
        self.store.hold = True
        client = self.send("/v1/push", push_body(), SHOP)
        self.node.clock.advance(2.9)
        self.store.release()
        self.assertEqual(self.answer(client).status, 200)
        self.node.clock.advance(10)
        self.assertEqual(self.node.clock.getDelayedCalls(), [])

    def test_refused_at_once_is_503(self) -> None:
        """UNAVAILABLE only when the store refused before writing anything."""
        self.store.error = StoreUnavailable("down")
        self.assertError(self.push(push_body()), 503)

    def test_uncertain_store_failure_is_504(self) -> None:
        """The store failed during its commit: it may be stored, so 504, not 503."""
        self.store.error = StoreUncertain("lost during COMMIT")
        self.assertError(self.push(push_body()), 504, "may or may not")

    def test_batch_items_get_13(self) -> None:
        self.store.hold = True
        client = self.send("/v1/push/batch", {"messages": [
            push_body(to_uid=1, idempotency_key="k-1"), push_body(to_uid=0),
            push_body(to_uid=2, idempotency_key="k-2")]}, SHOP)
        self.node.clock.advance(3)
        response = self.answer(client)
        self.assertEqual(response.status, 200)
        first, bad, second = response.json()["results"]
        self.assertEqual((first["code"], bad["code"], second["code"]), (13, 1, 13))
        self.assertEqual(set(first), {"error", "code"})
        self.store.release()
        self.assertEqual(len(self.store.stored), 2)
        # The resend of both: each answered with its first msgid.
        again = self.request("POST", "/v1/push/batch", {"messages": [
            push_body(to_uid=1, idempotency_key="k-1"),
            push_body(to_uid=2, idempotency_key="k-2")]}, SHOP).json()["results"]
        self.assertEqual([r["msgid"] for r in again],
                         [str(n.message.msgid) for n in self.store.stored])
        self.assertEqual([r["online"] for r in again], [False, False])
        self.assertEqual(len(self.store.stored), 2)


class IdempotencyKeyTests(ApiTestCase):
    def keyed(self, key: str, base: dict[str, str] = SHOP) -> dict[str, str]:
        return {**base, "Idempotency-Key": key}

    def batch(self, *items: Any, headers: dict[str, str] = SHOP) -> list[Any]:
        response = self.request("POST", "/v1/push/batch", {"messages": list(items)}, headers)
        self.assertEqual(response.status, 200, response.body)
        results: list[Any] = response.json()["results"]
        return results

    def test_repeat_is_answered_with_the_first(self) -> None:
        """A repeat: the first msgid and logid, ``online`` false, the rest of
        its body ignored; neither stored nor pushed again."""
        conn = self.node.login(42, 1001)
        first = self.push(push_body(logid="first"), self.keyed("k1")).json()
        self.assertIs(first["online"], True)
        again = self.push(push_body(logid="second", content="other"), self.keyed("k1")).json()
        self.assertEqual(again, {**first, "online": False})
        self.assertEqual(len(self.store.stored), 1)
        self.assertEqual(len(conn.pushes), 1)
        # Without a key, or with another one: a new message.
        self.assertNotEqual(self.push(push_body()).json()["msgid"], first["msgid"])
        self.assertNotEqual(self.push(push_body(), self.keyed("k2")).json()["msgid"],
                            first["msgid"])

    def test_one_key_space_per_app(self) -> None:
        """The header and the batch field share the pushing app's key space;
        another app's key (another user system) has its own."""
        single = self.push(push_body(), self.keyed("shared")).json()
        [item] = self.batch(push_body(idempotency_key="shared"))
        self.assertEqual(item["msgid"], single["msgid"])
        other = self.push(push_body(to_appcode=2001), self.keyed("shared", TAXI)).json()
        self.assertNotEqual(other["msgid"], single["msgid"])
        self.assertEqual(len(self.store.stored), 2)
        [new] = [n for n in self.store.stored if n.message.to_appcode == 1001]
        self.assertEqual((new.message.from_uid, new.message.from_appcode), (0, 0))
        self.assertEqual(new.client_msg_id, "idem:1001:shared")

    def test_repeat_within_one_batch(self) -> None:
        results = self.batch(push_body(to_uid=1, idempotency_key="x"),
                             push_body(to_uid=2, idempotency_key="x"), push_body(to_uid=3))
        self.assertEqual(results[1]["msgid"], results[0]["msgid"])
        self.assertIs(results[1]["online"], False)
        self.assertEqual(len(self.store.stored), 2)

    def test_key_checks(self) -> None:
        good = ["a", "x" * 128, "order:7/paid#1", "~!"]
        bad = ["x" * 129, "has space", "tab\tkey", "é"]
        for key in good:
            with self.subTest(key=key):
                self.assertEqual(self.push(push_body(), self.keyed(key)).status, 200)
        for key in bad:
            with self.subTest(key=key):
                self.assertError(self.push(push_body(), self.keyed(key)), 400, "Idempotency-Key")
        results = self.batch(*(push_body(idempotency_key=k) for k in [*bad, "", 7, ["k"]]))
        for r in results:
            self.assertEqual((r["code"], "idempotency_key" in r["error"]), (1, True), r)
        self.assertEqual(len(self.store.stored), len(good))
        # null counts as absent.
        self.assertIn("msgid", self.batch(push_body(idempotency_key=None))[0])

    def test_empty_or_repeated_header(self) -> None:
        client = Client(self.site)
        body = json.dumps(push_body()).encode()
        client.transport.clear()
        client.channel.dataReceived(
            b"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-1001\r\n"
            b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertError(client.response(), 400, "more than once")
        self.assertError(self.push(push_body(), self.keyed("")), 400, "Idempotency-Key")
        self.assertEqual(self.store.stored, [])

    def test_not_a_body_field_of_a_single_push(self) -> None:
        self.assertError(self.push(push_body(idempotency_key="k")), 400, "idempotency_key")
