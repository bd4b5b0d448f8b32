"""Tests for ``msgctl push`` and ``msgctl stats`` against stubbed HTTP API resources."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.msgctl.fakes import CliTestCase


class PushResource(Resource):
    isLeaf = True

    def __init__(self, code: int, answer: dict[str, Any]) -> None:
        super().__init__()
        self.code = code
        self.answer = answer
        self.seen: list[tuple[bytes, str | None, Any]] = []
        #: Each request's Idempotency-Key; the statuses of the first answers.
        self.keys: list[str | None] = []
        self.codes: list[int] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = json.loads(request.content.read())
        self.seen.append((request.path, request.getHeader("authorization"), body))
        self.keys.append(request.getHeader("idempotency-key"))
        request.setResponseCode(self.codes.pop(0) if self.codes else self.code)
        request.setHeader("content-type", "application/json")
        return json.dumps(self.answer).encode()


class PushTests(CliTestCase):
    def push(self, resource: PushResource, *extra: str) -> Deferred[int]:
        stub = StubTreq(resource)
        d = self.run_cli(
            "push",
            "--to",
            "8",
            "--to-appcode",
            "1002",
            "--msgtype",
            "3",
            *extra,
            "new",
            "order",
            http=stub,
        )
        stub.flush()
        return d

    def test_push(self) -> None:
        resource = PushResource(200, {"msgid": "77", "logid": "lg", "online": True})
        d = self.push(resource)
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(
            json.loads(self.out.getvalue()), {"msgid": "77", "logid": "lg", "online": True}
        )
        path, auth, body = resource.seen[0]
        self.assertEqual((path, auth), (b"/v1/push", "Bearer demo-key-1002"))
        self.assertEqual(
            body, {"to_uid": 8, "to_appcode": 1002, "msgtype": 3, "content": "new order"}
        )

    def test_a_504_is_resent_with_the_same_key(self) -> None:
        resource = PushResource(200, {"msgid": "9", "logid": "l", "online": False})
        resource.codes = [504]
        stub = StubTreq(resource)
        d = self.run_cli("push", "--to", "8", "--to-appcode", "1002", "--msgtype", "3", "x",
                         http=stub)
        stub.flush()
        self.assertEqual(len(resource.seen), 1)
        self.reactor.advance(0.5)
        stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(json.loads(self.out.getvalue())["msgid"], "9")
        first, again = resource.keys
        self.assertEqual((len(first or ""), again), (32, first))
        self.assertIn("HTTP 504", self.err.getvalue())
        self.assertIn("resending with the same Idempotency-Key (1 of 3)", self.err.getvalue())

    def test_idempotency_key_option_and_other_errors_not_resent(self) -> None:
        resource = PushResource(503, {"error": "store unavailable"})
        d = self.push(resource, "--idempotency-key", "order-7")
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(resource.keys, ["order-7"])

    def test_api_key_and_logid(self) -> None:
        resource = PushResource(200, {"msgid": "1"})
        d = self.push(resource, "--api-key", "k", "--logid", "L1", "--http", "http://h:1/")
        self.assertEqual(self.exit_code(d), 0)
        _path, auth, body = resource.seen[0]
        self.assertEqual((auth, body["logid"]), ("Bearer k", "L1"))

    def test_http_error(self) -> None:
        d = self.push(PushResource(401, {"error": "bad api key"}))
        self.assertEqual(self.exit_code(d), 1)
        self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(self.err.getvalue(), "msgctl: error: HTTP 401: bad api key\n")

    def test_key_required_for_other_apps(self) -> None:
        d = self.run_cli("push", "--to", "8", "--to-appcode", "5000", "--msgtype", "3", "x")
        self.assertEqual(self.exit_code(d), 2)
        self.assertIn("--api-key is required", self.err.getvalue())


class StatsResource(Resource):
    isLeaf = True

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__()
        self.answer = answer
        self.code = 200
        self.seen: list[tuple[bytes, str | None]] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append((request.path, request.getHeader("authorization")))
        request.setResponseCode(self.code)
        request.setHeader("content-type", "application/json")
        return json.dumps(self.answer).encode()


class StatsTests(CliTestCase):
    ANSWER = {
        "totals": {"accepted": 4, "pushed": 3, "acked": 3, "repushed": 1, "stored": 1,
                   "pulled": 1},
        "by_route": [{"appcode": 1001, "msgtype": 7, "kind": "C2C", "accepted": 4, "pushed": 3,
                      "acked": 3, "repushed": 1, "stored": 1, "pulled": 1,
                      "ack_latency": {"count": 3, "mean_ms": 40.1, "p50_ms": 25.0,
                                      "p90_ms": 100.0, "p99_ms": 100.0}}],
        "ack_latency": {"count": 3, "mean_ms": 40.1, "p50_ms": 25.0, "p90_ms": 100.0,
                        "p99_ms": None},
        "delivery_rate": 0.75, "delivery_rate_total": 0.75, "window_s": 300.0,
    }

    def test_table(self) -> None:
        resource = StatsResource(self.ANSWER)
        stub = StubTreq(resource)
        d = self.run_cli("stats", http=stub)
        stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(resource.seen, [(b"/v1/stats", "Bearer demo-key-1001")])
        lines = self.out.getvalue().splitlines()
        self.assertEqual(lines[0], "delivery rate: 75.00% (last 300 s), since the start: 75.00%")
        self.assertEqual(lines[2].split(),
                         ["1001", "7", "C2C", "4", "3", "3", "1", "1", "1", "0", "0", "25",
                          "100"])
        self.assertEqual(lines[3].split(),
                         ["total", "4", "3", "3", "1", "1", "1", "0", "0", "25", "-"])

    def test_watch_prints_again_every_interval(self) -> None:
        resource = StatsResource(self.ANSWER)
        stub = StubTreq(resource)
        d = self.run_cli("stats", "--watch", "2", "--rounds", "3", http=stub)
        stub.flush()
        self.assertEqual(len(resource.seen), 1)
        self.reactor.advance(1.9)
        stub.flush()
        self.assertEqual(len(resource.seen), 1)  # not before its time
        for _ in range(2):
            self.reactor.advance(0.1 if len(resource.seen) == 1 else 2)
            stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(len(resource.seen), 3)
        rounds = [line for line in self.out.getvalue().splitlines() if line.startswith("--- ")]
        self.assertEqual(len(rounds), 3)
        self.assertEqual(self.out.getvalue().count("delivery rate: 75.00%"), 3)

    def test_a_failed_round_is_said_and_the_watch_goes_on(self) -> None:
        resource = StatsResource(self.ANSWER)
        resource.answer, resource.code = {"error": "store unavailable"}, 503
        stub = StubTreq(resource)
        d = self.run_cli("stats", "--watch", "1", "--rounds", "2", http=stub)
        stub.flush()
        resource.answer, resource.code = self.ANSWER, 200
        self.reactor.advance(1)
        stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertIn("*** HTTP 503: store unavailable", self.err.getvalue())
        self.assertEqual(self.out.getvalue().count("delivery rate: 75.00%"), 1)

    def test_watch_ends_with_1_when_its_last_round_failed(self) -> None:
        resource = StatsResource({"error": "store unavailable"})
        resource.code = 503
        stub = StubTreq(resource)
        d = self.run_cli("stats", "--watch", "1", "--rounds", "1", http=stub)
        stub.flush()
        self.assertEqual(self.exit_code(d), 1)

    def test_watch_takes_half_a_second_at_least(self) -> None:
        self.assertIn("expected 0.5 to 86400 seconds", self.bad_args("stats", "--watch", "0.1"))

    def test_json(self) -> None:
        stub = StubTreq(StatsResource(self.ANSWER))
        d = self.run_cli("stats", "--json", "--appcode", "1002", http=stub)
        stub.flush()
        self.assertEqual(self.exit_code(d), 0)
        self.assertEqual(json.loads(self.out.getvalue()), self.ANSWER)


class StoreStatsTests(CliTestCase):
    STORE = {
        "pending_rows": 1234567, "history_rows": 40, "dedup_rows": 3,
        "oldest_pending_age_s": 7200.0,
        "bytes": {"pending": 3 << 20, "history": 1536, "dedup": 100},
        "approximate": True, "figures_at_ms": 1_700_000_000_000,
        "last_purge": {"at_ms": 1_700_000_000_000, "expired": 2, "delivered": 9, "history": 4,
                       "dedup": 1, "batches": 12, "skipped": ["db messages_3"]},
    }

    def run_store_stats(self, answer: dict[str, Any], *extra: str) -> tuple[int, list[str]]:
        resource = StatsResource(answer)
        stub = StubTreq(resource)
        d = self.run_cli("store-stats", *extra, http=stub)
        stub.flush()
        self.assertEqual(resource.seen, [(b"/v1/stats", "Bearer demo-key-1001")])
        return self.exit_code(d), self.out.getvalue().splitlines()

    def test_table(self) -> None:
        code, lines = self.run_store_stats({**StatsTests.ANSWER, "store": self.STORE})
        self.assertEqual(code, 0)
        self.assertEqual(lines[0].split(), ["table", "rows", "bytes", "(estimates)"])
        self.assertEqual(lines[1].split(), ["pending", "1,234,567", "3.0", "MiB"])
        self.assertEqual(lines[2].split(), ["history", "40", "1.5", "KiB"])
        self.assertEqual(lines[3].split(), ["dedup", "3", "100", "B"])
        self.assertRegex(lines[4], r"^figures read at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
                                   r"\(at most once per purge_interval_s\)$")
        self.assertEqual(lines[5], "oldest pending message: 2.0 h old")
        self.assertIn(": 2 expired, 9 delivered, 4 history rows, 1 de-dup keys in 12 batches;"
                      " skipped (another node purged them): db messages_3", lines[6])

    def test_nothing_yet(self) -> None:
        store = {**self.STORE, "oldest_pending_age_s": None, "last_purge": None,
                 "approximate": False, "figures_at_ms": None}
        code, lines = self.run_store_stats({**StatsTests.ANSWER, "store": store})
        self.assertEqual((code, lines[0].split()), (0, ["table", "rows", "bytes"]))
        self.assertEqual(lines[4:], ["figures: not read yet", "oldest pending message: none",
                                     "last purge: none yet on this node"])

    def test_json(self) -> None:
        code, lines = self.run_store_stats({**StatsTests.ANSWER, "store": self.STORE}, "--json")
        self.assertEqual((code, json.loads("\n".join(lines))), (0, self.STORE))

    def test_a_node_without_store_figures(self) -> None:
        code, _ = self.run_store_stats(StatsTests.ANSWER)
        self.assertEqual(code, 1)
        self.assertIn("no \"store\"", self.err.getvalue())
