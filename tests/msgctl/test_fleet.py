"""Tests for ``msgctl drivers`` (daojia_msg.msgctl.fleet) on a fake reactor
and faked gate connections, one per driver."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.auth import verify_token
from daojia_msg.core.geo import distance_m, parse_position
from daojia_msg.msgctl.fleet import Circuit, circuits, offer_id_of, outcome
from daojia_msg.protocol.codec import Frame, encode
from daojia_msg.protocol.codes import Cmd, Code
from daojia_msg.protocol.pb import msgplatform_pb2 as pb
from tests.client.fakes import answer, sent
from tests.msgctl.fakes import NOW, CliTestCase

LAT, LON = 31.2304, 121.4737


class CircuitTests(SynchronousTestCase):
    def test_a_driver_stays_on_its_circle_at_its_speed(self) -> None:
        path = Circuit(LAT, LON, 1000, 0.3, 10)
        start = path.at(0)
        for t in (0, 7, 60, 600):
            lat, lon = path.at(t)
            self.assertLess(abs(distance_m(LAT, LON, lat, lon) - 1000), 1)
        # 10 m/s for 10 s: a 100 m arc, a chord just short of it.
        self.assertLess(abs(distance_m(*start, *path.at(10)) - 100), 1)
        # Round once in 2*pi*1000/10 s.
        self.assertLess(abs(distance_m(*start, *path.at(2 * math.pi * 100)) - 0), 1)

    def test_drivers_loop_through_the_centre_out_to_their_share_of_the_spread(self) -> None:
        paths = circuits(4, LAT, LON, 2000, 10)
        self.assertEqual([p.radius_m for p in paths], [250, 500, 750, 1000])
        self.assertEqual([p.speed_mps for p in paths], [10, -10, 10, -10])
        # Each starts at its far end, in its own direction, and passes the centre.
        starts = [p.at(0) for p in paths]
        self.assertEqual([round(distance_m(LAT, LON, *s)) for s in starts], [500, 1000, 1500, 2000])
        self.assertGreater(min(distance_m(*a, *b) for a in starts for b in starts if a != b), 400)
        for p in paths:
            half_way = math.pi * p.radius_m / abs(p.speed_mps)
            self.assertLess(distance_m(LAT, LON, *p.at(half_way)), 1)
        # The first one starts east of the centre and goes north (anticlockwise).
        lat, lon = starts[0]
        self.assertAlmostEqual(lat, LAT, places=5)
        self.assertGreater(lon, LON)
        self.assertGreater(paths[0].at(5)[0], LAT)

    def test_longitudes_wrap_round_the_antimeridian(self) -> None:
        lat, lon = Circuit(0, 179.999, 1000, 0, 10).at(0)
        self.assertLess(lon, -179.99)


def _message(**fields: Any) -> pb.Message:
    return pb.Message(kind=pb.S2C, **fields)


class OfferIdTests(SynchronousTestCase):
    def test_the_logid_is_the_offer_id_in_hexadecimal(self) -> None:
        self.assertEqual(offer_id_of(_message(logid="1f", content=b"new order")), "31")

    def test_a_content_naming_its_offer_wins(self) -> None:
        m = _message(logid="1f", content=b'{"offer_id": "77", "pickup": "x"}')
        self.assertEqual(offer_id_of(m), "77")

    def test_none_without_either(self) -> None:
        self.assertIsNone(offer_id_of(_message(logid="order-7", content=b"new order")))
        self.assertIsNone(offer_id_of(_message(logid="", content=b"[1]")))

    def test_outcome(self) -> None:
        self.assertEqual(outcome(_message(content=b'{"offer_id": "31", "state": "won"}')),
                         ("31", "won"))
        self.assertIsNone(outcome(_message(content=b"taken")))
        self.assertIsNone(outcome(_message(content=b'{"state": "won"}')))


class Link:
    """The server end of one driver's connection."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.transport = StringTransport()
        self.unread: list[Frame] = []
        proto.makeConnection(self.transport)

    def frames(self) -> list[Frame]:
        """What the driver sent and the test has not read yet."""
        frames, self.unread = self.unread + sent(self.transport), []
        return frames

    def answer(self, cmd: int, body: Any = None) -> Frame:
        """Answer the driver's first unread request, a ``cmd``; the others stay unread."""
        frames = self.frames()
        assert frames and frames[0].cmd == cmd, frames
        self.unread = frames[1:]
        answer(self.proto, frames[0], body)
        return frames[0]

    def push(self, message: pb.Message, seq: int = 1) -> None:
        self.proto.dataReceived(encode(Cmd.S2C, 1002, message.msgtype, message.to_uid, seq,
                                       message.SerializeToString()))

    def close(self) -> None:
        self.proto.connectionLost(Failure(error.ConnectionDone()))


