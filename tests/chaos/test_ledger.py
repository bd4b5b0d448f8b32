"""The fault suite's verdicts (daojia_msg.chaos.ledger) and its report."""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import TestCase

from daojia_msg.chaos import report
from daojia_msg.chaos.ledger import (
    OK,
    REFUSED,
    UNANSWERED,
    UNCERTAIN,
    Ledger,
    Row,
    Sent,
    content_for,
    parse_content,
    verdict,
)


def sent(outcome: str, msgid: int | None = None) -> Sent:
    s = Sent("c2c", 1, "p", 0.0)
    s.outcome, s.msgid = outcome, msgid
    return s


class VerdictTests(TestCase):
    def test_content_round_trip(self) -> None:
        self.assertEqual(content_for("s2c", 42), b"chaos s2c 42")
        self.assertEqual(parse_content(b"chaos c2s 7"), ("c2s", 7))
        self.assertEqual(content_for("c2s-amqp", 8), b"chaos c2s-amqp 8")
        self.assertEqual(parse_content(b"chaos c2s-amqp 8"), ("c2s-amqp", 8))
        self.assertIsNone(parse_content(b"hello"))

    def test_each_verdict(self) -> None:
        cases = [
            (sent(OK, 5), {5}, "delivered"),
            (sent(OK, 5), set(), "lost"),
            (sent(OK, 5), {6}, "mismatch"),
            (sent(OK, 5), {5, 6}, "double"),
            (sent(UNCERTAIN), {9, 10}, "double"),
            (sent(REFUSED), set(), "refused"),
            (sent(REFUSED), {5}, "refused_delivered"),
            (sent(UNCERTAIN), set(), "unconfirmed"),
            (sent(UNCERTAIN), {8}, "delivered"),
            (sent(UNANSWERED), set(), "unanswered"),
            (sent(UNANSWERED), {8}, "unanswered"),
            (sent("pending"), set(), "unanswered"),
        ]
        for message, received, expected in cases:
            self.assertEqual(verdict(message, received), expected, (message, received))


class LedgerTests(TestCase):
    def ledger(self) -> Ledger:
        ledger = Ledger()
        ok = ledger.new("c2c", "kill", 0.0)        # 1: delivered once, pushed and pulled
        ok.settle(OK, 1.0, 100)
        ok.attempts = 2
        lost = ledger.new("c2c", "kill", 0.0)      # 2: acknowledged, never arrives
        lost.settle(OK, 1.0, 101)
        twice = ledger.new("s2c", "kill", 0.0)     # 1: arrives under two msgids
        twice.settle(OK, 1.0, 200)
        maybe = ledger.new("c2s", "kill", 0.0)     # 1: TIMEOUT, never arrives: fine
        maybe.settle(UNCERTAIN, 1.0)
        maybe.no_answer = 1
        other = ledger.new("c2c", "none", 0.0)     # 3: another phase
        other.settle(REFUSED, 1.0)
        for content, msgid in [(b"chaos c2c 1", 100), (b"chaos c2c 1", 100),
                               (b"chaos s2c 1", 200), (b"chaos s2c 1", 201),
                               (b"chaos c2c 99", 5), (b"junk", 6)]:
            ledger.arrived(content, msgid)
        return ledger

    def test_classify_one_phase(self) -> None:
        ledger = self.ledger()
        row = ledger.classify("kill")
        self.assertEqual((row.sent, row.delivered, row.lost, row.double, row.unconfirmed),
                         (4, 1, 1, 1, 1))
        self.assertEqual((row.no_answer, row.resends, row.bad), (1, 1, 2))
        self.assertEqual(row.kinds["c2c"]["lost"], 1)
        self.assertEqual(row.kinds["s2c"]["double"], 1)
        self.assertIn("c2c 2", row.bad_examples["lost"][0])
        self.assertEqual(ledger.strays, 2)
        none = ledger.classify("none")
        self.assertEqual((none.sent, none.refused, none.bad), (1, 1, 0))

    def test_pending(self) -> None:
        ledger = Ledger()
        waiting = ledger.new("c2c", "a", 0.0)
        ledger.new("c2c", "b", 0.0).settle(OK, 1.0, 1)
        self.assertEqual(ledger.pending(), [waiting])
        self.assertEqual(ledger.pending("b"), [])


