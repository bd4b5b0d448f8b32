"""The C2S router: per-route buses, the bounded buffer, back-pressure on the gate."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daojia_msg.bus.envelope import (
    CONTENT_TYPE,
    JSON,
    BadEnvelope,
    Envelope,
    decode_envelope,
    log_fields,
    media_type,
)
from daojia_msg.bus.interfaces import IMessageBus
from daojia_msg.bus.memory import MemoryBus
from daojia_msg.bus.router import BusRouter, make_bus
from daojia_msg.config import BusConfig, Route, default_config
from daojia_msg.core.errors import BusTimeout, BusUnavailable
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Stack


@implementer(IMessageBus)
class HeldBus:
    """A bus that accepts only when the test says so."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str, Deferred[None]]] = []
        self.content_types: list[str] = []

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(_none())

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(_none())

    def publish(self, topic: str, payload: bytes, logid: str,
                content_type: str = CONTENT_TYPE) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.published.append((topic, payload, logid, d))
        self.content_types.append(content_type)
        return d


async def _none() -> None:
    return None


def router(max_pending: int = 4, **buses: IMessageBus) -> tuple[BusRouter, Clock, list[bool]]:
    clock = Clock()
    config = default_config().replace(bus=BusConfig(max_pending=max_pending, publish_timeout_s=5))
    r = BusRouter(config, clock, buses={"": HeldBus(), **buses})
    changes: list[bool] = []
    r.on_pressure = changes.append
    return r, clock, changes


ROUTE = Route(1001, 1, "gps")


