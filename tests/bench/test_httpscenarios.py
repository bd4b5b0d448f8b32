"""Tests for :mod:`daojia_msg.bench.httpscenarios` on a fake clock and a fake HTTP client
(the runs against a real node are in ``test_bench``)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench.httpscenarios import Push


class FakeHttp:
    """What Push needs of RawHttp: answers held until the test releases them."""

    def __init__(self) -> None:
        self.held: list[Deferred[tuple[int, bytes]]] = []

    def build(self, path: str, body: bytes) -> bytes:
        return body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        d: Deferred[tuple[int, bytes]] = Deferred()
        self.held.append(d)
        return await d


class PushDrainTests(SynchronousTestCase):
    def run_open_loop(self, drain_s: float, concurrency: int = 2
                      ) -> tuple[Clock, FakeHttp, Deferred[Any]]:
        """Two requests offered at once; ``concurrency`` of them get a slot."""
        clock = Clock()
        spec = {"rate": 1e9, "duration": 2e-9, "batch": 1, "concurrency": concurrency,
                "uid_base": 5000, "appcode": 1001, "drain_s": drain_s}
        scenario = Push(clock, spec)
        http = FakeHttp()
        scenario.http = http  # type: ignore[assignment]
        d = Deferred.fromCoroutine(scenario.run())
        for _ in range(100):
            if len(http.held) == concurrency:
                break
            clock.advance(0.002)
        self.assertEqual(len(http.held), concurrency)
        return clock, http, d

    def test_waits_for_requests_in_flight(self) -> None:
        """Requests holding the semaphore are waited for too (not only queued ones)."""
        clock, http, d = self.run_open_loop(drain_s=10)
        clock.advance(0.002)
        self.assertNoResult(d)
        for answer in http.held:
            answer.callback((200, b"{}"))
        result = self.successResultOf(d)
        self.assertEqual((result["sent"], result["ok"], result["errors"], result["missing"]),
                         (2, 2, {}, 0))

    def test_drain_bounded(self) -> None:
        clock, http, d = self.run_open_loop(drain_s=5)
        http.held[0].callback((200, b"{}"))
        clock.advance(5)
        result = self.successResultOf(d)
        self.assertEqual((result["sent"], result["ok"], result["missing"]), (2, 1, 1))

    def test_requests_that_never_got_a_slot_are_missing(self) -> None:
        """One slot: the second request waits for it, and when the drain gives
        up on the first it was never sent; both count as missing."""
        clock, http, d = self.run_open_loop(drain_s=5, concurrency=1)
        clock.advance(5)
        result = self.successResultOf(d)
        self.assertEqual((result["sent"], result["ok"], result["missing"]), (1, 0, 2))


class PushBodyTests(SynchronousTestCase):
    def test_escalate_after_s_goes_into_each_push(self) -> None:
        spec = {"uid_base": 5000, "appcode": 1001, "escalate_after_s": 60}
        self.assertEqual(Push(Clock(), spec)._message(3)["escalate_after_s"], 60)
        del spec["escalate_after_s"]
        self.assertNotIn("escalate_after_s", Push(Clock(), spec)._message(3))
