"""The internal RPC's TraceEvents: one node asks another what its trace buffer
holds about a logid (GET /v1/trace gathers the cluster's answers)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.cluster.rpc import RpcServerFactory, TraceEvents, Unauthorized
from daojia_msg.cluster.rpc.client import TRACE_TIMEOUT_S
from daojia_msg.cluster.rpc.commands import (
    MAX_TRACE_EVENTS,
    MAX_VALUE,
    PeerTrace,
    decode_events,
    encode_events,
)
from daojia_msg.core.errors import PeerUnavailable
from tests.cluster.test_rpc import RECORD, SECRET, Cluster, FakeLogic, message
from tests.helpers import T0


def ev(i: int, text: str = "pushed", appcode: int | None = 1001) -> dict[str, Any]:
    return {"ts_ms": 1795700000000 + i, "event": f"{text} {i}", "msgid": str(2**63 - 1),
            "uid": None, "appcode": appcode}


class TraceEventsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.c = Cluster()
        self.asked: list[str] = []
        self.events = [ev(1), ev(2, appcode=None)]

        def trace(logid: str) -> list[dict[str, Any]] | None:
            self.asked.append(logid)
            return self.events

        self.c.server.trace = trace

    def test_answer(self) -> None:
        d = self.c.peers.trace(2, "order-7 ü")
        self.c.connect()
        self.assertEqual(self.successResultOf(d), PeerTrace(self.events, True, False))
        self.assertEqual(self.asked, ["order-7 ü"])

    def test_no_buffer(self) -> None:
        """A node that keeps no trace buffer says so."""
        self.c.server.trace = lambda logid: None
        d = self.c.peers.trace(2, "x")
        self.c.connect()
        self.assertEqual(self.successResultOf(d), PeerTrace([], False, False))
        self.c.server.trace = None
        d = self.c.peers.trace(2, "x")
        self.c.flush()
        self.assertEqual(self.successResultOf(d), PeerTrace([], False, False))

    def test_a_peer_that_does_not_answer(self) -> None:
        """No answer within the trace timeout: PeerUnavailable; the connection
        stays (a question, not a delivery), and deliveries go on on it."""
        delivered = self.c.deliver(RECORD, message(1))
        pump = self.c.connect()
        self.successResultOf(delivered)
        self.c.reactor.advance(60)  # the link has been quiet for a while
        d = self.c.peers.trace(2, "x")
        pump.clientIO.getOutBuffer()  # the question never reaches the peer
        self.c.reactor.advance(TRACE_TIMEOUT_S - 0.1)
        self.assertNoResult(d)
        self.c.reactor.advance(0.1)
        failure = self.failureResultOf(d, PeerUnavailable)
        self.assertIn("node 2: no answer within 1 s", failure.getErrorMessage())
        self.assertEqual(self.c.attempts(), [])
        self.assertEqual(len(self.c.server.connections), 1)
        later = self.c.deliver(RECORD, message(2))
        pump.flush(advanceClock=False)
        self.assertIs(self.successResultOf(later), True)

    def test_not_alive(self) -> None:
        self.failureResultOf(self.c.peers.trace(9, "x"), PeerUnavailable)

    def test_trace_timeout_within_the_rpc_timeout(self) -> None:
        self.assertEqual(self.c.peers.trace_deadlines.timeout, TRACE_TIMEOUT_S)
        self.assertEqual(Cluster(timeout=0.5).peers.trace_deadlines.timeout, 0.5)

    def test_the_oldest_that_fit(self) -> None:
        """An answer holds at most one AMP value and MAX_TRACE_EVENTS events."""
        self.events = [ev(i, "x" * 1000) for i in range(100)]
        d = self.c.peers.trace(2, "x")
        self.c.connect()
        answer = self.successResultOf(d)
        self.assertTrue(answer.truncated)
        self.assertEqual(answer.events, self.events[:len(answer.events)])
        self.assertGreater(len(answer.events), 50)
        self.events = [ev(i) for i in range(MAX_TRACE_EVENTS + 1)]
        d = self.c.peers.trace(2, "x")
        self.c.flush()
        answer = self.successResultOf(d)
        self.assertEqual((len(answer.events), answer.truncated), (MAX_TRACE_EVENTS, True))

    def test_the_peer_fails(self) -> None:
        def broken(logid: str) -> list[dict[str, Any]]:
            raise RuntimeError("boom")

        self.c.server.trace = broken
        d = self.c.peers.trace(2, "x")
        self.c.connect()
        self.failureResultOf(d, PeerUnavailable)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class EncodingTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        events = [ev(1), ev(2, "stored 🙂", appcode=None)]
        data, truncated = encode_events(events)
        self.assertEqual((decode_events(data), truncated), (events, False))
        self.assertEqual(encode_events([]), (b"[]", False))

    def test_within_the_limit(self) -> None:
        events = [ev(i, "y" * 100) for i in range(10)]
        data, truncated = encode_events(events, limit=700)
        self.assertTrue(truncated)
        self.assertLessEqual(len(data), 700)
        self.assertEqual(decode_events(data), events[:len(decode_events(data))])
        self.assertLessEqual(len(encode_events([ev(i, "z" * 900) for i in range(200)])[0]),
                             MAX_VALUE)

    def test_not_a_trace(self) -> None:
        for data in [b"{}", b"[1]", json.dumps([{**ev(1), "extra": 1}]).encode(),
                     json.dumps([{**ev(1), "ts_ms": "1"}]).encode(),
                     json.dumps([{**ev(1), "appcode": True}]).encode(), b"[", b"\xff"]:
            with self.subTest(data=data):
                self.assertRaises(ValueError, decode_events, data)


class AuthTests(SynchronousTestCase):
    def test_before_auth(self) -> None:
        """Like every command, TraceEvents needs Auth first (a trace names users)."""
        clock = MemoryReactorClock()
        clock.advance(T0)
        asked: list[str] = []
        factory = RpcServerFactory(FakeLogic(), clock, SECRET,
                                   trace=lambda logid: asked.append(logid) or [])
        client, _, pump = connectedServerAndClient(lambda: factory.buildProtocol(None), amp.AMP,
                                                   clock=clock)
        answers: list[Any] = []
        client.callRemote(TraceEvents, logid="x").addBoth(answers.append)
        pump.flush()
        [answer] = answers
        self.assertIsInstance(answer, Failure)
        answer.trap(Unauthorized)
        self.assertEqual(asked, [])
        self.assertTrue(pump.serverIO.disconnected)