class RouterTests(SynchronousTestCase):
    def test_make_bus(self) -> None:
        self.assertIsInstance(make_bus("memory:", BusConfig(), Clock()), MemoryBus)
        with self.assertRaises(ValueError):
            make_bus("kafka://x", BusConfig(), Clock())

    def test_routes_pick_their_bus(self) -> None:
        orders = HeldBus()
        r, _, _ = router(orders=orders)
        r.publish(Route(1001, 2, "order-events", bus="orders"), b"o", "L1")
        r.publish(ROUTE, b"g", "L2")
        self.assertEqual([(t, p, lg) for t, p, lg, _ in orders.published],
                         [("order-events", b"o", "L1")])
        default = r.default
        assert isinstance(default, HeldBus)
        self.assertEqual([t for t, *_ in default.published], ["gps"])

    def test_the_media_type_goes_to_the_bus(self) -> None:
        r, _, _ = router()
        r.publish(Route(1002, 0, "offers"), b"{}", "L1", "application/json")
        r.publish(ROUTE, b"g", "L2")
        bus = r.default
        assert isinstance(bus, HeldBus)
        self.assertEqual(bus.content_types, ["application/json", "application/x-protobuf"])

    def test_pressure_when_full_and_release_at_half(self) -> None:
        r, _, changes = router(max_pending=4)
        bus = r.default
        assert isinstance(bus, HeldBus)
        results = [r.publish(ROUTE, b"%d" % i, "") for i in range(4)]
        self.assertEqual((changes, r.pending), ([True], 4))
        bus.published[0][3].callback(None)
        self.assertEqual(changes, [True])  # 3 left: not yet half
        bus.published[1][3].callback(None)
        self.assertEqual(changes, [True, False])  # 2 = half: read again
        self.assertIsNone(self.successResultOf(results[0]))

    def test_hard_cap_refuses(self) -> None:
        r, _, _ = router(max_pending=2)
        for _ in range(4):
            r.publish(ROUTE, b"x", "")
        self.failureResultOf(r.publish(ROUTE, b"x", ""), BusUnavailable)
        self.assertEqual(r.pending, 4)

    def test_timeout_is_a_bus_timeout(self) -> None:
        """The bus did not say in time: it may or may not have published it
        (answered TIMEOUT, docs/protocol.md §7.4)."""
        r, clock, _ = router()
        d = r.publish(ROUTE, b"x", "")
        clock.advance(5)
        self.failureResultOf(d, BusTimeout)
        self.assertEqual(r.pending, 0)

    def test_each_frame_waits_its_own_timeout_on_one_timer(self) -> None:
        r, clock, _ = router(max_pending=10)
        first = r.publish(ROUTE, b"a", "")
        clock.advance(3)
        second = r.publish(ROUTE, b"b", "")
        answered = r.publish(ROUTE, b"c", "")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        bus = r.default
        assert isinstance(bus, HeldBus)
        bus.published[2][3].callback(None)
        self.assertIsNone(self.successResultOf(answered))
        clock.advance(2)  # 5 s after the first
        error = self.failureResultOf(first, BusTimeout)
        self.assertIn("did not accept within 5 s", str(error.value))
        self.assertNoResult(second)
        clock.advance(3)  # 5 s after the second
        self.failureResultOf(second, BusTimeout)
        self.assertEqual((r.pending, clock.getDelayedCalls()), (0, []))

    def test_a_bus_that_accepts_at_once_sets_no_timer(self) -> None:
        clock = Clock()
        r = BusRouter(default_config(), clock, buses={"": MemoryBus()})
        self.assertIsNone(self.successResultOf(r.publish(ROUTE, b"x", "")))
        self.assertEqual((r.pending, clock.getDelayedCalls()), (0, []))

    def test_stop_cancels_the_timer(self) -> None:
        r, clock, _ = router()
        r.publish(ROUTE, b"x", "")
        self.successResultOf(Deferred.fromCoroutine(r.stop()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_publish_the_bus_cancels_is_unavailable(self) -> None:
        """A bus stopping cancels what it had not accepted: UNAVAILABLE, not INTERNAL."""
        r, _, _ = router()
        d = r.publish(ROUTE, b"x", "")
        bus = r.default
        assert isinstance(bus, HeldBus)
        bus.published[0][3].cancel()
        error = self.failureResultOf(d, BusUnavailable)
        self.assertIn("stopped before it accepted", str(error.value))
        self.assertEqual(r.pending, 0)

    def test_bus_failure_is_unavailable(self) -> None:
        r, _, _ = router()
        d = r.publish(ROUTE, b"x", "")
        bus = r.default
        assert isinstance(bus, HeldBus)
        bus.published[0][3].errback(BusUnavailable("down"))
        self.failureResultOf(d, BusUnavailable)


class GatePressureTests(SynchronousTestCase):
    def test_lagging_bus_pauses_every_connection(self) -> None:
        held = HeldBus()
        stack = Stack(bus=held)
        stack.router.config = BusConfig(max_pending=2, publish_timeout_s=30)
        stack.router.on_pressure = stack.factory.set_pressure
        a = stack.login(1)
        b = stack.login(2)
        for conn in (a, a):
            conn.send(Cmd.C2S, pb.C2SRequest(content=b"order"), msgtype=2)
        for conn in (a, b):
            self.assertEqual(conn.transport.producerState, "paused")
        # A frame already read is still taken (up to twice the limit), not lost.
        b.send(Cmd.C2S, pb.C2SRequest(content=b"order"), msgtype=2)
        for _, _, _, d in held.published[:2]:
            d.callback(None)
        for conn in (a, b):
            self.assertEqual(conn.transport.producerState, "producing")
        held.published[2][3].callback(None)
        codes = []
        for conn in (a, b):
            for frame in conn.received():
                result = pb.Result()
                result.ParseFromString(frame.body)
                codes.append(result.code)
        self.assertEqual(codes, [Code.OK] * 3)


class EnvelopeTests(SynchronousTestCase):
    def test_decode(self) -> None:
        payload = pb.Message(msgid=5, kind=pb.C2S, content=b"\xff", logid="m-log").SerializeToString()
        envelope = decode_envelope("gps", payload, "")
        self.assertEqual((envelope.topic, envelope.message.msgid, envelope.logid), ("gps", 5, "m-log"))
        self.assertEqual(decode_envelope("gps", payload, "given").logid, "given")
        with self.assertRaises(BadEnvelope):
            decode_envelope("gps", b"\xff\xff\xff", "")

    def test_decode_by_media_type(self) -> None:
        offer = decode_envelope("offers", b'{"offer_id":"7","state":"expired"}', "7", JSON)
        self.assertEqual(offer, Envelope("offers", pb.Message(), "7", JSON,
                                         {"offer_id": "7", "state": "expired"}))
        for bad in (b"[1]", b"{", b"\xff"):
            with self.assertRaises(BadEnvelope):
                decode_envelope("offers", bad, "", JSON)
        with self.assertRaisesRegex(BadEnvelope, "unknown content type 'text/plain'"):
            decode_envelope("gps", b"x", "", "text/plain")

    def test_media_type(self) -> None:
        self.assertEqual([media_type(v) for v in (None, "", b"", "Application/JSON; charset=utf-8",
                                                  b"application/x-protobuf")],
                         [CONTENT_TYPE, CONTENT_TYPE, CONTENT_TYPE, JSON, CONTENT_TYPE])

    def test_log_fields(self) -> None:
        payload = pb.Message(msgid=5, from_uid=7, from_appcode=1001, kind=pb.C2S,
                             logid="m-log").SerializeToString()
        self.assertEqual(log_fields(payload, "given"),
                         {"logid": "given", "msgid": 5, "uid": 7, "appcode": 1001})
        self.assertEqual(log_fields(payload, "")["logid"], "m-log")
        self.assertEqual(log_fields(b"\xff\xff\xff", "given"), {"logid": "given"})
