# -*- test-case-name: tests.test_steadyclock -*-
"""A reactor clock that never steps (installed by the twistd plugin).

Twisted's reactor runs its timers on ``time.time()``: when the wall clock
steps (an NTP step, an operator's ``date -s``), every timer of the node fires
that much late or early. A step forward of a minute fires a minute of
heartbeats, retries and deadlines at once; a step back freezes them all
(heartbeats stop, peers take the node for dead, requests go unanswered). A
node also reads the time from the reactor for msgids, send dates and
statistics, in Unix seconds.

:class:`SteadyClock` gives both: ``CLOCK_MONOTONIC`` (which never steps) plus
an offset to Unix time. Once a second :meth:`SteadyClock.adjust` moves the
offset towards what the wall clock says by at most :data:`MAX_SLEW` of the
time that passed (500 ppm, the largest slew ntpd applies): the node's time
follows the wall clock's slow corrections unnoticed, and after a step it
converges without ever jumping or going back (at 500 ppm a step of 1 s takes
about half an hour; restart the node to take a large step at once). A step
of more than :data:`STEP_WARN_S` is logged when it is seen.

:func:`install` sets it on a reactor (before anything is scheduled, so that
every timer uses it); tests keep their :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: The most the offset moves per second of monotonic time.
MAX_SLEW = 0.0005
#: How often the offset is adjusted, seconds.
ADJUST_S = 1.0
#: A difference to the wall clock larger than this is logged (once per step).
STEP_WARN_S = 1.0


class SteadyClock:
    """Unix seconds that never step: ``mono()`` plus an offset that drifts
    towards ``wall() - mono()`` at a rate of at most :data:`MAX_SLEW` (the
    time it gives is continuous and runs at 1 +- MAX_SLEW: never back)."""

    log = Logger()

    def __init__(self, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 max_slew: float = MAX_SLEW) -> None:
        self._wall = wall
        self._mono = mono
        self.max_slew = max_slew
        self._adjusted_at = mono()
        #: ``seconds() - mono()`` at the last adjustment, and its drift per second since.
        self.offset = wall() - self._adjusted_at
        self.rate = 0.0
        self._warned = False

    def seconds(self) -> float:
        now = self._mono()
        return now + self.offset + self.rate * (now - self._adjusted_at)

    def adjust(self) -> None:
        """Take the drift so far into the offset, and drift towards the wall
        clock over the next :data:`ADJUST_S` (within the slew allowed)."""
        now = self._mono()
        self.offset += self.rate * (now - self._adjusted_at)
        self._adjusted_at = now
        gap = self._wall() - now - self.offset
        self.rate = max(-self.max_slew, min(self.max_slew, gap / ADJUST_S))
        if abs(gap) > STEP_WARN_S:
            if not self._warned:
                self._warned = True
                self.log.warn(
                    "the wall clock stepped {direction} by {gap:.3f} s: the node's clock (timers, "
                    "msgids, send dates) follows it by slewing {slew:g} s per second, over about "
                    "{minutes:.0f} min; restart the node to take the step at once",
                    direction="forward" if gap > 0 else "back", gap=abs(gap),
                    slew=self.max_slew, minutes=abs(gap) / self.max_slew / 60)
        elif self._warned and abs(gap) <= self.max_slew * ADJUST_S:
            self._warned = False
            self.log.info("the node's clock has caught up with the wall clock")


def install(reactor: Any, clock: SteadyClock | None = None) -> SteadyClock:
    """Run ``reactor``'s timers (``reactor.seconds``) on a :class:`SteadyClock`,
    adjusted every :data:`ADJUST_S` while the reactor runs; returns it."""
    steady = clock if clock is not None else SteadyClock()
    reactor.seconds = steady.seconds
    loop = LoopingCall(steady.adjust)
    loop.clock = reactor
    reactor.callWhenRunning(loop.start, ADJUST_S, now=False)
    return steady
