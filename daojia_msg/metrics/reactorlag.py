# -*- test-case-name: tests.metrics.test_reactorlag -*-
"""How late the reactor runs a timer: ``msgplatform_reactor_lag_seconds``.

Every :data:`INTERVAL` seconds a timer is due; the time between when it was
due and when it ran is the reactor's lag at that moment (work that held the
reactor thread: a big batch, a slow callback, a blocked admin session, a core
taken by other processes). The figure goes into a histogram, so an operator
sees both the usual lag and its tail, and the alert rules can fire on it.
"""

from __future__ import annotations

from prometheus_client import Histogram
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds between two measurements.
INTERVAL = 0.5
#: Upper bounds of the histogram's buckets, seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def lag_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("msgplatform_reactor_lag_seconds",
                     "How late the reactor ran a timer that was due (work holding its thread).",
                     buckets=BUCKETS, registry=registry)


class ReactorLag(Service):
    """Measures the reactor's lag while running; observations go to ``histogram``."""

    def __init__(self, clock: IReactorTime, histogram: Histogram,
                 interval: float = INTERVAL) -> None:
        self.clock = clock
        self.histogram = histogram
        self.interval = interval
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._fired)

    def _fired(self) -> None:
        self._call = None
        self.histogram.observe(max(0.0, self.clock.seconds() - self._due))
        if self.running:
            self._schedule()
