"""The bench worker process's side of the pipe: it exits once its result is
written, not after a fixed wait that could cut a large result short."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench.worker import EXIT_BOUND_S, WorkerProtocol


class FakeReactor(Clock):
    running = True

    def stop(self) -> None:
        self.running = False


class FakeScenario:
    progress = 0

    def __init__(self) -> None:
        self.closed = self.stopped = False

    async def check_target(self) -> None:
        pass

    async def setup(self) -> dict[str, Any]:
        return {"logged_in": 1}

    async def run(self) -> dict[str, Any]:
        return {"sent": 3, "latency_us": list(range(100_000))}

    def close(self) -> None:
        self.closed = True

    def stop(self) -> None:
        self.stopped = True


class WorkerExitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.proto = WorkerProtocol(self.reactor)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.scenario = FakeScenario()  # type: ignore[assignment]
        self.done = Deferred.fromCoroutine(self.proto.main())
        self.proto.go.callback(None)
        self.successResultOf(self.done)

    def test_exits_when_the_result_is_flushed(self) -> None:
        """The result is written, stdout closed after it; the reactor stops
        when the pipe has taken it (connectionLost), however long that takes."""
        lines = self.transport.value().splitlines()
        self.assertIn(b'"ev":"result"', lines[-1])
        self.assertTrue(self.transport.disconnecting)
        self.reactor.advance(EXIT_BOUND_S - 1)
        self.assertTrue(self.reactor.running)
        self.proto.connectionLost()
        self.assertFalse(self.reactor.running)

    def test_exits_anyway_after_the_bound(self) -> None:
        self.reactor.advance(EXIT_BOUND_S)
        self.assertFalse(self.reactor.running)


class ParentGoneTests(SynchronousTestCase):
    def test_parent_gone_stops_the_scenario_and_exits(self) -> None:
        reactor = FakeReactor()
        proto = WorkerProtocol(reactor)
        proto.makeConnection(StringTransport())
        scenario = FakeScenario()
        proto.scenario = scenario  # type: ignore[assignment]
        proto.connectionLost()
        self.assertTrue(scenario.stopped)
        self.assertTrue(reactor.running)
        reactor.advance(0.5)
        self.assertFalse(reactor.running)
