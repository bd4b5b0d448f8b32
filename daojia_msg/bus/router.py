# -*- test-case-name: tests.bus.test_router -*-
"""C2S routing: ``(appcode, msgtype) -> (bus, topic)``, and the bounded buffer
between the gate and the buses.

Every C2S frame waits in the buffer until its bus accepted it (or
``bus.publish_timeout_s`` passed: TIMEOUT, it may or may not be published). The buffer holds at most
``bus.max_pending`` frames of all buses together. When it is full the router
reports *pressure*: the gate stops reading every client socket until the
buffer has drained to half, so a lagging bus slows the phones down instead of
growing a queue. A frame that arrives while under pressure (already read from
a socket) still gets a place up to twice ``max_pending``; beyond that it is
answered UNAVAILABLE. Nothing is ever queued without bound.

The time limits are one :class:`~daojia_msg.deadlines.Deadlines` queue, not a
timer per frame. A frame past its deadline is cancelled (its bus forgets it if
it can) and fails with :class:`BusTimeout` (answered TIMEOUT), unless its bus
said it forgot it (:class:`BusUnavailable`: nothing was published).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.bus.envelope import CONTENT_TYPE
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.memory import MemoryBus
from daojia_msg.config import BusConfig, Config, Route
from daojia_msg.core.errors import BusTimeout, BusUnavailable
from daojia_msg.deadlines import Deadlines
from daojia_msg.logic.interfaces import IPublisher
from daojia_msg.metrics.histograms import LabeledHistogram


def make_bus(url: str, config: BusConfig, reactor: Any) -> IMessageBus:
    """The bus a URL names (the scheme picks the implementation)."""
    scheme = url.partition(":")[0]
    if url == "memory:":
        return MemoryBus()
    if scheme == "redis":
        from daojia_msg.bus.redis_streams import RedisStreamsBus

        return RedisStreamsBus(url, config, reactor)
    if scheme in ("amqp", "amqps"):
        from daojia_msg.bus.amqp import AmqpBus

        return AmqpBus(url, config, reactor)
    if scheme in ("http", "https"):
        from daojia_msg.bus.webhook import WebhookBus

        return WebhookBus(url, config, reactor)
    raise ValueError(f"no bus for URLs of scheme {scheme!r}")  # no more: it may hold a password


#: How the default bus is named in the metrics' ``bus`` label.
DEFAULT_NAME = "default"
#: Upper bounds of the publish-latency buckets, seconds.
PUBLISH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@implementer(IPublisher)
class BusRouter:
    """The buses of a node (the default one and the named ones) behind one buffer.

    ``on_pressure(True)`` when the buffer is full, ``on_pressure(False)`` once
    it drained to half.
    """

    log = Logger()

    def __init__(self, config: Config, reactor: IReactorTime,
                 buses: dict[str, IMessageBus] | None = None) -> None:
        self.config = config.bus
        self.reactor = reactor
        if buses is None:
            buses = {"": make_bus(config.bus.url, config.bus, reactor)}
            for name, url in config.buses.items():
                buses[name] = make_bus(url, config.bus, reactor)
        self.buses = buses
        self.pending = 0
        self.pressure = False
        self.on_pressure: Callable[[bool], None] = lambda on: None
        self.deadlines = Deadlines(reactor, self.config.publish_timeout_s, "C2S publishes")
        #: Each publish's time to its bus's answer (``time.perf_counter``
        #: seconds) by bus name ("default" for the default bus), and failures
        #: by bus name, for the metrics.
        self.published = LabeledHistogram(PUBLISH_SECONDS)
        self.errors: dict[str, int] = dict.fromkeys(
            (name or DEFAULT_NAME for name in self.buses), 0)

    def reconnects(self) -> dict[str, int]:
        """Each bus's reconnections so far, by bus name (for the metrics)."""
        return {name or DEFAULT_NAME: getattr(bus, "reconnects", 0)
                for name, bus in self.buses.items()}

    @property
    def default(self) -> IMessageBus:
        return self.buses[""]

    async def start(self) -> None:
        for name, bus in self.buses.items():
            await bus.start()
            self.log.info("C2S bus {name} ready", name=name or "(default)")

    async def stop(self) -> None:
        await gatherResults([bus.stop() for bus in self.buses.values()], consumeErrors=True)
        self.deadlines.stop()

    def publish(self, route: Route, payload: bytes, logid: str,
                content_type: str = CONTENT_TYPE) -> Deferred[None]:
        """Hand ``payload`` to the route's bus; fires once the bus accepted it,
        fails with :class:`BusUnavailable` when it did not, :class:`BusTimeout`
        when it did not say in time."""
        limit = self.config.max_pending
        if self.pending >= 2 * limit:
            return Deferred.fromCoroutine(_refuse(f"{self.pending} C2S frames wait for the buses"))
        self.pending += 1
        if self.pending >= limit and not self.pressure:
            self._set_pressure(True)
        d = self.buses[route.bus].publish(route.topic, payload, logid, content_type)
        self.deadlines.watch(d)
        # One callback per frame: this runs per frame.
        return d.addBoth(self._settled, route, time.perf_counter())

    def _settled(self, result: object, route: Route, started: float) -> object:
        self.pending -= 1
        if self.pressure and self.pending <= self.config.max_pending // 2:
            self._set_pressure(False)
        name = route.bus or DEFAULT_NAME
        self.published.observe(name, time.perf_counter() - started)
        if isinstance(result, Failure):
            self.errors[name] = self.errors.get(name, 0) + 1
            self._unavailable(result, route)
        return result

    def _set_pressure(self, on: bool) -> None:
        self.pressure = on
        self.log.warn("C2S buses {state}: {pending} frames waiting",
                      state="lag, pausing client reads" if on else "caught up, reading again",
                      pending=self.pending)
        self.on_pressure(on)

    def _unavailable(self, failure: Failure, route: Route) -> None:
        if failure.check(BusUnavailable):
            failure.raiseException()
        if failure.check(TimeoutError):
            raise BusTimeout(f"bus {route.bus or '(default)'} did not accept within "
                                 f"{self.config.publish_timeout_s:g} s")
        if failure.check(CancelledError):  # the bus is stopping
            raise BusUnavailable(f"bus {route.bus or '(default)'} stopped before it accepted")
        failure.raiseException()


async def _refuse(why: str) -> None:
    raise BusUnavailable(why)
