"""The logic service as a whole: log lines about messages and the statistics it keeps."""

from __future__ import annotations

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.model import Kind
from daojia_msg.protocol.codes import Cmd, Code
from tests.helpers import Stack


class LogTests(SynchronousTestCase):
    def capture(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """The events of the trace (message and session path) and of the main log."""
        from daojia_msg import tracing

        events: list[dict[str, object]] = []
        main_log: list[dict[str, object]] = []
        tracing.MESSAGES.addObserver(events.append)
        self.addCleanup(tracing.MESSAGES.removeObserver, events.append)
        globalLogPublisher.addObserver(main_log.append)
        self.addCleanup(globalLogPublisher.removeObserver, main_log.append)
        return events, main_log

    def test_logid_in_every_message_log_line(self) -> None:
        events, main_log = self.capture()
        stack = Stack()
        a = stack.login(1)
        b = stack.login(2)
        result = a.c2c(2, logid="trace-xyz")
        b.ack([result.msgid])
        about = [e for e in events if e.get("msgid") == result.msgid]
        self.assertGreaterEqual(len(about), 3)  # stored, pushed, acked
        for event in about:
            self.assertEqual(event.get("logid"), "trace-xyz", event["log_format"])
        # The message path stays out of the main (text) log.
        self.assertEqual([e for e in main_log if e.get("msgid") == result.msgid], [])

    def test_every_line_about_a_message_names_it_and_its_user(self) -> None:
        """msgid, logid, uid and appcode on every line of a message's path:
        stored, pushed, re-pushed, given up, stored offline, pulled, ACKed."""
        events, main_log = self.capture()
        stack = Stack()
        a, b = stack.login(1), stack.login(2)
        to_b = a.c2c(2, logid="to-b").msgid
        to_c = a.c2c(3, logid="to-c").msgid
        limits = stack.config.limits
        for _ in range(limits.max_repush + 1):  # every re-push, then it is left pending
            stack.clock.advance(limits.ack_timeout_s)
        c = stack.login(3)
        c.pull()
        c.ack([to_c])
        b.ack([to_b])
        about = [e for e in events + main_log if e.get("msgid") in (to_b, to_c)]
        formats = {str(e["log_format"]).split(" ", 1)[1].split(" ")[0] for e in about}
        self.assertLessEqual({"stored", "pushed", "re-pushed", "not", "pulled", "acked"}, formats)
        for event in about:
            self.assertEqual(event.get("logid"), {to_b: "to-b", to_c: "to-c"}[event["msgid"]],
                             event["log_format"])
            self.assertIn(event.get("uid"), (1, 2, 3), event["log_format"])
            self.assertEqual(event.get("appcode"), 1001, event["log_format"])

    def test_session_path_goes_to_the_trace_only(self) -> None:
        """A successful LOGIN and LOGOUT are trace events; a refused LOGIN is
        in the main log."""
        events, main_log = self.capture()
        stack = Stack()
        conn = stack.login(7)
        conn.request(Cmd.LOGOUT)
        traced = [e["log_format"] for e in events if e.get("uid") == 7]
        self.assertEqual([str(f).split()[0] for f in traced], ["login", "logout"])
        self.assertEqual([e for e in main_log if e.get("uid") == 7], [])
        self.assertEqual(stack.connect().login(8, token="forged").code, Code.UNAUTHORIZED)
        self.assertEqual(len([e for e in main_log if e.get("uid") == 8]), 1)

    def test_nothing_is_published_without_a_listener(self) -> None:
        from daojia_msg import tracing

        seen: list[object] = []
        tracing.MESSAGES.publisher.addObserver(seen.append)  # behind the listener count
        self.addCleanup(tracing.MESSAGES.publisher.removeObserver, seen.append)
        stack = Stack()
        stack.login(1).c2c(2)
        self.assertEqual(seen, [])


class StatsCapTests(SynchronousTestCase):
    def test_msgtypes_beyond_the_cap_share_one_route(self) -> None:
        from daojia_msg.metrics.delivery import OTHER_MSGTYPE, Stats

        stats = Stats(max_routes=3)
        for msgtype in range(10):
            stats.add((1001, msgtype, Kind.C2C), "accepted")
        self.assertEqual(len(stats.by_route), 4)
        self.assertEqual(stats.by_route[(1001, OTHER_MSGTYPE, Kind.C2C)][0], 7)
        self.assertEqual(stats.totals()["accepted"], 10)
        stats.add((1001, 1, Kind.C2C), "acked")  # a route counted apart stays apart
        self.assertEqual(stats.by_route[(1001, 1, Kind.C2C)][2], 1)
        stats.observe_ack_latency((1001, 9, Kind.C2C), 0.01)  # beyond the cap: OTHER's
        self.assertEqual(list(stats.latency), [(1001, OTHER_MSGTYPE, Kind.C2C)])


class AckLatencyTests(SynchronousTestCase):
    def test_per_route_summaries_in_the_snapshot(self) -> None:
        """An ACK's latency (durable -> ACKed) is counted under its route;
        the snapshot gives each route's and the whole scope's summary."""
        stack = Stack()
        a, b, c = stack.login(1), stack.login(2), stack.login(3, appcode=1002)
        sent = a.c2c(2, msgtype=7).msgid
        stack.clock.advance(0.3)
        b.ack([sent])
        other = a.c2c(3, to_appcode=1002, msgtype=8).msgid
        stack.clock.advance(2.0)
        c.ack([other])
        snapshot = stack.logic.stats.snapshot()
        routes = {(r["appcode"], r["msgtype"]): r["ack_latency"] for r in snapshot["by_route"]}
        self.assertEqual(routes[(1001, 7)], {"count": 1, "mean_ms": 300.0, "p50_ms": 500.0,
                                             "p90_ms": 500.0, "p99_ms": 500.0})
        self.assertEqual(routes[(1002, 8)]["p50_ms"], 2500.0)
        self.assertEqual(snapshot["ack_latency"]["count"], 2)
        self.assertEqual(snapshot["ack_latency"]["mean_ms"], 1150.0)
        scoped = stack.logic.stats.snapshot(frozenset({1001}))
        self.assertEqual(scoped["ack_latency"]["count"], 1)
        self.assertEqual(stack.logic.stats.snapshot(frozenset({9}))["ack_latency"],
                         {"count": 0, "mean_ms": None, "p50_ms": None, "p90_ms": None,
                          "p99_ms": None})
