"""Nearby order offers on one node (memory store) on a fake clock: waves on
time, nearest first, never twice to a uid; accepts (first wins; taken, not
offered, expired); outcomes by S2C and on the bus, once; expiry; the ticker
taking work a dead node left; the metrics."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import GeoConfig, OffersConfig, default_config
from daojia_msg.core.errors import BusUnavailable, StoreUnavailable
from daojia_msg.core.offers import Wave
from daojia_msg.logic.offers import LEASE_S, OUTCOME_LEASE_S, TICK_S, Offers
from daojia_msg.logic.sending import PushItem
from daojia_msg.metrics.offers import OffersCollector
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Conn, Stack

LAT, LON = 31.2304, 121.4737
DRIVER = 1002
ORDER = 5  # the offer's msgtype
ACCEPT, RESULT = 3, 4


def at(east_m: float) -> bytes:
    return b"%.6f,%.6f" % (LAT, LON + east_m / 95_200)


class OffersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack(config=default_config().replace(geo=GeoConfig(max_age_s=3600)))
        self.stack.logic.startService()
        self.addCleanup(self.stack.logic.stopService)
        self.drivers: dict[int, Conn] = {}
        #: Pushes that came with a response, by uid.
        self.stashed: dict[int, list[pb.Message]] = {}

    def driver(self, uid: int, east_m: float) -> Conn:
        conn = self.stack.login(uid, DRIVER, host=f"10.0.1.{uid}")
        result = conn.request(Cmd.C2S, pb.C2SRequest(content=at(east_m)), msgtype=1)
        self.assertEqual(result.code, Code.OK)
        self.drivers[uid] = conn
        return conn

    def create(self, waves: list[tuple[float, int, float]], deadline_s: float = 30,
               content: bytes = b"order 1") -> int:
        d = Deferred.fromCoroutine(self.stack.logic.offers.create(
            DRIVER, LAT, LON, ORDER, content, [Wave(*w) for w in waves], deadline_s))
        return self.successResultOf(d).offer_id

    def view(self, offer_id: int) -> tuple[str, Any, list[int]]:
        found = self.successResultOf(Deferred.fromCoroutine(
            self.stack.logic.offers.view(offer_id)))
        assert found is not None
        offer, state = found
        return state, offer.winner_uid, list(offer.pushed_to)

    def pushes(self) -> dict[int, list[tuple[int, bytes]]]:
        """What each driver was pushed since the last call, ACKed: (msgtype, content)."""
        self.stack.clock.advance(0)
        out = {}
        for uid, conn in self.drivers.items():
            messages = self.stashed.pop(uid, []) + conn.pushed_messages()
            if messages:
                self.assertEqual(conn.ack([m.msgid for m in messages]).code, Code.OK)
                self.stashed[uid] = [self.parsed(f) for f in conn.pushes]
            out[uid] = [(m.msgtype, m.content) for m in messages]
        return out

    @staticmethod
    def parsed(frame: Any) -> pb.Message:
        m = pb.Message()
        m.ParseFromString(frame.body)
        return m

    def accept(self, uid: int, offer_id: int | bytes) -> pb.Result:
        content = offer_id if isinstance(offer_id, bytes) else str(offer_id).encode()
        conn = self.drivers[uid]
        result = conn.request(Cmd.C2S, pb.C2SRequest(content=content), msgtype=ACCEPT)
        self.stashed.setdefault(uid, []).extend(self.parsed(f) for f in conn.pushes)
        return result

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for payload, _ in self.stack.bus.topics.get("offers", ())]

    def advance(self, seconds: float) -> None:
        """Time passes in ticks, as on a node."""
        for _ in range(round(seconds / TICK_S)):
            self.stack.clock.advance(TICK_S)

    def test_waves_on_time_nearest_first_never_twice(self) -> None:
        for uid, east_m in ((1, 900), (2, 100), (3, 400), (4, 3000), (5, 20_000)):
            self.driver(uid, east_m)
        offer = self.create([(1000, 2, 0), (5000, 2, 5), (5000, 5, 10)])
        order = [(ORDER, b"order 1")]
        self.assertEqual(self.pushes(), {1: [], 2: order, 3: order, 4: [], 5: []})
        self.assertEqual(self.view(offer), ("open", None, [2, 3]))
        self.advance(4.8)
        self.assertEqual(self.pushes(), dict.fromkeys(range(1, 6), []))
        self.advance(1.0)  # wave 1 within 1 s of its time: 1 and 4, not 2 and 3 again
        self.assertEqual(self.pushes(), {1: order, 2: [], 3: [], 4: order, 5: []})
        self.advance(5.0)  # wave 2: nobody left within 5 km
        self.assertEqual(self.pushes(), dict.fromkeys(range(1, 6), []))
        self.assertEqual(self.view(offer), ("open", None, [2, 3, 1, 4]))
        self.assertEqual(self.stack.logic.offers.pushes, 4)

    def test_waves_are_run_in_order_of_after_s(self) -> None:
        self.driver(1, 100)
        self.driver(2, 200)
        offer = self.create([(1000, 1, 2), (1000, 1, 0)])
        self.assertEqual(self.view(offer)[2], [1])
        self.advance(2.2)
        self.assertEqual(self.view(offer)[2], [1, 2])

    def test_offline_drivers_are_not_pushed(self) -> None:
        self.driver(1, 100)
        self.driver(2, 200)
        self.assertEqual(self.drivers.pop(1).request(Cmd.LOGOUT).code, Code.OK)
        offer = self.create([(1000, 5, 0)])
        self.assertEqual(self.view(offer)[2], [2])

    def test_the_first_accept_wins_and_everybody_learns_it(self) -> None:
        for uid, east_m in ((1, 100), (2, 200), (3, 300), (4, 400)):
            self.driver(uid, east_m)
        offer = self.create([(1000, 3, 0), (1000, 3, 5)])
        self.pushes()
        self.assertEqual(self.accept(2, offer).code, Code.OK)
        self.assertEqual(self.drivers[2].pushes, [])  # the Result first, then the outcome
        won = (RESULT, json.dumps({"offer_id": str(offer), "state": "won"},
                                  separators=(",", ":")).encode())
        taken = (RESULT, won[1].replace(b"won", b"taken"))
        self.assertEqual(self.pushes(), {1: [taken], 2: [won], 3: [taken], 4: []})
        late = self.accept(3, offer)
        self.assertEqual((late.code, late.reason), (Code.BAD_REQUEST, "offer taken"))
        stranger = self.accept(4, offer)
        self.assertEqual((stranger.code, stranger.reason), (Code.BAD_REQUEST, "not offered"))
        self.assertEqual(self.accept(2, offer).code, Code.OK)  # the winner again: no news
        self.assertEqual(self.view(offer), ("accepted", 2, [1, 2, 3]))
        self.assertEqual(self.events(), [{"offer_id": str(offer), "state": "accepted",
                                          "winner_uid": 2}])
        # Published as what it is: JSON, not the C2S envelope's protobuf.
        self.assertEqual(self.stack.bus.content_types["offers"], "application/json")
        self.advance(40)  # no more waves, no expiry, no second event
        self.assertEqual(self.pushes(), dict.fromkeys(range(1, 5), []))
        self.assertEqual(self.view(offer)[0], "accepted")
        self.assertEqual(len(self.events()), 1)

    def test_an_accept_during_its_wave_is_told_when_the_wave_is_done(self) -> None:
        """The driver accepts while the wave that offered it is still being
        pushed (the message store is slow): the outcome follows the wave at
        once, not after the lease."""
        self.driver(1, 100)
        self.driver(2, 200)
        held = self.stack.stall_store()
        offer = self.create([(1000, 2, 0)])
        self.assertEqual(self.view(offer)[2], [1, 2])  # recorded, not pushed yet
        self.assertEqual(self.accept(1, offer).code, Code.OK)
        self.stack.clock.advance(0)
        for d in held:
            d.callback(None)
        won = json.dumps({"offer_id": str(offer), "state": "won"}, separators=(",", ":"))
        pushed = self.pushes()
        self.assertEqual(pushed[1], [(ORDER, b"order 1"), (RESULT, won.encode())])
        self.assertEqual(pushed[2][1], (RESULT, won.replace("won", "taken").encode()))
        self.assertEqual(len(self.events()), 1)

    def test_accepts_are_never_published_and_need_no_route(self) -> None:
        self.assertIsNone(self.stack.config.route_for(DRIVER, ACCEPT))
        self.driver(1, 100)
        for content in (b"x", b"", b"-1", b"1" * 30, b"99999"):
            result = self.accept(1, content)
            self.assertEqual((result.code, result.reason), (Code.BAD_REQUEST, "not offered"))
        offer = self.create([(1000, 1, 0)])
        self.assertEqual(self.accept(1, b" %d\n" % offer).code, Code.OK)
        self.stack.clock.advance(0)
        self.assertEqual(set(self.stack.bus.topics), {"gps", "offers"})

    def test_an_app_of_the_same_uid_is_not_offered(self) -> None:
        self.driver(1, 100)
        offer = self.create([(1000, 1, 0)])
        customer = self.stack.login(1, 1001, host="10.0.2.1")
        result = customer.request(Cmd.C2S, pb.C2SRequest(content=b"%d" % offer), msgtype=ACCEPT)
        self.assertEqual((result.code, result.reason), (Code.BAD_REQUEST, "not offered"))

    def test_expiry_within_a_second_of_the_deadline_once(self) -> None:
        self.driver(1, 100)
        self.driver(2, 200)
        offer = self.create([(1000, 2, 0)], deadline_s=10)
        self.pushes()
        self.advance(9.8)
        self.assertEqual(self.view(offer)[0], "open")
        self.assertEqual(self.events(), [])
        self.advance(1.0)
        expired = (RESULT, json.dumps({"offer_id": str(offer), "state": "expired"},
                                      separators=(",", ":")).encode())
        self.assertEqual(self.pushes(), {1: [expired], 2: [expired]})
        self.assertEqual(self.events(), [{"offer_id": str(offer), "state": "expired"}])
        late = self.accept(1, offer)
        self.assertEqual((late.code, late.reason), (Code.BAD_REQUEST, "offer expired"))
        self.advance(10)
        self.assertEqual(len(self.events()), 1)
        self.assertEqual(self.stack.logic.offers.expired, 1)

    def test_past_the_deadline_is_expired_before_any_tick(self) -> None:
        self.driver(1, 100)
        offer = self.create([(1000, 1, 0)], deadline_s=1)
        self.stack.logic.offers.stop()  # no ticker
        self.stack.clock.advance(1.0)
        self.assertEqual(self.view(offer)[0], "expired")
        result = self.accept(1, offer)
        self.assertEqual((result.code, result.reason), (Code.BAD_REQUEST, "offer expired"))

    def test_no_wave_after_the_deadline(self) -> None:
        offer = self.create([(1000, 1, 0), (1000, 1, 4.9)], deadline_s=5)
        self.driver(1, 100)
        self.stack.logic.offers.stop()
        self.stack.clock.advance(6)  # the wave is due but so is the expiry
        self.stack.logic.offers.start()
        self.advance(0.2)
        self.assertEqual(self.view(offer), ("expired", None, []))

    def test_a_wave_recorded_by_a_node_that_died_is_pushed_after_its_lease(self) -> None:
        """A node recorded a wave, pushed it to 1 and died before pushing it
        to 2: after the lease another tick pushes it to 2, and not to 1 again
        (the push's idempotency key)."""
        self.driver(1, 100)
        self.driver(2, 200)
        offer = self.create([(1000, 1, 3)])
        offers = self.stack.offers
        self.stack.logic.offers.stop()
        self.stack.clock.advance(3)
        now = int(self.stack.clock.seconds() * 1000)
        lease = round(LEASE_S * 1000)
        self.assertEqual(self.successResultOf(offers.claim(now, now + lease, 10)), [offer])
        self.assertTrue(self.successResultOf(offers.begin_wave(offer, 0, [1, 2], now)))
        item = PushItem(1, DRIVER, ORDER, b"order 1", "", f"offer:{offer}:1")
        self.successResultOf(Deferred.fromCoroutine(self.stack.logic.push_s2c([item], DRIVER)))
        self.assertEqual(self.pushes(), {1: [(ORDER, b"order 1")], 2: []})
        self.stack.logic.offers.start()
        self.advance(LEASE_S - 0.2)
        self.assertEqual(self.pushes(), {1: [], 2: []})
        self.advance(0.4)
        self.assertEqual(self.pushes(), {1: [], 2: [(ORDER, b"order 1")]})
        self.assertEqual(self.view(offer)[2], [1, 2])

    def test_an_outcome_not_told_is_told_after_the_lease(self) -> None:
        self.driver(1, 100)
        offer = self.create([(1000, 1, 0)])
        self.pushes()
        now = int(self.stack.clock.seconds() * 1000)
        lease = round(OUTCOME_LEASE_S * 1000)
        result = self.successResultOf(self.stack.offers.accept(offer, DRIVER, 1, now, now + lease))
        self.assertEqual(result.value, "won")  # as a node that died before telling it
        self.advance(OUTCOME_LEASE_S - 0.2)
        self.assertEqual(self.pushes()[1], [])
        self.advance(0.4)
        self.assertEqual(len(self.pushes()[1]), 1)
        self.assertEqual(len(self.events()), 1)

    def test_a_failing_store_is_counted_and_the_ticker_goes_on(self) -> None:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.driver(1, 100)
        offers = self.stack.offers
        real_claim = offers.claim
        offers.claim = lambda *a: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        offer = self.create([(1000, 1, 1)])
        self.advance(2)
        self.assertGreater(self.stack.logic.offers.failures, 0)
        self.assertEqual(self.view(offer)[2], [])
        offers.claim = real_claim  # type: ignore[method-assign]
        self.advance(0.2)
        self.assertEqual(self.view(offer)[2], [1])
        said = [e["log_format"].split(":")[0] for e in logged
                if e["log_namespace"] == "daojia_msg.logic.offers.Offers"
                and ("works again" in e["log_format"] or "failed on" in e["log_format"])]
        self.assertEqual(said, ["offer {what} failed on a backend (done again later)",
                                "offer {what} works again"])  # once each, not every tick

    def test_an_outcome_the_bus_refused_is_published_after_the_lease(self) -> None:
        """The bus refuses the outcome: the recipients are told, the event is
        published by the next claim after the lease, once, and nobody is told
        twice (the outcome pushes' idempotency keys)."""
        self.driver(1, 100)
        offer = self.create([(1000, 1, 0)])
        self.pushes()
        bus = self.stack.bus
        real_publish = bus.publish
        bus.publish = lambda *a: fail(BusUnavailable("down"))  # type: ignore[method-assign]
        self.assertEqual(self.accept(1, offer).code, Code.OK)
        self.assertEqual(len(self.pushes()[1]), 1)
        self.assertEqual(self.events(), [])
        self.assertEqual(self.stack.logic.offers.failures, 1)
        bus.publish = real_publish  # type: ignore[method-assign]
        lease_s = self.stack.logic.offers.outcome_lease_ms / 1000
        self.advance(lease_s + 0.2)
        self.assertEqual(self.events(), [{"offer_id": str(offer), "state": "accepted",
                                          "winner_uid": 1}])
        self.assertEqual(self.pushes()[1], [])
        self.advance(lease_s + 0.2)
        self.assertEqual(len(self.events()), 1)

    def test_a_slow_publication_is_not_taken_over(self) -> None:
        """The outcome's publication takes as long as the bus may take
        (bus.publish_timeout_s, 5 s): no claim takes the telling over meanwhile,
        so it is published once (it was twice with a 3 s hold), and a
        telling a dead node left is held as long again before another try."""
        self.driver(1, 100)
        offer = self.create([(1000, 1, 0)])
        self.pushes()
        bus = self.stack.bus
        real_publish = bus.publish
        slow: list[Deferred[None]] = []

        def publish(*args: Any) -> Deferred[None]:
            slow.append(Deferred())
            slow[-1].addCallback(lambda _: real_publish(*args))
            return slow[-1]

        bus.publish = publish  # type: ignore[method-assign]
        logic = self.stack.logic  # a second node's offers on the same store,
        other = Offers(logic.ctx, self.stack.offers, logic.positions, logic.sending, bus)
        logic.offers.stop()  # which claims first from now on
        other.start()
        self.addCleanup(other.stop)
        self.assertEqual(self.accept(1, offer).code, Code.OK)
        self.advance(4.9)
        self.assertEqual(len(slow), 1)  # nobody took it over while it was publishing
        slow[0].callback(None)
        self.advance(30)
        self.assertEqual(len(slow), 1)
        self.assertEqual(len(self.events()), 1)
        self.assertEqual(self.stack.logic.offers.outcome_lease_ms, (3 + 3 + 5) * 1000)

    def test_a_store_that_is_down_is_unavailable(self) -> None:
        self.driver(1, 100)
        offer = self.create([(1000, 1, 0)])
        offers = self.stack.offers
        down = lambda *a: fail(StoreUnavailable("down"))  # noqa: E731
        offers.accept = offers.create = offers.load = down  # type: ignore[method-assign]
        result = self.accept(1, offer)
        self.assertEqual(result.code, Code.UNAVAILABLE)
        logic = self.stack.logic.offers
        self.failureResultOf(Deferred.fromCoroutine(logic.create(
            DRIVER, LAT, LON, ORDER, b"x", [Wave(1000, 1, 0)], 10)), errors.Unavailable)
        self.failureResultOf(Deferred.fromCoroutine(logic.view(offer)), errors.Unavailable)

    def test_metrics(self) -> None:
        self.driver(1, 100)
        self.driver(2, 200)
        first = self.create([(1000, 2, 0)])
        self.accept(1, first)
        self.create([(1000, 1, 0)], deadline_s=1)
        self.advance(1.2)
        registry = CollectorRegistry()
        registry.register(OffersCollector(self.stack.logic.offers))

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        self.assertEqual(value("msgplatform_offers_total", event="created"), 2)
        self.assertEqual(value("msgplatform_offers_total", event="accepted"), 1)
        self.assertEqual(value("msgplatform_offers_total", event="expired"), 1)
        self.assertEqual(value("msgplatform_offer_pushes_total"), 3)
        self.assertEqual(value("msgplatform_offer_failures_total"), 0)


class OffersOffTests(SynchronousTestCase):
    def test_without_offers_msgtype_3_is_a_plain_c2s(self) -> None:
        stack = Stack(config=default_config().replace(offers=OffersConfig()))
        conn = stack.login(1, DRIVER)
        result = conn.request(Cmd.C2S, pb.C2SRequest(content=b"1"), msgtype=ACCEPT)
        self.assertEqual(result.code, Code.NO_ROUTE)
        d = Deferred.fromCoroutine(stack.logic.offers.create(
            DRIVER, LAT, LON, ORDER, b"x", [Wave(1000, 1, 0)], 10))
        self.failureResultOf(d, errors.BadRequest)