class DriversTests(CliTestCase):
    def start(self, *extra: str, count: int = 2) -> tuple[Deferred[int], list[Link]]:
        """``msgctl drivers`` with ``count`` drivers, each logged in, nothing offline."""
        d = self.run_cli("drivers", "--count", str(count), "--seed", "7", *extra)
        self.assertEqual(len(self.reactor.tcpClients), count)
        links = []
        for host, port, factory, _timeout, _bind in self.reactor.tcpClients:
            self.assertEqual((host, port), ("127.0.0.1", 7000))
            links.append(Link(factory.buildProtocol(IPv4Address("TCP", host, port))))
        for uid, link in enumerate(links, 101):
            login = link.answer(Cmd.LOGIN, pb.LoginResponse(heartbeat_s=60))
            token = pb.LoginRequest.FromString(login.body).token
            self.assertEqual(verify_token("demo-secret-1002", 1002, uid, token, NOW), NOW + 86400)
            self.assertEqual((login.uid, login.appcode), (uid, 1002))
            link.answer(Cmd.PULL, pb.PullResponse())
        return d, links

    def reports(self, links: list[Link], answer_them: bool = True) -> list[tuple[float, float]]:
        """Each driver's position report (one C2S on msgtype 1 each), answered OK."""
        positions = []
        for link in links:
            frames = link.frames()
            self.assertEqual([(f.cmd, f.msgtype) for f in frames], [(Cmd.C2S, 1)])
            positions.append(parse_position(pb.C2SRequest.FromString(frames[0].body).content))
            if answer_them:
                answer(link.proto, frames[0], pb.Result(msgid=1))
        return positions

    def logouts(self, links: list[Link]) -> None:
        for link in links:
            link.answer(Cmd.LOGOUT)
            link.close()

    def test_drivers_report_moving_positions_then_log_out(self) -> None:
        d, links = self.start("--duration", "10", "--every", "3", "--spread", "1000",
                              "--speed", "20")
        first = self.reports(links)
        self.assertEqual([round(distance_m(LAT, LON, *p)) for p in first], [500, 1000])
        self.reactor.advance(3)
        second = self.reports(links)
        for a, b in zip(first, second, strict=True):
            self.assertLess(abs(distance_m(*a, *b) - 60), 1)  # 20 m/s for 3 s
        self.reactor.advance(3)
        self.reports(links, answer_them=False)
        self.reactor.advance(3)  # the last report is unanswered: none more
        self.assertEqual([link.frames() for link in links], [[], []])
        self.reactor.advance(1)  # the duration: they log out
        self.logouts(links)
        self.assertEqual(self.exit_code(d), 0)
        self.assertIn("*** 2 driver(s) online on app 1002, uids 101..102, driving loops through "
                      "31.2304,121.4737 up to 1000 m out at 20 m/s; a position every 3 s on "
                      "msgtype 1", self.err.getvalue())
        self.assertIn("*** 2 driver(s) logged out after 4 position report(s)\n",
                      self.err.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_report_while_offline_or_while_the_last_is_unanswered(self) -> None:
        d, links = self.start("--duration", "4.5", "--every", "1")
        self.reports(links)
        links[0].close()
        self.reactor.advance(1)
        self.assertEqual(links[0].frames(), [])  # offline (reconnecting after a backoff)
        [unanswered] = links[1].frames()
        self.reactor.advance(1)
        self.assertEqual(links[1].frames(), [])
        answer(links[1].proto, unanswered, pb.Result(msgid=2))
        self.reactor.advance(1)
        self.reports(links[1:])
        self.reactor.advance(1)
        self.reports(links[1:])
        self.reactor.advance(0.5)  # the duration
        self.logouts(links[1:])
        self.assertEqual(self.exit_code(d), 0)
        self.assertIn("logged out after 5 position report(s)", self.err.getvalue())

    def test_offers_are_accepted_after_a_pause_and_the_outcome_printed(self) -> None:
        d, links = self.start("--duration", "30", "--accept", "--accept-within", "4")
        self.reports(links)
        offer = pb.Message(msgid=50, to_uid=101, to_appcode=1002, msgtype=5,
                           content=b"new order", logid="3e8", kind=pb.S2C)
        links[0].push(offer)
        links[1].push(pb.Message(msgid=51, to_uid=102, to_appcode=1002, msgtype=5,
                                 content=b"new order", logid="3e8", kind=pb.S2C))
        self.reactor.advance(0)  # the ACKs
        for link in links:
            self.assertEqual([f.cmd for f in link.frames()], [Cmd.ACK])
        out = self.out.getvalue().splitlines()
        self.assertEqual(len(out), 2)
        pauses = [float(line.split("accepting in ")[1].split(" s")[0]) for line in out]
        self.assertTrue(all(0.5 <= p <= 4 for p in pauses), pauses)
        self.assertTrue(out[0].startswith("driver 101: offer 1000 received: new order"))
        first, second = (0, 1) if pauses[0] <= pauses[1] else (1, 0)
        self.reactor.advance(pauses[first] + 0.05)  # the pauses are printed rounded
        accept = links[first].frames()
        self.assertEqual([(f.cmd, f.msgtype) for f in accept], [(Cmd.C2S, 3)])
        self.assertEqual(pb.C2SRequest.FromString(accept[0].body).content, b"1000")
        answer(links[first].proto, accept[0], pb.Result())
        self.reactor.advance(pauses[second] - pauses[first])
        late = links[second].frames()
        answer(links[second].proto, late[0],
               pb.Result(code=Code.BAD_REQUEST, reason="offer taken"))
        for link, state in ((links[first], "won"), (links[second], "taken")):
            link.push(pb.Message(msgid=60, msgtype=4, kind=pb.S2C,
                                 content=b'{"offer_id": "1000", "state": "%s"}' % state.encode()),
                      seq=2)
        uid = (101, 102)
        self.assertEqual(self.out.getvalue().splitlines()[2:], [
            f"driver {uid[first]}: accepted offer 1000: OK",
            f"driver {uid[second]}: accept of offer 1000 refused: BAD_REQUEST: offer taken",
            f"driver {uid[first]}: offer 1000: won",
            f"driver {uid[second]}: offer 1000: taken",
        ])
        self.reactor.advance(30)
        for link in links:
            frames = link.frames()
            self.assertEqual(frames[-1].cmd, Cmd.LOGOUT)
            answer(link.proto, frames[-1])
            link.close()
        self.assertEqual(self.exit_code(d), 0)

    def test_without_accept_offers_are_only_printed(self) -> None:
        d, links = self.start("--duration", "20", count=1)
        self.reports(links)
        links[0].push(pb.Message(msgid=50, msgtype=5, content=b"order", logid="a", kind=pb.S2C))
        links[0].push(pb.Message(msgid=51, msgtype=7, content=b"hello", kind=pb.S2C), seq=2)
        self.reactor.advance(2)
        self.assertEqual([f.cmd for f in links[0].frames()], [Cmd.ACK])
        self.assertEqual(self.out.getvalue(), "driver 101: offer 10 received: order\n"
                                              "driver 101: message msgtype=7: hello\n")
        d.cancel()  # like Ctrl-C: they log out
        self.logouts(links)
        self.exit_code(d)

    def test_ctrl_c_logs_every_driver_out(self) -> None:
        d, links = self.start()
        self.reports(links)
        for trigger, args, kw in self.reactor.triggers["before"]["shutdown"]:
            trigger(*args, **kw)
        self.logouts(links)
        self.assertNoResult(d)  # the reactor stops; the command never ends by itself
        d.cancel()  # (not to leave it pending)
        self.assertIn(self.exit_code(d), (0, 1))

    def test_connection_refused(self) -> None:
        d = self.run_cli("drivers", "--count", "2")
        for _host, _port, factory, _timeout, _bind in self.reactor.tcpClients:
            factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.reactor.advance(0)
        self.assertEqual(self.exit_code(d), 1)
        self.assertIn("msgctl: error: cannot connect to 127.0.0.1:7000", self.err.getvalue())

    def test_one_driver_refused_stops_them_all(self) -> None:
        d = self.run_cli("drivers", "--count", "2")
        (host, port, first, _, _), (_, _, second, _, _) = self.reactor.tcpClients
        link = Link(first.buildProtocol(IPv4Address("TCP", host, port)))
        link.answer(Cmd.LOGIN, pb.LoginResponse(heartbeat_s=60))
        second.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.reactor.advance(0)
        link.answer(Cmd.PULL, pb.PullResponse())
        link.answer(Cmd.LOGOUT)  # the one logged in leaves: no report was sent
        link.close()
        self.assertEqual(self.exit_code(d), 1)
        self.assertIn("msgctl: error: cannot connect to 127.0.0.1:7000", self.err.getvalue())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_secret_is_needed_outside_the_demo_apps(self) -> None:
        d = self.run_cli("drivers", "--appcode", "5")
        self.assertEqual(self.exit_code(d), 2)
        self.assertIn("--secret is required", self.err.getvalue())

    def test_bad_options(self) -> None:
        self.assertIn("--count", self.bad_args("drivers", "--count", "0"))
        self.assertIn("--lat", self.bad_args("drivers", "--lat", "91"))
        self.assertIn("--every", self.bad_args("drivers", "--every", "0.1"))
