"""The open loop's schedule, and how late the generator itself sent."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench import base
from daojia_msg.bench.report import overload_figures


class OpenLoopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        # The generator's clock, in µs, driven by the test (it reads time once per send).
        self.patch(base, "now_us", lambda: int(self.clock.seconds() * 1e6))

    def test_sends_on_schedule_and_their_lateness(self) -> None:
        sent: list[tuple[Any, int]] = []
        lags: list[int] = []
        d = Deferred.fromCoroutine(base.open_loop(
            self.clock, 1000, 0.01, ["a", "b"], lambda t, i: sent.append((t, i)), lags))
        self.assertEqual(sent, [("a", 0)])  # the first at once, on time
        self.assertEqual(lags, [0])
        self.clock.advance(0.004)  # a tick 2 ms late: four were due, three of them late
        self.assertEqual([i for _, i in sent], [0, 1000, 2000, 3000, 4000])
        self.assertEqual(lags, [0, 3000, 2000, 1000, 0])
        self.assertEqual([t for t, _ in sent], ["a", "b", "a", "b", "a"])
        while not d.called:
            self.clock.advance(base.TICK_S)
        self.successResultOf(d)
        self.assertEqual(len(sent), 10)
        self.assertEqual(len(lags), 10)
        self.assertTrue(all(lag >= 0 for lag in lags))

    def test_without_lags(self) -> None:
        sent: list[int] = []
        d = Deferred.fromCoroutine(base.open_loop(
            self.clock, 1000, 0.003, [None], lambda _, i: sent.append(i)))
        while not d.called:
            self.clock.advance(base.TICK_S)
        self.assertEqual(sent, [0, 1000, 2000])

    def test_the_report_summarizes_the_lateness(self) -> None:
        res: dict[str, Any] = {"errors": {}}
        overload_figures(res, [{"send_lag_us": [0, 1000]}, {"send_lag_us": [3000]}],
                         good=3, send_secs=1.0, goodput_within_s=1.0)
        self.assertEqual(res["send_lag"]["count"], 3)
        self.assertEqual(res["send_lag"]["max_ms"], 3.0)
        closed: dict[str, Any] = {"errors": {}}
        overload_figures(closed, [{"send_lag_us": []}], good=0, send_secs=1.0,
                         goodput_within_s=1.0)
        self.assertNotIn("send_lag", closed)
