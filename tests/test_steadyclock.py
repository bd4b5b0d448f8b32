"""The reactor clock that never steps (daojia_msg.steadyclock): fake wall and
monotonic clocks, stepped as NTP or an operator would."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.steadyclock import ADJUST_S, MAX_SLEW, SteadyClock, install

T0 = 1_800_000_000.0


class Clocks:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class SteadyClockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clocks = Clocks()
        self.steady = SteadyClock(lambda: self.clocks.wall, lambda: self.clocks.mono)

    def run_for(self, seconds: float, step: float = 0.25) -> list[float]:
        """Run ``seconds``, adjusting every ADJUST_S; every reading taken."""
        readings = []
        elapsed = 0.0
        since_adjust = 0.0
        while elapsed < seconds:
            self.clocks.run(step)
            elapsed += step
            since_adjust += step
            if since_adjust >= ADJUST_S:
                since_adjust = 0.0
                readings.append(self.steady.seconds())
                self.steady.adjust()
            readings.append(self.steady.seconds())
        return readings

    def test_starts_at_the_wall_clock_and_keeps_with_it(self) -> None:
        self.assertEqual(self.steady.seconds(), T0)
        self.run_for(100)
        self.assertAlmostEqual(self.steady.seconds(), self.clocks.wall, places=6)

    def test_a_step_back_never_takes_the_time_back(self) -> None:
        self.run_for(10)
        before = self.steady.seconds()
        self.clocks.wall -= 3600  # an hour back
        readings = self.run_for(600)
        self.assertEqual(readings, sorted(readings))
        self.assertGreater(readings[0], before)
        # Ten minutes later the node has slewed 0.3 s of the hour, no more.
        slewed = (self.clocks.mono - 1000.0 + T0) - self.steady.seconds()
        self.assertLess(abs(slewed - 600 * MAX_SLEW), 2 * MAX_SLEW)
        # Its timers ran on: the 599.75 s of monotonic time between the first
        # and last readings are as many of its seconds, less the slew.
        self.assertLess(abs(readings[-1] - readings[0] - 599.75), 600 * MAX_SLEW + 1e-6)

    def test_a_step_forward_is_slewed_not_jumped(self) -> None:
        self.clocks.wall += 2.0
        readings = self.run_for(60)
        gaps = [b - a for a, b in zip(readings, readings[1:], strict=False)]
        self.assertLessEqual(max(gaps), 0.25 * (1 + MAX_SLEW) + 1e-6)  # never a jump
        self.assertGreaterEqual(min(gaps), 0)
        self.run_for(4100)  # 2 s at 500 ppm: ~4,000 s
        self.assertAlmostEqual(self.steady.seconds(), self.clocks.wall, places=3)

    def test_small_corrections_are_followed(self) -> None:
        """NTP's slews (a few ms) are taken within seconds."""
        self.run_for(5)
        self.clocks.wall += 0.002
        self.run_for(10)
        self.assertAlmostEqual(self.steady.seconds(), self.clocks.wall, places=6)

    def test_a_step_is_logged_once(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]  # (typed for TestCase; works on SynchronousTestCase)
        self.clocks.wall -= 30
        self.run_for(10)
        warned = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warned), 1)
        self.assertEqual((warned[0]["direction"], round(warned[0]["gap"])), ("back", 30))


class InstallTests(SynchronousTestCase):
    def test_the_reactor_runs_on_it_and_adjusts_it(self) -> None:
        clocks = Clocks()
        steady = SteadyClock(lambda: clocks.wall, lambda: clocks.mono)
        reactor = Clock()
        started: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        reactor.callWhenRunning = lambda f, *a, **k: started.append((f, a, k))  # type: ignore[attr-defined]
        self.assertIs(install(reactor, steady), steady)
        self.assertEqual(reactor.seconds(), T0)
        clocks.wall -= 10
        self.assertEqual(reactor.seconds(), T0)  # the wall clock's step is not the reactor's
        [(start, args, kwargs)] = started
        self.assertEqual((args, kwargs), ((ADJUST_S,), {"now": False}))