class ReportTests(TestCase):
    def test_table_and_bad_lines(self) -> None:
        rows = [LedgerTests.ledger(LedgerTests()).classify(p) for p in ("none", "kill")]
        text = report.table(rows)
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("fault"))
        self.assertIn("LOST", lines[0])
        self.assertEqual(lines[-1].split()[:5], ["total", "5", "1", "1", "1"])
        self.assertEqual(len({len(line) for line in lines[:2]}), 1)  # aligned
        bad = report.bad_lines(rows)
        self.assertEqual(len(bad), 2)
        self.assertTrue(bad[0].startswith("kill: 1 lost: c2c 2"))

    def test_document(self) -> None:
        rows = [Row("none", sent=3, delivered=3), Row("kill", sent=2, delivered=1, lost=1)]
        doc = report.document(rows, {"rate": 10}, {"run": {"setup_s": 1}})
        self.assertEqual((doc["ok"], doc["bad"]), (False, 1))
        self.assertEqual(doc["phases"][1]["bad"], 1)
        path = os.path.abspath(self.mktemp())
        report.write_json(path, doc)
        with open(path) as f:
            self.assertEqual(json.load(f)["settings"], {"rate": 10})
        self.assertTrue(report.document(rows[:1], {})["ok"])

    def test_a_kickout_during_a_redis_restart_fails_the_run(self) -> None:
        """A Redis outage must not disconnect phones: its phase's KICKOUTs are
        bad (in the document, the exit status and a line of their own), also
        when the fault runs a second time; elsewhere they are shown, not bad."""
        redis = Row("redis-restart#9", sent=10, delivered=10)
        redis.notes = {"kickouts": 4}
        kill = Row("node-kill", sent=10, delivered=10)
        kill.notes = {"kickouts": 2}
        doc = report.document([redis, kill], {})
        self.assertEqual((doc["ok"], doc["bad"]), (False, 4))
        self.assertEqual([p["bad"] for p in doc["phases"]], [4, 0])
        self.assertEqual(report.bad_lines([redis, kill]), [
            "redis-restart#9: 4 KICKOUT: the users' connections must stay through a Redis "
            "outage shorter than cluster.redis_outage_grace_s"])
        redis.notes = {"kickouts": 0}
        self.assertTrue(report.document([redis, kill], {})["ok"])

    def test_past_the_grace_a_kickout_is_by_design(self) -> None:
        """An outage as long as the nodes' grace (``--fault-seconds`` 30 and
        more) ends in KICKOUT SHUTDOWN on purpose: not judged; one shorter is."""
        self.assertEqual(Row.GRACE_S, 30.0)  # the suite's nodes keep the default
        row = Row("redis-restart", sent=10, delivered=10)
        row.notes = {"kickouts": 3, "healed_after_s": 31.2}
        self.assertEqual((row.kicked, row.bad), (0, 0))
        row.notes = {"kickouts": 3, "healed_after_s": 8.0}
        self.assertEqual((row.kicked, row.bad), (3, 3))

    def test_table_shows_the_phase_facts(self) -> None:
        row = Row("redis-restart", sent=12345, delivered=12345)
        row.notes = {"kickouts": 0, "disconnects": 3, "drained": 7, "ok_p99_s": 1.5}
        lines = report.table([row]).splitlines()
        self.assertEqual(lines[2].split()[-5:], ["0", "3", "7", "1.5", "-"])
        self.assertEqual(lines[3].split()[:3], ["total", "12345", "12345"])
        self.assertEqual(len({len(line) for line in lines[:3]}), 1)

    def test_the_total_row_adds_up_the_facts_that_add_up(self) -> None:
        """Kickouts, lost connections and pulled messages add up, the
        slowest answer is the slowest of all; a p99 of p99s stays blank."""
        kill = Row("node-kill", sent=10, delivered=10)
        kill.notes = {"kickouts": 0, "disconnects": 4, "drained": 2, "ok_p99_s": 1.5,
                      "ok_max_s": 2.25}
        stop = Row("node-stop", sent=5, delivered=5)
        stop.notes = {"kickouts": 1, "disconnects": 0, "drained": 3, "ok_p99_s": 0.5,
                      "ok_max_s": 3.5}
        total = report.table([kill, stop]).splitlines()[-1].split()
        self.assertEqual(total[0], "total")
        self.assertEqual(total[-4:], ["1", "4", "5", "3.5"])


class FrozenTests(TestCase):
    def test_only_the_frozen_nodes_users_in_the_window_are_excused(self) -> None:
        ledger = Ledger()
        for sender, at in [(1, 10.0), (2, 10.0), (1, 30.0)]:
            s = ledger.new("c2s", "stop", at)
            s.settle(UNANSWERED, at + 5)
            s.sender, s.last_attempt_at = sender, at
        ledger.new("c2s", "stop", 11.0).settle(OK, 11.1, 7)
        self.assertEqual(ledger.excuse_frozen("stop", {1}, 5.0, 20.0), 1)
        row = ledger.classify("stop")
        self.assertEqual((row.frozen, row.unanswered, row.lost, row.bad), (1, 2, 1, 3))
