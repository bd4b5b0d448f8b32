"""Live positions through the gate and logic on a fake clock: geo C2S content
checked (BAD_REQUEST: nothing kept or published), kept, dropped at logout,
close and kick, expired after ``geo.max_age_s``, and ``nearby``."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.config import GeoConfig, default_config
from daojia_msg.core.errors import StoreUnavailable
from daojia_msg.core.geo import Located
from daojia_msg.metrics.positions import PositionsCollector
from daojia_msg.protocol import errors
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.helpers import Conn, Stack

LAT, LON = 31.2304, 121.4737
DRIVER = 1002  # the demo driver app: msgtype 1 is its geo route (topic gps)


def report(conn: Conn, content: bytes, msgtype: int = 1) -> pb.Result:
    return conn.request(Cmd.C2S, pb.C2SRequest(content=content), msgtype=msgtype)


def at(east_m: float) -> bytes:
    """A position about ``east_m`` metres east of (LAT, LON)."""
    return b"%.6f,%.6f" % (LAT, LON + east_m / 95_200)


class PositionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = Stack(config=default_config().replace(geo=GeoConfig(max_age_s=30)))
        self.stack.logic.startService()
        self.addCleanup(self.stack.logic.stopService)

    def nearby(self, radius_m: float = 5000, limit: int = 20,
               appcode: int = DRIVER) -> list[Located]:
        d = Deferred.fromCoroutine(self.stack.logic.nearby(appcode, LAT, LON, radius_m, limit))
        return self.successResultOf(d)

    def uids(self, **kw: float) -> list[int]:
        return [p.uid for p in self.nearby(**kw)]  # type: ignore[arg-type]

    def published(self, topic: str = "gps") -> list[bytes]:
        out = []
        for payload, _ in self.stack.bus.topics.get(topic, ()):
            m = pb.Message()
            m.ParseFromString(payload)
            out.append(m.content)
        return out

    def test_a_report_is_kept_and_published_as_sent(self) -> None:
        driver = self.stack.login(7, DRIVER)
        self.assertEqual(report(driver, b'{"lat": 31.2304, "lon": 121.4737, "speed": 4}').code,
                         Code.OK)
        [p] = self.nearby()
        self.assertEqual((p.uid, p.lat, p.lon, p.distance_m), (7, LAT, LON, 0.0))
        self.assertEqual(p.updated_ms, int(self.stack.clock.seconds() * 1000))
        self.assertEqual(self.published(), [b'{"lat": 31.2304, "lon": 121.4737, "speed": 4}'])

    def test_bad_positions_are_refused_and_neither_kept_nor_published(self) -> None:
        driver = self.stack.login(7, DRIVER)
        for content in (b"gps", b"", b"91,0", b"0,181", b"nan,nan", b'{"lat": NaN, "lon": 0}',
                        b'{"lat": 1e999, "lon": 0}', b"1," * 5000, b'{"lat": 1}'):
            result = report(driver, content)
            self.assertEqual(result.code, Code.BAD_REQUEST, content)
            self.assertTrue(result.reason.startswith("position:"), result.reason)
        self.assertEqual(self.nearby(), [])
        self.assertEqual(self.published(), [])
        # Other routes carry anything, and keep no position.
        self.assertEqual(report(driver, b"gps", msgtype=2).code, Code.OK)
        self.assertEqual(self.nearby(), [])
        self.assertEqual(self.stack.logic.positions.reports, 0)  # none of them counted
        report(driver, at(10))
        registry = CollectorRegistry()
        registry.register(PositionsCollector(self.stack.logic.positions))
        self.assertEqual(registry.get_sample_value("msgplatform_positions_reported_total"), 1)
        self.assertEqual(registry.get_sample_value("msgplatform_position_failures_total"), 0)

    def test_nearest_first_limit_and_radius(self) -> None:
        for uid, east_m in ((1, 900), (2, 100), (3, 400), (4, 6000)):
            report(self.stack.login(uid, DRIVER, host=f"10.0.1.{uid}"), at(east_m))
        self.assertEqual(self.uids(), [2, 3, 1])
        self.assertEqual(self.uids(limit=2), [2, 3])
        self.assertEqual(self.uids(radius_m=500), [2, 3])
        self.assertEqual(self.uids(radius_m=10_000), [2, 3, 1, 4])
        self.assertEqual(self.nearby(appcode=1001), [])

    def test_the_latest_report_wins(self) -> None:
        driver = self.stack.login(7, DRIVER)
        report(driver, at(3000))
        self.stack.clock.advance(2)
        report(driver, at(100))
        [p] = self.nearby()
        self.assertLess(p.distance_m, 101)
        self.assertEqual(p.updated_ms, int(self.stack.clock.seconds() * 1000))

    def test_dropped_at_logout(self) -> None:
        driver = self.stack.login(7, DRIVER)
        report(driver, at(10))
        self.assertEqual(driver.request(Cmd.LOGOUT).code, Code.OK)
        self.assertEqual(self.nearby(), [])
        self.assertEqual(len(self.stack.positions), 0)

    def test_dropped_when_the_connection_closes(self) -> None:
        driver = self.stack.login(7, DRIVER)
        report(driver, at(10))
        driver.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(len(self.stack.positions), 0)

    def test_a_newer_login_keeps_its_position_when_the_old_one_is_kicked(self) -> None:
        old = self.stack.login(7, DRIVER, host="10.0.0.1")
        report(old, at(10))
        new = self.stack.login(7, DRIVER, host="10.0.0.2")  # kicks the old one
        self.assertEqual(self.nearby(), [])
        report(new, at(20))
        old.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.uids(), [7])

    def test_expired_after_max_age(self) -> None:
        driver = self.stack.login(7, DRIVER)
        report(driver, at(10))
        other = self.stack.login(8, DRIVER, host="10.0.0.2")
        self.stack.clock.advance(20)
        report(other, at(20))
        self.stack.clock.advance(10.5)  # 7 is 30.5 s old: swept within a second
        self.assertEqual(len(self.stack.positions), 1)
        self.assertEqual(self.uids(), [8])
        self.stack.clock.advance(20)
        self.assertEqual(len(self.stack.positions), 0)
        self.assertEqual(self.uids(), [])

    def test_a_query_skips_what_the_sweep_has_not_reached(self) -> None:
        report(self.stack.login(7, DRIVER), at(10))
        self.stack.logic.positions.stop()  # no sweep
        self.stack.clock.advance(31)
        self.assertEqual(len(self.stack.positions), 1)
        self.assertEqual(self.uids(), [])

    def test_only_online_uids(self) -> None:
        """A position whose session is gone from the session store (its node
        died) is not answered, though not yet expired."""
        report(self.stack.login(7, DRIVER), at(10))
        self.stack.sessions._by_uid.clear()
        self.assertEqual(self.uids(), [])

    def test_a_failing_backend(self) -> None:
        """Reports still publish (the next report makes good); a query is UNAVAILABLE."""
        driver = self.stack.login(7, DRIVER)
        positions = self.stack.positions
        positions.update = lambda *a: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        positions.nearby = lambda *a: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        self.assertEqual(report(driver, at(10)).code, Code.OK)
        self.assertEqual(self.stack.logic.positions.failures, 1)
        d = Deferred.fromCoroutine(self.stack.logic.nearby(DRIVER, LAT, LON, 100, 5))
        self.failureResultOf(d, errors.Unavailable)

    def test_a_failing_sweep_warns_once_per_outage(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        positions = self.stack.positions
        real = positions.expire
        positions.expire = lambda *a: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        self.stack.clock.advance(5)
        positions.expire = real  # type: ignore[method-assign]
        self.stack.clock.advance(1)
        texts = [e["log_format"] for e in events if e.get("log_namespace", "").startswith(
            "daojia_msg.logic.positions")]
        self.assertEqual(texts, ["could not expire old positions: {error}",
                                 "old positions are expired again"])
